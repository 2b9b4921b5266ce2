"""The CPU fast paths compute exactly what the standard paths compute."""

from __future__ import annotations

import pytest
import torch

from rustcoder.fast_paths import FastDropout, compact_lm_loss, use_fast_dropout


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


@pytest.mark.parametrize("num_items", [None, 37])
def test_compact_head_loss_equals_trl_fused_loss(tiny_qwen2, num_items):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    add_fused_lm_head(base, outputs=("log_probs", "is_top1"))
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM", init_lora_weights=False))
    ids = torch.randint(3, 500, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100                                 # prompt
    labels[2, 9:] = -100                                 # padding
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    ref = model(**inputs, fused_lm_head=True, num_items_in_batch=num_items)
    loss, n_valid, n_correct = compact_lm_loss(model, inputs, num_items)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=1e-5)
    assert n_valid.item() == ref.label_mask.sum().item()
    assert n_correct.item() == ref.is_top1.sum().item()
    # and gradients agree
    g_ref = torch.autograd.grad(ref.loss, [p for p in model.parameters() if p.requires_grad])
    g = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunked", [False, True])
def test_answer_head_through_the_model_forward_equals_trl_fused_loss(tiny_qwen2, monkeypatch, chunked):
    """model(..., answer_loss=True) (the path the trainer takes, through PEFT's and DDP's forward) gives TRL's
    loss, token count, top-1 hits and gradients, with the plain head and with TRL's tiled kernel."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from rustcoder import fast_paths
    from rustcoder.fast_paths import add_answer_head

    if chunked:
        monkeypatch.setattr(fast_paths, "CHUNKED_ABOVE", 0)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    add_fused_lm_head(base, outputs=("log_probs", "is_top1"))
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM", init_lora_weights=False))
    add_answer_head(model.get_base_model())
    ids = torch.randint(3, 500, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[2, 9:] = -100
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    ref = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, answer_loss=True)
    n = ref.label_mask.sum()
    # float32 throughout: the same log-softmax computed in another tiling; 1e-5 relative is ~100 ulps
    torch.testing.assert_close(out["nll"] / n, ref.loss, atol=1e-5, rtol=1e-5)
    assert out["n_valid"].item() == n.item() and out["n_correct"].item() == ref.is_top1.sum().item()
    params = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(out["nll"] / n, params), torch.autograd.grad(ref.loss, params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # without answer_loss the forward is the model's own (logits for generation)
    assert model(input_ids=ids).logits.shape == (3, 12, base.config.vocab_size)
