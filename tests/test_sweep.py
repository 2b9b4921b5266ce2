"""Sweeps train several configurations on the same sample, resume, survive failures; compare reports them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rustcoder import artifacts
from rustcoder.cli import main
from rustcoder.compare import compare_runs
from rustcoder.sweep import parse_grid, plan_sweep, run_sweep

pytestmark = pytest.mark.slow

COMMON = dict(model="tiny-qwen2", max_steps=2, report_to="none", eval_steps=1, lr=5e-3)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plan_names_and_grid():
    entries = plan_sweep(["baseline", "small-batch"], parse_grid(["lr=1e-5,2e-5"]), 10_000, {})
    assert [e.name for e in entries] == ["exp-baseline-10k-lr1e-05", "exp-baseline-10k-lr2e-05",
                                         "exp-small-batch-10k-lr1e-05", "exp-small-batch-10k-lr2e-05"]
    assert entries[1].overrides["lr"] == 2e-5


def test_bad_grid_and_preset_named():
    from rustcoder.errors import ConfigError, UsageError

    with pytest.raises(ConfigError, match="did you mean 'lora_r'"):
        parse_grid(["lora_rank=8,16"])
    with pytest.raises(UsageError, match="did you mean 'small-batch'"):
        plan_sweep(["smallbatch"], {}, None, {})


def test_three_preset_sweep_table_and_plots(rows_file, tiny_qwen2, tmp_path):
    sweep_dir = tmp_path / "sweep"
    r = CliRunner().invoke(main, ["sweep", "--presets", "baseline,aggressive-lr,small-batch", "-n", "30",
                                  "--sweep-dir", str(sweep_dir), "--set", f"dataset={rows_file}",
                                  *[a for k, v in COMMON.items() for a in ("--set", f"{k}={v}")]])
    assert r.exit_code == 0, r.output
    state = artifacts.read_json(sweep_dir / "sweep.json")
    assert [e["status"] for e in state["runs"]] == ["finished"] * 3
    fingerprints = {artifacts.read_json(sweep_dir / e["name"] / "manifest.json")["dataset"]["fingerprint"]
                    for e in state["runs"]}
    assert len(fingerprints) == 1  # identical sample and split for every run

    r = CliRunner().invoke(main, ["compare", str(sweep_dir)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("run ") and "exp-aggressive-lr-30" in r.output  # the compact terminal table
    assert "| experiment |" in (sweep_dir / "comparison.md").read_text()  # every column in the file
    result = compare_runs([sweep_dir])
    losses = [row.eval_loss for row in result["rows"]]
    assert losses == sorted(losses)  # best first
    assert result["eval_loss_lines"] == 3
    w, h = _png_size(result["eval_loss_png"])
    assert w > 400 and h > 300
    data = json.loads((sweep_dir / "comparison.json").read_text())
    assert {d["name"] for d in data} == {e["name"] for e in state["runs"]}


def test_killed_sweep_resumes_without_retraining(rows_file, tiny_qwen2, tmp_path, monkeypatch):
    import rustcoder.train as train_mod

    real_train = train_mod.train
    trained = []

    def killing_train(cfg, **kw):
        trained.append(cfg.run_name)
        if len(trained) == 2:
            raise KeyboardInterrupt  # the process dies mid-sweep
        return real_train(cfg, **kw)

    sweep_dir = tmp_path / "sweep"
    common = {**COMMON, "dataset": str(rows_file)}
    monkeypatch.setattr(train_mod, "train", killing_train)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep_dir, ["baseline", "small-batch"], num_examples=30, common=common, log=lambda *_: None)
    first_adapter = sweep_dir / "exp-baseline-30" / "adapter" / "adapter_model.safetensors"
    stamp = first_adapter.stat().st_mtime_ns

    trained.clear()
    monkeypatch.setattr(train_mod, "train", lambda cfg, **kw: (trained.append(cfg.run_name), real_train(cfg, **kw))[1])
    entries = run_sweep(sweep_dir, ["baseline", "small-batch"], num_examples=30, common=common, log=lambda *_: None)
    assert trained == ["exp-small-batch-30"]  # the finished run was not retrained
    assert first_adapter.stat().st_mtime_ns == stamp
    assert [e.status for e in entries] == ["finished", "finished"]


def test_sweep_with_eval_records_per_category_scores(rows_file, tiny_qwen2, tmp_path):
    from functools import partial

    from rustcoder.sweep import evaluate_run

    sweep_dir = tmp_path / "sweep"
    entries = run_sweep(sweep_dir, ["small-batch"], num_examples=30, common={**COMMON, "dataset": "sample"},
                        evaluate=partial(evaluate_run, max_new_tokens=4), log=lambda *_: None)
    ev = entries[0].metrics["eval"]
    assert set(ev["categories"]) == set(__import__("rustcoder.data.categories", fromlist=["x"]).CATEGORY_NAMES)
    result = compare_runs([sweep_dir])
    assert result["rows"][0].categories and result["categories_png"] is not None


def test_failed_run_is_reported_while_others_finish(rows_file, tiny_qwen2, tmp_path):
    sweep_dir = tmp_path / "sweep"
    entries = run_sweep(sweep_dir, ["baseline"], grid={"lr": [5e-3, -1.0]}, num_examples=30,
                        common={**COMMON, "dataset": str(rows_file)}, log=lambda *_: None)
    assert [e.status for e in entries] == ["finished", "failed"]
    assert "--lr: must be > 0" in entries[1].error
    result = compare_runs([sweep_dir])
    assert "failed" in result["table"] and "--lr: must be > 0" in result["table"]
    assert [r.status for r in result["rows"]] == ["finished", "failed"]


def test_compare_runs_with_and_without_eval(rows_file, tiny_qwen2, tmp_path):
    from rustcoder.config import resolve_config
    from rustcoder.train import train

    runs = []
    for name in ("plain", "evaluated"):
        cfg = resolve_config("small-batch", overrides={**COMMON, "dataset": str(rows_file), "num_examples": 30,
                                                       "output_dir": str(tmp_path / "runs"), "run_name": name})
        runs.append(train(cfg, progress=False, log=lambda *_: None).run_dir)
    eval_dir = runs[1] / "eval" / "sample"
    eval_dir.mkdir(parents=True)
    # the shape rustcoder eval writes (see rustcoder/eval/report.py)
    (eval_dir / "metrics.json").write_text(json.dumps({"models": {"adapter": {"categories": {
        "code_generation": {"metric": "pass", "primary": 50.0},
        "function_naming": {"metric": "exact", "primary": 25.0}}}}}))
    result = compare_runs(runs, tmp_path / "cmp")
    assert "code_generation" in result["table"] and "50.000" in result["table"]
    plain = next(r for r in result["rows"] if r.name == "plain")
    assert plain.categories == {}
    assert result["categories_png"] is not None and _png_size(result["categories_png"])[0] > 400
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "nothing")])
    assert r.exit_code == 2
