"""What the host offers the sandbox: its tools on a safe PATH, protections switched off for testing, cache
directories root can trust, how many tasks a uid runs, and one-time warnings about what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

from .policy import SAFE_PATH, log


def disabled() -> set[str]:
    """Protections switched off via RUSTCODER_SANDBOX_DISABLE (to test/simulate degraded hosts)."""
    raw = os.environ.get("RUSTCODER_SANDBOX_DISABLE", "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def which(name: str) -> str | None:
    """Path of the host tool ``name`` (on PATH or the safe PATH), or None when missing or disabled."""
    if name in disabled():
        return None
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + SAFE_PATH)


def run_quiet(argv: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run a short host command with no stdin, capturing its text output."""
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, **kwargs
    )


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A RuntimeWarning (and a log line) the first time ``message`` comes up in this process."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(f"rustcoder sandbox: {message}", RuntimeWarning, stacklevel=3)
        log.warning("sandbox: %s", message)


def forget_warnings() -> None:
    """Let every warning be given again (after the set-up is re-probed)."""
    _WARNED.clear()


def cache_bases() -> list[Path]:
    """Candidate directories for the sysroot mirror and the uid locks, best first."""
    bases = []
    if os.environ.get("RUSTCODER_SYSROOT_CACHE"):
        bases.append(Path(os.environ["RUSTCODER_SYSROOT_CACHE"]))
    bases.append(Path("/var/cache/rustcoder"))
    bases.append(Path(tempfile.gettempdir()) / f"rustcoder-sysroot-{os.geteuid()}")
    return bases


def safe_dir(path: Path) -> None:
    """Create ``path`` (0755) or check an existing one is ours and not writable by others."""
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"{path} is not a directory owned by uid {os.geteuid()} and "
                              "closed to writes by others")
    os.chmod(path, 0o755)


def uid_task_count(uid: int) -> int:
    """Tasks (processes + threads) currently owned by ``uid``: RLIMIT_NPROC counts them all."""
    total = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                data = fh.read(2048)
        except OSError:
            continue
        uid_line = re.search(rb"^Uid:\s+(\d+)", data, re.MULTILINE)
        if uid_line and int(uid_line.group(1)) == uid:
            threads = re.search(rb"^Threads:\s+(\d+)", data, re.MULTILINE)
            total += int(threads.group(1)) if threads else 1
    return total
