"""Compile and run untrusted (model-written) Rust: the one place rustcoder executes generated code.

Every call (a job) gets its own world: a fresh private working directory owned by a uid no other
running job has, a scrubbed environment, and, as root on Linux, its own root filesystem (mount
namespace: read-only /usr and toolchain, the job's directory, a private /proc, /tmp and /dev/shm)
in fresh PID, network and IPC namespaces; plus resource limits, separate compile and run timeouts,
a process-group and PID-namespace kill, capped output and a fixed set of result statuses. A crash
of rustc on the program is the program's ``compile_error``; ``sandbox_error`` is kept for failures
of the sandbox itself, which ``sandbox_self_check()`` detects. Protections that this machine
cannot provide are dropped with a one-time warning and are simply absent from
``ExecutionResult.isolation``; see ``docs/sandbox.md`` for the threat model and the known gaps.

Standard library only: evaluation workers import this without torch or transformers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable

from . import procs

__all__ = [
    "STATUSES",
    "MODES",
    "EDITIONS",
    "ISOLATION_TAGS",
    "SANDBOX_UID",
    "Limits",
    "ExecutionResult",
    "RustcNotFound",
    "run_rust",
    "run_many",
    "sandbox_capabilities",
    "sandbox_self_check",
    "rustc_available",
]

log = logging.getLogger(__name__)

STATUSES = (
    "pass",  # compiled; tests passed (test), exit code 0 (run), or type-checked (check)
    "test_fail",  # the test binary ran and libtest reported at least one failed test
    "compile_error",  # rustc rejected the program (the model's fault)
    "needs_crate",  # rustc failed only because an external crate is not available
    "timeout",  # compile or run exceeded its wall-clock timeout
    "runtime_error",  # crashed, panicked, non-zero exit, killed by a limit, or no test summary
    "output_limit",  # wrote more than max_output_bytes to stdout or stderr; stopped early
    "empty_source",  # nothing to compile
    "sandbox_error",  # the sandbox itself failed (no linker, cannot drop privileges, ...)
)
MODES = ("check", "test", "run")
EDITIONS = ("2015", "2018", "2021", "2024")

# Names used in ExecutionResult.isolation (the ones in effect for that call).
ISOLATION_TAGS = {
    "private-workdir": "fresh 0700 temp dir owned by the sandbox user; HOME and TMPDIR point into it",
    "scrubbed-env": "no variable inherited from the parent process (PATH, HOME, TMPDIR, LANG only)",
    "unprivileged-user": "compiler and program run as nobody (uid 65534), not as root",
    "invoking-user": "not started as root: compiler and program run as the invoking user",
    "root-user": "UNSAFE: running as root because RUSTCODER_ALLOW_ROOT=1",
    "no-new-privs": "PR_SET_NO_NEW_PRIVS: setuid binaries cannot raise privileges",
    "per-job-uid": "each concurrent job runs as its own unprivileged uid: no job can touch another's files",
    "network-namespace": "fresh network namespace: no interfaces but a downed loopback, no host "
                         "abstract unix sockets",
    "pid-namespace": "fresh PID namespace: cannot signal other processes; all die together",
    "mount-namespace": "private mount namespace with a new root: read-only /usr, toolchain and "
                       "the job's own directory only (no host files, no path-based host sockets)",
    "private-proc": "/proc mounted inside the job's PID namespace: only the job's own processes",
    "private-tmp": "private /tmp and /dev/shm (size-capped tmpfs), gone when the job ends",
    "ipc-namespace": "fresh System V IPC / POSIX message-queue namespace",
    "rlimits": "CPU seconds, address space, file size, open files, core dumps, processes (run)",
    "timeouts": "separate wall-clock timeouts for compile and run",
    "process-group-kill": "the whole process group is SIGKILLed on timeout and after exit",
    "output-cap": "stdout/stderr read incrementally and capped in memory",
}

SANDBOX_UID = 65534  # nobody: the uid used when no per-job uid can be allocated
SANDBOX_GID = 65534  # nogroup
# Per-job uids (root only): job i runs as SANDBOX_UID_BASE + slot, a uid no account uses, with the
# same gid. Slots are taken with a file lock, so concurrent jobs of different processes differ too.
SANDBOX_UID_BASE = int(os.environ.get("RUSTCODER_SANDBOX_UID_BASE", "1790000"))
SANDBOX_UID_SLOTS = 256
SANDBOX_JOB_DIR = "/job"  # where the job's directory appears inside the mount namespace
SANDBOX_SYSROOT = "/sysroot"  # where the toolchain's sysroot appears inside it
_TMPFS_SIZE = "32m"  # each of the job's private /tmp and /dev/shm
_SETUP_FAILED = "rustcoder-sandbox: setup failed"

_GIB = 1 << 30
_MIB = 1 << 20
_COMPILE_OUTPUT_CAP = 4 * _MIB  # rustc JSON diagnostics kept in memory; the rest is discarded
MAX_DIAGNOSTIC_CHARS = 4000
TRUNCATION_MARKER = "\n[rustcoder: output truncated]\n"
_EXIT_GRACE_SECONDS = 0.3  # after the program exits, how long to drain pipes held by stragglers
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_BUILTIN_CRATES = {"std", "core", "alloc", "proc_macro", "test", "crate", "self", "super"}
_RESOLUTION_CODES = {
    "E0405", "E0412", "E0422", "E0423", "E0425", "E0432", "E0433", "E0463",
    "E0531", "E0532", "E0599", "E0282", "E0283",
}
_MISSING_CRATE_PATTERNS = [
    re.compile(r"unlinked crate `([^`]+)`"),
    re.compile(r"cannot find module or crate `([^`]+)`"),
    re.compile(r"can't find crate for `([^`]+)`"),
    re.compile(r"undeclared crate or module `([^`]+)`"),  # rustc <= 1.86 wording
    re.compile(r"maybe a missing crate `([^`]+)`"),  # older E0432 wording
    re.compile(r"you might be missing a crate named `([^`]+)`"),
]
_TEST_SUMMARY = re.compile(
    r"^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured",
    re.MULTILINE,
)
_TEST_RUNNING = re.compile(r"^running (\d+) tests?$", re.MULTILINE)
_TEST_LINE = re.compile(r"^test .+ \.\.\. (ok|FAILED|ignored)\s*$", re.MULTILINE)
_FATAL_SIGNALS = {
    int(getattr(signal, name)): name
    for name in ("SIGABRT", "SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGKILL", "SIGTERM",
                 "SIGXCPU", "SIGXFSZ", "SIGTRAP", "SIGSYS", "SIGPIPE")
    if hasattr(signal, name)
}


class RustcNotFound(RuntimeError):
    """No usable ``rustc``: install Rust with rustup (https://rustup.rs) or set RUSTCODER_RUSTC."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits applied to every sandboxed compile and run.

    Memory limits are per process address space (RLIMIT_AS); ``run_max_processes`` counts
    processes and threads (RLIMIT_NPROC) on top of those the sandbox user already has.
    """

    compile_memory_bytes: int = 2 * _GIB
    run_memory_bytes: int = 512 * _MIB
    compile_file_bytes: int = 256 * _MIB
    run_file_bytes: int = 16 * _MIB
    run_max_processes: int = 256
    open_files: int = 1024
    test_threads: int = 4


@dataclasses.dataclass
class ExecutionResult:
    """Outcome of one sandboxed compile (and run). ``status`` is one of ``STATUSES``."""

    status: str
    mode: str = "test"
    error_codes: list[str] = dataclasses.field(default_factory=list)
    diagnostics: str = ""
    stdout: str = ""
    stderr: str = ""
    tests_passed: int = 0
    tests_failed: int = 0
    tests_ignored: int = 0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    exit_code: int | None = None
    signal: str | None = None
    missing_crates: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""
    isolation: list[str] = dataclasses.field(default_factory=list)
    job_uid: int | None = None  # the uid the job's compiler and program ran as

    @property
    def passed(self) -> bool:
        """True when the status is "pass"."""
        return self.status == "pass"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Finding rustc and deciding how to isolate (done once per process, cached)
# --------------------------------------------------------------------------------------------


def _disabled() -> set[str]:
    """Protections switched off via RUSTCODER_SANDBOX_DISABLE (to test/simulate degraded hosts)."""
    raw = os.environ.get("RUSTCODER_SANDBOX_DISABLE", "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def _which(name: str) -> str | None:
    if name in _disabled():
        return None
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SAFE_PATH)


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


_SETUP: _Setup | None = None
_SETUP_LOCK = threading.Lock()
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(f"rustcoder sandbox: {message}", RuntimeWarning, stacklevel=3)
        log.warning("sandbox: %s", message)


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


# --------------------------------------------------------------------------------------------
# Per-job uids: a job's files and processes belong to a uid no other job has at the same time
# --------------------------------------------------------------------------------------------


def _uid_range_mapped(first: int, count: int) -> bool:
    """Is every uid in [first, first+count) usable here (inside this process's user namespace)?"""
    try:
        with open("/proc/self/uid_map") as fh:
            ranges = [tuple(int(x) for x in line.split()) for line in fh if line.strip()]
    except OSError:
        return sys.platform.startswith("linux") is False
    return any(inside <= first and first + count <= inside + length for inside, _out, length in ranges)


@dataclasses.dataclass
class _UidSlot:
    uid: int
    fd: int


class _UidPool:
    """Hands out uids SANDBOX_UID_BASE + 0..SANDBOX_UID_SLOTS-1, one per running job.

    A slot is held with an exclusive ``flock`` on a lock file in a root-owned directory, so jobs of
    other rustcoder processes on the machine get other uids too; a uid that still owns a process
    (a job of a killed evaluation) is skipped. The lock dies with its holder, so nothing goes stale.
    """

    def __init__(self, base: int, slots: int, lock_dir: Path):
        self.base, self.slots, self.lock_dir = base, slots, lock_dir
        self._next: int | None = None
        self._lock = threading.Lock()

    def acquire(self) -> _UidSlot:
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
            if _uid_task_count(uid):
                os.close(fd)
                continue
            return _UidSlot(uid, fd)
        raise OSError(f"all {self.slots} sandbox uids ({self.base}..{self.base + self.slots - 1}) are busy")

    @staticmethod
    def release(slot: _UidSlot) -> None:
        os.close(slot.fd)  # closing drops the flock


def _uid_pool(notes: list[str]) -> _UidPool | None:
    if "per-job-uid" in _disabled():
        return None
    if not _uid_range_mapped(SANDBOX_UID_BASE, SANDBOX_UID_SLOTS):
        notes.append(f"uids {SANDBOX_UID_BASE}..{SANDBOX_UID_BASE + SANDBOX_UID_SLOTS - 1} are not "
                     "usable here (user namespace mapping): all jobs share uid 65534; set "
                     "RUSTCODER_SANDBOX_UID_BASE to a free mapped range")
        return None
    errors = []
    for base in _cache_bases():
        lock_dir = base / "uid-locks"
        try:
            _safe_dir(base)
            lock_dir.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(lock_dir)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise PermissionError(f"{lock_dir} is not a 0700 directory owned by uid {os.geteuid()}")
            return _UidPool(SANDBOX_UID_BASE, SANDBOX_UID_SLOTS, lock_dir)
        except OSError as exc:
            errors.append(f"{lock_dir}: {exc}")
    notes.append("no directory for per-job uid locks (" + "; ".join(errors) + "): all jobs share uid 65534")
    return None


# --------------------------------------------------------------------------------------------
# The job's own root: a mount namespace with read-only /usr, the sysroot and the job's dir
# --------------------------------------------------------------------------------------------


def _install_root() -> str:
    """Where rustcoder itself is installed (hidden from jobs when it is under /usr)."""
    return str(Path(__file__).resolve().parents[1])


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


# --------------------------------------------------------------------------------------------
# A copy of the sysroot that nobody can read (rustup installs under /root, which is 0700)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Running one sandboxed command with limits, timeout, group kill and capped output
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Outcome:
    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_total: int
    stderr_total: int
    timed_out: bool
    output_limited: bool
    seconds: float


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


def _rlimit_values(setup: _Setup, phase: str, timeout: float, limits: Limits,
                   uid: int | None = None) -> dict[str, int]:
    cpu = int(timeout) + 1
    values = {"cpu": cpu, "core": 0, "nofile": limits.open_files}
    if phase == "compile":
        values["as"] = limits.compile_memory_bytes
        values["fsize"] = limits.compile_file_bytes
    else:
        values["as"] = limits.run_memory_bytes
        values["fsize"] = limits.run_file_bytes
        if sys.platform.startswith("linux"):
            values["nproc"] = _uid_task_count(setup.sandbox_uid if uid is None else uid) \
                + limits.run_max_processes
        else:
            values["nproc"] = limits.run_max_processes + 512
    return _clamp_to_hard_limits(values)


_RLIMIT_NAMES = {"cpu": "RLIMIT_CPU", "core": "RLIMIT_CORE", "nofile": "RLIMIT_NOFILE",
                 "as": "RLIMIT_AS", "fsize": "RLIMIT_FSIZE", "nproc": "RLIMIT_NPROC"}


def _clamp_to_hard_limits(values: dict[str, int]) -> dict[str, int]:
    """Lower each value to what this process may set (raising a hard limit needs
    CAP_SYS_RESOURCE, which even root may lack in a container)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return values
    clamped = {}
    for name, value in values.items():
        which = getattr(resource, _RLIMIT_NAMES[name], None)
        if which is None:
            continue
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard - 1 if name == "cpu" else hard)
        clamped[name] = value
    return clamped


def _unsupported_rlimits() -> list[str]:
    """Resources that setrlimit refuses here (macOS rejects some RLIMIT_AS values, ...)."""
    d = Limits()
    probe = _clamp_to_hard_limits({"cpu": 60, "core": 0, "nofile": d.open_files,
                                   "as": d.run_memory_bytes, "fsize": d.run_file_bytes,
                                   "nproc": d.run_max_processes + 512})
    bad = []
    for name, value in probe.items():
        try:
            subprocess.run(["/bin/sh", "-c", "exit 0"], preexec_fn=_preexec_for({name: value}),
                           check=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            bad.append(name)
    return bad


def _prlimit_prefix(prlimit: str, values: dict[str, int]) -> list[str]:
    argv = [prlimit]
    for name, value in values.items():
        hard = value + 1 if name == "cpu" else value  # SIGXCPU at soft, SIGKILL at hard
        argv.append(f"--{name}={value}:{hard}")
    return [*argv, "--"]


def _preexec_for(values: dict[str, int]):
    import resource

    pairs = [
        (getattr(resource, _RLIMIT_NAMES[k]), (v, v + 1 if k == "cpu" else v))
        for k, v in values.items()
    ]

    def _apply() -> None:
        # Runs in the child between fork and exec: keep it to plain system calls. A failure
        # raises, and subprocess reports it to the parent (no silently missing limit).
        for which, lim in pairs:
            resource.setrlimit(which, lim)

    return _apply


def _sandbox_argv(setup: _Setup, cmd: list[str], values: dict[str, int],
                  job: _Job | None = None) -> tuple[list[str], dict]:
    """The exec chain that runs ``cmd`` (paths as the job sees them) under every protection."""
    uid = job.uid if job else setup.sandbox_uid
    gid = job.gid if job else SANDBOX_GID
    argv: list[str] = []
    kwargs: dict = {}
    if setup.prlimit:
        argv += _prlimit_prefix(setup.prlimit, values)
    else:
        usable = {k: v for k, v in values.items() if k not in setup.rlimits_unsupported}
        kwargs["preexec_fn"] = _preexec_for(usable)
    argv += setup.unshare
    if setup.mounts and job is not None:
        # The script is the PID namespace's init: it stays root only inside the namespaces,
        # builds the job's root, drops to the job's uid and runs the command as its child.
        return [*argv, "/bin/sh", "-c", setup.mount_script, "sh", job.workdir, str(uid), str(gid),
                *cmd], kwargs
    if setup.drop == "setpriv":
        argv += [setup.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                 "--no-new-privs", "--"]
    elif setup.drop == "popen":
        kwargs.update(user=uid, group=gid, extra_groups=[])
    if "pid-namespace" in setup.namespaces:
        # The first process of a PID namespace is its init, which ignores default-action
        # signals (abort() would misbehave); a tiny shell stays init and runs the program.
        argv += ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
    return argv + cmd, kwargs


def _execute(argv: list[str], *, popen_kwargs: dict, env: dict, cwd: str, timeout: float,
             cap: int, kill_on_cap: bool, use_pidfd: bool) -> _Outcome:
    start = time.monotonic()
    proc = procs.start_group(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=cwd, env=env, close_fds=True, **popen_kwargs)
    pgid = proc.pid  # leader of its own session and process group
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    totals = dict.fromkeys(bufs, 0)
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    pidfd = None
    if use_pidfd:
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except OSError:
            pidfd = None
    deadline = start + timeout
    timed_out = output_limited = group_killed = False
    exited_at: float | None = None
    open_pipes = len(bufs)
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and pidfd is None and procs.exit_status(proc) is not None:
                exited_at = now
            if exited_at is not None and not group_killed:
                # The leader is a zombie (not reaped yet), so its pgid cannot have been reused:
                # safe to kill whatever it left running in its group.
                procs.signal_group(pgid, signal.SIGKILL)
                group_killed = True
            if exited_at is not None and (open_pipes == 0 or now >= exited_at + _EXIT_GRACE_SECONDS):
                break
            if now >= deadline:
                timed_out = True
                break
            wait = deadline - now
            if exited_at is not None:
                wait = min(wait, exited_at + _EXIT_GRACE_SECONDS - now)
            elif pidfd is None:
                wait = min(wait, 0.05 if open_pipes else 0.005)
            for key, _ in sel.select(max(wait, 0)):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    exited_at = time.monotonic()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    open_pipes -= 1
                    continue
                totals[fd] += len(chunk)
                room = cap - len(bufs[fd])
                if room > 0:
                    bufs[fd] += chunk[:room]
                if totals[fd] > cap and kill_on_cap:
                    output_limited = True
            if output_limited:
                break
    finally:
        procs.signal_group(pgid, signal.SIGKILL)
        sel.close()
        try:
            returncode = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed leader dies
            returncode = -9
        proc.stdout.close()
        proc.stderr.close()
        if pidfd is not None:
            os.close(pidfd)
    out_fd, err_fd = bufs
    return _Outcome(
        returncode=returncode,
        stdout=bytes(bufs[out_fd]),
        stderr=bytes(bufs[err_fd]),
        stdout_total=totals[out_fd],
        stderr_total=totals[err_fd],
        timed_out=timed_out,
        output_limited=output_limited,
        seconds=time.monotonic() - start,
    )


def _text(data: bytes, total: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if total > len(data):
        text += TRUNCATION_MARKER
    return text


def _signal_of(returncode: int, wrapped: bool) -> str | None:
    if returncode < 0:
        return _FATAL_SIGNALS.get(-returncode, f"signal {-returncode}")
    if wrapped and returncode > 128 and (returncode - 128) in _FATAL_SIGNALS:
        return _FATAL_SIGNALS[returncode - 128]
    return None


# --------------------------------------------------------------------------------------------
# Compiler diagnostics
# --------------------------------------------------------------------------------------------


def _parse_diagnostics(stderr: bytes) -> tuple[list[dict], list[str]]:
    """rustc --error-format=json output -> (error diagnostics, non-JSON lines)."""
    errors, raw = [], []
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            if line.strip():
                raw.append(line)
            continue
        try:
            diag = json.loads(line)
        except ValueError:
            raw.append(line)
            continue
        if not isinstance(diag, dict) or not str(diag.get("level", "")).startswith("error"):
            continue
        if str(diag.get("message", "")).startswith("aborting due to"):
            continue
        errors.append(diag)
    return errors, raw


def _missing_crate(diag: dict) -> str | None:
    """The external crate an E0432/E0433/E0463 error is about, or None."""
    code = (diag.get("code") or {}).get("code")
    if code not in ("E0432", "E0433", "E0463"):
        return None
    texts = [diag.get("message", "")]
    texts += [s.get("label") or "" for s in diag.get("spans", [])]
    texts += [c.get("message", "") for c in diag.get("children", [])]
    for text in texts:
        for pattern in _MISSING_CRATE_PATTERNS:
            match = pattern.search(text)
            if match:
                crate = match.group(1).split("::")[0].strip()
                if crate and crate not in _BUILTIN_CRATES:
                    return crate
                return None
    return None


def _classify_compile_errors(errors: list[dict]) -> tuple[str, list[str]]:
    """("needs_crate" | "compile_error", missing crate names)."""
    missing: list[str] = []
    other_real_error = False
    for diag in errors:
        crate = _missing_crate(diag)
        if crate:
            if crate not in missing:
                missing.append(crate)
            continue
        code = (diag.get("code") or {}).get("code")
        message = str(diag.get("message", ""))
        # Follow-on resolution errors (a type from the missing crate, a derive macro, ...) do
        # not make it the model's fault; any other error (E0308, syntax, ...) does.
        if code in _RESOLUTION_CODES or (code is None and message.startswith("cannot find")):
            continue
        other_real_error = True
    if missing and not other_real_error:
        return "needs_crate", missing
    return "compile_error", missing


def _render(errors: list[dict]) -> str:
    parts = [str(d.get("rendered") or d.get("message") or "").rstrip() for d in errors]
    text = "\n".join(p for p in parts if p)
    if len(text) > MAX_DIAGNOSTIC_CHARS:
        text = text[:MAX_DIAGNOSTIC_CHARS] + TRUNCATION_MARKER
    return text


def _codes(errors: list[dict]) -> list[str]:
    codes: list[str] = []
    for diag in errors:
        code = (diag.get("code") or {}).get("code")
        if code and code not in codes:
            codes.append(code)
    return codes


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def rustc_available() -> bool:
    """True when a rustc is found and answers ``rustc -vV``."""
    try:
        _resolve_toolchain()
    except RustcNotFound:
        return False
    return True


def sandbox_capabilities(refresh: bool = False) -> dict:
    """Which protections this machine provides, the compiler used, and any degradations.

    Raises RustcNotFound when there is no rustc. ``refresh=True`` re-probes the machine.
    """
    if refresh:
        _reset_setup()
    setup = _get_setup()
    return {
        "platform": sys.platform,
        "euid": setup.euid,
        "rustc": setup.toolchain.launcher,
        "rustc_version": setup.toolchain.version,
        "host": setup.toolchain.host,
        "sysroot": setup.toolchain.sysroot,
        "compiler": setup.compiler,
        "sysroot_mirror": setup.sysroot_mirror,
        "linker": setup.linker,
        "privilege_drop": setup.drop,
        "sandbox_uid": setup.sandbox_uid,
        "namespaces": list(setup.namespaces),
        "mount_namespace": setup.mounts,
        "sysroot_bind": setup.sysroot_bind,
        "job_uids": ([setup.uid_pool.base, setup.uid_pool.base + setup.uid_pool.slots - 1]
                     if setup.uid_pool else None),
        "rlimits": setup.rlimits,
        "rlimits_unsupported": list(setup.rlimits_unsupported),
        "default_limits": dataclasses.asdict(Limits()),
        "pidfd": setup.pidfd,
        "isolation": list(setup.isolation),
        "missing": [t for t in ISOLATION_TAGS
                    if t not in setup.isolation and t not in ("invoking-user", "root-user")],
        "warnings": list(setup.warnings),
        "usable": setup.error is None,
        "error": setup.error,
        "setup_seconds": setup.setup_seconds,
    }


SELF_CHECK_SOURCE = """
pub fn double(x: i32) -> i32 { x * 2 }

#[cfg(test)]
mod tests {
    #[test]
    fn doubles() { assert_eq!(super::double(21), 42); }
}
"""


def sandbox_self_check(compile_timeout: float = 60, run_timeout: float = 30) -> ExecutionResult:
    """Compile and test a known-good program in the sandbox; ``status == "pass"`` proves it works.

    Run before a batch of model-written programs, so that a ``sandbox_error`` (or a compile failure
    of every answer) is never silently blamed on the sandbox or on the model. A result other than
    "pass" (with exactly one passed test) means the sandbox is broken here: ``detail`` says how.
    """
    result = run_rust(SELF_CHECK_SOURCE, mode="test", compile_timeout=compile_timeout,
                      run_timeout=run_timeout, edition="2021")
    if result.status == "pass" and result.tests_passed != 1:
        result.status = "sandbox_error"
        result.detail = f"self-check ran {result.tests_passed} tests instead of 1"
    elif result.status != "pass":
        result.detail = (f"sandbox self-check failed ({result.status}): {result.detail}\n"
                         + (result.diagnostics or result.stderr)[-1000:]).strip()
        result.status = "sandbox_error"
    return result


def run_rust(
    source: str,
    *,
    mode: str = "test",
    compile_timeout: float = 30,
    run_timeout: float = 10,
    edition: str = "2021",
    max_output_bytes: int = 64_000,
    limits: Limits | None = None,
) -> ExecutionResult:
    """Compile (and, for modes "test"/"run", execute) one Rust source file in the sandbox.

    mode "check" type-checks it as a library; "test" builds it with ``rustc --test`` and runs
    the tests; "run" builds a binary and runs ``main``. Never raises for anything the program
    does; raises ValueError for bad arguments and RustcNotFound when rustc is missing.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}, got {edition!r}")
    if compile_timeout <= 0 or run_timeout <= 0:
        raise ValueError("compile_timeout and run_timeout must be positive (seconds)")
    if max_output_bytes < 1:
        raise ValueError("max_output_bytes must be at least 1")
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    limits = limits or Limits()
    if not source.strip():
        return ExecutionResult(status="empty_source", mode=mode, detail="source is empty")
    setup = _get_setup()
    isolation = list(setup.isolation)
    if setup.error:
        return ExecutionResult(status="sandbox_error", mode=mode, detail=setup.error,
                               isolation=isolation)
    try:
        job = _new_job(setup)
    except OSError as exc:
        log.exception("sandbox failure")
        return ExecutionResult(status="sandbox_error", mode=mode, isolation=isolation,
                               detail=f"could not create the job: {type(exc).__name__}: {exc}")
    try:
        result = _compile_and_run(setup, job, source, mode, compile_timeout, run_timeout,
                                  edition, max_output_bytes, limits, isolation)
        result.job_uid = job.uid
        return result
    except (OSError, subprocess.SubprocessError) as exc:
        log.exception("sandbox failure")
        return ExecutionResult(status="sandbox_error", mode=mode, isolation=isolation,
                               detail=f"{type(exc).__name__}: {exc}", job_uid=job.uid)
    finally:
        _remove_workdir(job.workdir)
        if job.slot:
            _UidPool.release(job.slot)


def _compile_and_run(setup: _Setup, job: _Job, source: str, mode: str,
                     compile_timeout: float, run_timeout: float, edition: str,
                     max_output_bytes: int, limits: Limits, isolation: list[str]) -> ExecutionResult:
    workdir = job.workdir
    src_path = os.path.join(workdir, "main.rs")
    with open(src_path, "w", encoding="utf-8") as fh:
        fh.write(source)
    os.chmod(src_path, 0o644)
    binary = os.path.join(workdir, "main")
    cmd = [setup.compiler, "--edition", edition, "--error-format=json", "--cap-lints=warn",
           "--crate-name", "main", "-C", "debuginfo=0"]
    if mode == "check":
        cmd += ["--crate-type", "lib", "--emit=metadata", "--out-dir", job.inside(setup, workdir)]
    elif mode == "test":
        cmd += ["--test", "-o", job.inside(setup, binary)]
    else:
        cmd += ["--crate-type", "bin", "-o", job.inside(setup, binary)]
    cmd.append("main.rs")  # relative: diagnostics and panics show main.rs, not the temp path
    wrapped = "pid-namespace" in setup.namespaces
    argv, kwargs = _sandbox_argv(setup, cmd, _rlimit_values(setup, "compile", compile_timeout, limits,
                                                            job.uid), job)
    compiled = _execute(argv, popen_kwargs=kwargs, env=_job_env(setup, job), cwd=workdir,
                        timeout=compile_timeout, cap=_COMPILE_OUTPUT_CAP, kill_on_cap=False,
                        use_pidfd=setup.pidfd)
    result = ExecutionResult(status="pass", mode=mode, isolation=isolation,
                             compile_seconds=round(compiled.seconds, 4))
    errors, raw = _parse_diagnostics(compiled.stderr)
    result.error_codes = _codes(errors)
    result.diagnostics = _render(errors)
    if compiled.timed_out:
        result.status = "timeout"
        result.detail = f"compilation exceeded {compile_timeout:g}s"
        return result
    if compiled.returncode != 0:
        linker_missing = any("linker `" in str(d.get("message", "")) and "not found" in
                             str(d.get("message", "")) for d in errors)
        if linker_missing:
            result.status = "sandbox_error"
            result.detail = "no C linker (`cc`) found: install gcc (Debian: build-essential)"
        elif errors:
            result.status, result.missing_crates = _classify_compile_errors(errors)
            result.detail = (f"needs crate(s): {', '.join(result.missing_crates)}"
                             if result.status == "needs_crate" else "rustc rejected the program")
        else:
            sig = _signal_of(compiled.returncode, wrapped)
            result.exit_code = compiled.returncode
            result.signal = sig
            raw_bytes = "\n".join(raw).encode()
            result.stderr = _text(raw_bytes[:max_output_bytes], len(raw_bytes))
            if _sandbox_failed(compiled.returncode, raw):
                result.status = "sandbox_error"
                result.detail = ("the sandbox could not start rustc: "
                                 + (raw[-1] if raw else f"exit code {compiled.returncode}"))
            else:
                # rustc crashed or ran out of a resource on this source (stack overflow on deep
                # nesting, a macro blow-up hitting the memory limit, an ICE): the answer's fault.
                result.status = "compile_error"
                result.detail = f"rustc crashed ({_crash_reason(sig, compiled.returncode, raw)})"
        return result
    if mode == "check":
        result.detail = "type-checked"
        return result

    run_env = _job_env(setup, job, {
        "RUST_BACKTRACE": "0",
        "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per arena
        "RUST_TEST_THREADS": str(max(1, limits.test_threads)),
    })
    argv, kwargs = _sandbox_argv(setup, [job.inside(setup, binary)],
                                 _rlimit_values(setup, "run", run_timeout, limits, job.uid), job)
    ran = _execute(argv, popen_kwargs=kwargs, env=run_env, cwd=workdir, timeout=run_timeout,
                   cap=max_output_bytes, kill_on_cap=True, use_pidfd=setup.pidfd)
    result.run_seconds = round(ran.seconds, 4)
    result.stdout = _text(ran.stdout, ran.stdout_total)
    result.stderr = _text(ran.stderr, ran.stderr_total)
    sig = _signal_of(ran.returncode, wrapped)
    result.exit_code = None if ran.returncode < 0 else ran.returncode
    result.signal = sig
    if mode == "test":
        _count_tests(result, ran.stdout.decode("utf-8", errors="replace"))
    if ran.timed_out:
        result.status, result.signal = "timeout", None
        result.detail = f"run exceeded {run_timeout:g}s"
    elif ran.output_limited:
        result.status, result.signal = "output_limit", None
        result.detail = f"output exceeded {max_output_bytes} bytes; program stopped"
    elif mode == "run":
        if ran.returncode == 0:
            result.detail = "exit code 0"
        else:
            result.status = "runtime_error"
            result.detail = f"killed by {sig}" if sig else f"exit code {ran.returncode}"
    else:
        result.status, result.detail = _test_status(result, ran, sig)
    return result


def _count_tests(result: ExecutionResult, stdout: str) -> None:
    summaries = _TEST_SUMMARY.findall(stdout)
    if summaries:
        _, passed, failed, ignored, _measured = summaries[-1]
        result.tests_passed, result.tests_failed = int(passed), int(failed)
        result.tests_ignored = int(ignored)
    else:  # crashed before the summary: count what was reported
        lines = _TEST_LINE.findall(stdout)
        result.tests_passed = lines.count("ok")
        result.tests_failed = lines.count("FAILED")
        result.tests_ignored = lines.count("ignored")


def _test_status(result: ExecutionResult, ran: _Outcome, sig: str | None) -> tuple[str, str]:
    stdout = ran.stdout.decode("utf-8", errors="replace")
    summaries = _TEST_SUMMARY.findall(stdout)
    running = _TEST_RUNNING.findall(stdout)
    if sig:
        return "runtime_error", f"test binary killed by {sig}"
    if not summaries:
        return "runtime_error", (f"test binary exited with code {ran.returncode} before "
                                 "libtest printed its summary (process::exit or crash)")
    verdict, passed, failed, ignored, measured = summaries[-1]
    counted = int(passed) + int(failed) + int(ignored) + int(measured)
    if running and int(running[0]) != counted:
        return "runtime_error", (f"libtest summary counts {counted} tests but {running[0]} were "
                                 "started: output is inconsistent")
    if verdict == "FAILED" or int(failed) > 0:
        return "test_fail", f"{failed} of {counted} tests failed"
    if ran.returncode != 0:
        return "runtime_error", f"tests passed but the binary exited with code {ran.returncode}"
    return "pass", f"{passed} passed, {ignored} ignored"


def run_many(sources: Iterable[str], *, workers: int | None = None, **kwargs) -> list[ExecutionResult]:
    """Run ``run_rust`` on each source in parallel threads; results come back in input order.

    ``workers`` defaults to ``os.cpu_count()``; other keyword arguments go to ``run_rust``.
    """
    sources = list(sources)
    if not sources:
        return []
    if any(s.strip() for s in sources if isinstance(s, str)):
        _get_setup()  # probe once, before the threads start (and raise RustcNotFound here)
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources)))
    if workers == 1:
        return [run_rust(s, **kwargs) for s in sources]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                               thread_name_prefix="rustcoder-sandbox") as pool:
        return list(pool.map(lambda s: run_rust(s, **kwargs), sources))
