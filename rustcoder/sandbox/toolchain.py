"""The Rust toolchain the sandbox runs: finding the user's rustc and its real compiler, and a mirror of the
sysroot that an unprivileged uid can read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .host import cache_bases, run_quiet, safe_dir
from .policy import RustcNotFound, log


@dataclasses.dataclass
class Toolchain:
    """The compiler a job runs, as found on the host."""

    launcher: str  # what the user runs (maybe the rustup proxy)
    sysroot: str
    real_rustc: str  # the compiler binary inside the sysroot (bypasses rustup and its env)
    version: str
    host: str
    commit: str


def find_rustc() -> str:
    """Path of the rustc the user would run (often the rustup proxy); raises RustcNotFound."""
    explicit = os.environ.get("RUSTCODER_RUSTC")
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise RustcNotFound(
            f"RUSTCODER_RUSTC={explicit!r} is not an executable file. Point it at a rustc binary, "
            "or unset it and install Rust with rustup: https://rustup.rs"
        )
    found = shutil.which("rustc")
    if found:
        return found
    cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    candidate = os.path.join(cargo_home, "bin", "rustc")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    raise RustcNotFound(
        "rustc was not found (looked at $RUSTCODER_RUSTC, `rustc` on PATH and "
        f"{candidate}). Install Rust with rustup: https://rustup.rs (then `rustup default stable`), "
        "or set RUSTCODER_RUSTC=/path/to/rustc."
    )


def resolve_toolchain() -> Toolchain:
    """The user's rustc, its sysroot and the real compiler inside it; raises RustcNotFound."""
    launcher = find_rustc()
    try:
        sysroot = run_quiet([launcher, "--print", "sysroot"]).stdout.strip()
        info = run_quiet([launcher, "-vV"]).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RustcNotFound(
            f"{launcher} could not be run ({exc}). Reinstall Rust with rustup: https://rustup.rs"
        ) from exc
    fields = dict(
        line.split(": ", 1) for line in info.splitlines() if ": " in line
    )
    if not sysroot or "host" not in fields:
        raise RustcNotFound(
            f"{launcher} did not report a sysroot/host (is a default toolchain set? try "
            "`rustup default stable`). Install Rust with rustup: https://rustup.rs"
        )
    real = os.path.join(sysroot, "bin", "rustc")
    if not (os.path.isfile(real) and os.access(real, os.X_OK)):
        real = os.path.realpath(launcher)
    return Toolchain(
        launcher=launcher,
        sysroot=sysroot,
        real_rustc=real,
        version=fields.get("release", "unknown"),
        host=fields["host"],
        commit=fields.get("commit-hash", "unknown"),
    )


def mirror_sysroot(toolchain: Toolchain) -> str:
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
    for base in cache_bases():
        try:
            safe_dir(base)
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
