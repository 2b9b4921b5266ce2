"""A job's directory from birth to removal: the per-process parent directory, a fresh private directory per
job owned by the job's uid, the job's paths as the job sees them, and a removal that never fails on what a
job leaves behind.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import stat
import tempfile
import time

from .policy import SANDBOX_JOB_DIR, log
from .uids import UidPool, UidSlot


@dataclasses.dataclass
class Job:
    """One sandboxed job: its host directory, the paths as the job sees them, and its uid."""

    workdir: str
    uid: int
    gid: int
    slot: UidSlot | None = None
    mounts: bool = False  # the job runs in its own root, where workdir is SANDBOX_JOB_DIR

    def inside(self, path: str) -> str:
        """``path`` (under workdir) as the job sees it."""
        if self.mounts and path.startswith(self.workdir):
            return SANDBOX_JOB_DIR + path[len(self.workdir):]
        return path

    def home(self) -> str:
        """The job's HOME as the job sees it."""
        return SANDBOX_JOB_DIR if self.mounts else self.workdir

    def tmp(self) -> str:
        """The job's TMPDIR as the job sees it."""
        return "/tmp" if self.mounts else self.workdir


def make_runs_root() -> str:
    """Per-process parent of the work dirs: root-owned 0711, so nobody cannot list siblings."""
    root = tempfile.mkdtemp(prefix="rustcoder-sandbox-")
    os.chmod(root, 0o711 if os.geteuid() == 0 else 0o700)
    atexit.register(remove_tree, root)
    return root


def create_job(runs_root: str, uid_pool: UidPool | None, uid: int, gid: int, *, chown: bool,
               mounts: bool) -> Job:
    """A fresh 0700 work dir owned by a uid no other running job has (where uids can be changed)."""
    slot = uid_pool.acquire() if uid_pool else None
    try:
        if slot:
            uid = gid = slot.uid
        workdir = tempfile.mkdtemp(prefix="run-", dir=runs_root)
        if chown:
            os.chown(workdir, uid, gid)
        os.chmod(workdir, 0o700)
    except BaseException:
        if slot:
            UidPool.release(slot)
        raise
    return Job(workdir=workdir, uid=uid, gid=gid, slot=slot, mounts=mounts)


def release_job(job: Job) -> str | None:
    """Remove the job's directory and hand its uid back; never raises. Returns why cleanup was incomplete."""
    try:
        return remove_tree(job.workdir)
    finally:
        if job.slot:
            UidPool.release(job.slot)


REMOVE_SECONDS = 60.0  # removal gives up (and says so) after this long: a job cannot stall the caller forever


def remove_tree(path: str, deadline_seconds: float = REMOVE_SECONDS) -> str | None:
    """Remove ``path`` and everything under it; never raises. Returns None, or why something is left.

    Hand-written because ``shutil.rmtree`` recurses (a 1,200-deep chain raises RecursionError) and keeps one
    descriptor per level (a 100,000-deep chain runs out of them). Here no recursion and at most three open
    descriptors: every subdirectory's subdirectories are renamed up into ``path`` itself, so the tree
    flattens as it empties. Symlinks are removed, never followed; directories a job made unreadable (mode
    000, 0500) are opened up first.
    """
    deadline = time.monotonic() + deadline_seconds
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return None
        _empty_flat(path, deadline)
        os.rmdir(path)
        return None
    except Exception as exc:  # noqa: BLE001 - cleanup must not break the caller
        log.warning("sandbox: could not remove %s: %s", path, exc)
        return f"could not remove the job's directory: {type(exc).__name__}: {exc}"


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except PermissionError:  # mode 000 (only matters when not root): open it up, then retry
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=True)  # an lstat said it is a directory
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)


def _empty_flat(path: str, deadline: float) -> None:
    top = _open_dir(path, None)
    try:
        os.fchmod(top, 0o700)
        moved = 0
        while True:
            names = os.listdir(top)
            if not names:
                return
            for name in names:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"still removing after {REMOVE_SECONDS:g}s")
                st = os.lstat(name, dir_fd=top)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=top)
                    continue
                try:
                    os.rmdir(name, dir_fd=top)
                    continue
                except OSError:
                    pass
                sub = _open_dir(name, top)
                try:
                    os.fchmod(sub, 0o700)
                    for child in os.listdir(sub):
                        if stat.S_ISDIR(os.lstat(child, dir_fd=sub).st_mode):
                            while True:  # up into the top directory, under a name nobody uses
                                moved += 1
                                try:
                                    os.rename(child, f".rustcoder-rm-{moved}", src_dir_fd=sub, dst_dir_fd=top)
                                    break
                                except (FileExistsError, IsADirectoryError, NotADirectoryError, OSError) as exc:
                                    if getattr(exc, "errno", None) not in (17, 20, 21, 39):  # EEXIST ENOTDIR EISDIR ENOTEMPTY
                                        raise
                        else:
                            os.unlink(child, dir_fd=sub)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
