"""Training on a CUDA GPU: each attention path's isolation with the real kernels, and a packed run end to end.

Skipped cleanly without CUDA (see ../shared/gpu/README.md for running them on an offline GPU box).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cuda_paths() -> list[str]:
    from rustcoder.attention import TORCH_VARLEN, has_module, torch_varlen_available

    paths = ["sdpa", "flex_attention"]
    if torch_varlen_available():
        paths.append(TORCH_VARLEN)
    if has_module("flash_attn"):
        paths.append("flash_attention_2")
    return paths


@pytest.mark.parametrize("impl", _cuda_paths() if torch.cuda.is_available() else ["sdpa"])
def test_packed_examples_do_not_attend_to_each_other_on_cuda(tiny_qwen2, impl):
    from transformers import AutoModelForCausalLM

    from rustcoder.attention import attention_function
    from rustcoder.packing import isolation_errors

    path = attention_function(impl)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.set_attn_implementation(path.attn_implementation)
    model = model.cuda().eval()
    g = torch.Generator().manual_seed(0)
    feats = [{"input_ids": torch.randint(3, 900, (n,), generator=g).tolist(), "labels": [1] * n}
             for n in (37, 5, 130, 64)]
    # bf16 kernels differ in accumulation order: the tolerance is the first example's own noise x 8, at least
    # 2 bf16 ulps of the logits (rustcoder.packing.isolation_errors; it catches a leak on CPU, test_packing.py)
    report = isolation_errors(model, feats, "padding-free", 0, path.varlen_kwargs)
    assert all(r["isolated"] for r in report), report


def test_packed_training_on_cuda_runs_the_planned_forwards(rows_file, tiny_qwen2, tmp_path):
    from rustcoder import artifacts
    from rustcoder.config import resolve_config
    from rustcoder.train import train

    cfg = resolve_config("baseline", overrides=dict(model="tiny-qwen2", dataset=str(rows_file), num_examples=80,
                                                    max_steps=3, report_to="none", output_dir=str(tmp_path),
                                                    tokens_per_forward=600, logging_steps=1))
    result = train(cfg, progress=False, log=lambda *_: None)
    plan = artifacts.read_json(result.run_dir / "manifest.json")["plan"]
    assert plan["device"] == "cuda" and plan["forward_layout"] == "padding-free"
    assert plan["attention"] and not plan["gradient_checkpointing"]  # a tiny model fits any card
    assert result.metrics["forwards"] == plan["forwards"]["forwards"] > result.metrics["steps"]
    history = artifacts.read_json(result.run_dir / "log_history.json")
    assert all(h["tokens_per_second"] > 0 for h in history if "loss" in h)
