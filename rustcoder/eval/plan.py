"""The evaluation plan: everything resolved before any model is loaded, read by every stage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .backends import GenParams, ModelTarget
from .config import EvalConfig
from .models import ResolvedModel
from .store import EVAL_FORMAT
from .suites import EvalItem, ItemSet, Suite


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
