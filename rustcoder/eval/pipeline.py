"""The whole evaluation: plan -> (teacher-forced) -> generate -> execute -> score -> report, in order.

Each stage appends to its own JSONL file in the eval directory, keyed by sample id
(``MODEL:ITEM_ID:SAMPLE_INDEX``): a rerun skips what is done, so a killed evaluation resumes where
it stopped, and a stage can be redone alone (``redo``) from the files of the stages before it.
Models are loaded only when something is left to generate or teacher-force. The stages live in
``plan`` / ``evaldir`` / ``generate`` / ``execute`` / ``score`` / ``report``; this module runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import artifacts
from ..errors import MissingExtraError
from . import throughput
from .config import EvalConfig
from .evaldir import prepare_eval_dir
from .execute import stage_execute
from .generate import stage_generate
from .loading import BackendFactory, Backends, default_backend_factory
from .plan import EvalPlan, plan_eval
from .score import stage_judge, stage_score
from .store import METRICS, PLOT, REPORT, TEACHER_FORCED, JsonlStore


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


def stage_report(plan: EvalPlan, samples: dict[str, dict], executions: dict[str, dict], scores: dict[str, dict],
                 judgments: dict[str, dict], log) -> tuple[dict, Path | None]:
    """Write metrics.json, report.md and the chart from the stages' records; returns (metrics, chart path).
    Without matplotlib (the plots extra) there is no chart: the log says how to install it."""
    from .report import build_metrics, plot_scores, render_report

    tf = JsonlStore(plan.eval_dir / TEACHER_FORCED).load()
    result_metrics = build_metrics(plan, samples, executions, scores, tf, judgments)
    speed = JsonlStore(plan.eval_dir / throughput.STATS_FILE).load()
    result_metrics["generation_speed"] = throughput.speed_table(speed)
    try:
        plot_path = plot_scores(result_metrics, plan.eval_dir / PLOT)
    except MissingExtraError as e:  # the chart is optional: the numbers and the report do not need it
        plot_path = None
        log(f"note: no {PLOT}: {e}")
    result_metrics["plot"] = str(plot_path) if plot_path else None
    artifacts.atomic_write_json(plan.eval_dir / METRICS, result_metrics)  # with its plot key
    report = render_report(result_metrics).rstrip("\n") + "\n"
    speed_section = throughput.render_markdown(result_metrics["generation_speed"])
    artifacts.atomic_write_text(plan.eval_dir / REPORT, report + ("\n" + speed_section if speed_section else ""))
    return result_metrics, plot_path


def evaluate(cfg: EvalConfig, *, log=print, backend_factory: BackendFactory | None = None) -> EvalResult:
    """Run (or resume) an evaluation and write samples, executions, scores, metrics, report and chart.

    ``backend_factory(target, plan) -> Backend`` replaces how models are loaded (custom backends,
    tests); by default transformers, vLLM or the endpoint per the plan.
    """
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
    result_metrics, plot_path = stage_report(plan, samples, executions, scores, judgments, log)
    return EvalResult(plan.eval_dir, result_metrics, plan.eval_dir / REPORT, plot_path, plan)
