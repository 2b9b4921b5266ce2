"""The evaluation plan: everything resolved from the config (model, suite, items, eval directory, decoding)
before any model is loaded, and read by every stage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, DataError, UsageError
from . import metrics
from .backends import GenParams, ModelTarget
from .config import EvalConfig
from .models import ResolvedModel, reference_model, resolve_eval_targets, slug
from .predictions import read_predictions
from .store import EVAL_FORMAT
from .suites import EvalItem, ItemSet, Suite, benchmark_suite, dataset_suite, load_items


@dataclass
class EvalPlan:
    """Everything resolved before any model is loaded."""

    cfg: EvalConfig
    mode: str  # model, oracle, predictions
    suite: Suite
    items: ItemSet
    resolved: ResolvedModel
    targets: list[ModelTarget]
    eval_dir: Path
    params: GenParams
    samples: int
    ks: list[int]
    teacher_forced: bool
    backend: str
    notes: list[str] = field(default_factory=list)
    predictions: dict[str, dict] = field(default_factory=dict)  # key -> record (predictions mode)
    log: Callable = print  # where backends report (engine start and stop)

    @property
    def by_id(self) -> dict[str, EvalItem]:
        """The items by id."""
        return {i.id: i for i in self.items.items}

    def fingerprint(self, target: ModelTarget) -> str:
        """What a target's samples depend on: model identity, decoding, suite, prompt format."""
        data = {"format": EVAL_FORMAT, "target": target.identity, "tag": target.tag,
                "params": self.params.__dict__ if self.params.temperature > 0 else
                {"max_new_tokens": self.params.max_new_tokens, "temperature": 0.0},
                "samples": self.samples, "suite": self.suite.name, "revision": self.suite.revision,
                "prompt": self.suite.prompt}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        predictions, tags, unknown = read_predictions(cfg.predictions, {i.id: i for i in items.items})
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
