"""Sweeps: several training configurations on the identical sample and split, resumable.

The research's study is five presets on the same 10,000 rows with seed 42; ``run_sweep`` reruns it
(or any list of presets, times a grid of field values) into one sweep directory with one Trackio
project. Finished runs are skipped on a rerun, unfinished ones resume from their last checkpoint,
and a run that fails is recorded as failed while the others go on.
"""

from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import artifacts
from .config import _coerce, current_name, default_run_name, field_names, flag_name, preset_names, resolve_config
from .errors import ConfigError, RustcoderError, UsageError, did_you_mean

SWEEP_FILE = "sweep.json"
RESEARCH_STUDY = ("baseline", "conservative-lr", "high-capacity", "aggressive-lr", "small-batch")
STUDIES = {"research": {"presets": RESEARCH_STUDY, "num_examples": 10_000}}


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """Parse ``lr=1e-5,2e-5 lora_r=16,32`` into {field: [values]}, checking names and types."""
    grid: dict[str, list[Any]] = {}
    problems = []
    for spec in specs:
        if "=" not in spec:
            problems.append(f"--grid {spec!r}: expected FIELD=V1,V2 (e.g. lr=1e-5,2e-5)")
            continue
        key, values = spec.split("=", 1)
        key = current_name(key.strip().replace("-", "_"), "--grid")
        if key not in field_names():
            problems.append(f"--grid: unknown field {key!r}{did_you_mean(key, field_names())}")
            continue
        try:
            grid[key] = [_coerce(key, v.strip(), "--grid") for v in values.split(",") if v.strip()]
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return grid


def parse_settings(specs: list[str]) -> dict[str, Any]:
    """Parse ``--set FIELD=VALUE`` items (one value each; lists stay comma-separated)."""
    values, problems = {}, []
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = current_name(key.strip().replace("-", "_"), "--set")
        if not sep:
            problems.append(f"--set {spec!r}: expected FIELD=VALUE (e.g. model=tiny-qwen2)")
        elif key not in field_names():
            problems.append(f"--set: unknown field {key!r}{did_you_mean(key, field_names())}")
        else:
            try:
                values[key] = _coerce(key, value.strip(), "--set")
            except ConfigError as e:
                problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return values


def evaluate_run(run_dir: Path, max_new_tokens: int | None = None) -> dict[str, Any]:
    """`rustcoder eval` of a finished run on its default held-out tasks; returns the headline scores."""
    from .eval import EvalConfig, evaluate

    result = evaluate(EvalConfig(model=str(run_dir), max_new_tokens=max_new_tokens), log=lambda *_: None)
    adapter = next(iter(result.metrics.get("models", {}).values()), {})
    return {"eval_dir": str(result.eval_dir), "overall": adapter.get("overall", {}).get("score"),
            "categories": {c: v.get("primary") for c, v in adapter.get("categories", {}).items()}}


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class SweepEntry:
    """One configuration of a sweep and what became of it."""

    name: str
    preset: str
    overrides: dict[str, Any]
    status: str = "pending"  # pending / finished / failed
    run_dir: str | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def plan_sweep(presets: list[str], grid: dict[str, list[Any]], num_examples: int | None,
               common: dict[str, Any]) -> list[SweepEntry]:
    """Every (preset x grid point) configuration with a unique, readable run name."""
    unknown = [p for p in presets if p not in preset_names()]
    if unknown:
        raise UsageError("; ".join(f"unknown preset {p!r}{did_you_mean(p, preset_names())}" for p in unknown)
                         + f". Available: {', '.join(preset_names())}.")
    if not presets:
        raise UsageError("no presets to sweep: pass --presets A,B or --study research.")
    keys = list(grid)
    entries, seen = [], set()
    for preset in presets:
        for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, values))
            overrides = {**common, "num_examples": num_examples, **point}
            # A name from preset and size (exp-small-batch-10k), plus the grid point.
            name = default_run_name(_NameOnly(preset, num_examples))
            if point:
                name += "-" + "-".join(f"{k.replace('_', '')}{_short(v)}" for k, v in point.items())
            base, n = name, 2
            while name in seen:
                name, n = f"{base}-{n}", n + 1
            seen.add(name)
            entries.append(SweepEntry(name=name, preset=preset, overrides=overrides))
    return entries


@dataclass
class _NameOnly:
    preset: str
    num_examples: int | None


def _load_state(sweep_dir: Path) -> dict[str, dict]:
    path = sweep_dir / SWEEP_FILE
    if not path.exists():
        return {}
    return {e["name"]: e for e in artifacts.read_json(path).get("runs", [])}


def _save_state(sweep_dir: Path, entries: list[SweepEntry], meta: dict) -> None:
    artifacts.atomic_write_json(sweep_dir / SWEEP_FILE, {**meta, "updated_at": time.time(),
                                                         "runs": [e.__dict__ for e in entries]})


def run_sweep(sweep_dir: str | Path, presets: list[str], *, grid: dict[str, list[Any]] | None = None,
              num_examples: int | None = None, common: dict[str, Any] | None = None,
              project: str | None = None, evaluate: Callable[[Path], dict] | None = None,
              progress: bool = True, log=print) -> list[SweepEntry]:
    """Train every configuration into sweep_dir (runs share sample, split and Trackio project).

    Re-running skips finished runs and resumes unfinished ones; failures are recorded, not raised.
    ``evaluate(run_dir)``, when given, runs after each finished training (its metrics are kept).
    """
    from .train import last_complete_checkpoint, train

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    common = {k: v for k, v in (common or {}).items() if v is not None}
    project = project or f"rustcoder-{sweep_dir.name}"
    entries = plan_sweep(presets, grid or {}, num_examples, common)
    previous = _load_state(sweep_dir)
    meta = {"kind": "rustcoder-sweep", "presets": presets, "grid": grid or {}, "num_examples": num_examples,
            "common": common, "project": project}
    for e in entries:
        old = previous.get(e.name)
        if old and old.get("status") == "finished":
            e.status, e.run_dir, e.metrics = "finished", old.get("run_dir"), old.get("metrics") or {}
    _save_state(sweep_dir, entries, meta)

    fingerprints = set()
    for i, e in enumerate(entries, 1):
        if e.status == "finished":
            log(f"[{i}/{len(entries)}] {e.name}: finished earlier, skipped")
            continue
        run_dir = sweep_dir / e.name
        log(f"[{i}/{len(entries)}] {e.name}: training ({e.preset}"
            + (f", {', '.join(f'{flag_name(k)} {_short(v)}' for k, v in e.overrides.items() if k in (grid or {}))}"
               if grid else "") + ")")
        try:
            cfg = resolve_config(e.preset, overrides={**e.overrides, "output_dir": str(sweep_dir),
                                                      "run_name": e.name, "project": project})
            resume = (run_dir / artifacts.CONFIG).exists() and \
                last_complete_checkpoint(run_dir / artifacts.CHECKPOINTS_DIR) is not None
            result = train(cfg, run_dir=run_dir, resume=resume, progress=progress, log=lambda *_: None)
            e.status, e.run_dir, e.error = "finished", str(run_dir), None
            e.metrics = dict(result.metrics)
            fingerprints.add(artifacts.read_json(run_dir / artifacts.MANIFEST)["dataset"]["fingerprint"])
            if evaluate is not None:
                try:
                    e.metrics["eval"] = evaluate(run_dir)
                except Exception as ex:  # evaluation problems do not undo a finished training
                    e.metrics["eval_error"] = f"{type(ex).__name__}: {ex}"
            log(f"    eval loss {e.metrics.get('eval_loss', float('nan')):.4f}, "
                f"token accuracy {e.metrics.get('eval_mean_token_accuracy', float('nan')):.1%}")
        except (RustcoderError, Exception) as ex:  # one failed configuration never stops the sweep
            e.status, e.run_dir = "failed", str(run_dir) if run_dir.exists() else None
            e.error = str(ex) if isinstance(ex, RustcoderError) else \
                f"{type(ex).__name__}: {ex}\n{traceback.format_exc(limit=3)}"
            log(f"    failed: {str(ex).splitlines()[0] if str(ex) else type(ex).__name__}")
        _save_state(sweep_dir, entries, meta)
    if len(fingerprints) > 1:  # pragma: no cover - guarded by seeding; a loud signal if it ever breaks
        log(f"warning: runs saw different samples ({', '.join(sorted(fingerprints))})")
    return entries
