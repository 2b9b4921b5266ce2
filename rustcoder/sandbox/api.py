"""The sandbox's entry points: compile and run (or test) one Rust source, many in parallel, the self-check and
the capabilities report.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
from typing import Iterable

from .diagnostics import classify_compile_errors, codes, crash_reason, parse_diagnostics, render
from .jobdir import Job, release_job
from .cgroups import JobCgroup
from .launch import Outcome, chain_env, execute, job_env, sandbox_argv, sandbox_failed, signal_of, text_of
from .limits import rlimit_values
from .policy import (COMPILE_OUTPUT_CAP, EDITIONS, ISOLATION_TAGS, MAX_SOURCE_CHARS, MODES, ExecutionResult, Limits,
                     RustcNotFound, log)
from .setup import Setup, get_setup, new_job, reset_setup
from .toolchain import resolve_toolchain
from .verdict import (NONCE_VAR, RUNTIME_CRATE, Harness, build_harness, count_tests, is_forbidden_diagnostic,
                      libtest_status, runtime_rlib, seal, stage)


def rustc_available() -> bool:
    """True when a rustc is found and answers ``rustc -vV``."""
    try:
        resolve_toolchain()
    except RustcNotFound:
        return False
    return True


def sandbox_capabilities(refresh: bool = False) -> dict:
    """Which protections this machine provides, the compiler used, and any degradations.

    Raises RustcNotFound when there is no rustc. ``refresh=True`` re-probes the machine.
    """
    if refresh:
        reset_setup()
    setup = get_setup()
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
"""


SELF_CHECK_TESTS = """
#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn doubles() { assert_eq!(double(21), 42); }
}
"""


def sandbox_self_check(compile_timeout: float = 60, run_timeout: float = 30) -> ExecutionResult:
    """Compile and test a known-good program in the sandbox; ``status == "pass"`` proves it works.

    Run before a batch of model-written programs, so that a ``sandbox_error`` (or a compile failure
    of every answer) is never silently blamed on the sandbox or on the model. A result other than
    "pass" (with exactly one passed test) means the sandbox is broken here: ``detail`` says how. It runs
    under the verdict harness, the path evaluations take, so a harness that cannot work here shows too.
    """
    result = run_rust(SELF_CHECK_SOURCE, mode="test", compile_timeout=compile_timeout,
                      run_timeout=run_timeout, edition="2021", tests=SELF_CHECK_TESTS)
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
    tests: str | None = None,
    tests_untrusted: bool = False,
    answer: str | None = None,
    given: str | None = None,
    returns: dict[str, str] | None = None,
    signatures: dict[str, str] | None = None,
) -> ExecutionResult:
    """Compile (and, for modes "test"/"run", execute) one Rust source file in the sandbox.

    With ``tests`` (mode "test"), ``source`` is the code under test and ``tests`` the test source, run under the
    verdict harness (``verdict.py``): a test passes only when it ran to its end, seen through a channel the code
    cannot write, and answers using what a correct answer never needs get status "forbidden".
    ``tests_untrusted=True`` swaps the roles (generated tests for given code); ``returns`` maps function names
    to the return types the task fixes and ``signatures`` to the function heads it fixes (rustc checks them);
    ``answer`` and ``given`` split ``source`` into the model's part and
    the task's (a context or prompt), so that only the model's is held to the harness's rules. Without ``tests`` a "test" run reports libtest's own summary.

    mode "check" type-checks it as a library; "test" builds it with ``rustc --test`` and runs
    the tests; "run" builds a binary and runs ``main``. Never raises for anything the program
    does; raises ValueError for bad arguments and RustcNotFound when rustc is missing. Nothing the program's
    text or output does can make its status "sandbox_error" (which evaluations leave out of the pass rate):
    text that is not UTF-8 or longer than ``MAX_SOURCE_CHARS`` is "compile_error" before anything runs.
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
    if tests is not None and mode != "test":
        raise ValueError("tests= needs mode='test'")
    if not source.strip():
        return ExecutionResult(status="empty_source", mode=mode, detail="source is empty")
    refused = _refuse_text(source, tests, tests_untrusted)
    if refused:  # the answer's own fault, so a status that counts (never the excluded sandbox_error)
        return ExecutionResult(status="compile_error", mode=mode, detail=refused)
    harness = None
    if tests is not None:
        try:
            harness = build_harness(source, tests, tests_untrusted=tests_untrusted, answer=answer, given=given,
                                returns=returns, signatures=signatures)
        except Exception as exc:  # noqa: BLE001 - an answer must not turn itself into an excluded sandbox_error
            log.exception("verdict harness failure")
            return ExecutionResult(status="compile_error", mode=mode,
                                   detail=f"the verdict harness could not read the program ({type(exc).__name__}: {exc})")
        if harness.forbidden:
            return ExecutionResult(status="forbidden", mode=mode, detail="forbidden: " + "; ".join(harness.forbidden))
    setup = get_setup()
    isolation = list(setup.isolation)
    if setup.error:
        return ExecutionResult(status="sandbox_error", mode=mode, detail=setup.error,
                               isolation=isolation)
    try:
        job = new_job(setup, limits)
    except Exception as exc:  # noqa: BLE001 - every item gets a status
        log.exception("sandbox failure")
        return ExecutionResult(status="sandbox_error", mode=mode, isolation=isolation,
                               detail=f"could not create the job: {type(exc).__name__}: {exc}")
    group = None
    result = None
    try:
        if setup.cgroups is not None:
            group = JobCgroup.create(setup.cgroups, memory_bytes=limits.compile_tree_memory_bytes,
                                     max_tasks=limits.compile_max_tasks)
        result = _compile_and_run(setup, job, group, source, mode, compile_timeout, run_timeout,
                                  edition, max_output_bytes, limits, isolation, harness)
    except Exception as exc:  # noqa: BLE001 - a failure of the sandbox is the item's sandbox_error, never a raise
        log.exception("sandbox failure")
        result = ExecutionResult(status="sandbox_error", mode=mode, isolation=isolation,
                                 detail=f"{type(exc).__name__}: {exc}")
    finally:
        # Whatever the job left (processes, a 100,000-deep tree, mode 000 dirs, fifos), this never raises
        # and the uid slot is handed back; an incomplete cleanup is reported with the item, not raised.
        left = []
        for step in ((group.remove,) if group is not None else ()) + (lambda: release_job(job),):
            try:
                left.append(step())
            except Exception as exc:  # noqa: BLE001 - never raised: reported with the item
                log.exception("sandbox cleanup failure")
                left.append(f"{type(exc).__name__}: {exc}")
        left = [why for why in left if why]
        if left and result is not None:
            result.detail = (result.detail + "; " if result.detail else "") + "cleanup: " + "; ".join(left)
    result.job_uid = job.uid
    return result


def _refuse_text(source: str, tests: str | None, tests_untrusted: bool) -> str | None:
    """Why a program cannot be compiled as it is (not UTF-8 text, over the size cap), or None."""
    parts = [("program", source)] + ([("tests", tests)] if tests is not None else [])
    for what, text in parts:
        if not isinstance(text, str):
            raise TypeError(f"{what} must be str, got {type(text).__name__}")
        if len(text) > MAX_SOURCE_CHARS:
            who = "the answer" if what == "program" or tests_untrusted else "the task's"
            return (f"{who} {what} is {len(text):,} characters, over the sandbox's limit of "
                    f"{MAX_SOURCE_CHARS:,}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"the answer is not valid UTF-8 text: {text[exc.start]!r} (a lone surrogate) at character "
                    f"{exc.start} of its {what}")
    return None


def _compile_and_run(setup: Setup, job: Job, group: JobCgroup | None, source: str, mode: str,
                     compile_timeout: float, run_timeout: float, edition: str,
                     max_output_bytes: int, limits: Limits, isolation: list[str],
                     harness: Harness | None = None) -> ExecutionResult:
    workdir = job.workdir
    binary = os.path.join(workdir, "main")
    if harness is not None:  # the verdict harness: its files, its flags (no --cap-lints: it would cap the forbid)
        runtime = runtime_rlib(setup.toolchain.real_rustc, setup.runs_root)
        stage(harness, workdir, runtime)
        cmd = [setup.compiler, "--edition", edition, "--error-format=json", "--crate-name", "main",
               "-C", "debuginfo=0", *harness.compile_flags(),
               "--extern", f"{RUNTIME_CRATE}={job.inside(os.path.join(workdir, os.path.basename(runtime)))}",
               "--test", "-o", job.inside(binary), harness.root]
    else:
        src_path = os.path.join(workdir, "main.rs")
        with open(src_path, "w", encoding="utf-8") as fh:
            fh.write(source)
        os.chmod(src_path, 0o644)
        cmd = [setup.compiler, "--edition", edition, "--error-format=json", "--cap-lints=warn",
               "--crate-name", "main", "-C", "debuginfo=0"]
        if mode == "check":
            cmd += ["--crate-type", "lib", "--emit=metadata", "--out-dir", job.inside(workdir)]
        elif mode == "test":
            cmd += ["--test", "-o", job.inside(binary)]
        else:
            cmd += ["--crate-type", "bin", "-o", job.inside(binary)]
        cmd.append("main.rs")  # relative: diagnostics and panics show main.rs, not the temp path
    wrapped = "pid-namespace" in setup.namespaces
    joins = group.join_paths() if group else None
    argv, kwargs = sandbox_argv(setup, cmd, rlimit_values("compile", compile_timeout, limits, job.uid), job, joins)
    compiled = execute(argv, popen_kwargs=kwargs, env=chain_env(setup, job, job_env(job)), cwd=workdir,
                        timeout=compile_timeout, cap=COMPILE_OUTPUT_CAP, kill_on_cap=False,
                        use_pidfd=setup.pidfd)
    result = ExecutionResult(status="pass", mode=mode, isolation=isolation,
                             compile_seconds=round(compiled.seconds, 4))
    errors, raw = parse_diagnostics(compiled.stderr)
    result.error_codes = codes(errors)
    result.diagnostics = render(errors)
    if compiled.timed_out:
        result.status = "timeout"
        result.detail = f"compilation exceeded {compile_timeout:g}s"
        return result
    if compiled.returncode != 0:
        # "No linker" is the sandbox's fault (excluded from scores), so it is decided from the set-up, never from
        # text: an answer writes any message it likes with compile_error!; rustc's own error has no span.
        linker_missing = setup.linker is None and mode != "check" and any(
            not d.get("spans") and not d.get("code") and "linker `" in str(d.get("message", ""))
            and "not found" in str(d.get("message", "")) for d in errors)
        if linker_missing:
            result.status = "sandbox_error"
            result.detail = "no C linker (`cc`) found: install gcc (Debian: build-essential)"
        elif errors:
            result.status, result.missing_crates = classify_compile_errors(errors)
            result.detail = (f"needs crate(s): {', '.join(result.missing_crates)}"
                             if result.status == "needs_crate" else "rustc rejected the program")
            if harness is not None and any(is_forbidden_diagnostic(d) for d in errors):
                result.status = "forbidden"
                result.detail = "forbidden: rustc refused unsafe code (`-F unsafe_code`)"
        else:
            sig = signal_of(compiled.returncode, wrapped)
            result.exit_code = compiled.returncode
            result.signal = sig
            raw_bytes = "\n".join(raw).encode()
            result.stderr = text_of(raw_bytes[:max_output_bytes], len(raw_bytes))
            if sandbox_failed(compiled.returncode, raw):
                result.status = "sandbox_error"
                result.detail = ("the sandbox could not start rustc: "
                                 + (raw[-1] if raw else f"exit code {compiled.returncode}"))
            else:
                # rustc crashed or ran out of a resource on this source (stack overflow on deep
                # nesting, a macro blow-up hitting the memory limit, an ICE): the answer's fault.
                result.status = "compile_error"
                result.detail = f"rustc crashed ({crash_reason(sig, compiled.returncode, raw)})"
        return result
    if mode == "check":
        result.detail = "type-checked"
        return result
    if harness is not None:
        seal(harness, workdir, binary)
        if not harness.cases:
            result.detail = "the tests hold no #[test] function to run"
            return result

    run_env = job_env(job, {
        "RUST_BACKTRACE": "0",
        "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per arena
        "RUST_TEST_THREADS": str(max(1, limits.test_threads)),
        **({NONCE_VAR: harness.nonce} if harness is not None else {}),
    })
    if group is not None:
        group.set_limits(memory_bytes=limits.run_tree_memory_bytes, max_tasks=limits.run_max_processes + 8)
    argv, kwargs = sandbox_argv(setup, [job.inside(binary), *(harness.run_args() if harness else [])],
                                rlimit_values("run", run_timeout, limits, job.uid), job, joins)
    ran = execute(argv, popen_kwargs=kwargs, env=chain_env(setup, job, run_env), cwd=workdir, timeout=run_timeout,
                   cap=max_output_bytes, kill_on_cap=True, use_pidfd=setup.pidfd)
    result.run_seconds = round(ran.seconds, 4)
    result.stdout = text_of(ran.stdout, ran.stdout_total)
    result.stderr = text_of(ran.stderr, ran.stderr_total)
    sig = signal_of(ran.returncode, wrapped)
    result.exit_code = None if ran.returncode < 0 else ran.returncode
    result.signal = sig
    try:
        _judge(result, ran, mode, harness, sig, run_timeout, max_output_bytes)
    except Exception as exc:  # noqa: BLE001 - the output is the answer's: it must not make an excluded sandbox_error
        log.exception("verdict failure")
        result.status = "runtime_error"
        result.detail = f"the verdict could not read the program's output ({type(exc).__name__}: {exc})"
    if result.status == "runtime_error" and group is not None and group.out_of_memory():
        result.detail += (f" (the job reached its memory limit of {limits.run_tree_memory_bytes >> 20} MiB "
                          "for its whole process tree)")
    return result


def _judge(result: ExecutionResult, ran: Outcome, mode: str, harness: Harness | None, sig: str | None,
           run_timeout: float, max_output_bytes: int) -> None:
    """Set ``result``'s status from how the run ended and what it printed."""
    if mode == "test" and harness is None:
        count_tests(result, ran.stdout.decode("utf-8", errors="replace"))
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
    elif harness is not None:
        result.status, result.detail, result.tests_passed, result.tests_failed = harness.judge(
            ran.stdout.decode("utf-8", errors="replace"), ran.returncode, sig)
    else:
        result.status, result.detail = libtest_status(ran.stdout.decode("utf-8", errors="replace"),
                                                       ran.returncode, sig)


def run_many(sources: Iterable[str], *, workers: int | None = None, per_item: Iterable[dict] | None = None,
             **kwargs) -> list[ExecutionResult]:
    """Run ``run_rust`` on each source in parallel threads; results come back in input order.

    ``workers`` defaults to ``os.cpu_count()``; other keyword arguments go to ``run_rust``, and ``per_item``
    (one dict per source, e.g. ``{"tests": TESTS}``) adds keyword arguments for one source only.
    """
    sources = list(sources)
    if not sources:
        return []
    if per_item is not None:
        extra = list(per_item)
        if len(extra) != len(sources):
            raise ValueError(f"per_item has {len(extra)} entries for {len(sources)} sources")
        sources = [_WithArgs(s, e) for s, e in zip(sources, extra)]
    if any(s.strip() for s in sources if isinstance(s, str)):
        get_setup()  # probe once, before the threads start (and raise RustcNotFound here)
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources)))
    if workers == 1:
        return [_run_one(s, kwargs) for s in sources]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                               thread_name_prefix="rustcoder-sandbox") as pool:
        return list(pool.map(lambda s: _run_one(s, kwargs), sources))


class _WithArgs(str):
    """A source of a run_many batch carrying its own run_rust keyword arguments."""

    def __new__(cls, source: str, args: dict):
        obj = super().__new__(cls, source)
        obj.args = dict(args)
        return obj


def _run_one(source: str, kwargs: dict) -> ExecutionResult:
    """run_rust for one item of a batch: a failure of this item is its own sandbox_error, never the batch's."""
    try:
        if isinstance(source, _WithArgs):
            return run_rust(str(source), **{**kwargs, **source.args})
        return run_rust(source, **kwargs)
    except (ValueError, TypeError, RustcNotFound):
        raise  # the caller's mistake (bad arguments, no rustc): the same for every item
    except Exception as exc:  # noqa: BLE001
        log.exception("sandbox failure")
        return ExecutionResult(status="sandbox_error", mode=kwargs.get("mode", "test"),
                               detail=f"{type(exc).__name__}: {exc}")
