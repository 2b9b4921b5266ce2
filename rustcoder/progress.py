"""Training's progress display: each log event as one readable line beside transformers' progress bar (not a
raw Python dict). Imported by train when its trainer is built (transformers is loaded by then)."""

from __future__ import annotations

import sys

from transformers.trainer_callback import ProgressCallback

LABELS = {"eval_loss": "eval loss", "eval_mean_token_accuracy": "eval token acc", "loss": "loss",
          "mean_token_accuracy": "token acc", "learning_rate": "lr", "grad_norm": "grad norm",
          "train_loss": "train loss", "train_runtime": "train s", "tokens_per_second": "tok/s", "mfu": "MFU"}


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def log_line(step: int, max_steps: int, logs: dict) -> str | None:
    """``step 8/24: loss 2.31, lr 1.9e-05, ...`` for a log event (None when it holds no known number)."""
    parts = [f"{label} {float(logs[k]):.4g}" for k, label in LABELS.items()
             if isinstance(logs.get(k), (int, float, str)) and _is_number(logs[k])]
    return f"step {step}/{max_steps}: " + ", ".join(parts) if parts else None


class CompactProgress(ProgressCallback):
    """transformers' progress bar, with log events as one line each (to stderr, beside the bar)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and self.training_bar is not None and logs):
            return
        line = log_line(state.global_step, state.max_steps, logs)
        if line:
            self.training_bar.write(line, file=sys.stderr)


def use_compact_progress(trainer) -> None:
    """Show the trainer's progress with CompactProgress (public Trainer API: pop_callback / add_callback);
    a trainer without a progress bar (disable_tqdm) keeps what it has."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress())
