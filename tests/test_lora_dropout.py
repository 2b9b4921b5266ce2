"""The fast LoRA dropout keeps nn.Dropout's keep rate, scaling and seeding, and replaces every LoRA dropout."""

from __future__ import annotations

import pytest
import torch

from rustcoder.lora_dropout import FastDropout, use_fast_dropout


def test_fast_dropout_keep_rate_scaling_and_eval_identity():
    torch.manual_seed(0)
    d = FastDropout(0.1)
    x = torch.ones(1000, 1000)
    y = d(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.002                       # 1e6 draws: binomial sd ~3e-4
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - 6554 / 65536)))
    assert abs(y.mean().item() - 1.0) < 0.003            # inverted dropout keeps the expectation
    d.eval()
    assert d(x) is x
    assert FastDropout(0.0)(x) is x


def test_fast_dropout_masks_are_independent_and_seeded():
    d = FastDropout(0.5)
    x = torch.ones(64, 64)
    torch.manual_seed(1)
    a, b = d(x), d(x)
    torch.manual_seed(1)
    assert torch.equal(d(x), a)                          # reproducible under torch's seed (resume-safe)
    assert not torch.equal(a, b)
    # no structure across the 16-bit slices: neighbouring elements are uncorrelated
    big = (d(torch.ones(200_000)) != 0).float()
    corr = torch.corrcoef(torch.stack([big[:-1], big[1:]]))[0, 1].item()
    assert abs(corr) < 0.01


def test_fast_dropout_passes_gradients():
    x = torch.randn(10, 10, requires_grad=True)
    y = FastDropout(0.3)(x)
    y.sum().backward()
    assert torch.equal((x.grad != 0), (y != 0))


def test_use_fast_dropout_replaces_every_lora_dropout(tiny_qwen2):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen2),
                           LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM"))
    n = use_fast_dropout(model)
    assert n == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
