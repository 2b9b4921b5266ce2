"""What a newcomer and a daily user trip over: clear errors for paths and the hub, ecosystem habits."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from rustcoder.cli import main


def _run(args, cwd, env=None):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, env={"HF_HUB_OFFLINE": "1", **(env or {})})
    finally:
        os.chdir(old)


@pytest.mark.parametrize("command", [["serve", "--engine", "transformers"], ["eval"]])
def test_a_path_that_does_not_exist_is_named_not_treated_as_a_hub_id(tmp_path, command):
    (tmp_path / "runs" / "exp-a").mkdir(parents=True)
    r = _run(command[:1] + ["runs/nope"] + command[1:], tmp_path)
    assert r.exit_code == 2, r.output
    assert "'runs/nope' does not exist" in r.output and "exp-a" in r.output  # what is there instead
    assert "Strandset" not in r.output and "Traceback" not in r.output


def test_hub_id_with_hf_hub_offline_says_so_not_check_your_network(monkeypatch):
    from rustcoder import modeling
    from rustcoder.errors import RustcoderError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RustcoderError) as e:
        modeling.load_config("nobody-here/not-a-model")
    text = str(e.value)
    assert "HF_HUB_OFFLINE=1 is set" in text and "unset hf_hub_offline" in text.lower()
    assert "network" not in text and "huggingface-cli" not in text


def test_unreachable_hub_fails_at_once_without_retries(monkeypatch):
    from rustcoder import modeling
    from rustcoder.errors import RustcoderError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout=3.0: False)
    t = time.monotonic()
    with pytest.raises(RustcoderError, match="cannot be reached from here"):
        modeling.load_config("nobody-here/not-a-model")
    assert time.monotonic() - t < 10  # huggingface_hub alone retries 5 times (about 30 s) first


def test_train_takes_a_config_file_as_its_argument_with_hugging_face_names(tmp_path):
    import json

    import yaml

    (tmp_path / "my.yaml").write_text(yaml.safe_dump({
        "preset": "aggressive-lr", "model_name_or_path": "tiny-qwen2", "dataset": "sample",
        "learning_rate": 3e-5, "gradient_accumulation_steps": 8, "lora_rank": 8, "num_train_epochs": 2}))
    r = _run(["train", "my.yaml", "--per-device-train-batch-size", "3", "--dry-run", "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output[r.output.index("{"):])
    cfg = plan["config"]
    assert (cfg["preset"], cfg["model"], cfg["lr"], cfg["grad_accum"], cfg["lora_r"], cfg["epochs"], cfg["batch_size"]) \
        == ("aggressive-lr", "tiny-qwen2", 3e-5, 8, 8, 2, 3)


def test_train_argument_errors_and_suggestions(tmp_path):
    r = _run(["train", "nope.yaml", "--dry-run"], tmp_path)
    assert r.exit_code == 2 and "config file 'nope.yaml' does not exist" in r.output and "presets show" in r.output
    (tmp_path / "bad.yaml").write_text("learning_rat: 1.0e-5\nlr: 1.0e-5\nlearning_rate: 2.0e-5\nbf16: true\n")
    r = _run(["train", "bad.yaml", "--dry-run"], tmp_path)
    assert r.exit_code == 2, r.output
    assert "'learning_rat' in bad.yaml (did you mean 'learning_rate', which sets 'lr'?)" in r.output
    assert "'lr' and 'learning_rate' in bad.yaml both set 'lr'" in r.output and "dtype: bfloat16" in r.output
    assert "logging_steps" not in r.output
    r = _run(["train", "--gradient-accumulation-step", "2", "--dry-run"], tmp_path)
    assert r.exit_code == 2 and "--gradient-accumulation-steps" in r.output


def test_train_argument_may_name_a_preset(tmp_path):
    r = _run(["train", "high-capacity", "--model", "tiny-qwen2", "--dataset", "sample", "--dry-run", "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    assert '"preset": "high-capacity"' in r.output
