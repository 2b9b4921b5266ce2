"""What a sandboxed run may do and how its outcome is reported: statuses, modes, editions, isolation tags,
the uids and paths inside a job, resource limits and the result type.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal


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
    "forbidden",  # harnessed tests: the answer uses what no correct answer needs (verdict.py); not run
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
    "private-proc": "/proc mounted inside the job's PID namespace: only the job's own processes; host-wide "
                    "files (boot line, keys, disks, kernel symbols, boot id, load) masked; own UTS namespace "
                    "(hostname 'sandbox')",
    "private-tmp": "private /tmp and /dev/shm (size-capped tmpfs), gone when the job ends",
    "ipc-namespace": "fresh System V IPC / POSIX message-queue namespace",
    "cgroup-namespace": "fresh cgroup namespace: /proc/self/cgroup shows the job's own group as /, not the "
                        "evaluator's cgroup path",
    "rlimits": "CPU seconds, address space, file size, open files, core dumps, processes (run)",
    "timeouts": "separate wall-clock timeouts for compile and run",
    "process-group-kill": "the whole process group is SIGKILLed on timeout and after exit",
    "output-cap": "stdout/stderr read incrementally and capped in memory",
    "job-quota": "the job's directory is its own tmpfs (size and inode caps, never on the host's disk, "
                 "removed by one unmount); /tmp and /dev/shm have inode caps too",
    "memory-cgroup": "a memory cgroup per job: the whole process tree's memory, kernel memory (socket "
                     "buffers, inodes) and tmpfs pages included, is capped; no swap",
    "pids-cgroup": "a pids cgroup per job: the number of tasks of the job's process tree is capped",
    "cpu-share": "a CPU cgroup per job with the default share: concurrent jobs get equal CPU time whatever "
                 "their number of tasks (not left to the kernel's sched_autogroup)",
    "syscall-filter": "seccomp: sockets of AF_UNIX, AF_INET and AF_INET6 only (no netlink, packet or vsock), no "
                      "new namespaces (user namespaces above all), "
                      "kernel keyrings, file locks, inotify, io_uring, bpf, perf events, or page-cache "
                      "eviction and residency probes",
    "private-keyring": "each job starts with a fresh session keyring of its own, not the evaluator's",
}


SANDBOX_UID = 65534  # nobody: the uid used when no per-job uid can be allocated


SANDBOX_GID = 65534  # nogroup


# Per-job uids (root only): job i runs as SANDBOX_UID_BASE + slot, a uid no account uses, with the
# same gid. Slots are taken with a file lock, so concurrent jobs of different processes differ too.
SANDBOX_UID_BASE = int(os.environ.get("RUSTCODER_SANDBOX_UID_BASE", "1790000"))


SANDBOX_UID_SLOTS = 256


SANDBOX_JOB_DIR = "/job"  # where the job's directory appears inside the mount namespace


SANDBOX_SYSROOT = "/sysroot"  # where the toolchain's sysroot appears inside it


SETUP_FAILED_MARKER = "rustcoder-sandbox: setup failed"  # the job-root script's last words when a step fails


_GIB = 1 << 30


_MIB = 1 << 20


COMPILE_OUTPUT_CAP = 4 * _MIB  # rustc JSON diagnostics kept in memory; the rest is discarded


MAX_DIAGNOSTIC_CHARS = 4000


MAX_SOURCE_CHARS = 128 * 1024  # a program (or its tests) longer than this is refused before any per-answer work


TRUNCATION_MARKER = "\n[rustcoder: output truncated]\n"


SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"  # the only PATH a job gets


FATAL_SIGNALS = {  # signal number -> name, for the signals that end a program
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

    ``*_memory_bytes`` are per process address space (RLIMIT_AS); ``*_tree_memory_bytes`` cap the
    whole process tree's memory, kernel memory included, where a memory cgroup is available;
    ``run_max_processes`` counts processes and threads (RLIMIT_NPROC on top of those the sandbox user
    already has, and the pids cgroup); ``job_dir_*`` cap the job's own directory (a tmpfs).
    """

    compile_memory_bytes: int = 2 * _GIB
    run_memory_bytes: int = 512 * _MIB
    compile_file_bytes: int = 256 * _MIB
    run_file_bytes: int = 16 * _MIB
    run_max_processes: int = 256
    open_files: int = 1024
    test_threads: int = 4
    compile_tree_memory_bytes: int = 2 * _GIB
    run_tree_memory_bytes: int = 1 * _GIB
    compile_max_tasks: int = 512
    job_dir_bytes: int = 256 * _MIB
    job_dir_inodes: int = 4096


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
