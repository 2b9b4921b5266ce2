"""End-to-end LoRA SFT on tiny Qwen models: mechanics, artifacts, step counts, Trackio, resume."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from rustcoder import artifacts
from rustcoder.cli import main
from rustcoder.config import resolve_config
from rustcoder.train import last_complete_checkpoint, plan_training, train
from transformers import TrainerCallback

pytestmark = pytest.mark.slow


def _cfg(rows_file, tmp_path, **kw):
    base = dict(model="tiny-qwen2", dataset=str(rows_file), num_examples=90, output_dir=str(tmp_path / "runs"),
                report_to="none", lr=5e-3, save_steps=1000, logging_steps=5)
    base.update(kw)
    return resolve_config(kw.pop("preset", "small-batch"), overrides=base)


def _lora_tensors(adapter_dir):
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_train_moves_lora_not_base_and_writes_self_describing_run(rows_file, tiny_qwen2, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = _cfg(rows_file, tmp_path, num_examples=45, batch_size=3, grad_accum=2)
    result = train(cfg, progress=False, log=lambda *_: None)
    run = result.run_dir

    # LoRA B starts at zero: every B moved; A moved from its seeded init
    tensors = _lora_tensors(result.adapter_dir)
    b = [t for k, t in tensors.items() if "lora_B" in k]
    assert b and all(t.abs().sum() > 0 for t in b)
    assert any("q_proj" in k for k in tensors) and any("down_proj" in k for k in tensors)  # all linear layers

    # base weights inside the trained model are bit-identical to the base checkpoint
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, result.adapter_dir)
    for name, param in peft_model.base_model.model.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(param, base_sd[key]), name
    # ...and the adapter changes the model's output
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        adapted = peft_model(ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
    assert not torch.allclose(adapted, plain)

    # the run directory describes itself
    manifest = artifacts.read_json(run / "manifest.json")
    assert manifest["status"] == "finished"
    assert manifest["base_model"] == "tiny-qwen2"
    assert manifest["dataset"]["fingerprint"]
    assert manifest["versions"]["torch"] and manifest["versions"]["peft"]
    adapter_cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_qwen2)  # absolute local path
    assert adapter_cfg["r"] == 16 and adapter_cfg["lora_dropout"] == 0.1
    assert "{% generation %}" in (result.adapter_dir / "chat_template.jinja").read_text()
    metrics = artifacts.read_json(run / "metrics.json")
    assert metrics["eval_loss"] > 0 and 0 <= metrics["eval_mean_token_accuracy"] <= 1
    assert (run / "config.yaml").is_file() and (run / "data_summary.json").is_file()
    train_ids = set((run / "train_ids.txt").read_text().split())
    eval_ids = {json.loads(l)["id"] for l in (run / "eval_split.jsonl").read_text().splitlines()}
    assert len(train_ids) == manifest["dataset"]["train_rows"] and len(eval_ids) == manifest["dataset"]["eval_rows"]
    assert not train_ids & eval_ids


    # token counts: the train and eval splits apart, each what tokenizing that split alone gives
    from rustcoder.data.tokenize import tokenize_examples
    from rustcoder.modeling import load_tokenizer

    tokens = artifacts.read_json(run / "data_summary.json")["tokens"]
    tok, _ = load_tokenizer(str(tiny_qwen2), model_type="qwen2")
    plan = plan_training(cfg, device="cpu", count_forwards=False)
    for split, examples in (("train", plan.data.train), ("eval", plan.data.eval)):
        feats = tokenize_examples(tok, [e.messages for e in examples], cfg.max_length)
        answer = sum(sum(1 for l in f["labels"] if l != -100) for f in feats)
        assert tokens[split]["examples"] == len(examples) == manifest["dataset"][f"{split}_rows"]
        assert (tokens[split]["tokens"], tokens[split]["answer_tokens"]) == (sum(f["length"] for f in feats), answer)
        assert metrics[f"{split}_tokens"] == tokens[split]["tokens"]


@pytest.mark.parametrize("layout", ["grouped", "padded", "padding-free"])
def test_dry_run_step_count_is_what_the_trainer_runs(rows_file, tiny_qwen2, tmp_path, layout):
    # 41 rows -> 37 train rows; batch 3 -> 13 batches; accumulation 4 -> 4 steps per epoch (partial last one)
    args = ["--model", "tiny-qwen2", "--dataset", str(rows_file), "-n", "41", "--batch-size", "3",
            "--grad-accum", "4", "--epochs", "2", "--output-dir", str(tmp_path / "runs"), "--report-to", "none",
            "--forward-layout", layout, "--run-name", "steps", "--tokens-per-forward", "200"]
    r = CliRunner().invoke(main, ["train", *args, "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert (plan["data"]["train_rows"], plan["steps_per_epoch"], plan["total_steps"]) == (37, 4, 8)
    assert plan["forwards"]["forwards"] > plan["total_steps"]  # the budget splits steps into several forwards
    text = CliRunner().invoke(main, ["train", *args, "--dry-run"]).output
    assert "forwards per step: mean" in text and "tokens per forward" in text
    r = CliRunner().invoke(main, ["train", *args])
    assert r.exit_code == 0, r.output
    metrics = artifacts.read_json(tmp_path / "runs" / "steps" / "metrics.json")
    assert metrics["steps"] == plan["total_steps"] == metrics["planned_steps"]
    assert metrics["forwards"] == plan["forwards"]["forwards"] == metrics["planned_forwards"]
    assert metrics["forwards_per_step_max"] == plan["forwards"]["forwards_per_step_max"]


class _CaptureStep(TrainerCallback):
    """LoRA weights before, and gradients just before the optimizer applies them, of one optimizer step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.step:
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if state.global_step == self.step:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("layout,budget", [("padded", None), ("padding-free", 4096), ("padding-free", 96),
                                              ("grouped", 96)])
def test_packed_step_equals_the_unpacked_step(tiny_qwen2, tmp_path, layout, budget):
    """Loss and LoRA gradients of a step of mixed lengths with grad accumulation (3 x 2) equal those of the same
    examples run as the preset's padded micro-batches through transformers' own loss (gradient accumulation
    normalised over the step's answer tokens), however the step is packed into forwards."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rustcoder.data.tokenize import pad_batch, tokenize_examples
    from rustcoder.modeling import load_tokenizer
    from conftest import make_rows, write_jsonl
    from rustcoder.packing import StepSampler

    mixed = write_jsonl(tmp_path / "mixed.jsonl", make_rows(4, answer_words=lambda i: 1 + (i * 17) % 60))
    cfg = _cfg(mixed, tmp_path, num_examples=60, batch_size=3, grad_accum=2, max_steps=2, warmup_ratio=0.0,
               lora_dropout=0.0, max_grad_norm=0.0, logging_steps=1, eval_steps=100, forward_layout=layout,
               tokens_per_forward=budget, dtype="float32")
    capture = _CaptureStep(step=1)  # the second step: lora_B has moved off zero, so every gradient is non-trivial
    result = train(cfg, progress=False, callbacks=[capture], log=lambda *_: None)
    expected_forwards = {None: 2, 4096: 1}.get(budget)  # the preset's 2 micro-batches; the whole step in one
    if expected_forwards:
        assert result.metrics["forwards_per_step_max"] == expected_forwards
    else:  # 96 tokens: the step is split into more forwards than micro-batches
        assert result.metrics["forwards_per_step_max"] > 2
    history = artifacts.read_json(result.run_dir / "log_history.json")
    logged_loss = next(h["loss"] for h in history if h.get("step") == 2 and "loss" in h)

    plan = plan_training(cfg, device="cpu", count_forwards=False)
    tok, _ = load_tokenizer("tiny-qwen2", model_type="qwen2")
    feats = tokenize_examples(tok, [e.messages for e in plan.data.train], cfg.max_length)
    order = list(StepSampler([f["length"] for f in feats], 6, cfg.seed, grouped=layout == "grouped"))
    step = [feats[i] for i in order[6:12]]
    lengths = sorted(f["length"] for f in step)
    if layout != "grouped":  # grouped steps hold examples of similar length by design
        assert lengths[-1] > 2 * lengths[0]  # mixed lengths

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32, attn_implementation="sdpa")
    ref = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                          target_modules="all-linear", task_type="CAUSAL_LM"))
    params = dict(ref.named_parameters())
    assert capture.weights.keys() == {n for n, p in params.items() if p.requires_grad}
    with torch.no_grad():
        for n, w in capture.weights.items():
            params[n].copy_(w)
    micro = [pad_batch(step[i:i + 3], tok.pad_token_id) for i in (0, 3)]
    items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    loss = 0.0
    for b in micro:
        out = ref(**b, num_items_in_batch=items, use_cache=False)
        out.loss.backward()
        loss += out.loss.item()
    # float32: the packed and padded runs sum the same terms in different orders and tile shapes. Rounding is
    # ~1e-7 relative per operation and grows with the ~1e2-1e3-term reductions: rtol 1e-4, atol 1e-5 of each
    # tensor's largest entry. A wrong normalisation or one foreign token attended is far larger (off by >1%).
    assert logged_loss == pytest.approx(loss, rel=1e-5)
    for n, g in capture.grads.items():
        expected = params[n].grad
        assert expected.abs().max() > 0, n
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item(), msg=n)


def test_eval_loss_is_token_weighted_over_the_held_out_set(rows_file, tiny_qwen2, tmp_path):
    """Evaluation in token-budget forwards gives the mean NLL and top-1 accuracy over every answer token."""
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rustcoder.data.tokenize import tokenize_examples
    from rustcoder.modeling import load_tokenizer

    cfg = _cfg(rows_file, tmp_path, num_examples=80, max_steps=2, tokens_per_forward=128, forward_layout="padding-free",
               lora_dropout=0.0, dtype="float32")
    result = train(cfg, progress=False, log=lambda *_: None)
    plan = plan_training(cfg, device="cpu", count_forwards=False)
    tok, _ = load_tokenizer("tiny-qwen2", model_type="qwen2")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32),
                                      result.adapter_dir).eval()
    nll = correct = n = 0
    with torch.no_grad():
        for f in tokenize_examples(tok, [e.messages for e in plan.data.eval], cfg.max_length):
            logits = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(f["labels"][1:])
            keep = labels != -100
            nll += F.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            correct += (logits[keep].argmax(-1) == labels[keep]).sum().item()
            n += keep.sum().item()
    assert result.metrics["eval_loss"] == pytest.approx(nll / n, rel=1e-5)  # float32 sums in another order
    assert result.metrics["eval_mean_token_accuracy"] == pytest.approx(correct / n, abs=1e-9)


def test_qwen3_trains_with_thinking_off(rows_file, tiny_qwen3, tmp_path):
    cfg = _cfg(rows_file, tmp_path, model="tiny-qwen3", num_examples=30, max_steps=3)
    result = train(cfg, progress=False, log=lambda *_: None)
    manifest = artifacts.read_json(result.run_dir / "manifest.json")
    assert manifest["chat_template"] == "chatml_nothink"
    assert "<think>" in (result.adapter_dir / "chat_template.jinja").read_text()


def test_metrics_logged_to_trackio(rows_file, tiny_qwen2, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTCODER_PEAK_TFLOPS", "1")  # a CPU has no known peak: give one so MFU is estimated
    cfg = _cfg(rows_file, tmp_path, num_examples=40, report_to="trackio", project="rc-test", logging_steps=1,
               max_steps=4, eval_steps=2, run_name="tracked")
    result = train(cfg, progress=False, log=lambda *_: None)
    assert result.metrics["tokens_per_second"] > 0 and 0 < result.metrics["mfu"] < 1
    import os
    from pathlib import Path

    db = Path(os.environ["TRACKIO_DIR"]) / "rc-test.db"
    rows = sqlite3.connect(db).execute("select run_name, metrics from metrics").fetchall()
    keys = set()
    for run_name, blob in rows:
        assert run_name == "tracked"
        keys |= set(json.loads(blob))
    assert {"train/loss", "eval/loss", "eval/mean_token_accuracy", "train/mean_token_accuracy",
            "train/tokens_per_second", "train/mfu"} <= keys


def test_run_names_are_unique(rows_file, tiny_qwen2, tmp_path):
    from rustcoder.train import prepare_run_dir

    cfg = _cfg(rows_file, tmp_path, num_examples=1000)
    first = prepare_run_dir(cfg)
    assert first.name == "exp-small-batch-1k"
    first.mkdir(parents=True)
    assert prepare_run_dir(cfg).name == "exp-small-batch-1k-2"


class _Crash(Exception):
    pass


def test_kill_and_resume_reaches_the_same_adapter(rows_file, tiny_qwen2, tmp_path):
    from transformers import TrainerCallback

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise _Crash()

    common = dict(num_examples=50, max_steps=8, save_steps=3, save_total_limit=5, eval_steps=100)
    straight = train(_cfg(rows_file, tmp_path, run_name="straight", **common), progress=False, log=lambda *_: None)

    cfg = _cfg(rows_file, tmp_path, run_name="crashy", **common)
    with pytest.raises(_Crash):
        train(cfg, progress=False, callbacks=[CrashAt()], log=lambda *_: None)
    run_dir = tmp_path / "runs" / "crashy"
    assert artifacts.read_json(run_dir / "manifest.json")["status"] == "failed"
    assert last_complete_checkpoint(run_dir / "checkpoints").name == "checkpoint-3"
    # a checkpoint cut short by the kill (no trainer_state.json) is never resumed from
    (run_dir / "checkpoints" / "checkpoint-6").mkdir()
    assert last_complete_checkpoint(run_dir / "checkpoints").name == "checkpoint-3"

    r = CliRunner().invoke(main, ["train", "--resume", "--run-name", "crashy", "--output-dir",
                                  str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert "resuming from checkpoint-3" in r.output
    resumed = _lora_tensors(run_dir / "adapter")
    expected = _lora_tensors(straight.adapter_dir)
    assert resumed.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(resumed[k], expected[k], atol=1e-6, rtol=1e-5)
    assert artifacts.read_json(run_dir / "manifest.json")["status"] == "finished"


def test_resume_refuses_config_changes(rows_file, tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    cfg = _cfg(rows_file, tmp_path)
    artifacts.atomic_write_yaml(run / "config.yaml", cfg.to_dict())
    r = CliRunner().invoke(main, ["train", "--resume", "--run-name", "r1", "--output-dir", str(tmp_path / "runs"),
                                  "--lr", "0.1"])
    assert r.exit_code == 2 and "cannot change --lr" in r.output
    r = CliRunner().invoke(main, ["train", "--resume", "--run-name", "nope", "--output-dir", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "no run 'nope'" in r.output


DRY_RUN_RSS_SCRIPT = """
import json, resource, sys, tracemalloc

import torch  # noqa: F401 - the fixed cost (imports, the tokenizer) is paid before measuring
from rustcoder.config import resolve_config
from rustcoder.modeling import load_tokenizer
from rustcoder.train import plan_training

cfg = resolve_config("small-batch", overrides={"model": "tiny-qwen2", "dataset": sys.argv[1]})
load_tokenizer(cfg.model, model_type="qwen2")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
plan = plan_training(cfg, device="cpu")
examples = plan.data.train + plan.data.eval
print(json.dumps({"rss_growth": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before,
                  "python_peak": tracemalloc.get_traced_memory()[1], "rows": len(examples),
                  "text": sum(len(m["content"].encode()) for e in examples for m in e.messages),
                  "tokens": plan.tokens["train"]["tokens"] + plan.tokens["eval"]["tokens"],
                  "forwards": plan.forwards["forwards"]}))
"""


def _strandset_rows(path, n):
    """n distinct Strandset-shaped rows made from the built-in sample (real lengths: ~420 tokens a row here)."""
    from rustcoder.data.strandset import read_rows

    base = list(read_rows("sample", split="train"))
    with path.open("w") as fh:
        for i in range(n):
            r = dict(base[i % len(base)], crate_name=f"{base[i % len(base)]['crate_name']}_{i}")
            fh.write(json.dumps(r) + "\n")
    return path


def test_dry_run_memory_stays_within_its_budget_per_row(tiny_qwen2, tmp_path):
    """The dry run keeps each row's parsed text and one length, never every row's token ids: on 6,000 rows what it
    adds to the process, in peak RSS and in Python's own peak allocation (tracemalloc, which the allocator's reuse of
    memory freed by the imports cannot hide), stays within memory.dry_run_rss_budget (per row, per byte of text,
    one chunk of token lists). Tokenizing every row at once, as the dry run did, peaked at 115 MB of Python
    allocations here against a budget of about 46 MB (measured 30 MB with chunks)."""
    import os
    import subprocess
    import sys

    from rustcoder.memory import TOKEN_LIST_BYTES, dry_run_rss_budget
    from rustcoder.train import TOKENIZE_CHUNK

    script = tmp_path / "rss.py"
    script.write_text(DRY_RUN_RSS_SCRIPT)
    rows = _strandset_rows(tmp_path / "rows.jsonl", 6000)
    r = subprocess.run([sys.executable, str(script), str(rows)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["rows"] == 6000 and m["forwards"] > 0
    budget = dry_run_rss_budget(m["rows"], m["text"], m["tokens"], TOKENIZE_CHUNK)
    assert m["tokens"] * TOKEN_LIST_BYTES > 3 * budget  # the budget tells holding every row's tokens apart
    assert m["python_peak"] <= budget, (m, budget)
    assert m["rss_growth"] <= budget, (m, budget)


def test_empty_loss_mask_fails_fast():
    from rustcoder.errors import RustcoderError
    from rustcoder.train import check_loss_mask

    check_loss_mask([[-100, 5, 6], [-100, -100, 7]])
    with pytest.raises(RustcoderError, match="1 of 2 training examples have no answer tokens"):
        check_loss_mask([[-100, 5, 6], [-100, -100, -100]])
    import pyarrow as pa  # the Arrow column training passes, a record batch at a time (a slice keeps its offset)

    labels = pa.array([[-100, 5], [-100, -100], [7], [-100]], type=pa.list_(pa.int32()))
    check_loss_mask(pa.chunked_array([labels.slice(0, 1), labels.slice(2, 1)]))
    with pytest.raises(RustcoderError, match="2 of 3 training examples"):
        check_loss_mask(pa.chunked_array([labels.slice(0, 2), labels.slice(3, 1)]))


def test_on_a_gpu_a_float32_base_is_trained_in_bf16_like_its_autocast(rows_file, tiny_qwen2, tmp_path, monkeypatch):
    """tiny-qwen2 is saved in float32. On a GPU 'auto' trains under bf16 autocast (sft_args) and plans 2-byte
    weights, so the base must be loaded in bf16 too: float32 weights under bf16 autocast hand attention float32
    queries and keys with bf16 values, which torch's varlen (flash) kernel refuses. CUDA is mocked up to the load."""
    import rustcoder.modeling as modeling

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80 * 2**30, 80 * 2**30))
    real_load, loaded = modeling.load_model, []

    class Loaded(Exception):
        pass

    def load_then_stop(*a, **k):
        loaded.append(real_load(*a, **k).dtype)
        raise Loaded

    monkeypatch.setattr(modeling, "load_model", load_then_stop)
    cfg = _cfg(rows_file, tmp_path, max_steps=1)
    with pytest.raises(Loaded):
        train(cfg, progress=False, log=lambda *_: None)
    assert modeling.saved_dtype(modeling.resolve_model("tiny-qwen2")) == "float32"
    assert loaded == [torch.bfloat16]
    assert modeling.pick_dtype(cfg.dtype) == torch.bfloat16  # what sft_args turns into bf16 autocast


def test_tiny_max_length_still_trains_on_answers(rows_file, tiny_qwen2, tmp_path):
    """Truncation keeps half the budget for the answer, so a tight --max-length never empties the mask."""
    cfg = _cfg(rows_file, tmp_path, max_length=16, num_examples=20, max_steps=2)
    result = train(cfg, progress=False, log=lambda *_: None)
    tokens = artifacts.read_json(result.run_dir / "data_summary.json")["tokens"]
    assert tokens["train"]["truncated"] + tokens["eval"]["truncated"] == 20
    for split in ("train", "eval"):  # every example truncated, every answer keeps its tokens up to half the budget
        t = tokens[split]
        assert t["truncated"] == t["examples"] > 0 and t["answer_tokens"] >= 2 * t["examples"]


def test_push_to_hub_uploads_adapter_with_model_card(rows_file, tiny_qwen2, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id))

        def upload_folder(self, folder_path, repo_id, **kw):
            from pathlib import Path

            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload", repo_id, files, (Path(folder_path) / "README.md").read_text()))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = train(_cfg(rows_file, tmp_path, num_examples=20, max_steps=2, push_to_hub="me/rust-lora"),
                   progress=False, log=lambda *_: None)
    assert calls[0] == ("create", "me/rust-lora")
    _, repo, files, card = calls[1]
    assert repo == "me/rust-lora"
    assert {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "README.md"} <= set(files)
    assert "base_model: tiny-qwen2" in card and "small-batch" in card and "eval_loss" in card
    assert artifacts.read_json(result.run_dir / "manifest.json")["pushed_to"].endswith("me/rust-lora")


def test_offline_hub_model_fails_with_a_clear_message(tmp_path):
    r = CliRunner().invoke(main, ["train", "--model", "Qwen/Qwen2-7B-Instruct", "--dataset", "sample",
                                  "--output-dir", str(tmp_path), "--report-to", "none"])
    assert r.exit_code == 1, r.output
    assert "could not load" in r.output and "tiny-qwen2" in r.output
    assert "Traceback" not in r.output
    assert not any(tmp_path.iterdir())  # no half-made run directory left behind


def test_offline_hub_dataset_fails_with_a_clear_message():
    # a local model, so the dry run gets past the model (checked first since the dry run loads its config)
    r = CliRunner().invoke(main, ["train", "--dry-run", "--model", "tiny-qwen2"])
    assert r.exit_code == 1, r.output
    assert "could not load 'Fortytwo-Network/Strandset-Rust-v1'" in r.output
    assert "Traceback" not in r.output


def test_an_attention_kernel_that_cannot_load_falls_back_to_sdpa_and_says_so(rows_file, tiny_qwen2, tmp_path,
                                                                             monkeypatch):
    """A planned kernel that fails to load here (flash-attn asked for, not installed) trains with SDPA's exact
    block mask: the log says why and the manifest names the path used."""
    monkeypatch.setenv("RUSTCODER_ATTENTION", "flash_attention_2")
    cfg = resolve_config("small-batch", overrides=dict(model="tiny-qwen2", dataset=str(rows_file), num_examples=40,
                                                       max_steps=1, report_to="none", output_dir=str(tmp_path)))
    lines = []
    result = train(cfg, progress=False, log=lines.append)
    assert any("flash-attn varlen unavailable" in str(x) and "using SDPA block mask" in str(x) for x in lines), lines
    assert artifacts.read_json(result.run_dir / "manifest.json")["attention"] == "SDPA block-diagonal mask"


def test_one_process_on_a_machine_with_several_gpus_trains_on_one(rows_file, tiny_qwen2, tmp_path, monkeypatch):
    """Without a launcher, Trainer puts every visible GPU under nn.DataParallel, which TRL's SFTTrainer refuses
    (a ValueError at start). rustcoder trains on one GPU and says how to use them all."""
    import rustcoder.trainer as tr

    real = tr.sft_args

    def on_four_gpus(*a, **k):  # what TrainingArguments reports on a 4-GPU machine (CPU here)
        args = real(*a, **k)
        _ = args.device
        args._n_gpu = 4
        return args

    monkeypatch.setattr(tr, "sft_args", on_four_gpus)
    lines = []
    result = train(_cfg(rows_file, tmp_path, num_examples=20, max_steps=2), progress=False, log=lines.append)
    assert result.metrics["steps"] == 2
    assert any("4 GPUs are visible to this one process" in line and "--num-processes 4" in line for line in lines)
