"""A control group per job: the total memory of the job's process tree (kernel memory such as socket buffers,
tmpfs pages and page tables included) and its number of tasks, bounded by the kernel; and everything left in
it killed when the job ends. Where the ``cpu`` controller can be had too, each job also gets a CPU group of its
own with the default share (v1 ``cpu.shares`` 1024, v2 ``cpu.weight`` 100): concurrent jobs then get equal CPU
time however many tasks each runs, without relying on the kernel's ``sched_autogroup`` (which only groups tasks
of the root CPU group). A machine without it loses only that (the ``cpu-share`` tag).

cgroup v2 is used where this process may give a child group the ``memory`` and ``pids`` controllers, the v1
``memory`` and ``pids`` hierarchies otherwise (v1 charges kernel memory to ``memory.usage_in_bytes``). Where
neither is writable (not root, a read-only /sys/fs/cgroup) there is no such group and the job's result lacks
the ``memory-cgroup`` and ``pids-cgroup`` tags.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import time

from .policy import log

_COUNTER = itertools.count()


def _mounts() -> dict[str, str]:
    """{"cgroup2": mount point, "memory": v1 mount point, "pids": v1 mount point} for what is mounted here."""
    found: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fstype, _source, options = (right.split() + ["", ""])[:3]
                point = left.split()[4]
                if fstype == "cgroup2":
                    found.setdefault("cgroup2", point)
                elif fstype == "cgroup":
                    for ctrl in ("memory", "pids", "cpu"):
                        if ctrl in options.split(","):
                            found.setdefault(ctrl, point)
    except OSError:
        pass
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller name, and "" for the v2 hierarchy."""
    paths: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _id, ctrls, path = line.rstrip("\n").split(":", 2)
                for ctrl in ctrls.split(",") if ctrls else [""]:
                    paths[ctrl] = path
    except OSError:
        pass
    return paths


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


@dataclasses.dataclass
class CgroupBase:
    """Where this process makes its jobs' groups: ``version`` 2 (one directory) or 1 (memory and pids)."""

    version: int
    memory: str  # parent directory of the jobs' memory groups (v2: of the jobs' groups)
    pids: str | None  # v1: parent directory of the jobs' pids groups (None: no pids limit)
    cpu: str | None = None  # parent directory of the jobs' CPU groups (v2: ``memory``; None: no CPU share)


def probe(notes: list[str]) -> CgroupBase | None:
    """The parent directories for per-job groups on this machine, or None (with the reason in ``notes``)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        notes.append("not root: no memory cgroup per job; memory is limited per process only (RLIMIT_AS)")
        return None
    mounts, own = _mounts(), _own_paths()
    errors = []
    if "cgroup2" in mounts:
        base = os.path.join(mounts["cgroup2"], own.get("", "/").lstrip("/"))
        try:
            with open(os.path.join(base, "cgroup.controllers")) as fh:
                available = fh.read().split()
            if not {"memory", "pids"} <= set(available):
                raise OSError(f"controllers here are {available or 'none'} (memory and pids are elsewhere)")
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            cpu = None
            if "cpu" in available:
                try:
                    _write(os.path.join(base, "cgroup.subtree_control"), "+cpu")
                    cpu = base
                except OSError as exc:
                    notes.append(f"no CPU group per job (cgroup v2 at {base}: {exc})")
            return _checked(CgroupBase(2, base, None, cpu))
        except OSError as exc:
            errors.append(f"cgroup v2 at {base}: {exc}")
    if "memory" in mounts:
        memory = os.path.join(mounts["memory"], own.get("memory", "/").lstrip("/"))
        pids = os.path.join(mounts["pids"], own.get("pids", "/").lstrip("/")) if "pids" in mounts else None
        cpu = os.path.join(mounts["cpu"], own.get("cpu", "/").lstrip("/")) if "cpu" in mounts else None
        try:
            return _checked(CgroupBase(1, memory, pids, _cpu_usable(CgroupBase(1, memory, pids, cpu), notes)))
        except OSError as exc:
            errors.append(f"cgroup v1 at {memory}: {exc}")
    notes.append("no memory cgroup per job (" + ("; ".join(errors) or "no cgroup hierarchy mounted")
                 + "): memory is limited per process only (RLIMIT_AS), not for the job's whole process tree")
    return None


def _cpu_usable(base: CgroupBase, notes: list[str]) -> str | None:
    """``base.cpu`` where a job's CPU group can be made there (v1), else None with the reason in ``notes``."""
    if not base.cpu:
        return None
    path = os.path.join(base.cpu, f"rustcoder-{os.getpid()}-probe")
    try:
        os.mkdir(path, 0o755)
        try:
            _write(os.path.join(path, "cpu.shares"), str(CPU_SHARES))
        finally:
            os.rmdir(path)
    except OSError as exc:
        notes.append(f"no CPU group per job (cgroup v1 at {base.cpu}: {exc})")
        return None
    return base.cpu


CPU_SHARES = 1024  # v1 default: every job the same share, whatever its number of tasks
CPU_WEIGHT = 100  # v2 default


def _checked(base: CgroupBase) -> CgroupBase:
    group = JobCgroup.create(base, memory_bytes=64 << 20, max_tasks=16)  # raises OSError when refused
    group.remove()
    _sweep_stale(base)
    return base


def _sweep_stale(base: CgroupBase) -> None:
    """Kill and remove the groups of rustcoder processes that no longer exist (an evaluator that was SIGKILLed)."""
    for parent in (base.memory, base.pids, base.cpu if base.version == 1 else None):
        if not parent:
            continue
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            pid = name.split("-")[1] if name.startswith("rustcoder-") and name.count("-") == 2 else ""
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                JobCgroup(base, [os.path.join(parent, name)]).remove(wait_seconds=0.5)


@dataclasses.dataclass
class JobCgroup:
    """One job's group(s): the directories, and the ``cgroup.procs`` files a new process joins through."""

    base: CgroupBase
    dirs: list[str]

    @classmethod
    def create(cls, base: CgroupBase, *, memory_bytes: int, max_tasks: int) -> "JobCgroup":
        """A new empty group with these limits; raises OSError when the kernel refuses."""
        name = f"rustcoder-{os.getpid()}-{next(_COUNTER)}"
        group = cls(base, [])
        try:
            if base.version == 2:
                path = os.path.join(base.memory, name)
                os.mkdir(path, 0o755)
                group.dirs.append(path)
            else:
                os.mkdir(os.path.join(base.memory, name), 0o755)
                group.dirs.append(os.path.join(base.memory, name))
                if base.pids:
                    os.mkdir(os.path.join(base.pids, name), 0o755)
                    group.dirs.append(os.path.join(base.pids, name))
                if base.cpu:
                    os.mkdir(os.path.join(base.cpu, name), 0o755)
                    group.dirs.append(os.path.join(base.cpu, name))
            if base.cpu:
                cpu_dir = group.dirs[-1]
                if base.version == 2:
                    _write(os.path.join(cpu_dir, "cpu.weight"), str(CPU_WEIGHT))
                else:
                    _write(os.path.join(cpu_dir, "cpu.shares"), str(CPU_SHARES))
            group.set_limits(memory_bytes=memory_bytes, max_tasks=max_tasks)
        except OSError:
            group.remove()
            raise
        return group

    def set_limits(self, *, memory_bytes: int, max_tasks: int) -> None:
        """(Re)set the group's memory ceiling (bytes, kernel memory included, no swap) and task count."""
        first = self.dirs[0]
        if self.base.version == 2:
            _write(os.path.join(first, "memory.max"), str(memory_bytes))
            if os.path.exists(os.path.join(first, "memory.swap.max")):
                _write(os.path.join(first, "memory.swap.max"), "0")
            _write(os.path.join(first, "pids.max"), str(max_tasks))
            return
        memsw = os.path.join(first, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)
        # v1 keeps memory.limit <= memsw.limit at every step: order the two writes accordingly
        current = int(open(os.path.join(first, "memory.limit_in_bytes")).read())
        order = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        if memory_bytes > current:
            order.reverse()
        for fname in order:
            if fname != "memory.memsw.limit_in_bytes" or has_memsw:
                _write(os.path.join(first, fname), str(memory_bytes))
        tcp = os.path.join(first, "memory.kmem.tcp.limit_in_bytes")
        if os.path.exists(tcp):  # v1 charges TCP buffers only once a TCP limit is set
            try:
                _write(tcp, str(memory_bytes))
            except OSError:
                pass
        if self.base.pids and len(self.dirs) > 1:
            _write(os.path.join(self.dirs[1], "pids.max"), str(max_tasks))

    def cpu_dir(self) -> str | None:
        """The job's CPU group (v2: its one directory), or None where there is none."""
        if not self.base.cpu or not self.dirs:
            return None
        return self.dirs[-1]

    def join_paths(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to join the group (before it execs)."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def peak_memory(self) -> int | None:
        """The most memory the group held at once (bytes), where the kernel reports it."""
        name = "memory.peak" if self.base.version == 2 else "memory.max_usage_in_bytes"
        try:
            with open(os.path.join(self.dirs[0], name)) as fh:
                return int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def out_of_memory(self) -> bool:
        """Did the kernel kill (or refuse) something of this group for want of memory?"""
        try:
            if self.base.version == 2:
                with open(os.path.join(self.dirs[0], "memory.events")) as fh:
                    events = dict(line.split() for line in fh if line.strip())
                return int(events.get("oom_kill", 0)) > 0 or int(events.get("max", 0)) > 0
            with open(os.path.join(self.dirs[0], "memory.failcnt")) as fh:
                return int(fh.read()) > 0
        except (OSError, ValueError):
            return False

    def kill_all(self) -> None:
        """SIGKILL every process still in the group (v2: ``cgroup.kill``)."""
        for d in self.dirs:
            if self.base.version == 2 and os.path.exists(os.path.join(d, "cgroup.kill")):
                try:
                    _write(os.path.join(d, "cgroup.kill"), "1")
                    continue
                except OSError:
                    pass
            try:
                with open(os.path.join(d, "cgroup.procs")) as fh:
                    pids = [int(p) for p in fh.read().split()]
            except (OSError, ValueError):
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def remove(self, wait_seconds: float = 2.0) -> str | None:
        """Kill what is left and remove the group; never raises. Returns why a directory is left, or None."""
        deadline = time.monotonic() + wait_seconds
        left = None
        for d in reversed(self.dirs):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY while dying tasks are still charged to it
                    if time.monotonic() > deadline:
                        left = f"cgroup {d} left behind: {exc}"
                        log.warning("sandbox: %s", left)
                        break
                    self.kill_all()
                    time.sleep(0.01)
        self.dirs = []
        return left
