"""Compare training runs: the results table (Markdown, JSON) and plots (PNG) a user pastes into a report.

Rows are runs, best eval loss first: experiment, eval loss, token accuracy, steps, wall time,
trainable parameters, per-category eval scores when the run was evaluated, and the research's
reference figures beside runs whose setup matches theirs (a research preset on 10,000
Strandset-Rust-v1 rows).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts, rundir
from .errors import UsageError

# shared/reference/research-notes.md, "Final Metrics" (Qwen2-7B-Instruct, 10k rows, A100).
RESEARCH_RESULTS = {
    "small-batch": {"eval_loss": 0.766, "token_accuracy": 0.821, "steps": 2250, "minutes": 45},
    "aggressive-lr": {"eval_loss": 0.767, "token_accuracy": 0.820, "steps": 562, "minutes": 15},
    "high-capacity": {"eval_loss": 0.786, "token_accuracy": 0.812, "steps": 562, "minutes": 18},
    "baseline": {"eval_loss": 0.802, "token_accuracy": 0.805, "steps": 562, "minutes": 15},
    "conservative-lr": {"eval_loss": 0.816, "token_accuracy": 0.798, "steps": 1125, "minutes": 30},
}


@dataclass
class RunRow:
    """One run's line in the comparison."""

    name: str
    run_dir: str
    status: str
    preset: str | None = None
    eval_loss: float | None = None
    token_accuracy: float | None = None
    steps: int | None = None
    wall_time_s: float | None = None
    trainable_parameters: int | None = None
    categories: dict[str, float] = field(default_factory=dict)
    category_metric: str | None = None
    reference: dict[str, Any] | None = None
    error: str | None = None
    eval_curve: list[tuple[int, float]] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # what distinguishes the runs: lr, batch, r ...


HYPERPARAMETERS = ("lr", "batch_size", "grad_accum", "lora_r", "lora_alpha", "epochs", "num_examples")


def _eval_categories(run_dir: Path) -> tuple[dict[str, float], str | None]:
    """Per-category headline scores of the run's newest evaluation, if any."""
    evals = sorted(run_dir.glob("eval/*/metrics.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in evals:
        try:
            m = artifacts.read_json(path)
        except (OSError, json.JSONDecodeError):
            continue
        cats = m.get("categories") or m.get("by_category") or {}
        model_part = m.get("models", {}).get("adapter") or m.get("models", {}).get("model")
        if model_part:
            cats = model_part.get("categories", cats)
        scores = {}
        for cat, v in cats.items():
            if isinstance(v, dict):
                score = v.get("score", v.get("primary"))
                if isinstance(score, (int, float)):
                    scores[cat] = float(score)
            elif isinstance(v, (int, float)):
                scores[cat] = float(v)
        if scores:
            return scores, "primary score"
    return {}, None


def _matches_research(manifest: dict, config: dict) -> bool:
    return (manifest.get("preset") in RESEARCH_RESULTS and config.get("num_examples") == 10_000
            and config.get("dataset") == "Fortytwo-Network/Strandset-Rust-v1"
            and abs(config.get("eval_fraction", 0.1) - 0.1) < 1e-9)


def load_run(run_dir: str | Path, sweep_entry: dict | None = None) -> RunRow:
    """Read a run directory (or a failed sweep entry without one) into a RunRow."""
    run_dir = Path(run_dir)
    name = sweep_entry["name"] if sweep_entry else run_dir.name
    manifest_path = run_dir / artifacts.MANIFEST
    if not manifest_path.exists():
        return RunRow(name=name, run_dir=str(run_dir), status=(sweep_entry or {}).get("status", "missing"),
                      preset=(sweep_entry or {}).get("preset"), error=(sweep_entry or {}).get("error"))
    manifest = rundir.read_manifest(run_dir)
    config = rundir.read_run_config(run_dir)
    metrics = manifest.get("metrics") or {}
    if (run_dir / artifacts.METRICS).exists():
        metrics = artifacts.read_json(run_dir / artifacts.METRICS)
    status = manifest.get("status", "unknown")
    if sweep_entry and sweep_entry.get("status") == "failed":
        status = "failed"
    hyper = {k: config[k] for k in HYPERPARAMETERS if config.get(k) is not None}
    curve = []
    if (run_dir / "log_history.json").exists():
        curve = [(h["step"], h["eval_loss"]) for h in artifacts.read_json(run_dir / "log_history.json")
                 if "eval_loss" in h and "step" in h]
    cats, metric = _eval_categories(run_dir)
    return RunRow(
        name=name, run_dir=str(run_dir), status=status, preset=manifest.get("preset"),
        eval_loss=metrics.get("eval_loss"), token_accuracy=metrics.get("eval_mean_token_accuracy"),
        steps=metrics.get("steps"), wall_time_s=metrics.get("wall_time_s"),
        trainable_parameters=metrics.get("trainable_parameters"), categories=cats, category_metric=metric,
        reference=RESEARCH_RESULTS.get(manifest.get("preset")) if _matches_research(manifest, config) else None,
        error=(sweep_entry or {}).get("error"), eval_curve=curve, hyperparameters=hyper)


def collect_runs(paths: list[str | Path]) -> list[RunRow]:
    """Runs from run directories and/or sweep directories (a sweep contributes all its entries)."""
    rows: list[RunRow] = []
    for p in map(Path, paths):
        if (p / "sweep.json").exists():
            for entry in artifacts.read_json(p / "sweep.json").get("runs", []):
                rows.append(load_run(entry.get("run_dir") or p / entry["name"], entry))
        elif (p / artifacts.MANIFEST).exists():
            rows.append(load_run(p))
        else:
            raise UsageError(f"{p} is neither a run directory (no manifest.json) nor a sweep directory "
                             "(no sweep.json).")
    if not rows:
        raise UsageError("no runs to compare.")
    return sorted(rows, key=lambda r: (r.status != "finished", r.eval_loss if r.eval_loss is not None else math.inf))


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "loss":
        return f"{v:.4f}"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "time":
        return f"{v / 60:.1f} min" if v >= 60 else f"{v:.0f} s"
    if kind == "params":
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"
    return str(v)


def markdown_table(rows: list[RunRow]) -> str:
    """The results table, best first, with research reference figures where the setup matches."""
    cats = sorted({c for r in rows for c in r.categories})
    any_ref = any(r.reference for r in rows)
    head = ["experiment", "status", "lr", "batch x accum", "LoRA r / alpha", "epochs", "eval loss", "token accuracy",
            "steps", "wall time", "trainable params"]
    if any_ref:
        head += ["research eval loss", "research token acc.", "research steps"]
    head += [f"{c} ({next((r.category_metric for r in rows if r.category_metric), 'score')})" for c in cats]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        h = r.hyperparameters
        cells = [r.name, r.status, f"{h['lr']:g}" if isinstance(h.get("lr"), (int, float)) else "-",
                 f"{h['batch_size']} x {h['grad_accum']}" if "batch_size" in h and "grad_accum" in h else "-",
                 f"{h['lora_r']} / {h['lora_alpha']}" if "lora_r" in h and "lora_alpha" in h else "-",
                 f"{h['epochs']:g}" if isinstance(h.get("epochs"), (int, float)) else "-",
                 _fmt(r.eval_loss, "loss"), _fmt(r.token_accuracy, "pct"), _fmt(r.steps, ""),
                 _fmt(r.wall_time_s, "time"), _fmt(r.trainable_parameters, "params")]
        if any_ref:
            ref = r.reference or {}
            cells += [_fmt(ref.get("eval_loss"), "loss"), _fmt(ref.get("token_accuracy"), "pct"),
                      _fmt(ref.get("steps"), "")]
        cells += [f"{r.categories[c]:.3f}" if c in r.categories else "-" for c in cats]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.name}: failed: {' '.join(str(r.error).split())[:300] if r.error else 'see its run directory'}"
             for r in rows if r.status == "failed"]
    text = "\n".join(lines)
    if any_ref:
        text += ("\n\nResearch figures: Qwen2-7B-Instruct, 10,000 rows (9,000 / 1,000), seed 42, A100 "
                 "(shared research notes); shown where a run's preset, size and dataset match.")
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text


def terminal_table(rows: list[RunRow], width: int = 100) -> str:
    """The comparison for a terminal: one line per run within ``width`` columns (long run names shortened), the
    per-category scores as their mean; comparison.md has every column."""
    any_ref = any(r.reference for r in rows)
    any_cats = any(r.categories for r in rows)
    head = ["run", "status", "lr", "batch", "r/alpha", "eval loss", "tok acc", "steps", "time"]
    head += ["research loss"] * any_ref + ["mean score"] * any_cats
    body = []
    for r in rows:
        h = r.hyperparameters
        cells = [r.name, r.status, f"{h['lr']:g}" if isinstance(h.get("lr"), (int, float)) else "-",
                 f"{h['batch_size']}x{h['grad_accum']}" if "batch_size" in h and "grad_accum" in h else "-",
                 f"{h['lora_r']}/{h['lora_alpha']}" if "lora_r" in h and "lora_alpha" in h else "-",
                 _fmt(r.eval_loss, "loss"), _fmt(r.token_accuracy, "pct"), _fmt(r.steps, ""),
                 _fmt(r.wall_time_s, "time")]
        if any_ref:
            cells.append(_fmt((r.reference or {}).get("eval_loss"), "loss"))
        if any_cats:
            cells.append(f"{sum(r.categories.values()) / len(r.categories):.1f}" if r.categories else "-")
        body.append(cells)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    room = width - sum(widths[1:]) - 2 * (len(head) - 1)  # what the run names may take
    widths[0] = max(12, min(widths[0], room))

    def line(cells):
        name = cells[0] if len(cells[0]) <= widths[0] else cells[0][:widths[0] - 3] + "..."
        parts = [name.ljust(widths[0])] + [c.rjust(w) if i > 1 else c.ljust(w)
                                           for i, (c, w) in enumerate(zip(cells[1:], widths[1:]), start=1)]
        return "  ".join(parts).rstrip()

    out = [line(head), *map(line, body)]
    if any_cats:
        out.append("mean score: the mean of the per-category scores (0-100) of the run's newest evaluation")
    out += [f"{r.name}: failed: {' '.join(str(r.error).split())[:width - len(r.name) - 10]}"
            for r in rows if r.status == "failed" and r.error]
    return "\n".join(out)


def plot_eval_loss(rows: list[RunRow], path: Path) -> tuple[Path | None, int]:
    """One chart, one line per run: eval loss against optimizer step. Returns (path, lines drawn)."""
    with_curves = [r for r in rows if r.eval_curve]
    if not with_curves:
        return None, 0
    from .extras import pyplot

    plt = pyplot()  # the plots extra; its absence names the install command

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in with_curves:
        steps, losses = zip(*r.eval_curve)
        ax.plot(steps, losses, marker="o", markersize=3, label=r.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval loss (answer tokens, nats)")
    ax.set_title("Eval loss during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path, len(ax.get_lines())


def plot_categories(rows: list[RunRow], path: Path) -> Path | None:
    """Grouped bars: per-category eval score of each evaluated run."""
    evaluated = [r for r in rows if r.categories]
    if not evaluated:
        return None
    from .extras import pyplot

    plt = pyplot()  # the plots extra; its absence names the install command

    cats = sorted({c for r in evaluated for c in r.categories})
    width = 0.8 / len(evaluated)
    fig, ax = plt.subplots(figsize=(max(8, len(cats) * 0.7), 5), dpi=120)
    for i, r in enumerate(evaluated):
        xs = [j + i * width for j in range(len(cats))]
        ax.bar(xs, [r.categories.get(c, 0.0) for c in cats], width=width, label=r.name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))])
    ax.set_xticklabels(cats, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("score, 0-100 (higher is better)\npass % · exact-match % · chrF")
    ax.set_title("Per-category evaluation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # every label inside the image, however long the category names
    plt.close(fig)
    return path


def compare_runs(paths: list[str | Path], output_dir: str | Path | None = None) -> dict[str, Any]:
    """Write comparison.md, comparison.json and the PNG plots; return what was written and the table."""
    rows = collect_runs(paths)
    out = Path(output_dir) if output_dir else (Path(paths[0]) if len(paths) == 1 and
                                              (Path(paths[0]) / "sweep.json").exists() else Path("comparison"))
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    artifacts.atomic_write_text(out / "comparison.md", "# Run comparison\n\n" + table + "\n")
    artifacts.atomic_write_json(out / "comparison.json", [r.__dict__ for r in rows])
    loss_png, lines = plot_eval_loss(rows, out / "eval_loss.png")
    cat_png = plot_categories(rows, out / "categories.png")
    return {"table": table, "terminal": terminal_table(rows), "rows": rows, "markdown": out / "comparison.md", "json": out / "comparison.json",
            "eval_loss_png": loss_png, "eval_loss_lines": lines, "categories_png": cat_png}
