"""``rustcoder demo``: the whole loop offline on CPU in minutes, on the built-in tiny model and sample.

build the tiny Qwen2 (cached) -> train the small-batch preset -> evaluate base vs adapter per
category (with rustc where available) -> merge and verify -> serve the merged model with the
transformers engine -> ask it one Rust question -> stop. The tiny model is random: the demo shows
the mechanics, not quality.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import RustcoderError

QUESTION = "Write a Rust function `fn sum_even(v: &[i64]) -> i64` that returns the sum of the even numbers."
PROJECT = "rustcoder-demo"
RUN_NAME = "demo-small-batch"
# Two answers to QUESTION, checked in the evaluation's sandbox: the random model's own answers are
# empty, so these show what a passing and a failing check look like (rustc's diagnostics included).
GOOD_ANSWER = """pub fn sum_even(v: &[i64]) -> i64 {
    v.iter().filter(|x| *x % 2 == 0).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_even_numbers() {
        assert_eq!(sum_even(&[1, 2, 3, 4, 10]), 16);
        assert_eq!(sum_even(&[]), 0);
    }
}
"""
BAD_ANSWER = """pub fn sum_even(v: &[i64]) -> i64 {
    let mut total = 0;
    for x in v {
        if x % 2 == 0 {
            total += x;
        }
    }
    total as i32
}
"""
STAGES = ("build the tiny model", "train (small-batch preset)", "evaluate base vs adapter",
          "merge and verify", "serve and ask", "summary")


@dataclass
class DemoResult:
    """Where every artifact of the demo is, and what it measured."""

    run_dir: Path | None = None
    eval_dir: Path | None = None
    merged_dir: Path | None = None
    answer: str | None = None
    project: str = PROJECT
    max_new_tokens: int = 48
    no_exec: bool = False
    rustc_checks: dict[str, str] = field(default_factory=dict)  # good/bad -> sandbox status
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _ask(base_url: str, model: str, question: str, max_tokens: int = 64) -> str:
    from .data.categories import CATEGORIES
    from .openai_client import ChatClient

    client = ChatClient(base_url, timeout=300)
    try:
        return client.chat([{"role": "system", "content": CATEGORIES["code_generation"].system},
                            {"role": "user", "content": question}], model, max_tokens=max_tokens, temperature=0)
    finally:
        client.close()


class _Stages:
    """Numbered stage headers with elapsed time: one progress line per stage."""

    def __init__(self, echo: Callable[[str], None], result: DemoResult):
        self.echo, self.result, self.n = echo, result, 0

    def __call__(self, name: str):
        self.n += 1
        self.echo(f"\n[{self.n}/{len(STAGES)}] {name} ...")
        return _Timer(self, name)


class _Timer:
    def __init__(self, stages: _Stages, name: str):
        self.stages, self.name = stages, name

    def __enter__(self):
        self.t0 = time.time()
        return self

    def __exit__(self, kind, exc, tb):
        took = time.time() - self.t0
        self.stages.result.timings[self.name] = took
        if kind is None:
            self.stages.echo(f"[{self.stages.n}/{len(STAGES)}] {self.name}: done in {took:.1f} s")
        return False


def run_demo(output_dir: str | Path = "runs", *, max_new_tokens: int = 48, serve: bool = True,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the whole loop on the built-in tiny model and sample; returns where everything is."""
    from .config import resolve_config
    from .tiny import tiny_model_dir
    from .train import train

    result = DemoResult(max_new_tokens=max_new_tokens)
    stage = _Stages(echo, result)
    echo("rustcoder demo: the whole loop on a tiny RANDOM Qwen2 model and the built-in Strandset sample.\n"
         "It shows the mechanics (train, eval with rustc, verified merge, serving), not quality: the model's\n"
         "answers are noise. For a real Rust assistant: rustcoder train --preset small-batch -n 10000 on a GPU.")

    with stage(STAGES[0]):
        model_dir = tiny_model_dir("tiny-qwen2")
        echo(f"  tiny-qwen2 at {model_dir} (cached for next time)")

    with stage(STAGES[1]):
        from .artifacts import unique_run_name

        # Unique in the output directory and in the Trackio project: a second demo run elsewhere must not
        # append to the first one's curves.
        cfg = resolve_config("small-batch", overrides={
            "model": "tiny-qwen2", "dataset": "sample", "output_dir": str(output_dir),
            "run_name": unique_run_name(output_dir, RUN_NAME, PROJECT), "project": PROJECT})
        echo(f"  run {cfg.run_name} (Trackio project {PROJECT})")
        run = train(cfg, progress=True, log=echo)
        result.run_dir = run.run_dir
        echo(f"  eval loss {run.metrics['eval_loss']:.4f}, token accuracy "
             f"{run.metrics['eval_mean_token_accuracy']:.1%}, {run.metrics['steps']} steps")

    with stage(STAGES[2]):
        from .eval import EvalConfig, evaluate
        from .sandbox import rustc_available

        result.no_exec = not rustc_available()
        if result.no_exec:
            result.skipped["rustc"] = ("rustc not found: code answers are scored without compiling. Install it: "
                                       "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh")
            echo("  " + result.skipped["rustc"])
        ev = evaluate(EvalConfig(model=str(run.run_dir), compare_base=True, max_new_tokens=max_new_tokens,
                                 no_exec=result.no_exec), log=lambda line: echo(f"  {line}"))
        result.eval_dir = ev.eval_dir
        echo(ev.table())
        if not result.no_exec:
            _show_rustc_checks(result, echo)

    with stage(STAGES[3]):
        from .merge import merge

        merged = merge(run.run_dir, log=lambda *_: None)
        result.merged_dir = merged.merged_dir
        logits = ((merged.report.get("verification") or {}).get("checks") or {}).get("logits") or {}
        echo(f"  merged into {merged.merged_dir}; verification {'passed' if merged.verified else 'FAILED'}"
             + (f" (max logit difference {logits['max_abs_diff']:.1e}, tolerance {logits['tolerance']:.1e})"
                if isinstance(logits.get("max_abs_diff"), float) and isinstance(logits.get("tolerance"), float)
                else ""))
        if not merged.verified:
            raise RustcoderError(f"the merged model failed verification: see {merged.merged_dir}/merge_report.json")

    with stage(STAGES[4]):
        if not serve:
            result.skipped["serve"] = "skipped (--no-serve)"
            echo("  " + result.skipped["serve"])
        else:
            _serve_and_ask(result, max_new_tokens, echo)

    with stage(STAGES[5]):
        echo(summary(result))
    return result


def _show_rustc_checks(result: DemoResult, echo: Callable[[str], None]) -> None:
    """Check a known-good and a known-bad answer to QUESTION in the sandbox and show what rustc said."""
    from .sandbox import run_rust

    echo("  the random model's answers are empty, so here is the sandbox on two written answers to the demo "
         "question:")
    for label, source, mode in (("good", GOOD_ANSWER, "test"), ("bad", BAD_ANSWER, "check")):
        r = run_rust(source, mode=mode)
        result.rustc_checks[label] = r.status
        what = (f"{r.tests_passed} test(s) passed" if r.status == "pass" else
                ", ".join(r.error_codes) or r.detail or r.status)
        echo(f"  {label} answer: {r.status.upper()} ({what}; rustc --{'test' if mode == 'test' else 'check'} "
             f"{r.compile_seconds:.2f} s)")
        if r.status != "pass" and r.diagnostics.strip():
            lines = r.diagnostics.strip().splitlines()
            echo("\n".join(f"     | {line}" for line in lines[:14]) + ("\n     | ..." if len(lines) > 14 else ""))


def _serve_and_ask(result: DemoResult, max_new_tokens: int, echo: Callable[[str], None]) -> None:
    from .errors import MissingExtraError
    from .net import free_port
    from .serve import build_spec, start_server

    try:
        spec = build_spec(result.merged_dir, engine="transformers", port=free_port())
    except MissingExtraError as e:
        result.skipped["serve"] = str(e)
        echo(f"  serving skipped: {e}")
        return
    with start_server(spec, health_timeout=300) as server:
        echo(f"  transformers engine ready at {server.base_url} in {server.ready_seconds:.1f} s")
        echo(f"  Q: {QUESTION}")
        result.answer = _ask(server.base_url, server.model_name, QUESTION, max_new_tokens)
        echo("  A: " + (result.answer.strip().replace("\n", "\n     ") or "(empty: the tiny model is random)"))
    echo("  engine stopped")


def next_commands(result: DemoResult) -> list[tuple[str, str]]:
    """(command, what it shows): each works as printed, in a fresh shell, from any directory (absolute paths),
    and they can run side by side (the dashboard and the playground have ports of their own)."""
    from .dashboard import DEFAULT_PORT
    from .serve.options import ServeOptions
    from .terminal import path_arg as path
    from .terminal import rustcoder_command

    rc = rustcoder_command()
    out_dir = path(result.run_dir.parent) if result.run_dir else "runs"
    cmds = [(f"{rc} runs --output-dir {out_dir}", "every training run; --dashboard opens its Trackio project"),
            (f"{rc} runs --output-dir {out_dir} --dashboard", f"loss and token accuracy (Trackio project "
             f"{result.project}, on http://127.0.0.1:{DEFAULT_PORT} or the next free port; Ctrl-C stops it)")]
    if result.run_dir:
        flags = f" --max-new-tokens {result.max_new_tokens}" + (" --no-exec" if result.no_exec else "")
        cmds.append((f"{rc} eval {path(result.run_dir)} --by-task --compare-base{flags}",
                     "the demo's evaluation again, per category (resumes: nothing is regenerated)"))
    if result.merged_dir:
        cmds.append((f"{rc} serve {path(result.merged_dir)} --playground",
                     f"chat with it and check its Rust with rustc (playground on http://127.0.0.1:{ServeOptions.playground_port}; "
                     "Ctrl-C stops it)"))
    return cmds


def summary(result: DemoResult) -> str:
    """Where every artifact is, and the commands to look at them (each works as printed)."""
    lines = ["artifacts:"]
    if result.run_dir:
        lines += [f"  run directory   {result.run_dir}   (adapter/, manifest.json, metrics.json, config.yaml)"]
    if result.eval_dir:
        lines += [f"  eval report     {result.eval_dir / 'report.md'}   (chart: scores.png)"]
    if result.merged_dir:
        lines += [f"  merged model    {result.merged_dir}   (merge_report.json)"]
    lines.append("look at them (copy as is; or `source " + str(Path(sys.prefix) / "bin" / "activate")
                 + "` first, then plain `rustcoder ...`):" if sys.prefix != sys.base_prefix else "look at them:")
    for cmd, what in next_commands(result):
        lines += [f"  {cmd}", f"      # {what}"]
    lines.append("next, for real (GPU + hub): see README.md, \"The real path\" (rustcoder doctor first)")
    if result.skipped:
        lines.append("skipped: " + "; ".join(f"{k}: {v}" for k, v in result.skipped.items()))
    total = sum(result.timings.values())
    lines.append(f"total {total:.0f} s")
    return "\n".join(lines)
