"""The generate stage: the samples of every target (and, for local models, the teacher-forced scores of the
reference answers), in this process or in data-parallel workers; resumes from samples.jsonl."""

from __future__ import annotations

import time

from ..errors import RustcoderError
from . import throughput
from .backends import GenRequest, ModelTarget
from .loading import Backends, default_backend_factory
from .plan import EvalPlan
from .store import SAMPLES, TEACHER_FORCED, JsonlStore, sample_key, sample_record


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
