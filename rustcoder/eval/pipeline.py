"""The evaluation pipeline: plan -> (teacher-forced) -> generate -> execute -> score -> report.

Each stage appends to its own JSONL file in the eval directory, keyed by sample id
(``MODEL:ITEM_ID:SAMPLE_INDEX``): a rerun skips what is done, so a killed evaluation resumes where
it stopped, and a stage can be redone alone (``redo``) from the files of the stages before it.
Models are loaded only when something is left to generate or teacher-force.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import artifacts
from ..errors import ConfigError, DataError, RustcoderError, UsageError
from . import extract, metrics, tasks, throughput
from .backends import EndpointBackend, GenParams, GenRequest, ModelTarget, api_key_from_env
from .config import EvalConfig
from .loading import BackendFactory, Backends, default_backend_factory  # noqa: F401 - part of the pipeline's API
from .models import ResolvedModel, reference_model, resolve_eval_targets, slug
from .plan import EvalPlan
from .store import (CONFIG_FILE, EVAL_FORMAT, EXECUTIONS, JUDGMENTS, METRICS, PLOT,  # noqa: F401 - re-exported
                    REPORT, SAMPLES, SCORES, STAGE_FILES, STAGE_ORDER, TEACHER_FORCED, JsonlStore, sample_key,
                    sample_record)
from .suites import EvalItem, Suite, benchmark_suite, dataset_suite, load_items


# ---- the plan -----------------------------------------------------------------------------------

def _default_suite(resolved: ResolvedModel, log) -> Suite:
    from ..config import STRANDSET_ID
    from ..data.strandset import is_sample

    trained = resolved.trained_dataset
    if trained is None:
        return dataset_suite(STRANDSET_ID)
    if is_sample(trained):
        return dataset_suite("sample")
    path = Path(trained).expanduser()
    if path.exists():
        if not resolved.eval_split_ids:
            raise UsageError(f"the run trained on the local data {trained!r} and has no eval_split.jsonl: pass "
                             "--dataset (a held-out file, 'sample', or a hub id).")
        suite = dataset_suite(str(path))
        suite.name, suite.split, suite.eval_split_ids = "eval-split", "train", set(resolved.eval_split_ids)
        suite.description = f"the run's held-out split of {trained} ({len(resolved.eval_split_ids)} rows)"
        return suite
    if trained.startswith((".", "/", "~")) or trained.count("/") != 1:
        raise UsageError(f"the run trained on {trained!r}, which no longer exists here: pass --dataset "
                         "(a held-out file, 'sample', or a hub id).")
    return dataset_suite(trained, revision=resolved.trained_dataset_revision)


def _read_predictions(path: str, by_id: dict[str, EvalItem]) -> tuple[dict[str, dict], list[str], int]:
    """Predictions file (.jsonl, .json or .parquet) -> ({key: sample record}, model tags, unknown ids).

    A repeated id is an error unless its lines carry distinct ``sample_index`` values.
    """
    from ..data.strandset import iter_records

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"predictions file {path!r} does not exist.")
    out: dict[str, dict] = {}
    tags: list[str] = []
    unknown = 0
    next_index: Counter = Counter()
    first_line: dict[tuple[str, str], int] = {}
    for lineno, rec in iter_records(p, what="one JSON object with an id and an answer"):
        item_id = rec.get("id") if rec.get("id") is not None else rec.get("task_id")
        item_id = str(item_id) if isinstance(item_id, (str, int)) and not isinstance(item_id, bool) else ""
        answer = next((rec[k] for k in ("answer", "completion", "response", "output", "text") if k in rec), None)
        if not item_id or answer is None:
            raise DataError(f"{p}:{lineno}: each line needs an id (or task_id) and an answer (or completion).")
        if not isinstance(answer, str):
            raise DataError(f"{p}:{lineno}: the answer of {item_id!r} is {type(answer).__name__}, not text. "
                            "Write the model's answer as a JSON string.")
        if item_id not in by_id:
            unknown += 1
            continue
        tag = str(rec.get("model") or "predictions")
        if tag not in tags:
            tags.append(tag)
        index = rec.get("sample_index")
        if index is None:
            if (tag, item_id) in first_line:
                raise DataError(
                    f"{p}:{lineno}: id {item_id!r} (model {tag!r}) was already answered at line "
                    f"{first_line[(tag, item_id)]}. Remove the duplicate, or, for several samples per item, give "
                    "each line a \"sample_index\" (0, 1, ...).")
            index = next_index[(tag, item_id)]
        elif isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise DataError(f"{p}:{lineno}: sample_index must be a whole number >= 0, got {index!r}.")
        elif index >= MAX_PREDICTION_SAMPLES:  # F19: every item gets a record per index up to the largest
            raise DataError(f"{p}:{lineno}: sample_index {index} is over the limit of {MAX_PREDICTION_SAMPLES - 1}; "
                            "sample indices number each id's samples 0, 1, ..., N-1.")
        first_line.setdefault((tag, item_id), lineno)
        next_index[(tag, item_id)] = max(next_index[(tag, item_id)], int(index) + 1)
        item = by_id[item_id]
        key = sample_key(tag, item_id, int(index))
        if key in out:
            raise DataError(f"{p}:{lineno}: id {item_id!r} sample_index {index} (model {tag!r}) appears twice "
                            f"(first at line {out[key]['line']}); each sample needs its own sample_index.")
        out[key] = {"key": key, "model": tag, "id": item_id, "category": item.category,
                    "sample_index": int(index), "answer": str(answer),
                    # a file cannot mark its own answers as excluded (error) or missing
                    "finish_reason": "length" if rec.get("finish_reason") == "length" else "stop",
                    "tokens": rec.get("tokens") if isinstance(rec.get("tokens"), int) else None,
                    "backend": "predictions", "line": lineno}
    seen: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for rec in out.values():
        seen.setdefault((rec["model"], rec["id"]), []).append((rec["sample_index"], rec["line"]))
    for (tag, item_id), got in seen.items():
        indices = sorted(i for i, _ in got)
        if indices != list(range(len(indices))):
            gap = next(k for k, i in enumerate(indices) if i != k)
            line = max(ln for _, ln in got)
            raise DataError(f"{p}:{line}: id {item_id!r} (model {tag!r}) has sample_index values {indices[:5]}"
                            f"{'...' if len(indices) > 5 else ''}, but sample {gap} is missing; sample indices "
                            f"must be 0..N-1 (here 0..{len(indices) - 1}) for each id.")
    return out, tags, unknown


MAX_PREDICTION_SAMPLES = 1000  # samples per item a predictions file may number (sample_index 0..999)


def plan_eval(cfg: EvalConfig, log=print) -> EvalPlan:
    """Resolve the model, suite, items, eval directory and decoding settings (nothing is loaded)."""
    cfg.check()
    notes: list[str] = []
    mode = "oracle" if cfg.oracle else "predictions" if cfg.predictions else "model"

    if mode == "oracle":
        resolved = reference_model()
    elif mode == "predictions" and not cfg.model:
        resolved = ResolvedModel("predictions", Path(cfg.predictions).name, None,
                                 slug=slug(Path(cfg.predictions).stem))
    else:
        resolved = resolve_eval_targets(cfg.model, runs_dir=cfg.runs_dir, base_model=cfg.base_model,
                                        endpoint=cfg.endpoint)
        if resolved.picked_newest:
            log(f"evaluating the newest finished run: {resolved.run_dir}")

    if cfg.benchmark:
        suite = benchmark_suite(cfg.benchmark)
    elif cfg.dataset:
        suite = dataset_suite(cfg.dataset, cfg.dataset_revision)
    elif mode == "oracle":
        suite = benchmark_suite("humaneval-rust")
    elif mode == "predictions" and not cfg.model:
        from ..config import STRANDSET_ID

        suite = dataset_suite(STRANDSET_ID)
    else:
        suite = _default_suite(resolved, log)

    train_ids, train_src = resolved.train_ids, resolved.train_ids_source
    if cfg.train_ids:
        from .models import read_ids

        p = Path(cfg.train_ids).expanduser()
        if not p.is_file():
            raise UsageError(f"--train-ids file {cfg.train_ids!r} does not exist.")
        train_ids, train_src = read_ids(p), str(p)
    items = load_items(suite, train_ids=train_ids, train_ids_source=train_src, limit=cfg.limit,
                       categories=cfg.categories, keep_invalid=mode == "oracle")
    if items.overlap:
        log(f"warning: {len(items.overlap)} eval row(s) are in the training set ({train_src}) and are not scored")

    gen = suite.generation or {}
    samples = cfg.samples or int(gen.get("samples", 1))
    temperature = cfg.temperature if cfg.temperature is not None else float(gen.get("temperature", 0.0))
    if mode != "model":
        samples, temperature = (1, 0.0) if mode == "oracle" else (samples, temperature)
    if samples > 1 and temperature == 0 and mode == "model":
        raise ConfigError([f"--samples: {samples} greedy samples would be identical; add --temperature (e.g. 0.8)"])
    params = GenParams(max_new_tokens=cfg.max_new_tokens or int(gen.get("max_new_tokens", 512)),
                       temperature=temperature, top_p=cfg.top_p if temperature > 0 else 1.0, seed=cfg.seed)

    predictions: dict[str, dict] = {}
    if mode == "oracle":
        targets = [resolved.target]
    elif mode == "predictions":
        predictions, tags, unknown = _read_predictions(cfg.predictions, {i.id: i for i in items.items})
        if unknown:
            notes.append(f"{unknown} prediction(s) name ids that are not in {suite.name} (or were excluded); ignored")
        if not predictions:
            raise DataError(f"no prediction in {cfg.predictions} matches an item of {suite.name}.")
        targets = [ModelTarget(t, "predictions", f"predictions ({t})", identity={"predictions": str(cfg.predictions),
                                                                                "tag": t}) for t in tags]
        if "base" in tags:  # base last, so it reads "adapter vs base"
            targets = [t for t in targets if t.tag != "base"] + [t for t in targets if t.tag == "base"]
        samples = max(r["sample_index"] for r in predictions.values()) + 1
    else:
        targets = [resolved.target]
        if cfg.compare_base:
            if resolved.base is None:
                raise UsageError(f"--compare-base: no base model is known for {resolved.label!r}; pass --base-model "
                                 "ID_OR_DIR" + (" (the name the server gives the base)" if cfg.endpoint else "") + ".")
            targets.append(resolved.base)

    backend = cfg.backend if cfg.backend != "auto" else ("endpoint" if cfg.endpoint else "transformers")
    if mode != "model":
        backend = mode
    teacher_forced = cfg.teacher_forced if cfg.teacher_forced is not None else (
        backend == "transformers" and suite.kind == "strandset")
    if teacher_forced and backend != "transformers":
        notes.append(f"teacher-forced scores need local weights (transformers backend); skipped for {backend}")
        teacher_forced = False
    if teacher_forced and suite.kind != "strandset":
        teacher_forced = False

    if cfg.output_dir:
        eval_dir = Path(cfg.output_dir)
    elif resolved.kind == "run" and resolved.run_dir is not None and mode == "model":
        eval_dir = resolved.run_dir / "eval" / suite.name
    else:
        eval_dir = Path("evals-out") / resolved.slug / suite.name
    return EvalPlan(cfg=cfg, mode=mode, suite=suite, items=items, resolved=resolved, targets=targets,
                    eval_dir=eval_dir, params=params, samples=samples,
                    ks=metrics.ks_for(samples, suite.k), teacher_forced=teacher_forced, backend=backend,
                    notes=notes, predictions=predictions, log=log)


# ---- eval directory bookkeeping -----------------------------------------------------------------

def _discard(eval_dir: Path, stages: list[str]) -> None:
    for stage in stages:
        for name in STAGE_FILES[stage]:
            (eval_dir / name).unlink(missing_ok=True)
        if stage == "generate":
            from .parallel import remove_work_dir

            remove_work_dir(eval_dir)  # data-parallel workers' shard files


def prepare_eval_dir(plan: EvalPlan, log=print) -> None:
    """Create the eval dir, refuse to mix in samples made with other settings, apply --overwrite/--redo,
    and write the resolved config."""
    d = plan.eval_dir
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / CONFIG_FILE
    fingerprints = {t.tag: plan.fingerprint(t) for t in plan.targets}
    if plan.cfg.overwrite:
        _discard(d, STAGE_ORDER)
    elif plan.cfg.redo:
        _discard(d, STAGE_ORDER[STAGE_ORDER.index(plan.cfg.redo):] if plan.cfg.redo != "generate"
                 else STAGE_ORDER)
    elif cfg_path.is_file() and (d / SAMPLES).is_file():
        old = (yaml.safe_load(cfg_path.read_text()) or {}).get("fingerprints") or {}
        changed = [tag for tag, fp in fingerprints.items() if tag in old and old[tag] != fp]
        if changed:
            raise UsageError(
                f"{d} already holds samples of {', '.join(changed)} made with other settings (model, decoding, "
                "samples or suite changed). Pass --overwrite to start over, or --output-dir for a new directory.")
        fingerprints = {**old, **fingerprints}
    if plan.mode == "predictions":
        _discard(d, STAGE_ORDER)  # the file is the source of truth; re-import it every time
    record = {
        "rustcoder_eval": EVAL_FORMAT,
        "created_at": time.time(),
        "mode": plan.mode,
        "backend": plan.backend,
        "model": {"kind": plan.resolved.kind, "label": plan.resolved.label,
                  "run_dir": str(plan.resolved.run_dir) if plan.resolved.run_dir else None,
                  "picked_newest": plan.resolved.picked_newest},
        "targets": [{"tag": t.tag, "kind": t.kind, "describe": t.describe(), "identity": t.identity}
                    for t in plan.targets],
        "suite": plan.suite.to_dict(),
        "generation": {"samples": plan.samples, **plan.params.__dict__, "k": plan.ks},
        "teacher_forced": plan.teacher_forced,
        "items": len(plan.items.items),
        "fingerprints": fingerprints,
        "config": plan.cfg.to_dict(),
        "versions": artifacts.package_versions(),
        "git_commit": artifacts.git_commit(),
    }
    artifacts.atomic_write_yaml(cfg_path, record)


# ---- stage: teacher-forced + generate -----------------------------------------------------------

def _tf_max_length(plan: EvalPlan) -> int:
    return plan.cfg.max_length or plan.resolved.max_length or 2048


def stage_teacher_forced(plan: EvalPlan, target: ModelTarget, backends: Backends, log) -> None:
    """Teacher-forced loss/accuracy of the reference answers for one target (skips done items)."""
    store = JsonlStore(plan.eval_dir / TEACHER_FORCED)
    done = store.load()
    todo = [i for i in plan.items.items if f"{target.tag}:{i.id}" not in done]
    if not todo:
        return
    backend = backends.get(target)
    if not getattr(backend, "supports_teacher_forcing", False):
        return
    started = time.time()
    convs = [i.messages + [{"role": "assistant", "content": i.reference}] for i in todo]
    stats = backend.token_stats(convs, batch_size=plan.cfg.batch_size, max_length=_tf_max_length(plan),
                                adapter_enabled=target.adapter_enabled)
    store.append({"key": f"{target.tag}:{i.id}", "model": target.tag, "id": i.id, "category": i.category,
                  "nll_sum": s.nll_sum, "tokens": s.tokens, "correct": s.correct} for i, s in zip(todo, stats))
    log(f"teacher-forced {target.tag}: {len(todo)} reference answers in {time.time() - started:.1f} s")


def _pending(plan: EvalPlan, target: ModelTarget, done: dict[str, dict]) -> list[GenRequest]:
    requests = []
    for item in plan.items.items:
        missing = [j for j in range(plan.samples) if sample_key(target.tag, item.id, j) not in done]
        if missing:
            requests.append(GenRequest(item, n=len(missing), start=missing[0], indices=missing))
    return requests


def data_parallel_workers(plan: EvalPlan, backends: Backends, log) -> int:
    """How many generation processes: --data-parallel for local models loaded the default way, else 1."""
    n = plan.cfg.data_parallel or 1
    if n <= 1 or plan.mode != "model" or plan.backend not in ("transformers", "vllm"):
        return 1
    if backends.factory is not default_backend_factory:
        log(f"note: --data-parallel {n} ignored: a custom backend factory generates in this process")
        return 1
    return n


def stage_generate(plan: EvalPlan, backends: Backends, log) -> dict[str, dict]:
    """Generate every missing sample of every target; returns all samples {key: record}.

    With ``--data-parallel N`` (local models) the teacher-forced stage runs here first, the model is
    released, and N worker processes generate the pending samples (see ``parallel``).
    """
    store = JsonlStore(plan.eval_dir / SAMPLES)
    if plan.mode == "predictions":
        store.append(plan.predictions.values())
        missing = []
        for target in plan.targets:  # items (or samples) the file does not answer count as failures
            for item in plan.items.items:
                for j in range(plan.samples):
                    key = sample_key(target.tag, item.id, j)
                    if key not in plan.predictions:
                        missing.append({"key": key, "model": target.tag, "id": item.id, "category": item.category,
                                        "sample_index": j, "answer": "", "finish_reason": "missing",
                                        "tokens": None, "backend": "predictions"})
        store.append(missing)
        expected = len(plan.targets) * len(plan.items.items) * plan.samples
        log(f"predictions: {len(plan.predictions)} answers from {plan.cfg.predictions}")
        if missing:
            log(f"warning: the predictions answer {expected - len(missing)} of {expected} item sample(s) "
                f"({100.0 * (expected - len(missing)) / expected:.1f}% coverage); the {len(missing)} without an "
                "answer are scored 0 (status missing)")
        return store.load()
    from . import parallel

    parallel.merge_shards(plan, log, clean=True)  # samples a killed data-parallel run finished
    done = {k: v for k, v in store.load().items() if v.get("finish_reason") != "error"}  # retry errors
    speed = JsonlStore(plan.eval_dir / throughput.STATS_FILE)
    workers = data_parallel_workers(plan, backends, log)
    if workers > 1:
        per_gpu = (plan.cfg.tensor_parallel_size or 1) if plan.backend == "vllm" else 1
        parallel.assign_devices(workers, parallel.visible_gpus(), per_gpu)  # enough GPUs? (before any load)
    jobs = []
    for n, target in enumerate(plan.targets):
        if plan.teacher_forced and target.kind == "local":
            stage_teacher_forced(plan, target, backends, log)
        requests = _pending(plan, target, done)
        total = sum(r.n for r in requests)
        before = len(plan.items.items) * plan.samples - total
        if not requests:
            log(f"generate {target.tag}: all {before} sample(s) already done")
        elif workers > 1:
            if before:
                log(f"generate {target.tag}: {before} sample(s) done before")
            jobs.append((target, requests))
        else:
            backend = backends.get(target)
            log(f"generate {target.describe()}: {total} sample(s)"
                + (f" ({before} done before)" if before else ""))
            backend.prepare(target)  # e.g. the served backend's engine start: not part of the generation speed
            started, made, last_log = time.time(), 0, time.time()
            timer = throughput.GenerationTimer([target.tag], backend.name)
            for req, gens in backend.generate(requests, plan.params, target):
                recs = [sample_record(target.tag, req, j, g, backend.name) for j, g in zip(req.sample_indices, gens)]
                timer.add(gens)
                for rec in recs:
                    done[rec["key"]] = rec
                store.append(recs)
                made += len(recs)
                if made == total or time.time() - last_log >= 15:
                    log(f"  {target.tag}: {made}/{total} samples, {time.time() - started:.0f} s")
                    last_log = time.time()
            if backend.name != "reference":  # the oracle generates nothing
                speed.append([timer.record()])
                log(f"  speed {timer.summary()}")
        backends.release_unneeded(plan.targets[n + 1:])
    if jobs:
        backends.close()  # the workers load their own copies; free this process's (GPU) memory first
        before_keys = set(store.load())
        timer = throughput.GenerationTimer([t.tag for t, _ in jobs], plan.backend, workers=workers)
        timer.workers = parallel.generate_parallel(plan, jobs, log)  # timed with worker start and model load
        samples = store.load()
        timer.add(v for k, v in samples.items() if k not in before_keys)
        speed.append([timer.record()])
        log(f"  speed {timer.summary()} (worker start and model load included)")
        missing = [sample_key(t.tag, r.item.id, j) for t, reqs in jobs for r in reqs for j in r.sample_indices
                   if sample_key(t.tag, r.item.id, j) not in samples]
        if missing:
            raise RustcoderError(f"the generation workers finished but {len(missing)} sample(s) are missing from "
                                 f"{SAMPLES} (e.g. {missing[0]}); rerun to generate them.")
        return samples
    return store.load()


# ---- stage: execute -----------------------------------------------------------------------------

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
    started = last_log = time.time()
    chunk = max(16, 8 * workers)  # the self-check riding along costs about one job in chunk + 1
    sandbox_errors, executed = 0, 0
    log(f"execute: {len(queue)} program(s) in the sandbox, {workers} at a time")
    checker = ThreadPoolExecutor(1, thread_name_prefix="rustcoder-self-check")
    try:
        for c in range(0, len(queue), chunk):
            proof = checker.submit(sandbox.sandbox_self_check)
            executed, sandbox_errors, last_log = _execute_chunk(
                queue[c:c + chunk], c, chunk, len(queue), proof, run_programs, store, by_id, executed,
                sandbox_errors, started, last_log, log)
    finally:
        checker.shutdown(wait=True)
    return store.load()


def _execute_chunk(part, c, chunk, total, proof, run_programs, store, by_id, executed, sandbox_errors, started,
                   last_log, log):
    """One batch of the execute stage: run, judge the generated tests, check the batch's self-check, record."""
    chosen = [(pp.programs[0], r) for (_, pp), r in zip(part, run_programs([pp.programs[0] for _, pp in part]))]
    # the answer restated the context (defined twice): try the fallback program without it
    retry = [i for i, ((_, pp), (_, r)) in enumerate(zip(part, chosen))
             if r["status"] == "compile_error" and len(pp.programs) > 1 and r["error_codes"]
             and set(r["error_codes"]) <= tasks.DUPLICATE_DEFINITION_CODES]
    if retry:
        again = run_programs([part[i][1].programs[1] for i in retry])
        for i, r in zip(retry, again):
            if r["status"] != "compile_error" or not set(r["error_codes"]) <= tasks.DUPLICATE_DEFINITION_CODES:
                chosen[i] = (part[i][1].programs[1], r)
    # generated tests must test something: they must fail against a wrong-valued variant of the code under test
    mutants: dict[int, list[tasks.Program]] = {}
    for i, ((s, _pp), (prog, r)) in enumerate(zip(part, chosen)):
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
    recs = []
    for i, ((s, pp), (prog, r)) in enumerate(zip(part, chosen)):
        status, detail = r["status"], r["detail"]
        rec = {"key": s["key"], "label": prog.label, "mode": prog.mode, "has_tests": prog.has_tests}
        if prog.has_tests and status == "pass" and r["tests_passed"] == 0:
            status, detail = "no_tests", "no test ran (0 tests): nothing was checked"
        if i in mutant_runs:
            runs = mutant_runs[i]
            viable = [m for m in runs if m["status"] not in ("compile_error", "forbidden", "sandbox_error")]
            killed = [m for m in viable if m["status"] in tasks.DISCRIMINATING_STATUSES]
            rec.update(mutants=len(runs), mutants_viable=len(viable), mutants_killed=len(killed),
                       mutant_labels=[p.label for p in mutants[i]])
            if i in broken_runs:
                b = broken_runs[i]
                rec.update(broken_status=b["status"])
                if b["status"] == "pass":
                    status = "weak_tests"
                    detail = (f"all {r['tests_passed']} test(s) also pass with the function bodies of the code under "
                              "test replaced by a panic: they do not test it")
                elif b["status"] in tasks.DISCRIMINATING_STATUSES:
                    detail += ("; no wrong-valued variant of the code under test compiles; the tests fail against "
                               "panicking bodies")
                else:
                    detail += f"; the check against broken code was inconclusive ({b['status']})"
            elif any("result perturbed" in p.label and m in viable and m not in killed
                     for p, m in zip(mutants[i], runs)):
                status = "weak_tests"
                detail = (f"all {r['tests_passed']} test(s) also pass when the result of the code under test is "
                          "nudged (+ 1, or negated): they do not check the value (F21)")
            elif viable and not killed:
                status = "weak_tests"
                detail = (f"all {r['tests_passed']} test(s) also pass against every one of {len(viable)} wrong-valued "
                          "variant(s) of the code under test (" + ", ".join(
                              p.label.rsplit("mutant: ", 1)[-1].rstrip(")") for p in mutants[i]) + "): they assert "
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
        recs.append(rec)
    _check_sandbox(log, "alongside this batch", proof.result())  # before recording: nothing blamed on it
    store.append(recs)
    executed += len(recs)
    errors = [rec for rec in recs if rec["status"] == "sandbox_error"]
    if errors:
        sandbox_errors += len(errors)
        log(f"  {len(errors)} sandbox error(s): {errors[0]['detail']}")
        _check_sandbox(log, f"after {sandbox_errors} sandbox error(s)")
        if sandbox_errors > _sandbox_error_limit(executed):
            raise RustcoderError(
                f"{sandbox_errors} of {executed} programs failed in the sandbox itself (e.g. "
                f"{errors[0]['detail']!r}), more than {_sandbox_error_limit(executed)}: the scores would "
                "silently leave them out. Fix the sandbox (docs/sandbox.md) and rerun: other results are kept "
                "and sandbox errors are retried.")
    if c + chunk >= total or time.time() - last_log >= 15:
        log(f"  executed {min(c + chunk, total)}/{total}, {time.time() - started:.0f} s")
        last_log = time.time()
    return executed, sandbox_errors, last_log


# ---- stage: score -------------------------------------------------------------------------------

def score_sample(item: EvalItem, sample: dict, execution: dict | None) -> dict:
    """Per-sample status and metrics (primary on 0-100; None when the sample is excluded)."""
    spec = tasks.task_of(item.task)
    out_data = (item.data.get("output_data") or {})
    rec: dict = {"key": sample["key"], "model": sample["model"], "id": item.id, "category": item.category,
                 "sample_index": sample["sample_index"], "finish_reason": sample.get("finish_reason")}
    if sample.get("finish_reason") == "error":
        rec.update(status="generation_error", primary=None, error=sample.get("error"))
        return rec
    if sample.get("finish_reason") == "missing":  # no answer given for this item: it scores 0
        rec.update(status="missing", primary=0.0)
        if spec.program is not None:
            rec.update(passed=0.0, compiled=False, has_tests=False)
        if spec.text_field:
            rec["chrf"] = 0.0
        if spec.match_field:
            rec["exact"] = 0.0
        return rec
    answer = sample.get("answer") or ""
    empty = not extract.strip_thinking(answer).strip()
    status = "empty_answer" if empty else None
    m: dict = {}
    if spec.program is not None:
        ex = execution or {"status": "empty_answer" if empty else "no_code"}
        status = ex["status"]
        m["compiled"] = ex.get("compiled") if status not in tasks.EXCLUDED_STATUSES else None
        if status in ("empty_answer", "no_code", "no_tests", "no_change", "unrelated") and ex.get("compiled") is None:
            m["compiled"] = False
        for name in ("tests_passed", "tests_failed", "mutants", "mutants_viable", "mutants_killed", "broken_status"):
            if name in ex:
                rec[name] = ex[name]
        m["has_tests"] = bool(ex.get("has_tests"))
        m["passed"] = None if status in tasks.EXCLUDED_STATUSES else float(status == "pass")
        if status == "needs_crate" and not tasks.reference_needs(item.data, ex.get("missing_crates") or []):
            # F17: a crate the task's own code never names is the answer's choice, not the task's: it counts as a
            # failure (status kept), so `use made_up::x;` cannot take a hard item out of the denominator
            m["passed"], m["compiled"] = 0.0, False
        rec["error_codes"] = ex.get("error_codes") or []
        rec["missing_crates"] = ex.get("missing_crates") or []
        if "code_preserved" in spec.checks:
            original = (item.data.get("input_data") or {}).get("code", "")
            code = ex.get("code") or ""
            m["code_preserved"] = float(bool(code) and metrics.normalize_code(extract.strip_comments(code))
                                        == metrics.normalize_code(extract.strip_comments(original)))
            if status == "pass" and not m["code_preserved"]:  # comments were asked for, not other code
                status = "code_changed"
                m["passed"] = 0.0

            def comments(text: str) -> int:  # characters of comment text (whitespace aside)
                return (len(metrics.normalize_code(text).replace(" ", ""))
                        - len(metrics.normalize_code(extract.strip_comments(text)).replace(" ", "")))

            if status == "pass" and comments(code) <= comments(original):  # F23: no comment added
                status = "no_change"
                m["passed"] = 0.0
    if spec.text_field:
        reference = str(out_data.get(spec.text_field) or "")
        if spec.answer_kind == "text+code":
            hyp = extract.text_without_code(answer)
        elif spec.answer_kind == "code":
            hyp = (execution or {}).get("code") or extract.extract_code(answer) or ""
        else:
            hyp = extract.unfence(answer)
        m["chrf"] = metrics.chrf(hyp, reference) if hyp.strip() else 0.0
        if status is None:
            status = "scored"
    if spec.match_field:
        reference = str(out_data.get(spec.match_field) or "")
        if spec.match == "name":
            pred, ref = metrics.normalize_name(answer), metrics.normalize_name(reference)
            m["token_f1"] = metrics.name_token_f1(pred, ref)
            m["valid_identifier"] = float(metrics.is_valid_identifier(pred))
        else:
            pred = metrics.normalize_code(extract.extract_fragment(answer))
            ref = metrics.normalize_code(reference)
            m["edit_sim"] = metrics.edit_similarity(pred, ref)
        m["exact"] = float(bool(pred) and pred == ref)
        rec["normalized"] = pred
        if status is None:
            status = "match" if m["exact"] else "mismatch"
    rec["status"] = status or "scored"
    primary = {"pass": m.get("passed"), "chrf": None if m.get("chrf") is None else m["chrf"] / 100,
               "exact": m.get("exact")}[spec.primary]
    rec["primary"] = None if primary is None else 100.0 * primary
    rec.update(m)
    return rec


def stage_score(plan: EvalPlan, samples: dict[str, dict], executions: dict[str, dict], log) -> dict[str, dict]:
    """Score every sample not yet scored; returns {key: score record}."""
    store = JsonlStore(plan.eval_dir / SCORES)
    done = store.load()
    by_id = plan.by_id
    tags = {t.tag for t in plan.targets}
    new = []
    for key, s in samples.items():
        if key in done or s["model"] not in tags or s["id"] not in by_id:
            continue
        item = by_id[s["id"]]
        if tasks.task_of(item.task).program is not None and key not in executions \
                and s.get("finish_reason") not in ("error", "missing"):
            continue  # not executed yet (should not happen after stage_execute)
        new.append(score_sample(item, s, executions.get(key)))
    store.append(new)
    if new:
        log(f"score: {len(new)} sample(s)")
    return store.load()


def stage_judge(plan: EvalPlan, samples: dict[str, dict], log) -> dict[str, dict]:
    """Ask the LLM judge about prose answers (optional; skips judged samples)."""
    store = JsonlStore(plan.eval_dir / JUDGMENTS)
    done = store.load()
    if not plan.cfg.judge_endpoint:
        return done
    import concurrent.futures

    from .backends import served_models
    from .judge import judge_answer

    client = EndpointBackend(plan.cfg.judge_endpoint, api_key=api_key_from_env(plan.cfg.api_key_env),
                             concurrency=plan.cfg.concurrency)
    model = plan.cfg.judge_model
    if model is None:
        try:
            names = served_models(plan.cfg.judge_endpoint, client.api_key)
        except RustcoderError:
            names = []  # no /v1/models: let the server pick its default model
        model = names[0] if names else None
    by_id = plan.by_id
    tags = {t.tag for t in plan.targets}
    todo = []
    for key, s in samples.items():
        item = by_id.get(s["id"])
        if key in done or item is None or s["model"] not in tags or s.get("finish_reason") == "error":
            continue
        spec = tasks.task_of(item.task)
        if spec.answer_kind in ("text", "text+code") and spec.text_field:
            reference = str((item.data.get("output_data") or {}).get(spec.text_field) or "")
            answer = extract.text_without_code(s["answer"]) if spec.answer_kind == "text+code" else s["answer"]
            todo.append((key, item.messages[-1]["content"], reference, answer))
    if not todo:
        return done
    log(f"judge: {len(todo)} prose answer(s) via {plan.cfg.judge_endpoint} ({model or 'server default'})")
    with concurrent.futures.ThreadPoolExecutor(max(1, plan.cfg.concurrency)) as pool:
        futs = {pool.submit(judge_answer, client, model, p, ref, ans): key for key, p, ref, ans in todo}
        batch = []
        for fut in concurrent.futures.as_completed(futs):
            batch.append({"key": futs[fut], "judge_model": model, **fut.result()})
            if len(batch) >= 16:
                store.append(batch)
                batch = []
        store.append(batch)
    return store.load()


# ---- the whole evaluation -----------------------------------------------------------------------

@dataclass
class EvalResult:
    """Where the evaluation's files are and what it measured."""

    eval_dir: Path
    metrics: dict
    report_path: Path
    plot_path: Path | None
    plan: EvalPlan

    def table(self, by_task: bool = True) -> str:
        """The headline table for a terminal."""
        from .report import render_terminal

        return render_terminal(self.metrics, by_task=by_task)


def evaluate(cfg: EvalConfig, *, log=print, backend_factory: BackendFactory | None = None) -> EvalResult:
    """Run (or resume) an evaluation and write samples, executions, scores, metrics, report and chart.

    ``backend_factory(target, plan) -> Backend`` replaces how models are loaded (custom backends,
    tests); by default transformers, vLLM or the endpoint per the plan.
    """
    from .report import build_metrics, plot_scores, render_report

    plan = plan_eval(cfg, log)
    prepare_eval_dir(plan, log)
    log(f"eval directory: {plan.eval_dir}")
    log(f"suite {plan.suite.name}: {len(plan.items.items)} item(s) x {plan.samples} sample(s), "
        f"models: {', '.join(t.tag for t in plan.targets)}")
    for note in plan.notes:
        log(f"note: {note}")
    backends = Backends(plan, backend_factory or default_backend_factory, log)
    try:
        samples = stage_generate(plan, backends, log)
    finally:
        backends.close()
    executions = stage_execute(plan, samples, log)
    scores = stage_score(plan, samples, executions, log)
    judgments = stage_judge(plan, samples, log)
    tf = JsonlStore(plan.eval_dir / TEACHER_FORCED).load()
    result_metrics = build_metrics(plan, samples, executions, scores, tf, judgments)
    result_metrics["generation_speed"] = throughput.speed_table(JsonlStore(plan.eval_dir / throughput.STATS_FILE).load())
    plot_path = plot_scores(result_metrics, plan.eval_dir / PLOT)
    result_metrics["plot"] = str(plot_path) if plot_path else None
    artifacts.atomic_write_json(plan.eval_dir / METRICS, result_metrics)  # with its plot key
    report = render_report(result_metrics).rstrip("\n") + "\n"
    speed_section = throughput.render_markdown(result_metrics["generation_speed"])
    artifacts.atomic_write_text(plan.eval_dir / REPORT, report + ("\n" + speed_section if speed_section else ""))
    return EvalResult(plan.eval_dir, result_metrics, plan.eval_dir / REPORT, plot_path, plan)
