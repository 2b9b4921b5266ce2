"""Each job's root filesystem: a prebuilt skeleton and the fstab that fills it, mounted read-only in the job's
own mount namespace by a small script that then drops to the job's uid.
"""

from __future__ import annotations

import os
from pathlib import Path

from .policy import SANDBOX_JOB_DIR, SETUP_FAILED_MARKER

_TMPFS_SIZE = "32m"  # each of the job's private /tmp and /dev/shm


_TMPFS_INODES = 4096  # files + directories in each of them: an inode flood costs kernel memory, not disk


JOB_DIR_VAR = "RUSTCODER_JOB_DIR"  # the job's host directory, handed to the job-root script in its environment


SCRIPT_VAR = "RUSTCODER_JOB_SCRIPT"  # the script itself: neither shows in the job's /proc/1/cmdline


JOB_HOSTNAME = "sandbox"  # the job's own UTS namespace: the host's name is not visible


# Host-wide /proc files a job's own /proc still shows (the host's boot line, other uids' keys, disks, kernel
# symbols, boot id, the load of everyone's jobs): /dev/null is bound over those this kernel has, as runc does.
PROC_MASKS = ("cmdline", "keys", "key-users", "diskstats", "partitions", "kallsyms", "modules", "timer_list",
              "sched_debug", "latency_stats", "loadavg", "sys/kernel/random/boot_id")


def _install_root() -> str:
    """Where rustcoder itself is installed (hidden from jobs when it is under /usr)."""
    return str(Path(__file__).resolve().parents[2])  # rustcoder/sandbox/root.py -> the directory holding rustcoder


def _fstab_path(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def build_root(runs_root: str, sysroot: str, linker: str | None, setpriv: str,
               attempt: int) -> tuple[str, str, str]:
    """The skeleton of a job's root and the fstab that fills it; returns (mount point, skeleton, fstab path).

    Built once per process (root-owned, read-only to others) and copied into a small tmpfs per job (so the
    job's mountinfo shows no host path for its root): empty mount points, the usual
    symlinks (``/bin -> usr/bin`` ...), and an fstab of what is mounted there inside each job's
    mount namespace: read-only /usr, the loader cache, /etc/alternatives (Debian's ``cc``) and the
    toolchain's sysroot; a private /proc (host-wide files in it masked: ``PROC_MASKS``), /tmp and /dev/shm;
    /dev/null, zero, full, random, urandom.
    World-readable data under /usr that compiling does not need (/usr/local, rustcoder's own
    install when it lives under /usr) is covered by an empty tmpfs. Nothing else of the host exists.
    """
    mount_point = os.path.join(runs_root, f"root-{attempt}")
    os.mkdir(mount_point, 0o755)
    root = os.path.join(runs_root, f"skeleton-{attempt}")  # built here, mounted at mount_point
    os.mkdir(root, 0o755)
    for d in ("usr", "etc", "proc", "dev", "dev/shm", "tmp", "job", "sysroot", ".old"):
        os.makedirs(os.path.join(root, d), mode=0o755, exist_ok=True)
    entries = [("/usr", f"{root}/usr", "none", "bind,ro,nosuid,nodev")]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            os.symlink(os.readlink(host), os.path.join(root, name))
        elif os.path.isdir(host):
            os.mkdir(os.path.join(root, name), 0o755)
            entries.append((host, f"{root}/{name}", "none", "bind,ro,nosuid,nodev"))
    for host in ("/etc/ld.so.cache", "/etc/ld.so.conf"):
        if os.path.isfile(host):
            Path(root + host).touch(0o644)
            entries.append((host, root + host, "none", "bind,ro,nosuid,nodev"))
    if os.path.isdir("/etc/alternatives"):  # Debian: cc -> /etc/alternatives/cc -> gcc
        os.mkdir(f"{root}/etc/alternatives", 0o755)
        entries.append(("/etc/alternatives", f"{root}/etc/alternatives", "none", "bind,ro,nosuid,nodev"))
    masks = []
    if os.path.isdir("/usr/local") and not any((p or "").startswith("/usr/local/") for p in (linker, setpriv)):
        masks.append("/usr/local")
    install = _install_root()
    if install.startswith("/usr/") and os.path.isdir(install):
        masks.append(install)
    for path in masks:
        entries.append(("rustcoder-mask", root + path, "tmpfs", "size=4k,mode=0755,nosuid,nodev"))
    entries += [
        (sysroot, f"{root}/sysroot", "none", "bind,ro,nosuid,nodev"),
        ("proc", f"{root}/proc", "proc", "nosuid,nodev,noexec"),
        ("rustcoder-tmp", f"{root}/tmp", "tmpfs",
         f"mode=1777,size={_TMPFS_SIZE},nr_inodes={_TMPFS_INODES},nosuid,nodev"),
        ("rustcoder-shm", f"{root}/dev/shm", "tmpfs",
         f"mode=1777,size={_TMPFS_SIZE},nr_inodes={_TMPFS_INODES},nosuid,nodev"),
    ]
    for name in PROC_MASKS:
        if os.path.isfile(f"/proc/{name}"):
            entries.append(("/dev/null", f"{root}/proc/{name}", "none", "bind,ro,nosuid,noexec"))
    for dev in ("null", "zero", "full", "random", "urandom"):
        Path(f"{root}/dev/{dev}").touch(0o644)
        entries.append((f"/dev/{dev}", f"{root}/dev/{dev}", "none", "bind,nosuid,noexec"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    fstab = os.path.join(runs_root, f"fstab-{attempt}")
    with open(fstab, "w") as fh:
        for src, dst, fstype, opts in entries:
            dst = mount_point + dst[len(root):]  # the fstab fills the per-job copy
            fh.write(f"{_fstab_path(src)} {_fstab_path(dst)} {fstype} {opts} 0 0\n")
    os.chmod(fstab, 0o644)
    return mount_point, root, fstab


def job_root_script(root: str, skeleton: str, fstab: str, setpriv: str, tools: dict[str, str]) -> str:
    """The script that runs as the PID namespace's init (root, but only inside fresh
    mount/pid/net/ipc namespaces): it mounts a small tmpfs at ``root`` and copies the skeleton in, mounts
    the rest from ``fstab`` (one ``mount -a``), binds the job's directory at /job, makes the root
    read-only, pivots into it, detaches the host's tree, names its UTS namespace ``JOB_HOSTNAME``, drops to
    the job's uid and runs the command as its child.

    Run as ``sh -c 'eval "$RUSTCODER_JOB_SCRIPT"' rustcoder-job UID GID COMMAND...`` with the job's host
    directory in $RUSTCODER_JOB_DIR: the job's /proc/1/cmdline shows no host path, and both variables are
    unset before the command runs. Exits 125 with a marker line if a step fails.
    A shell script (about 20 ms) because util-linux has every step as a command; bubblewrap would
    be a dependency a base Debian does not have.
    """
    q = _sh_quote
    mount, umount, pivot_root, cp = (q(tools[t]) for t in ("mount", "umount", "pivot_root", "cp"))
    steps = [
        f"{mount} -t tmpfs -o size=1m,nr_inodes=1024,mode=0755,nosuid,nodev rustcoder-root {q(root)}",
        f"{cp} -a {q(skeleton + '/.')} {q(root)}",
        f"{mount} -a -T {q(fstab)}",
        f'{mount} -o bind,nosuid,nodev "${JOB_DIR_VAR}" {q(root + SANDBOX_JOB_DIR)}',
        f"{mount} -o remount,bind,ro,nosuid,nodev {q(root)}",
        f"cd {q(root)}",
        f"{pivot_root} . .old",
        f"{umount} -l /.old",
        f"cd {SANDBOX_JOB_DIR}",
        f"echo {JOB_HOSTNAME} > /proc/sys/kernel/hostname",  # a UTS namespace of its own (unshare --uts)
        "echo '(none)' > /proc/sys/kernel/domainname",
    ]
    return (
        "{ " + " &&\n  ".join(steps) + "\n} || { echo " + q(SETUP_FAILED_MARKER) + " >&2; exit 125; }\n"
        f'unset {JOB_DIR_VAR} {SCRIPT_VAR} OLDPWD\n'
        'uid="$1"; gid="$2"; shift 2\n'
        f'{q(setpriv)} --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs -- "$@"\n'
        "exit $?\n"
    )


def _sh_quote(text: str) -> str:
    """Single-quote ``text`` for /bin/sh."""
    import shlex

    return shlex.quote(text)
