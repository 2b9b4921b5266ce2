"""Launching one sandboxed command: the exec chain (rlimits, namespaces, the job's root, the uid switch), the
job's scrubbed environment, then running it with a timeout, capped output and its whole process group
killed at the end.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from .. import procs
from .confine import Confinement
from .jobdir import Job
from .limits import preexec_for, prlimit_prefix
from .policy import FATAL_SIGNALS, SAFE_PATH, SANDBOX_GID, SETUP_FAILED_MARKER, TRUNCATION_MARKER
from .root import JOB_DIR_VAR, SCRIPT_VAR

if TYPE_CHECKING:  # pragma: no cover - annotations only (setup imports this module)
    from .setup import Setup


_EXIT_GRACE_SECONDS = 0.3  # after the program exits, how long to drain pipes held by stragglers


@dataclasses.dataclass
class Outcome:
    """How one launched command ended, with its (capped) output."""

    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_total: int
    stderr_total: int
    timed_out: bool
    output_limited: bool
    seconds: float


def scrubbed_env(home: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment built from scratch: the safe PATH, HOME and TMPDIR at ``home``, a UTF-8 locale."""
    env = {
        "PATH": SAFE_PATH,
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


def job_env(job: Job, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a job's compiler or program (paths as the job sees them)."""
    env = scrubbed_env(job.home(), extra)
    env["TMPDIR"] = job.tmp()
    return env


_SANDBOX_TOOLS = ("setpriv:", "unshare:", "prlimit:", "sh:", "/bin/sh:", SETUP_FAILED_MARKER)


def sandbox_failed(returncode: int, raw: list[str]) -> bool:
    """Did the exec chain itself fail (rather than rustc)? Its tools say so on stderr."""
    if any(line.startswith(_SANDBOX_TOOLS) for line in raw):
        return True
    return returncode in (125, 126, 127) and not raw


def job_root_argv(uid: int, gid: int) -> list[str]:
    """The start of the job-root script's command line (the script and the job's directory come in its env)."""
    return ["/bin/sh", "-c", f'eval "${SCRIPT_VAR}"', "rustcoder-job", str(uid), str(gid)]


def job_root_env(script: str, workdir: str) -> dict[str, str]:
    """The environment entries the job-root script reads (and unsets before the command runs)."""
    return {SCRIPT_VAR: script, JOB_DIR_VAR: workdir}


def chain_env(setup: Setup, job: Job, env: dict[str, str]) -> dict[str, str]:
    """``env`` plus what the exec chain itself needs (the job-root script, when jobs get their own root)."""
    if setup.mounts:
        return {**env, **job_root_env(setup.mount_script, job.workdir)}
    return env


def sandbox_argv(setup: Setup, cmd: list[str], values: dict[str, int],
                 job: Job | None = None, cgroup_procs: list[str] | None = None) -> tuple[list[str], dict]:
    """The exec chain that runs ``cmd`` (paths as the job sees them) under every protection.

    Its first process confines itself before it execs (joins the job's cgroup through ``cgroup_procs``,
    takes a fresh session keyring, installs the seccomp filter) where this machine allows it.
    """
    uid = job.uid if job else setup.sandbox_uid
    gid = job.gid if job else SANDBOX_GID
    argv: list[str] = []
    kwargs: dict = {}
    rlimits = None
    if setup.prlimit:
        argv += prlimit_prefix(setup.prlimit, values)
    else:
        usable = {k: v for k, v in values.items() if k not in setup.rlimits_unsupported}
        rlimits = preexec_for(usable)
    if cgroup_procs or setup.filter_bpf or setup.keyring:
        kwargs["preexec_fn"] = Confinement(cgroup_procs=cgroup_procs or [], filter_bpf=setup.filter_bpf,
                                           fresh_keyring=setup.keyring, then=rlimits)
    elif rlimits is not None:
        kwargs["preexec_fn"] = rlimits
    argv += setup.unshare
    if setup.mounts and job is not None:
        # The script is the PID namespace's init: it stays root only inside the namespaces,
        # builds the job's root, drops to the job's uid and runs the command as its child.
        return [*argv, *job_root_argv(uid, gid), *cmd], kwargs
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


def execute(argv: list[str], *, popen_kwargs: dict, env: dict, cwd: str, timeout: float,
             cap: int, kill_on_cap: bool, use_pidfd: bool) -> Outcome:
    """Run ``argv`` as a new process group: output capped at ``cap`` per stream, killed at ``timeout``."""
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
    return Outcome(
        returncode=returncode,
        stdout=bytes(bufs[out_fd]),
        stderr=bytes(bufs[err_fd]),
        stdout_total=totals[out_fd],
        stderr_total=totals[err_fd],
        timed_out=timed_out,
        output_limited=output_limited,
        seconds=time.monotonic() - start,
    )


def text_of(data: bytes, total: int) -> str:
    """Captured bytes as text, with the truncation marker when the stream was longer."""
    text = data.decode("utf-8", errors="replace")
    if total > len(data):
        text += TRUNCATION_MARKER
    return text


def signal_of(returncode: int, wrapped: bool) -> str | None:
    """The fatal signal behind an exit code (a wrapping shell reports 128 + N), or None."""
    if returncode < 0:
        return FATAL_SIGNALS.get(-returncode, f"signal {-returncode}")
    if wrapped and returncode > 128 and (returncode - 128) in FATAL_SIGNALS:
        return FATAL_SIGNALS[returncode - 128]
    return None
