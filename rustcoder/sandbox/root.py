"""Each job's root filesystem: a prebuilt skeleton mounted read-only in its own mount namespace, and the
toolchain's sysroot mirrored where an unprivileged uid can read it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .policy import SANDBOX_JOB_DIR, _SETUP_FAILED, _TMPFS_SIZE, log
from .state import _Toolchain, _cache_bases, _safe_dir


def _install_root() -> str:
    """Where rustcoder itself is installed (hidden from jobs when it is under /usr)."""
    return str(Path(__file__).resolve().parents[2])  # rustcoder/sandbox/root.py -> the directory holding rustcoder


def _fstab_path(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def _build_root(runs_root: str, sysroot: str, linker: str | None, setpriv: str, attempt: int) -> tuple[str, str]:
    """The skeleton of a job's root and the fstab that fills it; returns (root dir, fstab path).

    Built once per process (root-owned, read-only to others): empty mount points, the usual
    symlinks (``/bin -> usr/bin`` ...), and an fstab of what is mounted there inside each job's
    mount namespace: read-only /usr, the loader cache, /etc/alternatives (Debian's ``cc``) and the
    toolchain's sysroot; a private /proc, /tmp and /dev/shm; /dev/null, zero, full, random, urandom.
    World-readable data under /usr that compiling does not need (/usr/local, rustcoder's own
    install when it lives under /usr) is covered by an empty tmpfs. Nothing else of the host exists.
    """
    root = os.path.join(runs_root, f"root-{attempt}")
    os.mkdir(root, 0o755)
    for d in ("usr", "etc", "proc", "dev", "dev/shm", "tmp", "job", "sysroot", ".old"):
        os.makedirs(os.path.join(root, d), mode=0o755, exist_ok=True)
    entries = [(root, root, "none", "bind")]
    entries.append(("/usr", f"{root}/usr", "none", "bind,ro,nosuid,nodev"))
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
        ("rustcoder-tmp", f"{root}/tmp", "tmpfs", f"mode=1777,size={_TMPFS_SIZE},nosuid,nodev"),
        ("rustcoder-shm", f"{root}/dev/shm", "tmpfs", f"mode=1777,size={_TMPFS_SIZE},nosuid,nodev"),
    ]
    for dev in ("null", "zero", "full", "random", "urandom"):
        Path(f"{root}/dev/{dev}").touch(0o644)
        entries.append((f"/dev/{dev}", f"{root}/dev/{dev}", "none", "bind,nosuid,noexec"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    fstab = os.path.join(runs_root, f"fstab-{attempt}")
    with open(fstab, "w") as fh:
        for src, dst, fstype, opts in entries:
            fh.write(f"{_fstab_path(src)} {_fstab_path(dst)} {fstype} {opts} 0 0\n")
    os.chmod(fstab, 0o644)
    return root, fstab


def _mount_script(root: str, fstab: str, setpriv: str, tools: dict[str, str]) -> str:
    """The script that runs as the PID namespace's init (root, but only inside fresh
    mount/pid/net/ipc namespaces): it mounts the job's root from ``fstab`` (one ``mount -a``),
    binds the job's directory at /job, makes the root read-only, pivots into it, detaches the
    host's tree, drops to the job's uid and runs the command as its child.

    Arguments: HOST_JOB_DIR UID GID COMMAND...  Exits 125 with a marker line if a step fails.
    A shell script (about 20 ms) because util-linux has every step as a command; bubblewrap would
    be a dependency a base Debian does not have.
    """
    q = _sh_quote
    mount, umount, pivot_root = (q(tools[t]) for t in ("mount", "umount", "pivot_root"))
    steps = [
        f"{mount} -a -T {q(fstab)}",
        f'{mount} -o bind,nosuid,nodev "$1" {q(root + SANDBOX_JOB_DIR)}',
        f"{mount} -o remount,bind,ro,nosuid,nodev {q(root)}",
        f"cd {q(root)}",
        f"{pivot_root} . .old",
        f"{umount} -l /.old",
        f"cd {SANDBOX_JOB_DIR}",
    ]
    return (
        "{ " + " &&\n  ".join(steps) + "\n} || { echo " + q(_SETUP_FAILED) + " >&2; exit 125; }\n"
        'uid="$2"; gid="$3"; shift 3\n'
        f'{q(setpriv)} --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs -- "$@"\n'
        "exit $?\n"
    )


def _sh_quote(text: str) -> str:
    """Single-quote ``text`` for /bin/sh."""
    import shlex

    return shlex.quote(text)


def _mirror_sysroot(toolchain: _Toolchain) -> str:
    """World-readable mirror of the parts of the sysroot rustc needs; returns its path.

    Files are hard-linked when possible (same filesystem: instant, no extra disk) and copied
    otherwise. The mirror lives in a root-owned, world-readable, not world-writable directory,
    keyed by toolchain version and binary identity, so it is rebuilt after `rustup update`.
    """
    src = Path(toolchain.sysroot)
    driver = sorted((src / "lib").glob("librustc_driver*"))
    ident = [toolchain.sysroot, toolchain.version, toolchain.commit, toolchain.host]
    for path in [src / "bin" / "rustc", *driver]:
        st = path.stat()
        ident += [str(path), str(st.st_size), str(st.st_mtime_ns)]
    key = hashlib.sha256("\n".join(ident).encode()).hexdigest()[:16]
    name = f"sysroot-{toolchain.version.replace(' ', '_')}-{key}"
    errors = []
    for base in _cache_bases():
        try:
            _safe_dir(base)
            target = base / name
            if (target / ".complete").is_file():
                st = os.lstat(target)
                if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
                    return str(target)
            build = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
            os.chmod(build, 0o755)
            _populate_mirror(src, build, toolchain.host)
            (build / ".complete").write_text(toolchain.sysroot + "\n")
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(build, target)
            except OSError:  # a concurrent builder won the race
                shutil.rmtree(build, ignore_errors=True)
                if not (target / ".complete").is_file():
                    raise
            for stale in base.glob("sysroot-*"):
                if stale.name != name:
                    shutil.rmtree(stale, ignore_errors=True)
            log.info("sandbox: mirrored %s to %s", src, target)
            return str(target)
        except OSError as exc:
            errors.append(f"{base}: {exc}")
    raise PermissionError("; ".join(errors))


def _populate_mirror(src: Path, dst: Path, host: str) -> None:
    wanted: list[Path] = [Path("bin/rustc")]
    for entry in sorted((src / "lib").iterdir()):
        if entry.name.startswith(("librustc", "libLLVM", "libstd-", "libtest-")) and not entry.is_dir():
            wanted.append(entry.relative_to(src))
    host_dir = src / "lib" / "rustlib" / host
    for root, dirs, files in os.walk(host_dir):
        for fname in files:
            wanted.append((Path(root) / fname).relative_to(src))
        for dname in dirs:
            if os.path.islink(os.path.join(root, dname)):
                wanted.append((Path(root) / dname).relative_to(src))
    for rel in wanted:
        s, d = src / rel, dst / rel
        for parent in reversed(d.relative_to(dst).parents):
            p = dst / parent
            if not p.exists():
                p.mkdir(mode=0o755)
                os.chmod(p, 0o755)
        if s.is_symlink():
            os.symlink(os.readlink(s), d)
            continue
        mode = s.stat().st_mode
        world_ok = mode & 0o004 and (not mode & 0o100 or mode & 0o001)
        if world_ok:
            try:
                os.link(s, d)
                continue
            except OSError:
                pass
        shutil.copy2(s, d)
        os.chmod(d, 0o755 if mode & 0o100 else 0o644)
