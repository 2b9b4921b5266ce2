"""A distinct unprivileged uid for every concurrent job (held by file locks across processes), so no job
can touch another's files.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import threading
from pathlib import Path

from .policy import SANDBOX_UID_BASE, SANDBOX_UID_SLOTS
from .host import cache_bases, disabled, safe_dir, uid_task_count


def _uid_range_mapped(first: int, count: int) -> bool:
    """Is every uid in [first, first+count) usable here (inside this process's user namespace)?"""
    try:
        with open("/proc/self/uid_map") as fh:
            ranges = [tuple(int(x) for x in line.split()) for line in fh if line.strip()]
    except OSError:
        return sys.platform.startswith("linux") is False
    return any(inside <= first and first + count <= inside + length for inside, _out, length in ranges)


@dataclasses.dataclass
class UidSlot:
    """One held uid: the lock file's descriptor keeps it ours until released."""

    uid: int
    fd: int


class UidPool:
    """Hands out uids SANDBOX_UID_BASE + 0..SANDBOX_UID_SLOTS-1, one per running job.

    A slot is held with an exclusive ``flock`` on a lock file in a root-owned directory, so jobs of
    other rustcoder processes on the machine get other uids too; a uid that still owns a process
    (a job of a killed evaluation) is skipped. The lock dies with its holder, so nothing goes stale.
    """

    def __init__(self, base: int, slots: int, lock_dir: Path):
        self.base, self.slots, self.lock_dir = base, slots, lock_dir
        self._next: int | None = None
        self._lock = threading.Lock()

    def acquire(self) -> UidSlot:
        """A uid no other running job holds; raises OSError when all are busy."""
        import fcntl

        with self._lock:
            if self._next is None:  # processes start at different slots: fewer lock collisions
                self._next = int.from_bytes(os.urandom(2), "little") % self.slots
            start = self._next
            self._next = (self._next + 1) % self.slots
        for i in range(self.slots):
            slot = (start + i) % self.slots
            uid = self.base + slot
            fd = os.open(self.lock_dir / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if uid_task_count(uid):
                os.close(fd)
                continue
            return UidSlot(uid, fd)
        raise OSError(f"all {self.slots} sandbox uids ({self.base}..{self.base + self.slots - 1}) are busy")

    @staticmethod
    def release(slot: UidSlot) -> None:
        """Hand the uid back (idempotent)."""
        if slot.fd < 0:
            return
        fd, slot.fd = slot.fd, -1
        os.close(fd)  # closing drops the flock


def make_uid_pool(notes: list[str]) -> UidPool | None:
    """The pool of per-job uids, or None (with the reason appended to ``notes``) where there cannot be one."""
    if "per-job-uid" in disabled():
        return None
    # read at set-up time, so a re-probe sees a changed environment (tests force uid reuse with few slots)
    first = int(os.environ.get("RUSTCODER_SANDBOX_UID_BASE", SANDBOX_UID_BASE))
    slots = max(1, int(os.environ.get("RUSTCODER_SANDBOX_UID_SLOTS", SANDBOX_UID_SLOTS)))
    if not _uid_range_mapped(first, slots):
        notes.append(f"uids {first}..{first + slots - 1} are not "
                     "usable here (user namespace mapping): all jobs share uid 65534; set "
                     "RUSTCODER_SANDBOX_UID_BASE to a free mapped range")
        return None
    errors = []
    for base in cache_bases():
        lock_dir = base / "uid-locks"
        try:
            safe_dir(base)
            lock_dir.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(lock_dir)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise PermissionError(f"{lock_dir} is not a 0700 directory owned by uid {os.geteuid()}")
            return UidPool(first, slots, lock_dir)
        except OSError as exc:
            errors.append(f"{lock_dir}: {exc}")
    notes.append("no directory for per-job uid locks (" + "; ".join(errors) + "): all jobs share uid 65534")
    return None
