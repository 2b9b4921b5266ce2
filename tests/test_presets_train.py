"""Every shipped preset trains end to end on the tiny model (a few steps, through `rustcoder train` as a user types
it), and its run directory says which preset and which values it trained with: config.yaml, manifest.json and the
adapter's own config agree with the preset file, and the adapter moved."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.config import load_preset, preset_names

pytestmark = pytest.mark.slow

STEPS = 2


@pytest.mark.parametrize("preset", preset_names())
def test_preset_trains_and_its_run_directory_records_it(preset, tiny_qwen2, rows_file, tmp_path):
    from safetensors.torch import load_file

    runs = tmp_path / "runs"
    r = CliRunner().invoke(main, ["train", "--preset", preset, "--model", str(tiny_qwen2), "--dataset", str(rows_file),
                                  "-n", "24", "--max-steps", str(STEPS), "--report-to", "none", "--save-steps", "1000",
                                  "--output-dir", str(runs), "--run-name", preset])
    assert r.exit_code == 0, r.output
    run = runs / preset
    values = {k: v for k, v in load_preset(preset).items() if k != "description"}
    assert values, f"preset {preset} sets nothing"

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["preset"] == preset
    for key, value in values.items():
        assert saved[key] == pytest.approx(value) if isinstance(value, float) else saved[key] == value, key
    assert (saved["max_steps"], saved["num_examples"]) == (STEPS, 24)  # and the flags typed on top of it

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["preset"] == preset and manifest["status"] == "finished"
    assert manifest["metrics"]["steps"] == STEPS
    assert manifest["plan"]["effective_batch"] == values["batch_size"] * values["grad_accum"]

    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())  # what PEFT really trained
    assert (adapter["r"], adapter["lora_alpha"]) == (values["lora_r"], values["lora_alpha"])
    assert adapter["lora_dropout"] == pytest.approx(values["lora_dropout"])
    lora_b = [t for k, t in load_file(str(run / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: the optimizer stepped
