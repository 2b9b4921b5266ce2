"""The eval directory: created for a plan, refused when it holds samples made with other settings, cleared
for --overwrite/--redo, and described by the resolved config it holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .. import artifacts
from ..errors import UsageError
from .store import CONFIG_FILE, EVAL_FORMAT, SAMPLES, STAGE_FILES, STAGE_ORDER

if TYPE_CHECKING:
    from .plan import EvalPlan


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
