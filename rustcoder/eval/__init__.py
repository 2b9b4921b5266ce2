"""``rustcoder eval``: is the fine-tuned model better than its base at Rust, and at which tasks?

Stages, each writing a file in the eval directory and resuming where it stopped:
generate (samples.jsonl, teacher_forced.jsonl) -> execute (executions.jsonl, every program through
``rustcoder.sandbox``) -> score (scores.jsonl, judgments.jsonl) -> report (metrics.json, report.md,
scores.png). See docs/eval.md.

    from rustcoder.eval import EvalConfig, evaluate
    result = evaluate(EvalConfig(model="runs/exp-small-batch-10k", compare_base=True))
    print(result.table())

Importing this package is cheap: torch and transformers are imported only by the backends that
load a model.
"""

from .config import EvalConfig
from .pipeline import EvalResult, evaluate
from .plan import EvalPlan, plan_eval

__all__ = ["EvalConfig", "EvalPlan", "EvalResult", "evaluate", "plan_eval"]
