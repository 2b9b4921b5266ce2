"""Resource limits of a job's processes (rlimits): the values per phase, clamped to what this process may set,
and the two ways to apply them (util-linux ``prlimit`` in the exec chain, or ``setrlimit`` before exec).
"""

from __future__ import annotations

import subprocess
import sys

from .host import uid_task_count
from .policy import Limits


def rlimit_values(phase: str, timeout: float, limits: Limits, uid: int) -> dict[str, int]:
    """The rlimits of one phase ("compile" or "run") of a job running as ``uid``."""
    cpu = int(timeout) + 1
    values = {"cpu": cpu, "core": 0, "nofile": limits.open_files}
    if phase == "compile":
        values["as"] = limits.compile_memory_bytes
        values["fsize"] = limits.compile_file_bytes
    else:
        values["as"] = limits.run_memory_bytes
        values["fsize"] = limits.run_file_bytes
        if sys.platform.startswith("linux"):
            values["nproc"] = uid_task_count(uid) + limits.run_max_processes
        else:
            values["nproc"] = limits.run_max_processes + 512
    return clamp_to_hard_limits(values)


_RLIMIT_NAMES = {"cpu": "RLIMIT_CPU", "core": "RLIMIT_CORE", "nofile": "RLIMIT_NOFILE",
                 "as": "RLIMIT_AS", "fsize": "RLIMIT_FSIZE", "nproc": "RLIMIT_NPROC"}


def clamp_to_hard_limits(values: dict[str, int]) -> dict[str, int]:
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


def unsupported_rlimits() -> list[str]:
    """Resources that setrlimit refuses here (macOS rejects some RLIMIT_AS values, ...)."""
    d = Limits()
    probe = clamp_to_hard_limits({"cpu": 60, "core": 0, "nofile": d.open_files,
                                   "as": d.run_memory_bytes, "fsize": d.run_file_bytes,
                                   "nproc": d.run_max_processes + 512})
    bad = []
    for name, value in probe.items():
        try:
            subprocess.run(["/bin/sh", "-c", "exit 0"], preexec_fn=preexec_for({name: value}),
                           check=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            bad.append(name)
    return bad


def prlimit_prefix(prlimit: str, values: dict[str, int]) -> list[str]:
    """util-linux ``prlimit`` arguments that set ``values`` on the command that follows."""
    argv = [prlimit]
    for name, value in values.items():
        hard = value + 1 if name == "cpu" else value  # SIGXCPU at soft, SIGKILL at hard
        argv.append(f"--{name}={value}:{hard}")
    return [*argv, "--"]


def preexec_for(values: dict[str, int]):
    """A ``preexec_fn`` that sets ``values`` with setrlimit (where ``prlimit`` is missing)."""
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
