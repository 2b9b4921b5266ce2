"""The score stage: every sample scored by the rules (scores.jsonl) and, with a judge endpoint, every prose
answer judged by an LLM (judgments.jsonl); both resume."""

from __future__ import annotations

from ..errors import RustcoderError
from . import extract, tasks
from .backends import EndpointBackend, api_key_from_env
from .plan import EvalPlan
from .score_rules import score_sample
from .store import JUDGMENTS, SCORES, JsonlStore


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
