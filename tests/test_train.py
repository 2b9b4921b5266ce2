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


@pytest.mark.parametrize("data_path", ["grouped", "padded", "padding-free"])
def test_dry_run_step_count_is_what_the_trainer_runs(rows_file, tiny_qwen2, tmp_path, data_path):
    # 41 rows -> 37 train rows; batch 3 -> 13 batches; accumulation 4 -> 4 steps per epoch (partial last one)
    args = ["--model", "tiny-qwen2", "--dataset", str(rows_file), "-n", "41", "--batch-size", "3",
            "--grad-accum", "4", "--epochs", "2", "--output-dir", str(tmp_path / "runs"), "--report-to", "none",
            "--data-path", data_path, "--run-name", "steps"]
    r = CliRunner().invoke(main, ["train", *args, "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert (plan["data"]["train_rows"], plan["steps_per_epoch"], plan["total_steps"]) == (37, 4, 8)
    r = CliRunner().invoke(main, ["train", *args])
    assert r.exit_code == 0, r.output
    metrics = artifacts.read_json(tmp_path / "runs" / "steps" / "metrics.json")
    assert metrics["steps"] == plan["total_steps"] == metrics["planned_steps"]


def test_padding_free_batches_do_not_attend_across_examples(tiny_qwen2):
    """The padding-free collator's flattened batch gives each example the logits it has alone."""
    from transformers import AutoModelForCausalLM

    from rustcoder.train import _Collator

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, attn_implementation="sdpa").eval()
    feats = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
             {"input_ids": [11, 12, 13], "labels": [-100, 12, 13]}]
    batch = _Collator(pad_id=0, padding_free=True)(feats)
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0] for f in feats]
    torch.testing.assert_close(flat[:5], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(flat[5:], alone[1], atol=1e-5, rtol=1e-4)
    assert batch["labels"][0, 5].item() == -100  # no target across the boundary


def test_qwen3_trains_with_thinking_off(rows_file, tiny_qwen3, tmp_path):
    cfg = _cfg(rows_file, tmp_path, model="tiny-qwen3", num_examples=30, max_steps=3)
    result = train(cfg, progress=False, log=lambda *_: None)
    manifest = artifacts.read_json(result.run_dir / "manifest.json")
    assert manifest["chat_template"] == "chatml_nothink"
    assert "<think>" in (result.adapter_dir / "chat_template.jinja").read_text()


def test_metrics_logged_to_trackio(rows_file, tiny_qwen2, tmp_path):
    cfg = _cfg(rows_file, tmp_path, num_examples=40, report_to="trackio", project="rc-test", logging_steps=1,
               max_steps=4, eval_steps=2, run_name="tracked")
    train(cfg, progress=False, log=lambda *_: None)
    import os
    from pathlib import Path

    db = Path(os.environ["TRACKIO_DIR"]) / "rc-test.db"
    rows = sqlite3.connect(db).execute("select run_name, metrics from metrics").fetchall()
    keys = set()
    for run_name, blob in rows:
        assert run_name == "tracked"
        keys |= set(json.loads(blob))
    assert {"train/loss", "eval/loss", "eval/mean_token_accuracy", "train/mean_token_accuracy"} <= keys


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


def test_empty_loss_mask_fails_fast():
    from rustcoder.errors import RustcoderError
    from rustcoder.train import check_loss_mask

    check_loss_mask([[-100, 5, 6], [-100, -100, 7]])
    with pytest.raises(RustcoderError, match="1 of 2 training examples have no answer tokens"):
        check_loss_mask([[-100, 5, 6], [-100, -100, -100]])


def test_tiny_max_length_still_trains_on_answers(rows_file, tiny_qwen2, tmp_path):
    """Truncation keeps half the budget for the answer, so a tight --max-length never empties the mask."""
    cfg = _cfg(rows_file, tmp_path, max_length=16, num_examples=20, max_steps=2)
    result = train(cfg, progress=False, log=lambda *_: None)
    summary = artifacts.read_json(result.run_dir / "data_summary.json")
    assert summary["truncated_examples"] == 20
    assert summary["answer_tokens"] >= 20 * 2  # every answer keeps its tokens up to half the budget


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
    r = CliRunner().invoke(main, ["train", "--dry-run"])
    assert r.exit_code == 1, r.output
    assert "could not load 'Fortytwo-Network/Strandset-Rust-v1'" in r.output
    assert "Traceback" not in r.output
