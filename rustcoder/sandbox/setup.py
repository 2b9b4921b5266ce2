"""Deciding how to isolate jobs on this machine, once per process (cached): the toolchain, the uid switch,
namespaces, the job's root, rlimits, and which protections are in effect (the ``isolation`` tags).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from .cgroups import CgroupBase, probe as probe_cgroups
from .confine import build_filter, chain_namespaces, keyring_works
from .host import disabled, forget_warnings, run_quiet, warn_once, which
from .jobdir import Job, create_job, make_runs_root, mount_tmpfs, remove_tree, unmount
from .launch import job_root_argv, job_root_env, scrubbed_env
from .limits import unsupported_rlimits
from .policy import SAFE_PATH, SANDBOX_GID, Limits, SANDBOX_SYSROOT, SANDBOX_UID
from .root import build_root, job_root_script
from .toolchain import Toolchain, mirror_sysroot, resolve_toolchain
from .uids import UidPool, make_uid_pool


@dataclasses.dataclass
class Setup:
    """What this machine allows, probed once per process: how jobs are isolated and launched."""

    toolchain: Toolchain
    compiler: str  # the rustc binary actually executed inside the sandbox (a path in its view)
    sysroot_mirror: str | None
    euid: int
    drop: str  # "setpriv" | "popen" | "none" (not root) | "allow-root"
    sandbox_uid: int  # the uid of a job when per-job uids are unavailable
    uid_pool: UidPool | None  # per-job uids (root only)
    unshare: list[str]  # unshare argv prefix (empty when unavailable)
    namespaces: list[str]  # isolation tags provided by `unshare`
    mount_script: str | None  # the shell script that builds the job's root (mount namespace)
    sysroot_bind: str | None  # host sysroot bound read-only at SANDBOX_SYSROOT
    rlimits: str  # "prlimit" | "preexec"
    rlimits_unsupported: list[str]  # resources this OS refuses to limit (preexec mode only)
    setpriv: str | None
    cgroups: CgroupBase | None  # where per-job memory/pids groups are made (None: no cgroup)
    filter_bpf: bytes | None  # the jobs' seccomp filter (None: no filter)
    keyring: bool  # each job gets a fresh session keyring
    job_quota: bool  # each job's directory is its own capped tmpfs
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


_SETUP: Setup | None = None


_SETUP_LOCK = threading.Lock()


def reset_setup() -> None:
    """Forget the cached sandbox set-up (tests, or after installing rustc/unshare)."""
    global _SETUP
    with _SETUP_LOCK:
        _SETUP = None
        forget_warnings()


def get_setup() -> Setup:
    """The cached set-up of this process (probed on first use); raises RustcNotFound without rustc."""
    global _SETUP
    with _SETUP_LOCK:
        if _SETUP is None:
            _SETUP = _build_setup()
        return _SETUP


def _probe(argv: list[str], setup_kwargs: dict, cwd: str, env: dict) -> tuple[bool, str]:
    try:
        proc = run_quiet(argv, timeout=30, cwd=cwd, env=env, **setup_kwargs)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-500:]


def _build_setup() -> Setup:
    started = time.monotonic()
    toolchain = resolve_toolchain()
    off = disabled()
    notes: list[str] = []
    euid = os.geteuid() if hasattr(os, "geteuid") else -1
    is_linux = sys.platform.startswith("linux")

    # 1. who runs the compiler and the program
    setpriv = which("setpriv") if is_linux else None
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
    runs_root = make_runs_root()

    prlimit = which("prlimit") if is_linux else None
    rlimits = "prlimit" if prlimit else "preexec"
    unsupported: list[str] = []
    if not prlimit:
        unsupported = unsupported_rlimits()
        if unsupported:
            notes.append(f"this OS refuses resource limits {unsupported}: they are not applied")
    pidfd = hasattr(os, "pidfd_open") and "pidfd" not in off
    linker = shutil.which("cc", path=SAFE_PATH)
    if not linker:
        notes.append("no C linker (`cc`) on PATH: modes 'test' and 'run' cannot link "
                     "(install gcc/build-essential); mode 'check' still works")

    uid_pool = make_uid_pool(notes) if drop in ("setpriv", "popen") else None

    probe_dir = tempfile.mkdtemp(prefix="probe-", dir=runs_root)
    if drop in ("setpriv", "popen"):
        os.chown(probe_dir, sandbox_uid, SANDBOX_GID)
    env = scrubbed_env(probe_dir)

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
    unshare = which("unshare") if is_linux else None
    if unshare:
        if drop == "setpriv":
            user_opts = [[]]
        else:
            user_opts = [["--map-current-user"], ["--map-root-user"]]
        flag_sets = [
            (["--net", "--ipc", "--pid", "--fork", "--cgroup"],
             ["network-namespace", "ipc-namespace", "pid-namespace", "cgroup-namespace"]),
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
    tools = {t: which(t) for t in ("mount", "umount", "pivot_root", "cp")}
    if drop == "setpriv" and "pid-namespace" in namespaces and all(tools.values()) \
            and "mount" not in off \
            and os.path.realpath(toolchain.real_rustc) == os.path.realpath(
                os.path.join(toolchain.sysroot, "bin", "rustc")):
        mount_prefix = [unshare, "--mount", "--uts", "--propagation", "private", *unshare_prefix[1:]]
        sysroots = [lambda: toolchain.sysroot, lambda: mirror_sysroot(toolchain)]
        for attempt, get_sysroot in enumerate(sysroots):
            try:
                candidate = get_sysroot()
                root, skeleton, fstab = build_root(runs_root, candidate, linker, setpriv, attempt)
            except OSError as exc:
                why = f"could not prepare the job's root: {exc}"
                continue
            script = job_root_script(root, skeleton, fstab, setpriv, tools)
            argv = [*mount_prefix, *job_root_argv(SANDBOX_UID, SANDBOX_GID), f"{SANDBOX_SYSROOT}/bin/rustc", "-vV"]
            ok, why = _probe(argv, {}, probe_dir, {**env, **job_root_env(script, probe_dir)})
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
            mirror = mirror_sysroot(toolchain)
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

    # 5. resources and channels past the namespaces: cgroups, a seccomp filter, keyrings, the job's own tmpfs
    cgroup_base = None
    if drop == "setpriv" and "cgroup" not in off:
        cgroup_base = probe_cgroups(notes)
    elif drop == "setpriv":
        notes.append("cgroups disabled: memory is limited per process only (RLIMIT_AS)")
    filter_bpf = build_filter(notes, chain_namespaces(unshare_prefix)) if is_linux else None
    keyring = is_linux and keyring_works()
    if is_linux and not keyring:
        notes.append("no fresh session keyring per job (keyctl refused or disabled): jobs share the "
                     "evaluator's session keyring")
    job_quota = False
    if mount_script is not None and "job-quota" not in off:
        try:
            quota_probe = tempfile.mkdtemp(prefix="quota-", dir=runs_root)
            try:
                mount_tmpfs(quota_probe, size=1 << 20, inodes=16, mode=0o700, uid=0, gid=0)
                unmount(quota_probe)
                job_quota = True
            finally:
                remove_tree(quota_probe)
        except OSError as exc:
            notes.append(f"no tmpfs per job directory ({exc}): the job's directory is on the host's disk "
                         "with no size or inode cap")

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
    if job_quota:
        isolation.append("job-quota")
    if cgroup_base is not None:
        isolation.append("memory-cgroup")
        if cgroup_base.version == 2 or cgroup_base.pids:
            isolation.append("pids-cgroup")
        if cgroup_base.cpu:
            isolation.append("cpu-share")
    if filter_bpf:
        isolation.append("syscall-filter")
    if keyring:
        isolation.append("private-keyring")
    for note in notes:
        warn_once(note)
    return Setup(
        toolchain=toolchain, compiler=compiler, sysroot_mirror=mirror, euid=euid, drop=drop,
        sandbox_uid=sandbox_uid, uid_pool=uid_pool, unshare=unshare_prefix, namespaces=namespaces,
        mount_script=mount_script, sysroot_bind=sysroot_bind, rlimits=rlimits,
        rlimits_unsupported=unsupported, setpriv=setpriv, prlimit=prlimit,
        linker=linker, pidfd=pidfd, isolation=isolation, cgroups=cgroup_base, filter_bpf=filter_bpf,
        keyring=keyring, job_quota=job_quota, warnings=notes, error=error,
        runs_root=runs_root, setup_seconds=round(time.monotonic() - started, 3),
    )


def new_job(setup: Setup, limits: Limits) -> Job:
    """A fresh job under this set-up: its own directory (a capped tmpfs where possible) and, where uids can be
    changed, its own uid."""
    quota = (limits.job_dir_bytes, limits.job_dir_inodes) if setup.job_quota else None
    return create_job(setup.runs_root, setup.uid_pool, setup.sandbox_uid, SANDBOX_GID,
                      chown=setup.drop in ("setpriv", "popen"), mounts=setup.mounts, quota=quota)
