"""The pieces every part of the sandbox shares: the toolchain, the per-process set-up, a job, which
protections are switched off, and the cache directories.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

from .policy import SANDBOX_JOB_DIR, _SAFE_PATH, log

if TYPE_CHECKING:  # pragma: no cover - annotations only (uids imports state)
    from .uids import _UidPool, _UidSlot


def _disabled() -> set[str]:
    """Protections switched off via RUSTCODER_SANDBOX_DISABLE (to test/simulate degraded hosts)."""
    raw = os.environ.get("RUSTCODER_SANDBOX_DISABLE", "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def _which(name: str) -> str | None:
    if name in _disabled():
        return None
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SAFE_PATH)


def _run_quiet(argv: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, **kwargs
    )


@dataclasses.dataclass
class _Toolchain:
    launcher: str  # what the user runs (maybe the rustup proxy)
    sysroot: str
    real_rustc: str  # the compiler binary inside the sysroot (bypasses rustup and its env)
    version: str
    host: str
    commit: str


@dataclasses.dataclass
class _Setup:
    toolchain: _Toolchain
    compiler: str  # the rustc binary actually executed inside the sandbox (a path in its view)
    sysroot_mirror: str | None
    euid: int
    drop: str  # "setpriv" | "popen" | "none" (not root) | "allow-root"
    sandbox_uid: int  # the uid of a job when per-job uids are unavailable
    uid_pool: "_UidPool | None"  # per-job uids (root only)
    unshare: list[str]  # unshare argv prefix (empty when unavailable)
    namespaces: list[str]  # isolation tags provided by `unshare`
    mount_script: str | None  # the shell script that builds the job's root (mount namespace)
    sysroot_bind: str | None  # host sysroot bound read-only at SANDBOX_SYSROOT
    rlimits: str  # "prlimit" | "preexec"
    rlimits_unsupported: list[str]  # resources this OS refuses to limit (preexec mode only)
    setpriv: str | None
    prlimit: str | None
    linker: str | None
    pidfd: bool
    isolation: list[str]
    warnings: list[str]
    error: str | None  # set when the sandbox refuses to run anything
    runs_root: str
    setup_seconds: float

    @property
    def mounts(self) -> bool:
        """True when each job gets its own root (mount namespace)."""
        return self.mount_script is not None


@dataclasses.dataclass
class _Job:
    """One sandboxed job: its host directory, the paths as the job sees them, and its uid."""

    workdir: str
    uid: int
    gid: int
    slot: "_UidSlot | None" = None

    def inside(self, setup: _Setup, path: str) -> str:
        """``path`` (under workdir) as the job sees it."""
        if setup.mounts and path.startswith(self.workdir):
            return SANDBOX_JOB_DIR + path[len(self.workdir):]
        return path

    def home(self, setup: _Setup) -> str:
        return SANDBOX_JOB_DIR if setup.mounts else self.workdir

    def tmp(self, setup: _Setup) -> str:
        return "/tmp" if setup.mounts else self.workdir


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(f"rustcoder sandbox: {message}", RuntimeWarning, stacklevel=3)
        log.warning("sandbox: %s", message)


def _cache_bases() -> list[Path]:
    bases = []
    if os.environ.get("RUSTCODER_SYSROOT_CACHE"):
        bases.append(Path(os.environ["RUSTCODER_SYSROOT_CACHE"]))
    bases.append(Path("/var/cache/rustcoder"))
    bases.append(Path(tempfile.gettempdir()) / f"rustcoder-sysroot-{os.geteuid()}")
    return bases


def _safe_dir(path: Path) -> None:
    """Create ``path`` (0755) or check an existing one is ours and not writable by others."""
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"{path} is not a directory owned by uid {os.geteuid()} and "
                              "closed to writes by others")
    os.chmod(path, 0o755)


def _uid_task_count(uid: int) -> int:
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
