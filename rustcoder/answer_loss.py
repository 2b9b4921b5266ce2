"""The answer-only loss, in one place: next-token NLL, token count and top-1 hits over the tokens a row trains
(its answer), with the LM head applied to those positions only, never to the prompt or padding.

Training (``add_answer_head`` / ``answer_forward``), the trainer's own evaluation and the teacher-forced eval
stage (``eval/teacher_forced.py``) all score through ``answer_token_nll``. For a large vocabulary the head runs
in tiles through TRL's chunked log-probability kernel (``compat.chunked_answer_logprobs``: the [tokens, vocab]
logits are never materialised). TRL's own fused head compacts only on Triton devices and scores every position
elsewhere, so rustcoder selects the positions itself and reuses TRL's kernel.
"""

from __future__ import annotations

import functools
import types

from .data.tokenize import IGNORE

# Below this many logit elements (answer positions x vocabulary) the plain head + cross-entropy is faster
# than tiling (tiny vocabularies, CPU); above it the logits are never materialised.
CHUNKED_ABOVE = 2 ** 24


def answer_token_nll(hidden, labels, head):
    """(NLL of each answer token [n], its top-1 hit [n] (0/1, no gradient), the answer mask [batch, seq - 1]).

    hidden: the decoder's last hidden states [batch, seq, hidden]; labels: [batch, seq] with IGNORE (-100)
    where nothing is trained. Position t predicts labels[t + 1] (causal shift), as TRL and transformers
    compute it. The NLL is float32 and differentiable in ``hidden`` (and in the head when it trains).
    """
    import torch
    import torch.nn.functional as F

    targets = labels[:, 1:]
    mask = targets != IGNORE
    h = hidden[:, :-1][mask]
    wanted = targets[mask]
    weight = head.weight
    if wanted.numel() * weight.shape[0] <= CHUNKED_ABOVE or weight.requires_grad:
        logits = head(h).float()
        nll = F.cross_entropy(logits, wanted, reduction="none")
        with torch.no_grad():
            correct = (logits.argmax(-1) == wanted).long()
        return nll, correct, mask
    from .compat import chunked_answer_logprobs

    log_probs, top1 = chunked_answer_logprobs(h, weight, getattr(head, "bias", None), wanted)
    return -log_probs.float(), top1.long(), mask


def answer_nll(hidden, labels, head) -> dict:
    """Summed answer-token NLL, trained-token count and top-1 hits: {"nll", "n_valid", "n_correct"} (tensors).

    Arguments as ``answer_token_nll``. A batch without answer tokens gives a differentiable zero.
    """
    nll, correct, mask = answer_token_nll(hidden, labels, head)
    if nll.numel() == 0:  # a differentiable zero keeps backward well-defined
        return {"nll": hidden.sum() * 0.0, "n_valid": mask.sum(), "n_correct": mask.sum()}
    return {"nll": nll.sum(), "n_valid": mask.sum(), "n_correct": correct.sum()}


def add_answer_head(model) -> None:
    """Let ``model(..., labels=L, answer_loss=True)`` return ``answer_nll`` of the answer positions.

    Patch the causal LM (before or after PEFT wraps it: PEFT forwards extra keyword arguments), so
    that a DDP-wrapped model still runs its own forward. Without ``answer_loss`` the forward is the
    original one (generation, TRL's fused head).
    """
    if getattr(model, "_rustcoder_answer_head", False):
        return
    original = model.forward
    backbone = model.base_model_prefix

    @functools.wraps(type(model).forward)
    def forward(self, *args, answer_loss: bool = False, labels=None, **kwargs):
        if not answer_loss:
            if labels is not None:
                kwargs["labels"] = labels
            return original(*args, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs["use_cache"] = False
        hidden = getattr(self, backbone)(*args, **kwargs).last_hidden_state
        return answer_nll(hidden, labels, self.get_output_embeddings())

    model.forward = types.MethodType(forward, model)
    model._rustcoder_answer_head = True


def answer_forward(model, batch: dict, fused_trl_head: bool = False):
    """(summed answer NLL, answer tokens, top-1 hits) of one forward of ``batch`` (input_ids, labels, ...).

    The model's forward is patched by ``add_answer_head``; with ``fused_trl_head`` (FSDP and DeepSpeed shard the
    LM head) TRL's fused head computes them instead (``trl.trainer.utils.add_fused_lm_head``).
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if fused_trl_head:
        out = model(**inputs, labels=batch["labels"], fused_lm_head=True)
        return -out.log_probs.float().sum(), out.label_mask.sum(), out.is_top1.sum()
    out = model(**inputs, labels=batch["labels"], answer_loss=True)
    return out["nll"], out["n_valid"], out["n_correct"]
