"""The execute stage: every code answer compiled and run in the sandbox, generated tests checked against
wrong-valued variants of the code under test; resumes from executions.jsonl."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import RustcoderError
from . import tasks
from .plan import EvalPlan
from .store import EXECUTIONS, JsonlStore
from .suites import EvalItem


def _compiled(status: str, res: dict | None) -> bool | None:
    if status in ("pass", "test_fail", "runtime_error", "output_limit"):
        return True
    if status == "forbidden":
        return res.get("compile_seconds", 0) > 0 if res else False
    if status == "timeout":
        return bool(res and res.get("run_seconds"))
    if status in ("compile_error",):
        return False
    return None


SANDBOX_ERROR_LIMIT = 2  # more sandbox errors than this (and than 1% of programs) stop the stage


def _sandbox_error_limit(executed: int) -> int:
    return max(SANDBOX_ERROR_LIMIT, executed // 100)


def _check_sandbox(log, why: str, check=None) -> None:
    """Run the sandbox's self-check (or take its result); raise when the sandbox itself is broken."""
    from ..sandbox import sandbox_self_check

    check = check or sandbox_self_check()
    if check.status != "pass":
        raise RustcoderError(
            f"the sandbox does not work here ({why}): {check.detail}\nNothing was blamed on the model. "
            "Fix the sandbox (see docs/sandbox.md; `rustcoder doctor` shows what this machine provides) and "
            "rerun: finished programs are kept, the rest resume.")
    log(f"sandbox self-check passed ({why})")


@dataclass
class _Progress:
    """How far the execute stage got: for its log lines and the sandbox-error limit."""

    total: int
    executed: int = 0
    sandbox_errors: int = 0
    started: float = field(default_factory=time.time)
    last_log: float = field(default_factory=time.time)

def stage_execute(plan: EvalPlan, samples: dict[str, dict], log) -> dict[str, dict]:
    """Compile/run the code of every code-task sample not yet executed; returns {key: execution}.

    A self-check program proves the sandbox works before the first batch, alongside every batch (one more
    job run next to the batch's programs: a batch whose self-check fails is not recorded, nothing is blamed
    on the model) and after any sandbox error; past a small number of sandbox errors the stage stops with
    an error instead of leaving those samples out of the rates. Programs with tests run under the sandbox's
    verdict harness. test_generation answers pass only when at least one test ran, all passed, and they fail
    against at least one wrong-valued variant (mutant) of the code under test.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .. import sandbox
    from ..sandbox import rustc_available

    store = JsonlStore(plan.eval_dir / EXECUTIONS)
    # sandbox errors are the sandbox's, not the model's: never kept as a final verdict
    done = {k: v for k, v in store.load().items() if v.get("status") != "sandbox_error"}
    by_id = plan.by_id
    tags = {t.tag for t in plan.targets}
    queue: list[tuple[dict, tasks.ProgramPlan]] = []
    immediate = []
    for key, s in samples.items():
        item = by_id.get(s["id"])
        if key in done or item is None or s["model"] not in tags or s.get("finish_reason") in ("error", "missing"):
            continue
        spec = tasks.task_of(item.task)
        if spec.program is None:
            continue
        pp = tasks.build_programs(spec, item.data, s.get("answer") or "", plan.suite.edition)
        if pp.status or not pp.programs:
            immediate.append({"key": key, "status": pp.status or "no_code", "code": pp.code})
        elif plan.cfg.no_exec:
            immediate.append({"key": key, "status": "not_executed", "code": pp.code,
                              "program": pp.programs[0].source, "label": pp.programs[0].label})
        else:
            queue.append((s, pp))
    store.append(immediate)
    if not queue:
        return store.load()
    if not rustc_available():
        raise RustcoderError("rustc is needed to compile generated code but was not found. Install Rust with "
                             "rustup (https://rustup.rs), set RUSTCODER_RUSTC, or pass --no-exec to skip execution "
                             "(code tasks then get status not_executed).")
    workers = plan.cfg.workers or os.cpu_count() or 1
    kwargs = dict(compile_timeout=plan.cfg.compile_timeout, run_timeout=plan.cfg.run_timeout)
    cache: dict[tuple, dict] = {}  # Program.key() -> result

    def run_programs(programs: list[tasks.Program]) -> list[dict]:
        keys = [p.key() for p in programs]
        todo = dict(zip(keys, programs))
        todo = {k: p for k, p in todo.items() if k not in cache}
        for mode in ("check", "test"):
            for edition in sorted({p.edition for p in todo.values() if p.mode == mode}):
                group = [(k, p) for k, p in todo.items() if p.mode == mode and p.edition == edition]
                for (k, _), r in zip(group, sandbox.run_many([p.source for _, p in group], workers=workers,
                                                             per_item=[p.run_args() for _, p in group], mode=mode,
                                                             edition=edition, **kwargs)):
                    cache[k] = r.to_dict()
        return [cache[k] for k in keys]

    _check_sandbox(log, "before the first batch")
    chunk = max(16, 8 * workers)  # the self-check riding along costs about one job in chunk + 1
    log(f"execute: {len(queue)} program(s) in the sandbox, {workers} at a time")
    progress = _Progress(total=len(queue))
    checker = ThreadPoolExecutor(1, thread_name_prefix="rustcoder-self-check")
    try:
        for c in range(0, len(queue), chunk):
            proof = checker.submit(sandbox.sandbox_self_check)
            recs = _run_batch(queue[c:c + chunk], run_programs=run_programs, by_id=by_id)
            _record_batch(recs, proof=proof.result(), store=store, progress=progress, log=log)
    finally:
        checker.shutdown(wait=True)
    return store.load()


def _run_batch(batch: list[tuple[dict, tasks.ProgramPlan]], *, run_programs: Callable[[list], list[dict]],
               by_id: dict[str, EvalItem]) -> list[dict]:
    """Run one batch's programs (with the fallback without restated context, and the generated tests against
    wrong-valued variants or panicking bodies of the code under test); returns its executions.jsonl records."""
    chosen = [(pp.programs[0], r) for (_, pp), r in zip(batch, run_programs([pp.programs[0] for _, pp in batch]))]
    # the answer restated the context (defined twice): try the fallback program without it
    retry = [i for i, ((_, pp), (_, r)) in enumerate(zip(batch, chosen))
             if r["status"] == "compile_error" and len(pp.programs) > 1 and r["error_codes"]
             and set(r["error_codes"]) <= tasks.DUPLICATE_DEFINITION_CODES]
    if retry:
        again = run_programs([batch[i][1].programs[1] for i in retry])
        for i, r in zip(retry, again):
            if r["status"] != "compile_error" or not set(r["error_codes"]) <= tasks.DUPLICATE_DEFINITION_CODES:
                chosen[i] = (batch[i][1].programs[1], r)
    # generated tests must test something: they must fail against a wrong-valued variant of the code under test
    mutants: dict[int, list[tasks.Program]] = {}
    for i, ((s, _pp), (prog, r)) in enumerate(zip(batch, chosen)):
        if r["status"] == "pass" and r["tests_passed"] > 0 and \
                tasks.task_of(by_id[s["id"]].task).program == "tests_for_code":
            mutants[i] = tasks.mutant_programs(prog)
    flat = [(i, m) for i, ms in mutants.items() for m in ms]
    mutant_runs: dict[int, list[dict]] = {i: [] for i in mutants}
    for (i, _), r in zip(flat, run_programs([m for _, m in flat]) if flat else []):
        mutant_runs[i].append(r)
    # no wrong-valued variant compiles: at least the tests must fail against panicking bodies
    fallback = {i: tasks.broken_program(chosen[i][0]) for i, runs in mutant_runs.items()
                if not any(r["status"] not in ("compile_error", "forbidden") for r in runs)}
    fallback = {i: b for i, b in fallback.items() if b}
    broken_runs = dict(zip(fallback, run_programs([b[0] for b in fallback.values()]))) if fallback else {}
    return [_execution_record(s["key"], pp, prog, r, mutants=mutants.get(i), mutant_runs=mutant_runs.get(i),
                              broken=broken_runs.get(i))
            for i, ((s, pp), (prog, r)) in enumerate(zip(batch, chosen))]


def _execution_record(key: str, pp: tasks.ProgramPlan, prog: tasks.Program, r: dict, *,
                      mutants: list[tasks.Program] | None, mutant_runs: list[dict] | None,
                      broken: dict | None) -> dict:
    """One sample's executions.jsonl record: the run's verdict, downgraded to weak_tests when its generated
    tests also pass against the wrong-valued variants (``mutants``) or the panicking bodies (``broken``)."""
    status, detail = r["status"], r["detail"]
    rec = {"key": key, "label": prog.label, "mode": prog.mode, "has_tests": prog.has_tests}
    if prog.has_tests and status == "pass" and r["tests_passed"] == 0:
        status, detail = "no_tests", "no test ran (0 tests): nothing was checked"
    if mutant_runs is not None:
        runs = mutant_runs
        viable = [m for m in runs if m["status"] not in ("compile_error", "forbidden", "sandbox_error")]
        killed = [m for m in viable if m["status"] in tasks.DISCRIMINATING_STATUSES]
        rec.update(mutants=len(runs), mutants_viable=len(viable), mutants_killed=len(killed),
                   mutant_labels=[p.label for p in mutants])
        if broken is not None:
            rec.update(broken_status=broken["status"])
            if broken["status"] == "pass":
                status = "weak_tests"
                detail = (f"all {r['tests_passed']} test(s) also pass with the function bodies of the code under "
                          "test replaced by a panic: they do not test it")
            elif broken["status"] in tasks.DISCRIMINATING_STATUSES:
                detail += ("; no wrong-valued variant of the code under test compiles; the tests fail against "
                           "panicking bodies")
            else:
                detail += f"; the check against broken code was inconclusive ({broken['status']})"
        elif any("result perturbed" in p.label and m in viable and m not in killed for p, m in zip(mutants, runs)):
            status = "weak_tests"
            detail = (f"all {r['tests_passed']} test(s) also pass when the result of the code under test is "
                      "nudged (+ 1, or negated): they do not check the value (F21)")
        elif viable and not killed:
            status = "weak_tests"
            detail = (f"all {r['tests_passed']} test(s) also pass against every one of {len(viable)} wrong-valued "
                      "variant(s) of the code under test (" + ", ".join(
                          p.label.rsplit("mutant: ", 1)[-1].rstrip(")") for p in mutants) + "): they assert "
                      "nothing that tells right from wrong")
        else:
            detail += f"; {len(killed)} of {len(viable)} wrong-valued variant(s) of the code under test caught"
    rec.update({
        "status": status, "compiled": _compiled(r["status"], r),
        "error_codes": r["error_codes"], "missing_crates": r["missing_crates"],
        "tests_passed": r["tests_passed"], "tests_failed": r["tests_failed"],
        "compile_seconds": round(r["compile_seconds"], 3), "run_seconds": round(r["run_seconds"], 3),
        "detail": detail, "diagnostics": (r["diagnostics"] or "")[:2000],
        "stdout_tail": (r["stdout"] or "")[-1000:], "code": pp.code,
        # what was compiled, for a person to read: the code, then the tests the harness ran against it
        "program": prog.source + (f"\n// ---- tests (verdict harness) ----\n{prog.tests}" if prog.tests else "")})
    return rec


def _record_batch(recs: list[dict], *, proof, store: JsonlStore, progress: _Progress, log) -> None:
    """Keep a batch's records only when its own sandbox self-check (``proof``) passed; stop the stage past the
    sandbox-error limit."""
    _check_sandbox(log, "alongside this batch", proof)  # before recording: nothing blamed on it
    store.append(recs)
    progress.executed += len(recs)
    errors = [rec for rec in recs if rec["status"] == "sandbox_error"]
    if errors:
        progress.sandbox_errors += len(errors)
        log(f"  {len(errors)} sandbox error(s): {errors[0]['detail']}")
        _check_sandbox(log, f"after {progress.sandbox_errors} sandbox error(s)")
        limit = _sandbox_error_limit(progress.executed)
        if progress.sandbox_errors > limit:
            raise RustcoderError(
                f"{progress.sandbox_errors} of {progress.executed} programs failed in the sandbox itself (e.g. "
                f"{errors[0]['detail']!r}), more than {limit}: the scores would "
                "silently leave them out. Fix the sandbox (docs/sandbox.md) and rerun: other results are kept "
                "and sandbox errors are retried.")
    if progress.executed >= progress.total or time.time() - progress.last_log >= 15:
        log(f"  executed {progress.executed}/{progress.total}, {time.time() - progress.started:.0f} s")
        progress.last_log = time.time()
