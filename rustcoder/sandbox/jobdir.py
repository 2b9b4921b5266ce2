"""A job's directory from birth to removal: the per-process parent directory, a fresh private directory per
job owned by the job's uid, the job's paths as the job sees them, and a removal that never fails on what a
job leaves behind.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import errno
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
    tmpfs: bool = False  # workdir is the job's own size- and inode-capped tmpfs

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
    """Per-process parent of the work dirs: root-owned 0711, so nobody cannot list siblings.

    Its name carries this process's pid, so a later process can clear what a killed one left mounted.
    """
    sweep_stale_runs()
    root = tempfile.mkdtemp(prefix=f"rustcoder-sandbox-{os.getpid()}-")
    os.chmod(root, 0o711 if os.geteuid() == 0 else 0o700)
    atexit.register(_remove_at_exit, root)
    return root


def _remove_at_exit(root: str) -> None:
    remove_tree(root)


def create_job(runs_root: str, uid_pool: UidPool | None, uid: int, gid: int, *, chown: bool,
               mounts: bool, quota: tuple[int, int] | None = None) -> Job:
    """A fresh 0700 work dir owned by a uid no other running job has (where uids can be changed).

    With ``quota`` (bytes, inodes) the directory is a tmpfs of that size: what the job writes there is
    capped, never reaches the host's disk, and disappears in one unmount however the job left it.
    """
    slot = uid_pool.acquire() if uid_pool else None
    workdir = None
    try:
        if slot:
            uid = gid = slot.uid
        workdir = tempfile.mkdtemp(prefix="run-", dir=runs_root)
        job = Job(workdir=workdir, uid=uid, gid=gid, slot=slot, mounts=mounts)
        if quota:
            mount_tmpfs(workdir, size=quota[0], inodes=quota[1], mode=0o700, uid=uid, gid=gid)
            job.tmpfs = True
        elif chown:
            os.chown(workdir, uid, gid)
        os.chmod(workdir, 0o700)
    except BaseException:
        if workdir:
            remove_tree(workdir)
        if slot:
            UidPool.release(slot)
        raise
    return job


JOB_REMOVE_SECONDS = 20.0  # a job's cleanup holds up its caller at most this long; the rest goes on behind


def release_job(job: Job) -> str | None:
    """Remove the job's directory and hand its uid back; never raises. Returns why cleanup was incomplete.

    A tree too big to remove in JOB_REMOVE_SECONDS (only possible without the job's own tmpfs, on a slow
    disk) is moved aside and removed by a background thread, so one answer cannot stall a batch.
    """
    try:
        if job.tmpfs:
            unmount(job.workdir)
        why = remove_tree(job.workdir, JOB_REMOVE_SECONDS)
        if why and os.path.lexists(job.workdir):
            aside = os.path.join(os.path.dirname(job.workdir), "trash-" + os.path.basename(job.workdir))
            try:
                os.rename(job.workdir, aside)
            except OSError:
                return why
            import threading

            threading.Thread(target=remove_tree, args=(aside, 3600.0), daemon=True,
                             name="rustcoder-sandbox-cleanup").start()
            return None
        return why
    finally:
        if job.slot:
            UidPool.release(job.slot)


_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(path: str, *, size: int, inodes: int, mode: int, uid: int, gid: int) -> None:
    """Mount a fresh tmpfs of ``size`` bytes and ``inodes`` inodes at ``path`` (root only); raises OSError."""
    import ctypes

    data = f"size={size},nr_inodes={inodes},mode={mode:o},uid={uid},gid={gid}".encode()
    if _libc().mount(b"rustcoder-job", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs at {path}: {os.strerror(err)}")


def unmount(path: str) -> None:
    """Detach the mount at ``path`` (its tmpfs is freed once nothing uses it); never raises."""
    try:
        _libc().umount2(path.encode(), _MNT_DETACH)
    except OSError:
        pass


def sweep_stale_runs() -> None:
    """Unmount and remove what rustcoder processes that no longer exist left in the temp directory; never raises."""
    try:
        parent = os.path.realpath(tempfile.gettempdir())
        prefix = os.path.join(parent, "rustcoder-sandbox-")
        with open("/proc/self/mountinfo") as fh:
            points = [line.split()[4] for line in fh]
        stale = set()
        for name in os.listdir(parent):
            pid = name[len("rustcoder-sandbox-"):].split("-")[0] if name.startswith("rustcoder-sandbox-") else ""
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                stale.add(os.path.join(parent, name))
        for point in sorted(points, key=len, reverse=True):
            point = point.encode().decode("unicode_escape")
            if point.startswith(prefix) and any(point.startswith(s + "/") for s in stale):
                unmount(point)
        for path in stale:
            remove_tree(path)
    except Exception as exc:  # noqa: BLE001 - a sweep is best effort
        log.info("sandbox: sweeping stale run directories failed: %s", exc)


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
            with os.scandir(top) as listing:
                queue = collections.deque((e.name, e.is_dir(follow_symlinks=False)) for e in listing)
            if not queue:
                return
            while queue:  # names moved up from below join the queue: no re-listing per level
                if time.monotonic() > deadline:
                    raise TimeoutError("still removing at its deadline")
                name, is_dir = queue.popleft()
                try:
                    if not is_dir:
                        os.unlink(name, dir_fd=top)
                        continue
                    sub = _open_dir(name, top)
                except FileNotFoundError:  # removed meanwhile by someone else: done
                    continue
                try:
                    with os.scandir(sub) as listing:
                        children = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
                    if children:
                        os.fchmod(sub, 0o700)  # a 0500 directory: its entries can be removed (not root)
                    for child, child_is_dir in children:
                        if not child_is_dir:
                            os.unlink(child, dir_fd=sub)
                            continue
                        while True:  # up into the top directory, under a name nobody uses
                            moved += 1
                            target = f".rustcoder-rm-{moved}"
                            try:
                                os.rename(child, target, src_dir_fd=sub, dst_dir_fd=top)
                                break
                            except OSError as exc:
                                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                                    raise
                        queue.append((target, True))
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
