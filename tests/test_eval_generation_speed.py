"""The transformers backend where it is the only choice: batches by token budget over length-sorted
prompts, finished answers leaving the batch (same greedy answers as ``generate``, fewer rows
computed), the static-cache path, and generated tokens/s per backend in metrics.json and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rustcoder.eval.backends import GEN_MAX_ROWS, GenParams, GenRequest, ModelTarget, plan_batches


class _Item:
    def __init__(self, i):
        self.id, self.category, self.messages = f"i{i}", "c", []


def test_token_budget_batches():
    lengths = [10, 400, 12, 30, 900, 11, 50, 13, 10, 20]
    reqs = [GenRequest(_Item(i)) for i in range(len(lengths))]
    params = GenParams(max_new_tokens=100)
    batches = plan_batches(reqs, lengths, params, 2, batch_tokens=1200)
    order = [i for _, _, b in batches for i in b]
    assert sorted(order) == list(range(len(lengths)))  # every request once
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # longest first
    for _, offset, b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * (longest + 100) <= 1200  # within the budget (one prompt always fits)
    sizes = [len(b) for _, _, b in batches]
    assert sizes[0] == 1 and sizes[-1] > 2  # the 900-token prompt alone; short prompts share a bigger batch
    # without a budget: the fixed count, as before
    assert [len(b) for _, _, b in plan_batches(reqs, lengths, params, 2)] == [2] * 5
    # sampling n=4 per prompt: rows are prompts x n, capped at GEN_MAX_ROWS
    many = [GenRequest(_Item(i), n=4) for i in range(200)]
    sampled = plan_batches(many, [1] * 200, GenParams(max_new_tokens=1, temperature=0.8), 8, batch_tokens=10**9)
    assert max(len(b) for _, _, b in sampled) * 4 == GEN_MAX_ROWS


@pytest.fixture(scope="module")
def lively_model(tmp_path_factory, _isolated_cache):
    """A tiny Qwen2 whose random weights are large enough that greedy answers vary (the default
    initialisation repeats one token), plus a token that ends answers at different lengths."""
    import torch
    from transformers import AutoModelForCausalLM

    from rustcoder.tiny import build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp("lively") / "m", hidden_size=128, heads=4, kv_heads=2)
    model = AutoModelForCausalLM.from_pretrained(d)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(d)
    return d, 510  # 510: first generated at steps 0..46 across the sample prompts with these weights


def _backend(model_dir, **kw):
    from rustcoder.eval.backends import TransformersBackend

    return TransformersBackend(str(model_dir), log=lambda *_: None, **kw)


class _count_host_waits_in:
    """Counts the calls that make the host wait for the device (tensor -> Python values, data-dependent shapes)
    made from one source file, while active."""

    METHODS = ("tolist", "item", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy")

    def __init__(self, path_suffix: str):
        self.suffix, self.calls, self.saved = path_suffix, 0, {}

    def __enter__(self):
        import sys

        import torch

        for name in self.METHODS:
            orig = self.saved[name] = getattr(torch.Tensor, name)

            def counted(t, *a, _orig=orig, **k):
                if sys._getframe(1).f_code.co_filename.endswith(self.suffix):
                    self.calls += 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        import torch

        for name, orig in self.saved.items():
            setattr(torch.Tensor, name, orig)


def _reference_generate(backend, requests, max_new_tokens):
    """What transformers' own generate answers for the same prompts (one left-padded batch)."""
    import torch
    from transformers import GenerationConfig

    tok = backend.tokenizer
    enc = [tok(backend.prompt_text(r.messages), add_special_tokens=False)["input_ids"] for r in requests]
    ids, mask = backend._left_padded(enc)
    gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=backend.stop_ids,
                          pad_token_id=backend.pad_id)
    with torch.inference_mode():
        out = backend.model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    answers = []
    for row in out[:, ids.shape[1]:].tolist():
        stopped = next((p for p, t in enumerate(row) if t in backend.stop_ids), None)
        kept = row[:stopped] if stopped is not None else row
        answers.append(tok.decode(kept, skip_special_tokens=True))
    return answers


@pytest.mark.slow
def test_finished_answers_leave_the_batch_with_generates_answers(lively_model):
    from rustcoder.eval.suites import dataset_suite, load_items

    model_dir, stop_token = lively_model
    items = load_items(dataset_suite("sample")).items
    requests = [GenRequest(i) for i in items]
    target = ModelTarget("model", "local", "m", path=str(model_dir))
    params = GenParams(max_new_tokens=24)
    backend = _backend(model_dir, batch_size=len(items))  # one batch of all 30 prompts
    backend.stop_ids = backend.stop_ids + [stop_token]
    waits = _count_host_waits_in("rustcoder/eval/decoding.py")
    with waits:
        got = {r.item.id: gens[0] for r, gens in backend.generate(requests, params, target)}
    stats = backend.decode_stats
    # the loop waits on the device once per step (the new tokens), however many rows finish: on a GPU each
    # extra .tolist() / bool() / nonzero() would stall the launch queue
    assert waits.calls == stats.steps + 1
    expected = _reference_generate(backend, requests, 24)
    assert [got[r.item.id].text for r in requests] == expected
    reasons = [got[r.item.id].finish_reason for r in requests]
    assert "stop" in reasons and "length" in reasons  # answers of different lengths in one batch
    # the rows computed follow the answers still being written, not rows x steps
    assert stats.steps == 23
    assert stats.row_steps == sum(min(g.tokens, 23) for g in got.values())
    assert stats.row_steps < len(items) * stats.steps
    backend.close()


@pytest.mark.slow
def test_static_cache_gives_the_same_greedy_answers(lively_model):
    from rustcoder.eval.suites import dataset_suite, load_items

    model_dir, _ = lively_model
    items = load_items(dataset_suite("sample"), limit=1).items[:6]
    requests = [GenRequest(i) for i in items]
    target = ModelTarget("model", "local", "m", path=str(model_dir))
    params = GenParams(max_new_tokens=8)
    answers, shapes = {}, {}
    # static batches are padded to few compile shapes (rows to a power of two, prompt width to a multiple of
    # 128): batches of 3 rows run as 4, the padding rows dropped, the answers unchanged
    for name, kv, kw in (("dynamic", "dynamic", {"batch_tokens": 4096}), ("static", "static", {"batch_tokens": 4096}),
                         ("static-3", "static", {"batch_tokens": 0, "batch_size": 3})):
        backend = _backend(model_dir, kv_cache=kv, **kw)
        answers[name] = {r.item.id: [(g.text, g.finish_reason, g.tokens) for g in gens]
                         for r, gens in backend.generate(requests, params, target)}
        shapes[name] = backend.static_shapes
        backend.close()
    assert answers["static"] == answers["dynamic"] == answers["static-3"] and len(answers["static"]) == len(items)
    assert shapes["static-3"] and all(r == 4 and w % 128 == 0 for r, w in shapes["static-3"])
    assert not shapes["dynamic"]


@pytest.mark.slow
def test_tokens_per_second_in_metrics_and_report(tiny_qwen2, tmp_path):
    from rustcoder.eval import EvalConfig, evaluate

    out = tmp_path / "ev"
    result = evaluate(EvalConfig(model=str(tiny_qwen2), dataset="sample", limit=1, max_new_tokens=6, no_exec=True,
                                 teacher_forced=False, output_dir=str(out)), log=lambda *_: None)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    speed = result.metrics["generation_speed"]
    assert list(speed) == ["model"]
    rec = speed["model"]
    assert rec["backend"] == "transformers" and rec["samples"] == len(samples) == 15
    assert rec["tokens"] == sum(s["tokens"] for s in samples) > 0
    # tokens/s comes from the unrounded time; the record keeps seconds to the millisecond (a tiny model's run
    # takes tens of ms, so that rounding alone can move tokens / seconds by over 1%), and tokens/s to 0.1
    lo, hi = rec["seconds"] - 0.0005, rec["seconds"] + 0.0005
    assert rec["tokens"] / hi - 0.05 <= rec["tokens_per_s"] <= rec["tokens"] / max(lo, 1e-9) + 0.05
    assert json.loads((out / "metrics.json").read_text())["generation_speed"] == speed
    report = (out / "report.md").read_text()
    assert "## Generation speed" in report and f"| model | transformers | 1 | 15 | {rec['tokens']:,} |" in report
    # a rerun generates nothing: the figure of the run that made the samples stays
    again = evaluate(EvalConfig(model=str(tiny_qwen2), dataset="sample", limit=1, max_new_tokens=6, no_exec=True,
                                teacher_forced=False, output_dir=str(out)), log=lambda *_: None)
    assert again.metrics["generation_speed"] == speed


@pytest.mark.slow
def test_throughput_benchmark_runs_side_by_side(capsys):
    """benchmarks/eval_throughput.py (smaller): both transformers paths on the same prompts, one table."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "eval_throughput.py"
    spec = importlib.util.spec_from_file_location("eval_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--backends", "hf-generate,transformers", "--prompts", "6", "--max-new-tokens", "4",
                       "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| hf-generate") or line.startswith("| transformers")]
    assert len(rows) == 2 and all("| 6 | 0 | 24 |" in r for r in rows)  # 6 answers x 4 tokens each, same limits
    assert "| 1.00x |" in rows[0]


@pytest.mark.slow
def test_the_oracle_reports_no_generation_speed(tmp_path):
    from rustcoder.eval import EvalConfig, evaluate
    from rustcoder.sandbox import rustc_available

    if not rustc_available():
        pytest.skip("rustc not installed")
    result = evaluate(EvalConfig(oracle=True, dataset="sample", categories=["function_naming"],
                                 output_dir=str(tmp_path / "ev")), log=lambda *_: None)
    assert result.metrics["generation_speed"] == {}
    assert "## Generation speed" not in (tmp_path / "ev" / "report.md").read_text()


def test_generation_budget_from_free_memory_counts_kv_cache_and_prefill():
    """7B in bf16 on an 80 GB card (about 64 GB free once loaded): each budget token holds its KV cache in all
    28 layers (2 x 28 x 4 kv heads x 128 x 2 bytes) and one layer's prefill activations, with the training
    estimate's margin and usable share; the whole Strandset test split at 512 new tokens is then one batch."""
    from rustcoder.memory import SAFETY, USABLE_SHARE, ModelShape, generation_batch_tokens

    s = ModelShape(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064, tied=False)
    free = 64 * 2**30
    per_token = (2 * 28 * 4 * 128 * 2 + (3 * 18944 + 6 * 3584) * 2) * SAFETY
    budget = generation_batch_tokens(s, 2, free)
    assert budget == int(free * USABLE_SHARE / per_token) // 256 * 256 and 150_000 < budget < 250_000
    lengths = [200] * 225
    reqs = [GenRequest(_Item(i)) for i in range(225)]
    assert len(plan_batches(reqs, lengths, GenParams(max_new_tokens=512), 8, budget)) == 1
    assert generation_batch_tokens(s, 2, 0) == 256  # no memory: one prompt per batch still runs


def test_auto_budget_reads_the_gpu_free_memory_and_is_fixed_on_cpu(tiny_qwen2, monkeypatch):
    import torch

    from rustcoder.eval import backends
    from rustcoder.memory import GEN_CPU_BATCH_TOKENS, ModelShape, generation_batch_tokens

    backend = _backend(tiny_qwen2, batch_tokens="auto")
    assert backend.device == "cpu" and backend.batch_tokens == GEN_CPU_BATCH_TOKENS
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (10 * 2**30, 80 * 2**30))
    got = backends.auto_batch_tokens(backend.model, "cuda")
    assert asked and got == generation_batch_tokens(ModelShape.from_config(backend.model.config), 4, 10 * 2**30)
    backend.close()


@pytest.mark.parametrize("setting, passed", [(None, "auto"), (0, None), (4096, 4096)])
def test_eval_config_batch_tokens_reach_the_backend(setting, passed, monkeypatch):
    """None (the default) is the auto budget; 0 is fixed --batch-size batches; a number is that budget."""
    from types import SimpleNamespace

    from rustcoder.eval import backends, loading
    from rustcoder.eval.config import EvalConfig

    seen = {}
    monkeypatch.setattr(backends, "TransformersBackend", lambda *a, **k: seen.update(k))
    cfg = EvalConfig(batch_tokens=setting)
    assert not [p for p in cfg.problems() if p.startswith("--batch-tokens")]
    target = ModelTarget("model", "local", "m", path="/nowhere")
    loading.default_backend_factory(target, SimpleNamespace(cfg=cfg, backend="transformers"))
    assert seen["batch_tokens"] == passed
