"""The one answer-only loss: what training and the teacher-forced eval compute equals TRL's fused loss."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("chunked", [False, True])
def test_answer_head_through_the_model_forward_equals_trl_fused_loss(tiny_qwen2, monkeypatch, chunked):
    """model(..., answer_loss=True) (the path the trainer takes, through PEFT's and DDP's forward) gives TRL's
    loss, token count, top-1 hits and gradients, with the plain head and with TRL's tiled kernel."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from rustcoder import answer_loss
    from rustcoder.answer_loss import add_answer_head

    if chunked:
        monkeypatch.setattr(answer_loss, "CHUNKED_ABOVE", 0)
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


@pytest.mark.parametrize("chunked", [False, True])
def test_teacher_forced_stats_are_the_full_logits_nll_of_each_answer(tiny_qwen2, monkeypatch, chunked):
    """The eval stage's per-example loss and accuracy (one answer-loss function, batched, padded, plain or tiled
    head) equal each example's cross-entropy over the full logits of its answer tokens, computed alone."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rustcoder import answer_loss
    from rustcoder.data.tokenize import tokenize_examples
    from rustcoder.eval.teacher_forced import teacher_forced_stats
    from rustcoder.modeling import load_tokenizer

    if chunked:
        monkeypatch.setattr(answer_loss, "CHUNKED_ABOVE", 0)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    model.requires_grad_(False)  # a frozen head: the tiled path is allowed
    tok, _ = load_tokenizer(str(tiny_qwen2), model_type="qwen2")
    convs = [[{"role": "user", "content": "x" * (3 + 7 * i)}, {"role": "assistant", "content": "fn f() {}" * (1 + i)}]
             for i in range(5)]
    stats = teacher_forced_stats(model, tok, convs, batch_size=3, max_length=256)
    for conv, got in zip(convs, stats):
        f = tokenize_examples(tok, [conv], 256)[0]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0, :-1]
        labels = torch.tensor(f["labels"][1:])
        keep = labels != -100
        want = F.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
        assert got.tokens == int(keep.sum())
        assert got.nll_sum == pytest.approx(want, rel=1e-5)
        assert got.correct == int((logits[keep].argmax(-1) == labels[keep]).sum())


def test_answer_forward_gives_the_same_numbers_through_trls_fused_head(tiny_qwen2):
    """The trainer's forward (answer_forward): rustcoder's answer head and TRL's fused head (used under FSDP and
    DeepSpeed) agree on the summed NLL, the answer tokens and the top-1 hits."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from rustcoder.answer_loss import add_answer_head, answer_forward

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    add_fused_lm_head(model, outputs=("log_probs", "is_top1"))
    add_answer_head(model)
    ids = torch.randint(3, 500, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    ours, trl = answer_forward(model, batch), answer_forward(model, batch, fused_trl_head=True)
    torch.testing.assert_close(ours[0], trl[0], atol=1e-4, rtol=1e-5)
    assert int(ours[1]) == int(trl[1]) == 2 * 6 and int(ours[2]) == int(trl[2])
