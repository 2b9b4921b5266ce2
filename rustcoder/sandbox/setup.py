"""Finding rustc and deciding how to isolate, once per process (cached): the toolchain, the jobs' working
directories and environment, and which protections this machine allows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from .execute import _unsupported_rlimits
from .policy import RustcNotFound, SANDBOX_GID, SANDBOX_SYSROOT, SANDBOX_UID, _SAFE_PATH, _SETUP_FAILED
from .root import _build_root, _mirror_sysroot, _mount_script
from .state import _Job, _Setup, _Toolchain, _WARNED, _disabled, _run_quiet, _warn_once, _which
from .uids import _UidPool, _uid_pool

def _find_rustc() -> str:
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


def _resolve_toolchain() -> _Toolchain:
    launcher = _find_rustc()
    try:
        sysroot = _run_quiet([launcher, "--print", "sysroot"]).stdout.strip()
        info = _run_quiet([launcher, "-vV"]).stdout
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
    return _Toolchain(
        launcher=launcher,
        sysroot=sysroot,
        real_rustc=real,
        version=fields.get("release", "unknown"),
        host=fields["host"],
        commit=fields.get("commit-hash", "unknown"),
    )


_SETUP: _Setup | None = None


_SETUP_LOCK = threading.Lock()


def _reset_setup() -> None:
    """Forget the cached sandbox set-up (tests, or after installing rustc/unshare)."""
    global _SETUP
    with _SETUP_LOCK:
        _SETUP = None
        _WARNED.clear()


def _get_setup() -> _Setup:
    global _SETUP
    with _SETUP_LOCK:
        if _SETUP is None:
            _SETUP = _build_setup()
        return _SETUP


def _scrubbed_env(workdir: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": _SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


def _job_env(setup: _Setup, job: _Job, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = _scrubbed_env(job.home(setup), extra)
    env["TMPDIR"] = job.tmp(setup)
    return env


_SANDBOX_TOOLS = ("setpriv:", "unshare:", "prlimit:", "sh:", "/bin/sh:", _SETUP_FAILED)


def _sandbox_failed(returncode: int, raw: list[str]) -> bool:
    """Did the exec chain itself fail (rather than rustc)? Its tools say so on stderr."""
    if any(line.startswith(_SANDBOX_TOOLS) for line in raw):
        return True
    return returncode in (125, 126, 127) and not raw


def _crash_reason(sig: str | None, returncode: int, raw: list[str]) -> str:
    text = "\n".join(raw)
    if "overflowed its stack" in text or (sig == "SIGSEGV" and "interrupted by SIGSEGV" in text):
        what = "stack overflow"
    elif "memory allocation of" in text or "out of memory" in text.lower():
        what = "out of memory (compile address-space limit)"
    elif sig == "SIGXCPU":
        what = "CPU time limit"
    elif sig == "SIGXFSZ":
        what = "file size limit"
    elif "internal compiler error" in text:
        what = "internal compiler error"
    else:
        what = next((line.strip() for line in raw if line.strip()), "no diagnostic")[:200]
    return f"{what}; {sig or f'exit code {returncode}'}"


def _probe(argv: list[str], setup_kwargs: dict, cwd: str, env: dict) -> tuple[bool, str]:
    try:
        proc = _run_quiet(argv, timeout=30, cwd=cwd, env=env, **setup_kwargs)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-500:]


def _runs_root_dir() -> str:
    """Per-process parent of the work dirs: root-owned 0711, so nobody cannot list siblings."""
    root = tempfile.mkdtemp(prefix="rustcoder-sandbox-")
    os.chmod(root, 0o711 if os.geteuid() == 0 else 0o700)
    import atexit

    atexit.register(shutil.rmtree, root, True)
    return root


def _new_job(setup: _Setup) -> _Job:
    """A fresh 0700 work dir owned by a uid no other running job has (where uids can be changed)."""
    slot = setup.uid_pool.acquire() if setup.uid_pool else None
    try:
        uid = slot.uid if slot else setup.sandbox_uid
        gid = slot.uid if slot else SANDBOX_GID
        workdir = tempfile.mkdtemp(prefix="run-", dir=setup.runs_root)
        if setup.drop in ("setpriv", "popen"):
            os.chown(workdir, uid, gid)
        os.chmod(workdir, 0o700)
    except BaseException:
        if slot:
            _UidPool.release(slot)
        raise
    return _Job(workdir=workdir, uid=uid, gid=gid, slot=slot)


def _remove_workdir(workdir: str) -> None:
    def _retry(func, path, _exc):  # the program may have chmod'ed things to 000
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(workdir, onerror=_retry)


def _build_setup() -> _Setup:
    started = time.monotonic()
    toolchain = _resolve_toolchain()
    off = _disabled()
    notes: list[str] = []
    euid = os.geteuid() if hasattr(os, "geteuid") else -1
    is_linux = sys.platform.startswith("linux")

    # 1. who runs the compiler and the program
    setpriv = _which("setpriv") if is_linux else None
    if euid == 0:
        if setpriv:
            drop = "setpriv"
        else:
            drop = "popen"
            notes.append("setpriv not found: dropping to nobody via subprocess(user=...), "
                         "without no_new_privs")
    else:
        drop = "none"
        notes.append(f"not running as root: compiler and programs run as the invoking user "
                     f"(uid {euid}), which can read and write everything that user can")
    sandbox_uid = SANDBOX_UID if drop in ("setpriv", "popen") else euid
    runs_root = _runs_root_dir()

    prlimit = _which("prlimit") if is_linux else None
    rlimits = "prlimit" if prlimit else "preexec"
    unsupported: list[str] = []
    if not prlimit:
        unsupported = _unsupported_rlimits()
        if unsupported:
            notes.append(f"this OS refuses resource limits {unsupported}: they are not applied")
    pidfd = hasattr(os, "pidfd_open") and "pidfd" not in off
    linker = shutil.which("cc", path=_SAFE_PATH)
    if not linker:
        notes.append("no C linker (`cc`) on PATH: modes 'test' and 'run' cannot link "
                     "(install gcc/build-essential); mode 'check' still works")

    uid_pool = _uid_pool(notes) if drop in ("setpriv", "popen") else None

    probe_dir = tempfile.mkdtemp(prefix="probe-", dir=runs_root)
    if drop in ("setpriv", "popen"):
        os.chown(probe_dir, sandbox_uid, SANDBOX_GID)
    env = _scrubbed_env(probe_dir)

    def popen_kwargs() -> dict:
        if drop == "popen":
            return {"user": SANDBOX_UID, "group": SANDBOX_GID, "extra_groups": []}
        return {}

    def drop_prefix() -> list[str]:
        if drop == "setpriv":
            return [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}",
                    "--clear-groups", "--no-new-privs", "--"]
        return []

    # 2. namespaces: root can unshare directly (before dropping); others need a user namespace
    unshare_prefix: list[str] = []
    namespaces: list[str] = []
    unshare = _which("unshare") if is_linux else None
    if unshare:
        if drop == "setpriv":
            user_opts = [[]]
        else:
            user_opts = [["--map-current-user"], ["--map-root-user"]]
        flag_sets = [
            (["--net", "--ipc", "--pid", "--fork"],
             ["network-namespace", "ipc-namespace", "pid-namespace"]),
            (["--net"], ["network-namespace"]),
        ]
        for flags, tags in flag_sets:
            for user in user_opts:
                argv = [unshare, *user, *flags, "--", *drop_prefix(), "/bin/sh", "-c", "exit 0"]
                ok, _ = _probe(argv, popen_kwargs(), probe_dir, env)
                if ok:
                    unshare_prefix = [unshare, *user, *flags, "--"]
                    namespaces = tags
                    break
            if unshare_prefix:
                break
        if not unshare_prefix:
            notes.append("`unshare` cannot create namespaces here (user namespaces disabled?): "
                         "no network or PID isolation; programs can reach the network and "
                         "signal other processes of the same user")
        elif "pid-namespace" not in namespaces:
            notes.append("no PID namespace: cleanup relies on process-group kill only")
    else:
        notes.append("`unshare` not available (not Linux, or util-linux missing): no network "
                     "or PID isolation")

    # 3. each job its own root (mount namespace): as root, with setpriv and a PID namespace
    compiler = toolchain.real_rustc
    mirror = None
    error = None
    mount_script = sysroot_bind = None
    ok, why = False, ""
    tools = {t: _which(t) for t in ("mount", "umount", "pivot_root")}
    if drop == "setpriv" and "pid-namespace" in namespaces and all(tools.values()) \
            and "mount" not in off \
            and os.path.realpath(toolchain.real_rustc) == os.path.realpath(
                os.path.join(toolchain.sysroot, "bin", "rustc")):
        mount_prefix = [unshare, "--mount", "--propagation", "private", *unshare_prefix[1:]]
        sysroots = [lambda: toolchain.sysroot, lambda: _mirror_sysroot(toolchain)]
        for attempt, get_sysroot in enumerate(sysroots):
            try:
                candidate = get_sysroot()
                root, fstab = _build_root(runs_root, candidate, linker, setpriv, attempt)
            except OSError as exc:
                why = f"could not prepare the job's root: {exc}"
                continue
            script = _mount_script(root, fstab, setpriv, tools)
            argv = [*mount_prefix, "/bin/sh", "-c", script, "sh", probe_dir, str(SANDBOX_UID),
                    str(SANDBOX_GID), f"{SANDBOX_SYSROOT}/bin/rustc", "-vV"]
            ok, why = _probe(argv, {}, probe_dir, env)
            if ok:
                mount_script, sysroot_bind = script, candidate
                mirror = candidate if candidate != toolchain.sysroot else None
                compiler = f"{SANDBOX_SYSROOT}/bin/rustc"
                unshare_prefix = mount_prefix
                break
        if not ok:
            notes.append(f"no mount namespace ({why.splitlines()[-1] if why else 'refused'}): jobs "
                         "see the host's files (read access as their uid allows), the host's /proc "
                         "and the shared /tmp")
    elif "mount" in off or drop != "setpriv" or "pid-namespace" not in namespaces:
        notes.append("no mount namespace (needs root, setpriv and a PID namespace): jobs see the "
                     "host's files (read access as their uid allows), the host's /proc and the "
                     "shared /tmp")
    else:
        notes.append("no mount namespace (mount, umount or pivot_root missing, or rustc outside "
                     "its sysroot): jobs see the host's files, the host's /proc and the shared /tmp")

    # 4. otherwise: a compiler the sandbox user can execute on the host's filesystem
    def compiler_works(path: str) -> tuple[bool, str]:
        argv = [*unshare_prefix, *drop_prefix(), path, "-vV"]
        return _probe(argv, popen_kwargs(), probe_dir, env)

    if mount_script is None:
        ok, why = compiler_works(compiler)
    if not ok and drop in ("setpriv", "popen"):
        try:
            mirror = _mirror_sysroot(toolchain)
            compiler = os.path.join(mirror, "bin", "rustc")
            ok, why = compiler_works(compiler)
        except OSError as exc:
            ok, why = False, f"could not mirror the sysroot: {exc}"
    if not ok and unshare_prefix:  # maybe the namespaces are what breaks rustc
        argv = [*drop_prefix(), compiler, "-vV"]
        if _probe(argv, popen_kwargs(), probe_dir, env)[0]:
            notes.append(f"rustc fails inside namespaces ({why}); running without them")
            unshare_prefix, namespaces, ok = [], [], True
    shutil.rmtree(probe_dir, ignore_errors=True)

    if not ok and drop in ("setpriv", "popen"):
        if os.environ.get("RUSTCODER_ALLOW_ROOT") == "1":
            notes.append("UNSAFE: cannot run rustc as nobody; RUSTCODER_ALLOW_ROOT=1 so "
                         "model-written code is compiled and run as root")
            drop, sandbox_uid, compiler = "allow-root", euid, toolchain.real_rustc
        else:
            error = (
                f"running as root, and rustc cannot be run as the unprivileged user {SANDBOX_UID} "
                f"({why}). Refusing to compile untrusted code as root. Fix: set "
                "RUSTCODER_SYSROOT_CACHE to a directory root can write and nobody can read, "
                "or run as a non-root user (or set RUSTCODER_ALLOW_ROOT=1 to accept the risk)."
            )
    elif not ok:
        error = f"rustc cannot be run inside the sandbox: {why}"

    isolation = ["private-workdir", "scrubbed-env"]
    isolation.append({"setpriv": "unprivileged-user", "popen": "unprivileged-user",
                      "none": "invoking-user", "allow-root": "root-user"}[drop])
    if drop == "setpriv":
        isolation.append("no-new-privs")
    if uid_pool is not None and drop in ("setpriv", "popen"):
        isolation.append("per-job-uid")
    else:
        uid_pool = None
    isolation += namespaces
    if mount_script is not None:
        isolation += ["mount-namespace", "private-proc", "private-tmp"]
    isolation += ["rlimits", "timeouts", "process-group-kill", "output-cap"]
    for note in notes:
        _warn_once(note)
    return _Setup(
        toolchain=toolchain, compiler=compiler, sysroot_mirror=mirror, euid=euid, drop=drop,
        sandbox_uid=sandbox_uid, uid_pool=uid_pool, unshare=unshare_prefix, namespaces=namespaces,
        mount_script=mount_script, sysroot_bind=sysroot_bind, rlimits=rlimits,
        rlimits_unsupported=unsupported, setpriv=setpriv, prlimit=prlimit,
        linker=linker, pidfd=pidfd, isolation=isolation, warnings=notes, error=error,
        runs_root=runs_root, setup_seconds=round(time.monotonic() - started, 3),
    )
