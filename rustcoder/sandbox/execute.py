"""Running one sandboxed command: namespaces, uid switch and resource limits, separate timeouts, capped
output, and the whole process group killed at the end.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import time

from .. import procs
from .policy import Limits, SANDBOX_GID, TRUNCATION_MARKER, _EXIT_GRACE_SECONDS, _FATAL_SIGNALS
from .state import _Job, _Setup, _uid_task_count

@dataclasses.dataclass
class _Outcome:
    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_total: int
    stderr_total: int
    timed_out: bool
    output_limited: bool
    seconds: float


def _rlimit_values(setup: _Setup, phase: str, timeout: float, limits: Limits,
                   uid: int | None = None) -> dict[str, int]:
    cpu = int(timeout) + 1
    values = {"cpu": cpu, "core": 0, "nofile": limits.open_files}
    if phase == "compile":
        values["as"] = limits.compile_memory_bytes
        values["fsize"] = limits.compile_file_bytes
    else:
        values["as"] = limits.run_memory_bytes
        values["fsize"] = limits.run_file_bytes
        if sys.platform.startswith("linux"):
            values["nproc"] = _uid_task_count(setup.sandbox_uid if uid is None else uid) \
                + limits.run_max_processes
        else:
            values["nproc"] = limits.run_max_processes + 512
    return _clamp_to_hard_limits(values)


_RLIMIT_NAMES = {"cpu": "RLIMIT_CPU", "core": "RLIMIT_CORE", "nofile": "RLIMIT_NOFILE",
                 "as": "RLIMIT_AS", "fsize": "RLIMIT_FSIZE", "nproc": "RLIMIT_NPROC"}


def _clamp_to_hard_limits(values: dict[str, int]) -> dict[str, int]:
    """Lower each value to what this process may set (raising a hard limit needs
    CAP_SYS_RESOURCE, which even root may lack in a container)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return values
    clamped = {}
    for name, value in values.items():
        which = getattr(resource, _RLIMIT_NAMES[name], None)
        if which is None:
            continue
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard - 1 if name == "cpu" else hard)
        clamped[name] = value
    return clamped


def _unsupported_rlimits() -> list[str]:
    """Resources that setrlimit refuses here (macOS rejects some RLIMIT_AS values, ...)."""
    d = Limits()
    probe = _clamp_to_hard_limits({"cpu": 60, "core": 0, "nofile": d.open_files,
                                   "as": d.run_memory_bytes, "fsize": d.run_file_bytes,
                                   "nproc": d.run_max_processes + 512})
    bad = []
    for name, value in probe.items():
        try:
            subprocess.run(["/bin/sh", "-c", "exit 0"], preexec_fn=_preexec_for({name: value}),
                           check=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            bad.append(name)
    return bad


def _prlimit_prefix(prlimit: str, values: dict[str, int]) -> list[str]:
    argv = [prlimit]
    for name, value in values.items():
        hard = value + 1 if name == "cpu" else value  # SIGXCPU at soft, SIGKILL at hard
        argv.append(f"--{name}={value}:{hard}")
    return [*argv, "--"]


def _preexec_for(values: dict[str, int]):
    import resource

    pairs = [
        (getattr(resource, _RLIMIT_NAMES[k]), (v, v + 1 if k == "cpu" else v))
        for k, v in values.items()
    ]

    def _apply() -> None:
        # Runs in the child between fork and exec: keep it to plain system calls. A failure
        # raises, and subprocess reports it to the parent (no silently missing limit).
        for which, lim in pairs:
            resource.setrlimit(which, lim)

    return _apply


def _sandbox_argv(setup: _Setup, cmd: list[str], values: dict[str, int],
                  job: _Job | None = None) -> tuple[list[str], dict]:
    """The exec chain that runs ``cmd`` (paths as the job sees them) under every protection."""
    uid = job.uid if job else setup.sandbox_uid
    gid = job.gid if job else SANDBOX_GID
    argv: list[str] = []
    kwargs: dict = {}
    if setup.prlimit:
        argv += _prlimit_prefix(setup.prlimit, values)
    else:
        usable = {k: v for k, v in values.items() if k not in setup.rlimits_unsupported}
        kwargs["preexec_fn"] = _preexec_for(usable)
    argv += setup.unshare
    if setup.mounts and job is not None:
        # The script is the PID namespace's init: it stays root only inside the namespaces,
        # builds the job's root, drops to the job's uid and runs the command as its child.
        return [*argv, "/bin/sh", "-c", setup.mount_script, "sh", job.workdir, str(uid), str(gid),
                *cmd], kwargs
    if setup.drop == "setpriv":
        argv += [setup.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                 "--no-new-privs", "--"]
    elif setup.drop == "popen":
        kwargs.update(user=uid, group=gid, extra_groups=[])
    if "pid-namespace" in setup.namespaces:
        # The first process of a PID namespace is its init, which ignores default-action
        # signals (abort() would misbehave); a tiny shell stays init and runs the program.
        argv += ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
    return argv + cmd, kwargs


def _execute(argv: list[str], *, popen_kwargs: dict, env: dict, cwd: str, timeout: float,
             cap: int, kill_on_cap: bool, use_pidfd: bool) -> _Outcome:
    start = time.monotonic()
    proc = procs.start_group(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=cwd, env=env, close_fds=True, **popen_kwargs)
    pgid = proc.pid  # leader of its own session and process group
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    totals = dict.fromkeys(bufs, 0)
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    pidfd = None
    if use_pidfd:
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except OSError:
            pidfd = None
    deadline = start + timeout
    timed_out = output_limited = group_killed = False
    exited_at: float | None = None
    open_pipes = len(bufs)
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and pidfd is None and procs.exit_status(proc) is not None:
                exited_at = now
            if exited_at is not None and not group_killed:
                # The leader is a zombie (not reaped yet), so its pgid cannot have been reused:
                # safe to kill whatever it left running in its group.
                procs.signal_group(pgid, signal.SIGKILL)
                group_killed = True
            if exited_at is not None and (open_pipes == 0 or now >= exited_at + _EXIT_GRACE_SECONDS):
                break
            if now >= deadline:
                timed_out = True
                break
            wait = deadline - now
            if exited_at is not None:
                wait = min(wait, exited_at + _EXIT_GRACE_SECONDS - now)
            elif pidfd is None:
                wait = min(wait, 0.05 if open_pipes else 0.005)
            for key, _ in sel.select(max(wait, 0)):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    exited_at = time.monotonic()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    open_pipes -= 1
                    continue
                totals[fd] += len(chunk)
                room = cap - len(bufs[fd])
                if room > 0:
                    bufs[fd] += chunk[:room]
                if totals[fd] > cap and kill_on_cap:
                    output_limited = True
            if output_limited:
                break
    finally:
        procs.signal_group(pgid, signal.SIGKILL)
        sel.close()
        try:
            returncode = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed leader dies
            returncode = -9
        proc.stdout.close()
        proc.stderr.close()
        if pidfd is not None:
            os.close(pidfd)
    out_fd, err_fd = bufs
    return _Outcome(
        returncode=returncode,
        stdout=bytes(bufs[out_fd]),
        stderr=bytes(bufs[err_fd]),
        stdout_total=totals[out_fd],
        stderr_total=totals[err_fd],
        timed_out=timed_out,
        output_limited=output_limited,
        seconds=time.monotonic() - start,
    )


def _text(data: bytes, total: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if total > len(data):
        text += TRUNCATION_MARKER
    return text


def _signal_of(returncode: int, wrapped: bool) -> str | None:
    if returncode < 0:
        return _FATAL_SIGNALS.get(-returncode, f"signal {-returncode}")
    if wrapped and returncode > 128 and (returncode - 128) in _FATAL_SIGNALS:
        return _FATAL_SIGNALS[returncode - 128]
    return None
