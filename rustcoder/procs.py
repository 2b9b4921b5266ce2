"""Process groups: start a command as the leader of its own session, see whether it exited without reaping it,
signal its whole group, stop it (SIGTERM, a grace period, SIGKILL), reap it, and tie a child's life to its
parent's. The sandbox, serve's engines and eval's workers all start and stop processes this way.

Hand-written on purpose: psutil (and subprocess) have no process-group signalling and no wait that
leaves the leader unreaped, and an unreaped leader is what keeps its group id from being reused while
the group is being killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

LINUX = sys.platform.startswith("linux")


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """In a child: have the kernel send ``sig`` when the parent dies (Linux PR_SET_PDEATHSIG; elsewhere a no-op,
    and callers keep their own Ctrl-C / SIGTERM handling)."""
    if not LINUX:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        pass


def start_group(argv: list[str], *, die_with_parent: bool = False, **popen_kwargs) -> subprocess.Popen:
    """Start argv as the leader of a new session and process group (its pid is the group id). With
    die_with_parent, the kernel SIGTERMs it if this process dies (Linux)."""
    if die_with_parent and LINUX:
        popen_kwargs.setdefault("preexec_fn", set_parent_death_signal)
    return subprocess.Popen(argv, start_new_session=True, **popen_kwargs)


def exit_status(proc: subprocess.Popen) -> int | None:
    """The leader's exit code once it ended (negative: killed by that signal), else None; leaves it unreaped
    (a zombie) where the OS allows, so its pid and group id stay reserved until reap()."""
    if proc.returncode is not None:
        return proc.returncode
    if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return proc.poll()
        if info is None:
            return None
        return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status
    return proc.poll()  # pragma: no cover - not POSIX


def signal_group(target: subprocess.Popen | int, sig: int) -> None:
    """Send sig to a whole process group (a Popen started by start_group, or a group id). A reaped leader's
    group is left alone: its id may belong to someone else by now."""
    if isinstance(target, subprocess.Popen):
        if target.returncode is not None:
            return
        target = target.pid
    try:
        os.killpg(target, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of group pgid is still running. Zombies count as gone: where PID 1 does not reap
    orphans, killpg(pgid, 0) would keep "finding" exited members."""
    if os.path.isdir("/proc/self"):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
        return False
    try:  # pragma: no cover - no /proc
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):  # pragma: no cover
        return False


def reap(proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
    """SIGKILL what is left of the leader's group, then collect the leader's exit code."""
    signal_group(proc, signal.SIGKILL)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed leader dies
        return proc.returncode


def stop_group(proc: subprocess.Popen, timeout: float = 20.0, kill_wait: float = 5.0) -> int | None:
    """SIGTERM the whole group, SIGKILL it if anything is left after timeout seconds, reap; the exit code."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, kill_wait)):
        signal_group(proc, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if exit_status(proc) is not None and not group_alive(proc.pid):
                return reap(proc)
            time.sleep(0.05)
    return reap(proc)


def stop_groups(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """stop_group for several processes at once: SIGTERM every group, one shared grace period, SIGKILL, reap."""
    for p in procs:
        signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(exit_status(p) is None or group_alive(p.pid) for p in procs
                                              if p.returncode is None):
        time.sleep(0.05)
    for p in procs:
        reap(p)
