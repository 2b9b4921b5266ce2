"""Aggregating scores into metrics.json, and rendering report.md, the terminal table and the chart.

Every score is on a 0-100 scale: rates are percentages and chrF is already 0-100; teacher-forced
loss is in nats per answer token. A category's headline number is its primary metric (pass rate,
chrF or exact match), averaged per item first (so items with several samples count once).
Deltas compare items both models were scored on, with a paired bootstrap 95% interval.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

from . import metrics as M
from . import tasks

MIN_PAIRS_FOR_CI = 5  # fewer paired items: no interval (a bootstrap of 2 items is just their min and max)


def _pct(values) -> float | None:
    v = M.mean(values)
    return None if v is None else 100.0 * v


def _item_means(recs: list[dict]) -> dict[str, float]:
    by_item: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if r.get("primary") is not None:
            by_item[r["id"]].append(r["primary"])
    return {i: sum(v) / len(v) for i, v in by_item.items()}


def _pass_at_k(recs: list[dict], ks: list[int]) -> dict[str, float]:
    by_item: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if r.get("passed") is not None:
            by_item[r["id"]].append(r["passed"])
    out = {}
    for k in ks:
        vals = [M.pass_at_k(len(v), int(sum(v)), k) for v in by_item.values() if len(v) >= k]
        if vals:
            out[f"pass@{k}"] = 100.0 * sum(vals) / len(vals)
    return out


def _tf(recs: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in recs)
    if not tokens:
        return {}
    return {"tf_loss": sum(r["nll_sum"] for r in recs) / tokens,
            "tf_accuracy": 100.0 * sum(r["correct"] for r in recs) / tokens, "tf_tokens": tokens}


def _category(recs: list[dict], spec: tasks.TaskSpec, tf_recs: list[dict], judged: list[dict], ks: list[int]) -> dict:
    statuses = Counter(r["status"] for r in recs)
    item_means = _item_means(recs)
    codes = Counter(c for r in recs if r["status"] == "compile_error" for c in (r.get("error_codes") or []))
    crates = Counter(c for r in recs if r["status"] == "needs_crate" for c in (r.get("missing_crates") or []))
    out = {
        "metric": spec.primary,
        "items": len({r["id"] for r in recs}),
        "samples": len(recs),
        "scored": sum(1 for r in recs if r.get("primary") is not None),
        "excluded": sum(1 for r in recs if r["status"] in tasks.EXCLUDED_STATUSES and r.get("primary") is None),
        "primary": sum(item_means.values()) / len(item_means) if item_means else None,
        "statuses": dict(statuses.most_common()),
        "truncated": sum(1 for r in recs if r.get("finish_reason") == "length"),
    }
    if spec.program is not None:
        out["compile_rate"] = _pct(r.get("compiled") for r in recs)
        with_tests = [r for r in recs if r.get("has_tests") and r.get("passed") is not None]
        out["test_pass_rate"] = _pct(r["passed"] for r in with_tests)
        out["tested"] = len(with_tests)
        out["needs_crate"] = statuses["needs_crate"]
        out["error_codes"] = dict(codes.most_common(5))
        if crates:
            out["missing_crates"] = dict(crates.most_common(5))
        if spec.primary == "pass":
            out.update(_pass_at_k(recs, ks))
    for name in ("chrf", "edit_sim", "token_f1"):
        vals = [r.get(name) for r in recs if r.get(name) is not None]
        if vals:
            out[name] = M.mean(vals) * (100.0 if name != "chrf" else 1.0)
    for name in ("exact", "valid_identifier", "code_preserved"):
        vals = [r.get(name) for r in recs if r.get(name) is not None]
        if vals:
            out[name] = _pct(vals)
    scores = [j["score"] for j in judged if j.get("score") is not None]
    if judged:
        out["judge"] = M.mean(scores)
        out["judged"] = len(scores)
    out.update(_tf(tf_recs))
    return out


def build_metrics(plan, samples: dict, executions: dict, scores: dict, tf: dict, judgments: dict) -> dict:
    """metrics.json: per model and category, overall, deltas vs base, pass@k, oracle findings."""
    items = plan.items.items
    categories = list(dict.fromkeys(i.category for i in items))
    task_of = {i.category: tasks.task_of(i.task) for i in items}
    ids = {i.id for i in items}
    models: dict[str, dict] = {}
    for target in plan.targets:
        recs = [r for r in scores.values() if r["model"] == target.tag and r["id"] in ids]
        tf_recs = [r for r in tf.values() if r["model"] == target.tag and r["id"] in ids]
        cats = {}
        for cat in categories:
            crecs = [r for r in recs if r["category"] == cat]
            if not crecs and not any(r["category"] == cat for r in tf_recs):
                continue
            judged = [judgments[r["key"]] for r in crecs if r["key"] in judgments]
            cats[cat] = _category(crecs, task_of[cat], [r for r in tf_recs if r["category"] == cat], judged, plan.ks)
        primaries = [c["primary"] for c in cats.values() if c["primary"] is not None]
        overall = {"score": sum(primaries) / len(primaries) if primaries else None,
                   "categories": len(cats), "samples": len(recs),
                   "statuses": dict(Counter(r["status"] for r in recs).most_common()),
                   "truncated": sum(1 for r in recs if r.get("finish_reason") == "length")}
        missing = sum(1 for r in recs if r["status"] == "missing")
        expected = len(items) * plan.samples
        overall["coverage"] = {"expected": expected, "answered": expected - missing, "missing": missing,
                               "percent": 100.0 * (expected - missing) / expected if expected else None}
        code_recs = [r for r in recs if r.get("passed") is not None]
        if code_recs:
            overall["code_pass_rate"] = _pct(r["passed"] for r in code_recs)
            overall["compile_rate"] = _pct(r.get("compiled") for r in recs)
            overall.update(_pass_at_k(code_recs, plan.ks))
        overall.update(_tf(tf_recs))
        models[target.tag] = {"describe": target.describe(), "overall": overall, "categories": cats}
        tested = [r for r in recs if task_of[r["category"]].program == "tests_for_code" and r["status"] != "missing"]
        if tested:  # do the generated tests test the code? both counts, per item and sample
            models[target.tag]["generated_tests"] = [
                {"id": r["id"], "sample_index": r["sample_index"], "status": r["status"],
                 "tests_passed": r.get("tests_passed"), "mutants_viable": r.get("mutants_viable"),
                 "mutants_killed": r.get("mutants_killed")}
                for r in sorted(tested, key=lambda r: (r["id"], r["sample_index"]))]

    comparison = None
    tags = [t.tag for t in plan.targets]
    if "base" in tags and len(tags) > 1:
        mine = next(t for t in tags if t != "base")
        comparison = compare_models(scores, tf, mine=mine, base="base", categories=categories, ids=ids, models=models)

    sandbox = None
    if executions and not plan.cfg.no_exec:
        try:
            from ..sandbox import sandbox_capabilities

            cap = sandbox_capabilities()
            sandbox = {k: cap.get(k) for k in ("rustc", "isolation", "missing", "warnings") if k in cap}
        except Exception:  # noqa: BLE001 - the report must not fail on a capability probe
            sandbox = None
    out = {
        "rustcoder_eval": 1,
        "created_at": time.time(),
        "eval_dir": str(plan.eval_dir),
        "mode": plan.mode,
        "suite": {k: getattr(plan.suite, k) for k in ("name", "kind", "description", "dataset", "revision", "split",
                                                      "path")},
        "model": {"kind": plan.resolved.kind, "label": plan.resolved.label,
                  "run_dir": str(plan.resolved.run_dir) if plan.resolved.run_dir else None,
                  "picked_newest": plan.resolved.picked_newest},
        "targets": {t.tag: t.describe() for t in plan.targets},
        "generation": {"samples": plan.samples, **plan.params.__dict__, "k": plan.ks, "backend": plan.backend},
        "teacher_forced": plan.teacher_forced,
        "data": plan.items.summary(),
        "notes": plan.notes,
        "primary_metric": {c: task_of[c].primary for c in categories},
        "models": models,
        "comparison": comparison,
        "sandbox": sandbox,
        "edition": {"default": plan.suite.edition,
                    "items_using_default": sum(1 for i in items if not i.data.get("edition_given"))},
    }
    if plan.mode == "oracle":
        out["oracle"] = _oracle(plan, scores, executions)
    return out


def compare_models(scores: dict, tf: dict, *, mine: str, base: str, categories: list[str], ids: set,
                   models: dict) -> dict:
    """Model ``mine`` against ``base`` on the items both answered (``ids``): per-category and overall deltas with
    paired bootstrap intervals, and the teacher-forced loss deltas (``tf``)."""
    cats = {}
    all_deltas = []
    for cat in categories:
        a = _item_means([r for r in scores.values() if r["model"] == mine and r["category"] == cat and r["id"] in ids])
        b = _item_means([r for r in scores.values() if r["model"] == base and r["category"] == cat and r["id"] in ids])
        common = sorted(set(a) & set(b))
        deltas = [a[i] - b[i] for i in common]
        entry: dict = {"n_pairs": len(common)}
        if deltas:
            ci = M.paired_bootstrap(deltas) if len(deltas) >= MIN_PAIRS_FOR_CI else None
            entry.update(delta=sum(deltas) / len(deltas), ci=list(ci) if ci else None,
                         significant=bool(ci and (ci[0] > 0 or ci[1] < 0)))
            all_deltas.append(entry["delta"])
        ma, mb = models.get(mine, {}).get("categories", {}).get(cat, {}), \
            models.get(base, {}).get("categories", {}).get(cat, {})
        if ma.get("tf_loss") is not None and mb.get("tf_loss") is not None:
            entry["tf_loss_delta"] = ma["tf_loss"] - mb["tf_loss"]
            entry["tf_accuracy_delta"] = ma["tf_accuracy"] - mb["tf_accuracy"]
            la = {r["id"]: r["nll_sum"] / r["tokens"] for r in tf.values()
                  if r["model"] == mine and r["category"] == cat and r["tokens"] and r["id"] in ids}
            lb = {r["id"]: r["nll_sum"] / r["tokens"] for r in tf.values()
                  if r["model"] == base and r["category"] == cat and r["tokens"] and r["id"] in ids}
            paired = [la[i] - lb[i] for i in sorted(set(la) & set(lb))]
            ci = M.paired_bootstrap(paired) if len(paired) >= MIN_PAIRS_FOR_CI else None
            entry["tf_loss_ci"] = list(ci) if ci else None
            entry["tf_loss_significant"] = bool(ci and (ci[0] > 0 or ci[1] < 0))
        cats[cat] = entry
    oa, ob = models[mine]["overall"], models[base]["overall"]
    overall = {"delta": oa["score"] - ob["score"] if oa.get("score") is not None and ob.get("score") is not None
               else None,
               "improved": [c for c, e in cats.items() if e.get("significant") and e["delta"] > 0],
               "worsened": [c for c, e in cats.items() if e.get("significant") and e["delta"] < 0]}
    if oa.get("tf_loss") is not None and ob.get("tf_loss") is not None:
        overall["tf_loss_delta"] = oa["tf_loss"] - ob["tf_loss"]
    return {"model": mine, "base": base, "categories": cats, "overall": overall}


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def _oracle(plan, scores: dict, executions: dict) -> dict:
    by_id = plan.by_id
    recs = [r for r in scores.values() if r["model"] == "reference" and r["id"] in by_id]
    failures = []
    for r in sorted(recs, key=lambda r: r["id"]):
        if r.get("primary") == 100.0:
            continue
        item = by_id[r["id"]]
        ex = executions.get(r["key"]) or {}
        why = item.invalid or item.excluded or item.data.get("known_issue")
        failures.append({"id": r["id"], "category": r["category"], "status": r["status"],
                         "error_codes": r.get("error_codes") or [],
                         "evidence": _first_line(ex.get("diagnostics") or "") or ex.get("detail") or "",
                         "reason": why, "invalid": bool(item.invalid), "expected": bool(why)})
    statuses = Counter(r["status"] for r in recs)
    scorable = [r for r in recs if not (by_id[r["id"]].invalid or by_id[r["id"]].excluded)]
    return {"total": len(recs), "pass": sum(1 for r in recs if r.get("primary") == 100.0),
            "scorable": len(scorable), "scorable_pass": sum(1 for r in scorable if r.get("primary") == 100.0),
            "statuses": dict(statuses.most_common()),
            "invalid": sum(1 for i in plan.items.items if i.invalid),
            "failures": failures, "unexpected": sum(1 for f in failures if not f["expected"])}


# ---- rendering ----------------------------------------------------------------------------------

def _fmt(v, digits: int = 1, sign: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _ci(e: dict) -> str:
    if not e.get("ci"):
        return "–"
    lo, hi = e["ci"]
    return f"[{lo:+.1f}, {hi:+.1f}]" + (" *" if e.get("significant") else "")


def _headline_rows(m: dict) -> tuple[list[str], list[list[str]]]:
    tags = list(m["models"])
    comp = m.get("comparison")
    cats = list(m["primary_metric"])
    if comp:
        mine, base = comp["model"], comp["base"]
        header = ["category", "n", "metric", base, mine, "Δ", "95% CI"]
        rows = []
        for c in cats:
            a = m["models"][mine]["categories"].get(c, {})
            b = m["models"][base]["categories"].get(c, {})
            e = comp["categories"].get(c, {})
            rows.append([c, str(a.get("items", b.get("items", 0))), tasks.PRIMARY_LABELS[m["primary_metric"][c]],
                         _fmt(b.get("primary")), _fmt(a.get("primary")), _fmt(e.get("delta"), sign=True), _ci(e)])
        rows.append(["overall (macro)", "", "", _fmt(m["models"][base]["overall"].get("score")),
                     _fmt(m["models"][mine]["overall"].get("score")), _fmt(comp["overall"].get("delta"), sign=True), ""])
        return header, rows
    header = ["category", "n", "metric"] + tags
    rows = []
    for c in cats:
        first = next((m["models"][t]["categories"].get(c) for t in tags if c in m["models"][t]["categories"]), {})
        rows.append([c, str(first.get("items", 0)), tasks.PRIMARY_LABELS[m["primary_metric"][c]]]
                    + [_fmt(m["models"][t]["categories"].get(c, {}).get("primary")) for t in tags])
    rows.append(["overall (macro)", "", ""] + [_fmt(m["models"][t]["overall"].get("score")) for t in tags])
    return header, rows


def _table_md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _table_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) if i < 3 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _detail_rows(m: dict, tag: str) -> tuple[list[str], list[list[str]]]:
    header = ["category", "compile %", "tests pass %", "needs crate", "chrF", "exact %", "edit sim %",
              "judge", "TF loss", "TF acc %", "truncated"]
    rows = []
    for c, d in m["models"][tag]["categories"].items():
        rows.append([c, _fmt(d.get("compile_rate")),
                     _fmt(d.get("test_pass_rate")) + (f" ({d['tested']})" if d.get("tested") else ""),
                     str(d.get("needs_crate", "–")), _fmt(d.get("chrf")), _fmt(d.get("exact")), _fmt(d.get("edit_sim")),
                     _fmt(d.get("judge")), _fmt(d.get("tf_loss"), 3), _fmt(d.get("tf_accuracy")), str(d["truncated"])])
    return header, rows


def _status_rows(m: dict, tag: str) -> tuple[list[str], list[list[str]]]:
    present = [s for s in tasks.STATUSES if any(s in d["statuses"] for d in m["models"][tag]["categories"].values())]
    header = ["category"] + present + ["top rustc errors"]
    rows = []
    for c, d in m["models"][tag]["categories"].items():
        errs = ", ".join(f"{k}×{v}" for k, v in (d.get("error_codes") or {}).items())
        crates = ", ".join(f"{k}" for k in (d.get("missing_crates") or {}))
        rows.append([c] + [str(d["statuses"].get(s, "")) for s in present]
                    + [errs + (f"; crates: {crates}" if crates else "")])
    return header, rows


def render_terminal(m: dict, by_task: bool = True) -> str:
    """The headline table (per category with by_task, else only the overall line) for a terminal."""
    header, rows = _headline_rows(m)
    if not by_task:
        rows = rows[-1:]
    text = _table_text(header, rows)
    extra = []
    for tag, data in m["models"].items():
        o = data["overall"]
        cov = o.get("coverage") or {}
        if cov.get("missing"):
            extra.append(f"warning: {tag} answers {cov['answered']} of {cov['expected']} item samples "
                         f"(coverage {cov['percent']:.1f}%); the rest are scored 0")
        ks = [k for k in o if k.startswith("pass@")]
        if m["suite"]["kind"] != "strandset" and ks:
            extra.append(f"{tag}: " + ", ".join(f"{k} {o[k]:.1f}" for k in ks))
        if o.get("tf_loss") is not None:
            extra.append(f"{tag}: teacher-forced loss {o['tf_loss']:.4f}, token accuracy {o['tf_accuracy']:.1f}%")
    comp = m.get("comparison")
    if comp:
        imp, wor = comp["overall"]["improved"], comp["overall"]["worsened"]
        few = [c for c, e in comp["categories"].items() if e.get("n_pairs", 0) < MIN_PAIRS_FOR_CI]
        extra.append(f"significant (95% CI excludes 0): better in {', '.join(imp) or 'none'}; "
                     f"worse in {', '.join(wor) or 'none'}"
                     + (f"; {len(few)} categor{'y has' if len(few) == 1 else 'ies have'} fewer than "
                        f"{MIN_PAIRS_FOR_CI} paired items (no interval)" if few else ""))
    return text + ("\n" + "\n".join(extra) if extra else "")


def render_report(m: dict) -> str:
    """report.md: what was evaluated, the per-category table, details, statuses, pass@k, set-asides."""
    s, data, gen = m["suite"], m["data"], m["generation"]
    lines = [f"# rustcoder eval: {m['model']['label']} on {s['name']}", ""]
    lines.append(f"- Suite: **{s['name']}** ({s['kind']}): {s.get('description') or ''}")
    if s.get("dataset"):
        lines.append(f"  - data: `{s['dataset']}`" + (f" @ `{s['revision']}`" if s.get("revision") else "")
                     + f", split `{s['split']}`")
    if s.get("path"):
        lines.append(f"  - file: `{s['path']}`")
    for desc in m["targets"].values():
        lines.append(f"- Model {desc}")
    if m["model"].get("picked_newest"):
        lines.append(f"- (MODEL omitted: the newest finished run, `{m['model']['run_dir']}`)")
    lines.append(f"- Decoding: {gen['backend']}, {gen['samples']} sample(s) per item, temperature "
                 f"{gen['temperature']}, max {gen['max_new_tokens']} new tokens"
                 + (f", top-p {gen['top_p']}" if gen["temperature"] > 0 else " (greedy)"))
    lines.append(f"- Items scored: {data['items']} (rows read {data['rows_read']})")
    ov = data["overlap"]
    if ov["checked_against"]:
        lines.append(f"- Train/eval overlap: **{ov['excluded']}** row(s) found in `{ov['checked_against']}` "
                     "were excluded" + (f" ({', '.join(f'{k} {v}' for k, v in ov['by_category'].items())})"
                                        if ov["excluded"] else ""))
    else:
        lines.append("- Train/eval overlap: not checked (no train_ids.txt for this model; see --train-ids)")
    if data["bad_rows"]:
        lines.append(f"- Unusable rows skipped: {data['bad_rows']}")
    if data["duplicates"]:
        lines.append(f"- Duplicate rows skipped: {data['duplicates']}")
    if data.get("limited_from"):
        lines.append(f"- --limit: {data['items']} of {data['limited_from']} items")
    for note in m.get("notes") or []:
        lines.append(f"- Note: {note}")
    for tag, md in m["models"].items():
        cov = md["overall"].get("coverage") or {}
        if cov.get("missing"):
            lines.append(f"- **Warning: coverage {cov['percent']:.1f}%** ({tag}): {cov['answered']} of "
                         f"{cov['expected']} item samples have an answer; the {cov['missing']} without one are "
                         "scored 0 (status `missing`)")
    ed = m.get("edition")
    if ed and ed.get("items_using_default"):
        lines.append(f"- Rust edition: {ed['items_using_default']} item(s) name no edition and are compiled as "
                     f"Rust {ed['default']}")
    lines += ["", "## Scores per category", "",
              "Primary metric per category, 0-100 (pass rate: compiles and, where the row has tests, passes them; "
              "chrF: character n-gram F-score vs the reference; exact: normalised exact match)."
              + (" Δ = model − base over items both were scored on; * = the paired-bootstrap 95% CI excludes 0 "
                 f"(no interval below {MIN_PAIRS_FOR_CI} paired items)." if m.get("comparison") else ""), ""]
    header, rows = _headline_rows(m)
    lines.append(_table_md(header, rows))
    if m.get("plot"):
        lines += ["", f"![per-category scores]({Path(m['plot']).name})"]
    comp = m.get("comparison")
    if comp and comp["overall"].get("tf_loss_delta") is not None:
        mine, base = comp["model"], comp["base"]
        rows = []
        for c, e in comp["categories"].items():
            if e.get("tf_loss_delta") is None:
                continue
            a, b = m["models"][mine]["categories"][c], m["models"][base]["categories"][c]
            ci = e.get("tf_loss_ci")
            rows.append([c, _fmt(b["tf_loss"], 3), _fmt(a["tf_loss"], 3), _fmt(e["tf_loss_delta"], 3, sign=True),
                         (f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" + (" *" if e.get("tf_loss_significant") else "")) if ci
                         else "–", _fmt(b["tf_accuracy"]), _fmt(a["tf_accuracy"])])
        oa, ob = m["models"][mine]["overall"], m["models"][base]["overall"]
        rows.append(["overall (token-weighted)", _fmt(ob["tf_loss"], 3), _fmt(oa["tf_loss"], 3),
                     _fmt(comp["overall"]["tf_loss_delta"], 3, sign=True), "", _fmt(ob["tf_accuracy"]),
                     _fmt(oa["tf_accuracy"])])
        lines += ["", "## Teacher-forced scores on the reference answers", "",
                  "Loss in nats per answer token (lower is better) and next-token accuracy, the reference answer fed "
                  "in; Δ CI is a paired bootstrap over items (per-item mean loss).", "",
                  _table_md(["category", f"loss {base}", f"loss {mine}", "Δ loss", "95% CI", f"acc % {base}",
                             f"acc % {mine}"], rows)]
    for tag, md in m["models"].items():
        lines += ["", f"## Details: {tag}", "", _table_md(*_detail_rows(m, tag)), "",
                  f"Statuses ({tag}):", "", _table_md(*_status_rows(m, tag))]
        if md.get("generated_tests"):
            rows = [[f"`{g['id']}`" + (f" #{g['sample_index']}" if gen["samples"] > 1 else ""), g["status"],
                     "" if g["tests_passed"] is None else str(g["tests_passed"]),
                     "" if g.get("mutants_killed") is None else f"{g['mutants_killed']} of {g['mutants_viable']}"]
                    for g in md["generated_tests"]]
            lines += ["", f"Generated tests ({tag}): tests that pass against the reference code, and how many "
                      "wrong-valued variants (mutants) of the code under test they catch (0 = `weak_tests`):", "",
                      _table_md(["item", "status", "pass on the code", "mutants caught"], rows)]
        ks = {k: v for k, v in md["overall"].items() if k.startswith("pass@")}
        if ks and (m["suite"]["kind"] != "strandset" or gen["samples"] > 1):
            lines += ["", f"pass@k ({tag}, unbiased estimator, {gen['samples']} sample(s) per task): "
                      + ", ".join(f"{k} = {v:.1f}" for k, v in ks.items())]
            per_cat = [(c, {k: v for k, v in d.items() if k.startswith("pass@")}) for c, d in md["categories"].items()]
            rows = [[c] + [_fmt(v.get(k)) for k in ks] for c, v in per_cat if v]
            if rows:
                lines += ["", _table_md(["category"] + list(ks), rows)]
    if data["invalid_tasks"] or data["excluded_tasks"]:
        lines += ["", "## Tasks not scored", ""]
        for t in data["invalid_tasks"]:
            lines.append(f"- `{t['id']}` ({t['category']}): unusable: {t['reason']}")
        for t in data["excluded_tasks"]:
            lines.append(f"- `{t['id']}` ({t['category']}): known issue: {t['reason']}")
    if m.get("oracle"):
        o = m["oracle"]
        lines += ["", "## Oracle (reference answers through the harness)", "",
                  f"**{o['pass']}/{o['total']} pass**; statuses: "
                  + ", ".join(f"{k} {v}" for k, v in o["statuses"].items())
                  + f". Scorable tasks (not unusable, not excluded): {o['scorable_pass']}/{o['scorable']} pass; "
                  f"{o['unexpected']} unexpected failure(s).", ""]
        unusable: dict[str, list[str]] = defaultdict(list)
        for f in o["failures"]:
            if f["invalid"]:
                unusable[f"{f['reason']} (rustc: {f['evidence'] or f['status']})"].append(f["id"])
        for why, ids_ in unusable.items():
            lines.append(f"- {len(ids_)} unusable task(s), {why}: " + ", ".join(f"`{i}`" for i in ids_))
        for f in o["failures"]:
            if f["invalid"]:
                continue
            lines.append(f"- `{f['id']}` {f['status']}" + (f" {','.join(f['error_codes'])}" if f["error_codes"] else "")
                         + (f": {f['reason']}" if f["reason"] else "") + (f" — `{f['evidence']}`" if f["evidence"]
                                                                         else ""))
    lines += ["", "## Method", "",
              "Statuses, metrics and their definitions: docs/eval.md. Files here: eval_config.yaml (resolved "
              "settings), samples.jsonl (answers), executions.jsonl (programs and sandbox results), scores.jsonl "
              "(per-sample statuses and metrics), teacher_forced.jsonl, metrics.json."]
    if m.get("sandbox"):
        lines.append(f"Sandbox: rustc {m['sandbox'].get('rustc')}; isolation: "
                     f"{', '.join(m['sandbox'].get('isolation') or [])}.")
        if m["sandbox"].get("missing"):
            lines.append(f"**Sandbox degraded on this machine**: missing {', '.join(m['sandbox']['missing'])} "
                         "(docs/sandbox.md, 'Where it degrades').")
    return "\n".join(lines) + "\n"


def _item_scores(scores_path: Path) -> dict[tuple[str, str], list[float]]:
    """(model, category) -> per-item mean primary score, from scores.jsonl (empty when absent)."""
    from .store import JsonlStore

    per_item: dict[tuple[str, str, str], list[float]] = {}
    for row in JsonlStore(scores_path).load().values():  # the stages' own reader: one record per sample key
        if isinstance(row.get("primary"), (int, float)):
            per_item.setdefault((row.get("model"), row.get("category"), row.get("id")), []).append(
                float(row["primary"]))
    out: dict[tuple[str, str], list[float]] = {}
    for (model, cat, _), values in per_item.items():
        out.setdefault((model, cat), []).append(sum(values) / len(values))
    return out


def score_interval(metric: str, entry: dict, items: list[float] | None = None) -> tuple[float | None, float | None]:
    """A 95% interval (0-100) for a category's primary score: Wilson for pass / exact-match rates over
    its items, mean +- 1.96 standard errors of the per-item scores for chrF; (None, None) when unknown."""
    import math

    n = int(entry.get("items") or 0)
    p = entry.get("primary")
    if n < 1 or p is None:
        return None, None
    if metric in ("pass", "exact"):
        z, q = 1.96, min(max(float(p) / 100, 0.0), 1.0)
        centre = (q + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(q * (1 - q) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)
    if items and len(items) >= 2:
        mean = sum(items) / len(items)
        sd = math.sqrt(sum((x - mean) ** 2 for x in items) / (len(items) - 1))
        half = 1.96 * sd / math.sqrt(len(items))
        return max(0.0, float(p) - half), min(100.0, float(p) + half)
    return None, None


def plot_scores(m: dict, path: Path) -> Path:
    """A horizontal bar chart of per-category primary scores (base vs model when compared), written to ``path``;
    MissingExtraError (with the install command of the plots extra) when matplotlib is missing."""
    from ..extras import pyplot

    plt = pyplot()
    cats = list(m["primary_metric"])
    tags = list(m["models"])
    comp = m.get("comparison")
    if comp:
        tags = [comp["base"], comp["model"]] + [t for t in tags if t not in (comp["base"], comp["model"])]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    colors = {"base": "#9e9e9e"}
    for tag in tags:
        if tag not in colors:
            colors[tag] = palette[(len(colors) - ("base" in colors)) % len(palette)]
    fig_h = max(3.0, 0.42 * len(cats) * max(1, len(tags)) ** 0.5 + 1.5)
    fig, ax = plt.subplots(figsize=(9, fig_h))
    height = 0.8 / max(1, len(tags))
    item_scores = _item_scores(path.parent / "scores.jsonl")
    for j, tag in enumerate(tags):
        entries = [m["models"][tag]["categories"].get(c, {}) for c in cats]
        vals = [e.get("primary") or 0.0 for e in entries]
        bounds = [score_interval(m["primary_metric"][c], e, item_scores.get((tag, c))) for c, e in zip(cats, entries)]
        xerr = [[max(0.0, v - lo) if lo is not None else 0.0 for v, (lo, _) in zip(vals, bounds)],
                [max(0.0, hi - v) if hi is not None else 0.0 for v, (_, hi) in zip(vals, bounds)]]
        ys = [i + (j - (len(tags) - 1) / 2) * height for i in range(len(cats))]
        bars = ax.barh(ys, vals, height=height, label=tag, color=colors[tag], xerr=xerr,
                       error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
        for bar, v, (_, hi) in zip(bars, vals, bounds):
            ax.text(min(max(v, hi if hi is not None else v), 100) + 0.8, bar.get_y() + bar.get_height() / 2,
                    f"{v:.0f}", va="center", fontsize=6)
    counts = {c: max((m["models"][t]["categories"].get(c, {}).get("items") or 0) for t in tags) for c in cats}
    ax.set_yticks(range(len(cats)))
    ax.set_yticklabels([f"{c} ({tasks.PRIMARY_LABELS[m['primary_metric'][c]]}, n={counts[c]})" for c in cats],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("score (0-100); bars: 95% interval over the category's n items")
    ax.set_title(f"{m['suite']['name']}: {m['model']['label']}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
