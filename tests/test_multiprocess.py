"""Sharded multi-process training on CPU: FSDP2 over two gloo processes saves the whole adapter.

Accelerate turns on FSDP (and DeepSpeed) only on GPUs; on CPU it runs any launch config as plain
DDP (rustcoder's trainer says so). So the processes here are started by `accelerate launch` with
the shipped fsdp2 config, and shard the PEFT model themselves with torch's FSDP2 (`fully_shard`,
one unit per decoder layer and the root, as the config's TRANSFORMER_BASED_WRAP does), train a few
optimizer steps on rustcoder's tokenized data, and save through rustcoder's own
`adapter_state_dict` + `save_adapter`, the code `rustcoder train` runs after training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rustcoder.launch import launch_config_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

FSDP_SCRIPT = '''
import json, os, sys
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rustcoder.config import resolve_config
from rustcoder.data.tokenize import pad_batch, tokenize_examples
from rustcoder.modeling import load_tokenizer
from rustcoder.packing import StepSampler
from rustcoder.tiny import tiny_model_dir
from rustcoder.train import adapter_state_dict, plan_training, save_adapter

overrides, out, steps = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
if world > 1:
    import torch.distributed as dist

    dist.init_process_group("gloo")
cfg = resolve_config("baseline", overrides=overrides)
plan = plan_training(cfg, device="cpu", count_forwards=False)
tok, _ = load_tokenizer(cfg.model, model_type="qwen2")
feats = tokenize_examples(tok, [e.messages for e in plan.data.train], cfg.max_length)
per_step = cfg.batch_size * cfg.grad_accum  # one optimizer step's examples, over all processes
order = list(StepSampler([f["length"] for f in feats], per_step, cfg.seed, grouped=False))

torch.manual_seed(cfg.seed)
base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("tiny-qwen2")), dtype=torch.float32,
                                            attn_implementation="sdpa")
model = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                        target_modules="all-linear", task_type="CAUSAL_LM"))
local = {}
if world > 1:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    assert os.environ.get("ACCELERATE_USE_FSDP") == "true" and os.environ.get("FSDP_VERSION") == "2"
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    local = {n: list(p.to_local().shape) for n, p in model.named_parameters() if p.requires_grad}
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
model.train()
for step in range(steps):
    examples = [feats[i] for i in order[step * per_step:(step + 1) * per_step]]
    mine = examples[rank::world]
    # the loss over the answer tokens of the whole step (every process), times the processes FSDP averages over
    items = sum(sum(1 for l in f["labels"][1:] if l != -100) for f in examples)
    batch = pad_batch(mine, tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1),
                          ignore_index=-100, reduction="sum")
    (nll / items * world).backward()
    opt.step()
    opt.zero_grad()
state = adapter_state_dict(model)  # every process: gathers the shards
if rank == 0:
    save_adapter(model, tok, out, "test adapter", state)
    (out / "local_shapes.json").write_text(json.dumps(local))
if world > 1:
    dist.barrier()
    dist.destroy_process_group()
'''


def _run(cmd, env, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_fsdp2_two_processes_save_the_adapter_a_single_process_saves(rows_file, tiny_qwen2, tmp_path, monkeypatch):
    """Two gloo processes with the adapter sharded by FSDP2 (each holds half of every LoRA matrix) gather and
    save the whole adapter: same keys and shapes as one unsharded process running the same steps, and the same
    values up to float summation order (the step's loss is normalised over the whole step's answer tokens, and
    FSDP2 averages the two halves' gradients, so the math is the single process's). No hang: every process joins
    the gather."""
    overrides = dict(model="tiny-qwen2", dataset=str(rows_file), num_examples=40, batch_size=2, grad_accum=2,
                     lr=5e-3, lora_dropout=0.0, report_to="none", dtype="float32")
    script = tmp_path / "fsdp_train.py"
    script.write_text(FSDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    two, one = tmp_path / "two", tmp_path / "one"
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config_path("fsdp2")),
          "--num_processes", "2", "--mixed_precision", "no", str(script), json.dumps(overrides), str(two), "3"], env)
    # the single-process reference runs the same script in this process (no second interpreter start-up)
    import runpy

    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "argv", [str(script), json.dumps(overrides), str(one), "3"])
    runpy.run_path(str(script), run_name="__main__")

    # the adapter really was sharded: each process held half of every LoRA matrix's rows
    local = json.loads((two / "local_shapes.json").read_text())
    a = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == len(local) > 0
    for k in a:
        assert a[k].shape == b[k].shape, k
        full = next(v for n, v in local.items() if n.replace(".default", "") == k)
        assert full[0] * 2 == a[k].shape[0], (k, full, a[k].shape)
    # trained: LoRA B starts at zero
    assert all(a[k].abs().max() > 0 for k in a if "lora_B" in k)
    # Same math, other summation order (gloo's reduce-scatter of two halves vs one batch), through 3 Adam steps,
    # which can amplify a near-zero gradient's rounding: each tensor within 1e-3 of its own largest entry.
    for k in a:
        scale = b[k].abs().max()
        assert (a[k] - b[k]).abs().max() <= 1e-3 * scale, (k, float((a[k] - b[k]).abs().max()), float(scale))
    # the saved adapter loads with PEFT onto the base, and these are the weights it loads
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32),
                                      str(two / "adapter"))
    params = dict(model.named_parameters())
    for k, v in a.items():
        name = k.replace(".weight", ".default.weight")
        torch.testing.assert_close(params[name].detach(), v, rtol=0, atol=0, msg=k)
