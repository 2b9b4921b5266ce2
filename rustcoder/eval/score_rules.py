"""The scoring rules: one sample's status and metrics (primary score on 0-100) from its answer, its item and
its execution record."""

from __future__ import annotations

from . import extract, metrics, tasks
from .suites import EvalItem


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
