"""What a job's first process does to itself before it execs the exec chain: join the job's cgroup, take a
fresh session keyring of its own, and install a seccomp filter that every later process of the job inherits.

The filter (compiled once per process with libseccomp through ``pyseccomp``) refuses what a correct answer never
needs and what reaches past the job's namespaces: the kernel keyring (``add_key``, ``request_key``, ``keyctl``:
user keyrings are per uid and outlive the job), every socket family but AF_UNIX, AF_INET and AF_INET6 (an allow-
list: AF_NETLINK queues kernel memory that no cgroup counts, AF_PACKET and AF_VSOCK reach past the namespaces),
file locks (``flock`` and fcntl record locks on shared read-only files are a channel between concurrent jobs),
inotify/fanotify/dnotify and leases (watching shared files is another), io_uring (it creates sockets without the
``socket`` call), and ``bpf``/``perf_event_open``. New namespaces: a user namespace would make the job root of its
own namespaces, with CAP_NET_RAW for AF_PACKET rings whose kernel memory no cgroup counts, so ``unshare``/``clone``
with a CLONE_NEW* flag the exec chain itself does not use are refused (EPERM), ``clone3`` (whose flags sit in
memory a filter cannot read) is ENOSYS so that glibc falls back to ``clone``, and ``setns`` is refused (AF_PACKET
is outside the socket allow-list as a second line). The page cache of the shared read-only files: evicting
(``fadvise64``, ``madvise`` COLD/PAGEOUT) and probing it (``mincore``, ``cachestat``, ``preadv2``/``pwritev2`` with
RWF_NOWAIT, ``readahead``) would be a channel between concurrent jobs. Without pyseccomp or libseccomp there is no
filter (no ``syscall-filter`` tag) and the session keyring is still fresh per job (``private-keyring``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile

from .policy import log

AF_UNIX, AF_INET, AF_INET6, AF_PACKET, AF_NETLINK, AF_VSOCK = 1, 2, 10, 17, 16, 40
# Socket families a job may create; every other one is EAFNOSUPPORT. AF_UNIX: std's pipes-free IPC, glibc (nscd,
# syslog) and tests that use UnixStream. AF_INET/AF_INET6: a correct answer may use std::net (a test binding
# 127.0.0.1:0); inside the job's empty network namespace (loopback down) no packet is ever delivered, so their
# queues stay empty, and calls fail with the usual errors (ENETUNREACH, EADDRNOTAVAIL) rather than a surprising
# EAFNOSUPPORT. The rest reach past what a network namespace or the memory cgroup covers: AF_NETLINK receive
# queues (kernel memory no cgroup counts, F4b), AF_PACKET rings, AF_VSOCK (not namespaced), AF_ALG, AF_KEY, AF_XDP.
ALLOWED_FAMILIES = (AF_UNIX, AF_INET, AF_INET6)
_FAMILY_CEILING = 64  # above AF_MAX (46 in Linux 6.x): every family number the kernel knows is below it

# CLONE_NEW* flags, and the `unshare` options of the exec chain that use them
CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x80, 0x20000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
_NS_OPTIONS = {"--mount": CLONE_NEWNS, "--uts": CLONE_NEWUTS, "--ipc": CLONE_NEWIPC, "--net": CLONE_NEWNET,
               "--pid": CLONE_NEWPID, "--user": CLONE_NEWUSER, "--map-root-user": CLONE_NEWUSER,
               "--map-current-user": CLONE_NEWUSER, "--cgroup": CLONE_NEWCGROUP, "--time": CLONE_NEWTIME}
_ALL_NS = (CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
           CLONE_NEWNET)
RWF_NOWAIT = 0x8
_MADV_EVICT = (20, 21)  # MADV_COLD, MADV_PAGEOUT

_DENIED = {  # syscall -> errno; documented in docs/sandbox.md
    "add_key": errno.EPERM,
    "request_key": errno.EPERM,
    "keyctl": errno.EPERM,
    "flock": errno.ENOLCK,
    "inotify_init": errno.ENOSYS,
    "inotify_init1": errno.ENOSYS,
    "fanotify_init": errno.EPERM,
    "io_uring_setup": errno.ENOSYS,
    "io_uring_enter": errno.ENOSYS,
    "io_uring_register": errno.ENOSYS,
    "bpf": errno.EPERM,
    "perf_event_open": errno.EPERM,
    "clone3": errno.ENOSYS,  # glibc then uses clone, whose flags the filter reads
    "setns": errno.EPERM,
    "fadvise64": errno.EPERM,
    "readahead": errno.EPERM,
    "mincore": errno.ENOSYS,
    "cachestat": errno.ENOSYS,
}


def chain_namespaces(unshare_argv: list[str]) -> int:
    """The CLONE_NEW* flags the exec chain's own ``unshare`` needs (the filter is in place before it runs)."""
    flags = 0
    for arg in unshare_argv:
        flags |= _NS_OPTIONS.get(arg, 0)
    return flags

_FCNTL_LOCKS = (5, 6, 7, 36, 37, 38)  # F_GETLK F_SETLK F_SETLKW F_OFD_GETLK F_OFD_SETLK F_OFD_SETLKW
_FCNTL_WATCHES = (1024, 1026)  # F_SETLEASE, F_NOTIFY (dnotify: inotify's older twin on shared directories)


def build_filter(notes: list[str], chain_flags: int = 0) -> bytes | None:
    """The job's seccomp filter as a BPF program, or None (with the reason in ``notes``).

    ``chain_flags``: the CLONE_NEW* flags the exec chain's ``unshare`` uses (``chain_namespaces``); every other
    namespace flag is refused. Those it uses stay allowed, which holds jobs back only where the job cannot
    create them anyway: without a user namespace they need CAP_SYS_ADMIN, which a job run as root never keeps
    (a chain that needs a user namespace itself, as a non-root evaluator, leaves them open: documented)."""
    if "syscall-filter" in os.environ.get("RUSTCODER_SANDBOX_DISABLE", ""):
        notes.append("syscall filter disabled: jobs may use vsock, keyrings, file locks and inotify")
        return None
    try:
        import pyseccomp as sc
    except Exception as exc:  # noqa: BLE001 - a missing or broken libseccomp is a degraded host, not an error
        notes.append(f"no seccomp filter ({type(exc).__name__}: {exc}; `pip install pyseccomp` and the "
                     "libseccomp2 system package): jobs may use vsock, keyrings, file locks and inotify")
        return None
    try:
        flt = sc.SyscallFilter(sc.ALLOW)
        for call in ("socket", "socketpair"):
            # an allow-list: every family below _FAMILY_CEILING but AF_UNIX/AF_INET/AF_INET6 is refused, and so
            # is anything at or above it (compared on all 64 bits: a family with high bits set, which the kernel
            # truncates to an int, is >= the ceiling and refused too)
            for family in range(_FAMILY_CEILING):
                if family not in ALLOWED_FAMILIES:
                    flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.EQ, family))
            flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.GE, _FAMILY_CEILING))
        for flag in _ALL_NS:
            if flag & chain_flags:
                continue
            flt.add_rule(sc.ERRNO(errno.EPERM), "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
            if flag != CLONE_NEWTIME:  # in clone's flags that bit is part of the exit signal
                flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        for call in ("preadv2", "pwritev2"):
            flt.add_rule(sc.ERRNO(errno.EINVAL), call, sc.Arg(5, sc.MASKED_EQ, RWF_NOWAIT, RWF_NOWAIT))
        for advice in _MADV_EVICT:
            flt.add_rule(sc.ERRNO(errno.EPERM), "madvise", sc.Arg(2, sc.EQ, advice))
        for call, err in _DENIED.items():
            try:
                flt.add_rule(sc.ERRNO(err), call)
            except (OSError, ValueError, RuntimeError):  # a syscall this architecture lacks
                pass
        for cmd in _FCNTL_LOCKS:
            flt.add_rule(sc.ERRNO(errno.ENOLCK), "fcntl", sc.Arg(1, sc.EQ, cmd))
        for cmd in _FCNTL_WATCHES:
            flt.add_rule(sc.ERRNO(errno.EPERM), "fcntl", sc.Arg(1, sc.EQ, cmd))
        with tempfile.TemporaryFile() as fh:
            flt.export_bpf(fh)
            fh.seek(0)
            program = fh.read()
    except Exception as exc:  # noqa: BLE001
        notes.append(f"no seccomp filter (libseccomp refused it: {exc})")
        return None
    return program


class Confinement:
    """A ``preexec_fn`` for the job's first process: cgroup, keyring, seccomp filter, then rlimits.

    Everything it needs is prepared in the parent; in the child it only makes system calls (the parent has
    threads, so the child must not take locks another thread may hold).
    """

    def __init__(self, *, cgroup_procs: list[str], filter_bpf: bytes | None, fresh_keyring: bool,
                 then=None):
        self.cgroup_procs = [p.encode() for p in cgroup_procs]
        self.fresh_keyring = fresh_keyring
        self.then = then
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._prog = None
        if filter_bpf:
            count = len(filter_bpf) // 8
            self._insns = ctypes.create_string_buffer(filter_bpf, len(filter_bpf))
            self._prog = _SockFprog(count, ctypes.cast(self._insns, ctypes.c_void_p))

    def __call__(self) -> None:
        pid = str(os.getpid()).encode()
        for path in self.cgroup_procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if self.fresh_keyring:
            # KEYCTL_JOIN_SESSION_KEYRING(NULL): a new anonymous session keyring, not the caller's
            if self._libc.syscall(_SYS_KEYCTL, 1, None) < 0:
                raise OSError(ctypes.get_errno(), "keyctl(JOIN_SESSION_KEYRING) failed")
        if self._prog is not None:
            if os.geteuid() != 0 and self._libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
                raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS) failed")
            if self._libc.prctl(22, 2, ctypes.byref(self._prog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
                raise OSError(ctypes.get_errno(), "seccomp filter refused")
        if self.then is not None:
            self.then()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}.get(os.uname().machine, -1)


def keyring_works() -> bool:
    """Can this process give a child a fresh session keyring (Linux with keyctl)?"""
    if _SYS_KEYCTL < 0 or "keyring" in os.environ.get("RUSTCODER_SANDBOX_DISABLE", ""):
        return False
    import subprocess

    probe = Confinement(cgroup_procs=[], filter_bpf=None, fresh_keyring=True)
    try:
        subprocess.run(["/bin/sh", "-c", "exit 0"], preexec_fn=probe, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("sandbox: no fresh session keyring per job: %s", exc)
        return False
    return True
