"""End to end on a tiny trained run: `rustcoder eval --by-task` right after training (newest run,
default dataset, every stage file, report and a real PNG), --compare-base deltas and resume across
invocations; teacher forcing that matches a naive forward pass and keeps memory flat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.data.categories import CATEGORY_NAMES
from rustcoder.sandbox import rustc_available

pytestmark = pytest.mark.slow
needs_rustc = pytest.mark.skipif(not rustc_available(), reason="rustc not installed")

STAGE_FILES = ("eval_config.yaml", "samples.jsonl", "executions.jsonl", "scores.jsonl", "teacher_forced.jsonl",
               "metrics.json", "report.md", "scores.png")


@needs_rustc
def test_eval_by_task_after_train_then_compare_base(trained_run, monkeypatch):
    workdir, run_dir = trained_run
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "--by-task", "--max-new-tokens", "24", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert f"evaluating the newest finished run: runs/{run_dir.name}" in res.output
    eval_dir = run_dir / "eval" / "sample-test"  # the run trained on 'sample': its held-out test sample
    for name in STAGE_FILES:
        assert (eval_dir / name).is_file(), name
    assert (eval_dir / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for cat in CATEGORY_NAMES:
        assert cat in res.output
    m = json.loads((eval_dir / "metrics.json").read_text())
    assert list(m["models"]) == ["adapter"] and len(m["models"]["adapter"]["categories"]) == 15
    assert Path(m["plot"]).resolve() == (eval_dir / "scores.png").resolve()  # the file carries the report's plot
    assert m["data"]["overlap"]["excluded"] == 0 and m["data"]["overlap"]["checked_against"].endswith("train_ids.txt")
    assert m["models"]["adapter"]["overall"]["tf_loss"] > 0
    samples = [json.loads(l) for l in (eval_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 30 and all(s["tokens"] <= 24 for s in samples)

    # --compare-base in the same directory: the adapter's samples are reused, only the base generates
    res = runner.invoke(main, ["eval", "--by-task", "--compare-base", "--max-new-tokens", "24", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "generate adapter: all 30 sample(s) already done" in res.output
    assert "generate base:" in res.output and "Δ" in res.output
    m = json.loads((eval_dir / "metrics.json").read_text())
    assert list(m["models"]) == ["adapter", "base"]
    comp = m["comparison"]
    assert set(comp["categories"]) == set(CATEGORY_NAMES)
    for cat, e in comp["categories"].items():
        a = m["models"]["adapter"]["categories"][cat]["primary"]
        b = m["models"]["base"]["categories"][cat]["primary"]
        assert e["delta"] == pytest.approx(a - b) and e["n_pairs"] == 2
        assert e["tf_loss_delta"] == pytest.approx(m["models"]["adapter"]["categories"][cat]["tf_loss"]
                                                   - m["models"]["base"]["categories"][cat]["tf_loss"])
    # the adapter was trained (lr 5e-3): its teacher-forced loss on held-out answers moved off the base's
    assert comp["overall"]["tf_loss_delta"] != 0
    report = (eval_dir / "report.md").read_text()
    assert "| base | adapter | Δ | 95% CI |" in report and "Teacher-forced scores" in report
    assert "![per-category scores](scores.png)" in report
    samples = [json.loads(l) for l in (eval_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60


def test_teacher_forcing_is_exact_batched_and_memory_flat(tiny_qwen2):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rustcoder.data.tokenize import tokenize_examples
    from rustcoder.eval.suites import dataset_suite, load_items
    from rustcoder.eval.teacher_forced import aggregate, teacher_forced_stats
    from rustcoder.modeling import load_tokenizer

    tok, _ = load_tokenizer(str(tiny_qwen2), model_type="qwen2")
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    items = load_items(dataset_suite("sample")).items
    convs = [i.messages + [{"role": "assistant", "content": i.reference}] for i in items]
    feats = tokenize_examples(tok, convs, 2048)
    answer_tokens = [sum(1 for l in f["labels"][1:] if l != -100) for f in feats]

    head_rows: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(o.shape[0]))
    batches: list[list[int]] = []
    try:
        stats = teacher_forced_stats(model, tok, convs, batch_size=4, max_length=2048, on_batch=batches.append)
    finally:
        hook.remove()
    # one LM-head call per batch, each on that batch's answer tokens only (never the whole set, never
    # prompt or padding positions): the largest logits tensor is one batch's answers x vocab
    assert len(batches) == len(head_rows) == 8
    for idx, rows in zip(batches, head_rows):
        assert rows == sum(answer_tokens[i] for i in idx)
    assert max(head_rows) < sum(answer_tokens) / 2
    # per-example sums come back, in input order, and match a plain full forward pass
    assert [s.tokens for s in stats] == answer_tokens
    for i in (0, 7, 29):
        ids = torch.tensor([feats[i]["input_ids"]])
        labels = torch.tensor([feats[i]["labels"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        keep = labels[0, 1:] != -100
        nll = F.cross_entropy(logits[keep], labels[0, 1:][keep], reduction="sum").item()
        correct = int((logits[keep].argmax(-1) == labels[0, 1:][keep]).sum())
        assert stats[i].nll_sum == pytest.approx(nll, rel=1e-4) and stats[i].correct == correct
    agg = aggregate(stats)
    assert agg["tokens"] == sum(answer_tokens) and agg["loss"] == pytest.approx(
        sum(s.nll_sum for s in stats) / sum(answer_tokens))
