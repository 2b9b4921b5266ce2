"""Data-parallel training through Accelerate on CPU (gloo), and the shipped launch configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rustcoder import artifacts
from rustcoder.config import resolve_config, steps_for
from rustcoder.launch import accelerate_command, launch_config_names, launch_config_path


def test_effective_batch_is_kept_across_processes():
    cfg = resolve_config("baseline", overrides={"num_processes": 2})
    assert (cfg.batch_size, cfg.effective_batch) == (4, 16)        # 4 per device x 2 accum x 2 processes
    assert steps_for(9000, cfg) == steps_for(9000, resolve_config("baseline"))
    cfg = resolve_config("baseline", overrides={"num_processes": 2, "keep_effective_batch": False})
    assert cfg.effective_batch == 32


def test_dry_run_shows_processes(rows_file, tiny_qwen2):
    from click.testing import CliRunner

    from rustcoder.cli import main

    r = CliRunner().invoke(main, ["train", "--preset", "small-batch", "--dataset", str(rows_file), "-n", "100",
                                  "--model", "tiny-qwen2", "--num-processes", "2", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "effective batch 4 = 2 per device x 1 accumulation x 2 processes (preset: 2 x 2)" in r.output


@pytest.mark.parametrize("name", ["ddp", "ddp-multinode", "fsdp2", "deepspeed-zero2", "deepspeed-zero3"])
def test_shipped_launch_configs_are_accepted_by_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    assert name in launch_config_names()
    cfg = load_config_from_file(str(launch_config_path(name)))
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    assert cfg.num_processes >= 8 and cfg.mixed_precision == "bf16"
    expected = {"ddp": "MULTI_GPU", "ddp-multinode": "MULTI_GPU", "fsdp2": "FSDP",
                "deepspeed-zero2": "DEEPSPEED", "deepspeed-zero3": "DEEPSPEED"}[name]
    assert cfg.distributed_type.value == expected
    if name == "fsdp2":
        assert cfg.fsdp_config["fsdp_version"] == 2
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
    # accelerate's own launcher parses the command rustcoder builds with this config
    from accelerate.commands.launch import launch_command_parser

    cmd = accelerate_command(resolve_config("baseline", overrides={"num_processes": 8, "launch_config": name}),
                             ["--dry-run"], {"machine_rank": 1, "main_process_ip": "10.0.0.1"})
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.config_file == str(launch_config_path(name)) and args.num_processes == 8
    assert args.machine_rank == 1 and args.main_process_ip == "10.0.0.1"
    assert args.module and args.training_script == "rustcoder"


def test_every_machine_of_a_multi_node_run_writes_the_one_run_directory(rows_file, tmp_path, monkeypatch):
    """Each machine runs the same command with its own --machine-rank: all launch into OUTPUT_DIR/RUN_NAME (no
    per-machine -2 suffix, even where the first machine already made it), only machine 0 reads the metrics, and a
    run without --run-name is refused before anything starts."""
    from click.testing import CliRunner

    from rustcoder import artifacts, launch
    from rustcoder.cli import main

    launched = []

    def fake_launch(cfg, *, run_dir=None, resume=False, machine=None, log=print):  # the real one, minus accelerate
        if run_dir is None:
            from rustcoder.rundir import new_run_dir

            run_dir = new_run_dir(cfg)
            run_dir.mkdir(parents=True)
        launched.append((run_dir, machine["machine_rank"]))
        if not machine["machine_rank"]:
            artifacts.atomic_write_json(run_dir / artifacts.METRICS, {"eval_loss": 1.0, "eval_mean_token_accuracy": 0.5,
                                                                      "steps": 3, "wall_time_s": 9.0})
        return run_dir

    monkeypatch.setattr(launch, "launch_training", fake_launch)
    common = ["train", "--preset", "high-capacity", "--dataset", str(rows_file), "--num-processes", "16",
              "--launch-config", "ddp-multinode", "--output-dir", str(tmp_path / "runs"), "--report-to", "trackio"]
    for rank in (0, 1):
        r = CliRunner().invoke(main, [*common, "--run-name", "shared", "--machine-rank", str(rank)])
        assert r.exit_code == 0, r.output
    assert launched == [(tmp_path / "runs" / "shared", 0), (tmp_path / "runs" / "shared", 1)]
    assert "machine 1's processes finished" in r.output
    r = CliRunner().invoke(main, [*common, "--machine-rank", "0"])
    assert r.exit_code == 2 and "a run over 2 machines needs --run-name" in r.output
    assert len(launched) == 2


@pytest.mark.parametrize("name", ["deepspeed-zero2", "deepspeed-zero3"])
def test_deepspeed_is_refused_at_start_with_the_reason(name, rows_file, tiny_qwen2, tmp_path, monkeypatch):
    """DeepSpeed's accumulation is fixed at engine start while a step's backwards vary in number, and Accelerate runs
    DeepSpeed only on GPUs, so that path is unverified here: refused before any run directory or process exists,
    by name and when `accelerate launch` set it up (its environment variable)."""
    from click.testing import CliRunner

    from rustcoder.cli import main

    common = ["train", "--model", "tiny-qwen2", "--dataset", str(rows_file), "-n", "40", "--report-to", "none",
              "--output-dir", str(tmp_path / "runs")]
    for extra in (["--dry-run"], []):
        r = CliRunner().invoke(main, [*common, "--num-processes", "2", "--launch-config", name, *extra])
        assert r.exit_code == 2, r.output
        assert "DeepSpeed is refused" in r.output and "gradient accumulation" in r.output and "fsdp2" in r.output
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    r = CliRunner().invoke(main, [*common, "--dry-run"])
    assert r.exit_code == 2 and "DeepSpeed is refused" in r.output, r.output


def test_unknown_launch_config_named():
    from rustcoder.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'fsdp2'"):
        launch_config_path("fsdp")


@pytest.mark.slow
def test_two_process_cpu_training_matches_single_process(rows_file, tiny_qwen2, tmp_path):
    """Two gloo processes, each packing its half of every step into flattened forwards, end with the adapter of
    one process running the same steps as padded batches: the loss is normalised over the whole step."""
    common = ["--model", "tiny-qwen2", "--dataset", str(rows_file), "-n", "60", "--lr", "5e-3",
              "--lora-dropout", "0", "--eval-steps", "100", "--report-to", "trackio",
              "--project", "scale-test"]
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "RUSTCODER_PEAK_TFLOPS": "1"}
    two = subprocess.run([sys.executable, "-m", "rustcoder", "train", "--preset", "baseline", *common,
                          "--batch-size", "2", "--grad-accum", "2", "--num-processes", "2", "--keep-effective-batch",
                          "--forward-layout", "padding-free", "--tokens-per-forward", "160",
                          "--output-dir", str(tmp_path / "two"), "--run-name", "dp"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "2 processes" in two.stdout
    one = subprocess.run([sys.executable, "-m", "rustcoder", "train", "--preset", "baseline", *common,
                          "--batch-size", "4", "--grad-accum", "1", "--forward-layout", "padded",
                          "--output-dir", str(tmp_path / "one"),
                          "--run-name", "single", "--no-fast-dropout"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

    dp, single = tmp_path / "two" / "dp", tmp_path / "one" / "single"
    m_dp, m_single = artifacts.read_json(dp / "metrics.json"), artifacts.read_json(single / "metrics.json")
    assert m_dp["steps"] == m_single["steps"] == artifacts.read_json(dp / "manifest.json")["plan"]["total_steps"]
    # each process packed its share of every step into several forwards; the single process ran the padded batch
    assert m_dp["forwards"] > m_dp["steps"] and m_single["forwards"] == m_single["steps"]
    # tokens/s is summed over both processes, so MFU is over both devices' peak
    assert m_dp["mfu"] == pytest.approx(m_dp["tokens_per_second"] * m_dp["flops_per_token"] / (2 * 1e12))
    assert m_single["mfu"] == pytest.approx(m_single["tokens_per_second"] * m_single["flops_per_token"] / 1e12)
    a = load_file(str(dp / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(single / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    # Same examples per step and the same loss normalisation: the adapters agree up to float summation
    # order (gloo all-reduce vs one batch, packed vs padded), which Adam can amplify where a gradient is near zero.
    # Tolerance: every tensor within 1% of the adapter's own scale (measured here: ~0.2%).
    for k in a:
        scale = b[k].abs().max()
        assert scale > 0, k
        assert (a[k] - b[k]).abs().max() <= 0.01 * scale, k
    # rank 0 alone wrote the run directory and logged: one Trackio run, no stray files
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["dp"]
    import sqlite3

    runs = sqlite3.connect(tmp_path / "trackio" / "scale-test.db").execute(
        "select distinct run_name from metrics").fetchall()
    assert runs == [("dp",), ("single",)] or sorted(runs) == [("dp",), ("single",)]
    assert two.stdout.count("done:") == 1


CAPTURE_SCRIPT = '''
import json, os, sys
import torch
from transformers import TrainerCallback
from rustcoder.config import resolve_config
from rustcoder.train import train


class Capture(TrainerCallback):
    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == 1:
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if state.global_step == 1:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


cap = Capture()
result = train(resolve_config("baseline", overrides=json.loads(sys.argv[1])), progress=False, callbacks=[cap],
               log=lambda *_: None)
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({"weights": cap.weights, "grads": cap.grads, "forwards": result.metrics["forwards_per_step_max"]},
               sys.argv[2])
m = result.metrics  # every process: the forwards it packed, and the zero-loss ones it ran to match the others
json.dump({"forwards": m["forwards"], "padding": m["padding_forwards"]},
          open(sys.argv[2] + "." + os.environ.get("RANK", "0"), "w"))
'''


@pytest.mark.slow
def test_two_process_packed_step_gradients_equal_the_unpacked_step(tiny_qwen2, tmp_path):
    """Two gloo processes, each packing its half of a step (mixed lengths) into several flattened forwards: after
    DDP's all-reduce the LoRA gradients equal those of the whole step run as the preset's padded micro-batches
    through transformers' own loss, normalised over the step's answer tokens."""
    from conftest import make_rows, write_jsonl
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rustcoder.data.tokenize import pad_batch, tokenize_examples
    from rustcoder.modeling import load_tokenizer
    from rustcoder.packing import StepSampler
    from rustcoder.train import plan_training

    rows = write_jsonl(tmp_path / "mixed.jsonl", make_rows(4, answer_words=lambda i: 1 + (i * 17) % 60))
    overrides = dict(model="tiny-qwen2", dataset=str(rows), num_examples=60, batch_size=3, grad_accum=2,
                     num_processes=2, max_steps=2, warmup_ratio=0.0, lr=5e-3, lora_dropout=0.0, max_grad_norm=0.0,
                     eval_steps=100, save_steps=1000, report_to="none", forward_layout="padding-free",
                     tokens_per_forward=400, output_dir=str(tmp_path / "runs"), run_name="dp-grads", dtype="float32")
    script = tmp_path / "capture.py"
    script.write_text(CAPTURE_SCRIPT)
    out = tmp_path / "captured.pt"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "2", str(script),
           json.dumps(overrides), str(out)]
    env = {**os.environ, "RUSTCODER_LAUNCHED": "1", "RUSTCODER_RUN_DIR": str(tmp_path / "runs" / "dp-grads"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    captured = torch.load(out)
    assert captured["forwards"] > 1  # each process split its 3 examples into several forwards
    # the processes packed different numbers of forwards, yet ran the same number (FSDP/ZeRO would hang otherwise);
    # the padding forwards (zero loss) leave the gradients below as they are
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["forwards"] != ranks[1]["forwards"], ranks
    assert ranks[0]["forwards"] + ranks[0]["padding"] == ranks[1]["forwards"] + ranks[1]["padding"], ranks

    cfg = resolve_config("baseline", overrides={**overrides, "num_processes": 1})
    plan = plan_training(cfg, device="cpu", count_forwards=False)
    tok, _ = load_tokenizer("tiny-qwen2", model_type="qwen2")
    feats = tokenize_examples(tok, [e.messages for e in plan.data.train], cfg.max_length)
    order = list(StepSampler([f["length"] for f in feats], 6, cfg.seed, grouped=False))
    step = [feats[i] for i in order[6:12]]
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32, attn_implementation="sdpa")
    ref = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                          target_modules="all-linear", task_type="CAUSAL_LM"))
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for n, w in captured["weights"].items():
            params[n].copy_(w)
    micro = [pad_batch(step[i:i + 3], tok.pad_token_id) for i in (0, 3)]
    items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    for b in micro:
        ref(**b, num_items_in_batch=items, use_cache=False).loss.backward()
    # float32 as in tests/test_train.py (rtol 1e-4, atol 1e-5 of each tensor's largest entry); gloo's all-reduce
    # adds one more summation order. A per-process or per-forward normalisation would be off by >1%.
    for n, g in captured["grads"].items():
        expected = params[n].grad
        assert expected.abs().max() > 0, n
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item(), msg=n)
