"""Generation speed: generated tokens per second of each model's generation, per backend.

The generate stage times each generation it runs (wall clock from the first request to the last
answer, model loading and engine start excluded) and appends one record per model to
``generation_stats.jsonl`` in the eval directory; data-parallel workers are timed together, as one
record for the models they generated (``adapter+base``). The last record of a model wins, so after
a resumed run the figure is that of the run that generated its samples last. ``metrics.json``
(``generation_speed``) and ``report.md`` show them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STATS_FILE = "generation_stats.jsonl"


@dataclass
class GenerationTimer:
    """Counts the samples and generated tokens of one generation and times it."""

    models: list[str]
    backend: str
    workers: int = 1
    started: float = field(default_factory=time.perf_counter)
    samples: int = 0
    tokens: int = 0
    untimed: int = 0  # samples whose token count the backend did not report

    def add(self, generations) -> None:
        """Count finished generations (anything with a ``tokens`` attribute or key)."""
        for g in generations:
            n = g.get("tokens") if isinstance(g, dict) else getattr(g, "tokens", None)
            self.samples += 1
            if isinstance(n, int):
                self.tokens += n
            else:
                self.untimed += 1

    def record(self) -> dict:
        """The generation_stats.jsonl line (seconds and tokens/s measured now)."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        key = "+".join(self.models)
        rec = {"key": key, "models": self.models, "backend": self.backend, "workers": self.workers,
               "samples": self.samples, "tokens": self.tokens, "seconds": round(seconds, 3),
               "tokens_per_s": round(self.tokens / seconds, 1) if self.samples and not self.untimed else None,
               "samples_per_s": round(self.samples / seconds, 3)}
        if self.untimed:
            rec["tokens_unknown"] = self.untimed
        return rec

    def summary(self) -> str:
        """One line for the terminal."""
        r = self.record()
        speed = f"{r['tokens_per_s']:,.0f} tokens/s" if r["tokens_per_s"] is not None else "tokens not reported"
        return (f"{r['key']}: {r['samples']} sample(s), {r['tokens']:,} tokens in {r['seconds']:.1f} s "
                f"({speed}, {r['backend']}" + (f", {r['workers']} workers" if r["workers"] > 1 else "") + ")")


def speed_table(stats: dict[str, dict]) -> dict[str, dict]:
    """metrics.json's ``generation_speed``: {models: record without its key}."""
    return {k: {f: v for f, v in rec.items() if f != "key"} for k, rec in stats.items()}


def render_markdown(speed: dict[str, dict]) -> str:
    """The report's "Generation speed" section ('' when nothing was generated here)."""
    if not speed:
        return ""
    lines = ["## Generation speed", "",
             "Wall clock of the generate stage (model loading and engine start excluded); the last run that "
             "generated each model's samples.", "",
             "| models | backend | workers | samples | generated tokens | seconds | tokens/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, r in speed.items():
        tps = f"{r['tokens_per_s']:,.1f}" if r.get("tokens_per_s") is not None else "n/a"
        lines.append(f"| {key} | {r['backend']} | {r['workers']} | {r['samples']} | {r['tokens']:,} | "
                     f"{r['seconds']:.1f} | {tps} |")
    return "\n".join(lines) + "\n"
