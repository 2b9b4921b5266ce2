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

The package, one idea per module, each used through its public names only (tests/test_architecture.py
checks): ``policy`` (statuses, limits, the result type), ``host`` (host tools, cache dirs, warnings),
``toolchain`` (finding rustc, the sysroot mirror), ``uids`` (a distinct uid per concurrent job), ``jobdir``
(a job's directory from creation to a removal that cannot fail), ``limits`` (rlimits), ``root`` (each
job's root filesystem), ``launch`` (one command under namespaces, uid, limits and timeouts), ``setup`` (what
this machine allows, probed once per process), ``diagnostics`` (rustc's JSON into statuses), ``verdict``
(what a test run proves, and the harness that proves it), ``rustsrc`` (reading Rust source lexically
for it), ``api`` (run_rust, run_many, the self-check, the capabilities).
"""

from .api import rustc_available, run_many, run_rust, sandbox_capabilities, sandbox_self_check
from .policy import (EDITIONS, ISOLATION_TAGS, MAX_DIAGNOSTIC_CHARS, MODES, SANDBOX_GID, SANDBOX_JOB_DIR,
                     SANDBOX_SYSROOT, SANDBOX_UID, STATUSES, TRUNCATION_MARKER, ExecutionResult, Limits,
                     RustcNotFound)
from .setup import get_setup, reset_setup

_get_setup = get_setup  # older names, kept for callers (tests) that re-probe the machine
_reset_setup = reset_setup

__all__ = [
    "STATUSES",
    "MODES",
    "EDITIONS",
    "ISOLATION_TAGS",
    "SANDBOX_UID",
    "SANDBOX_GID",
    "SANDBOX_JOB_DIR",
    "SANDBOX_SYSROOT",
    "MAX_DIAGNOSTIC_CHARS",
    "TRUNCATION_MARKER",
    "Limits",
    "ExecutionResult",
    "RustcNotFound",
    "run_rust",
    "run_many",
    "sandbox_capabilities",
    "sandbox_self_check",
    "rustc_available",
    "get_setup",
    "reset_setup",
]
