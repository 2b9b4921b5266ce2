"""Exact training fast paths: answer-only logits (every device) and fast LoRA dropout (CPU).

- ``answer_nll`` / ``add_answer_head``: project through the LM head only the positions whose next
  token is trained (the answer), never the prompt or padding, and for a large vocabulary in tiles
  with TRL's ``ChunkedLogProbFunction`` (the ``[tokens, vocab]`` logits are never materialised; its
  backward recomputes each tile). TRL's own fused head compacts only on Triton devices and scores
  every position elsewhere, so rustcoder selects the positions itself and reuses TRL's kernel.
  ``add_answer_head`` patches the model's ``forward`` (like TRL's ``add_fused_lm_head``) so the call
  goes through DDP's forward and its gradient hooks.
- ``FastDropout``: LoRA dropout with the same keep probability (to 2**-16) and scaling, drawing
  16 random bits per element from 64-bit draws instead of one Bernoulli sample per element;
  torch's CPU Bernoulli was a quarter of a LoRA training step here.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class FastDropout(nn.Module):
    """Inverted dropout whose mask comes from 16-bit slices of 48-bit random draws."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 65536) - 32768  # keep where the signed 16-bit draw is >= this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        draws = torch.empty(((n + 2) // 3,), dtype=torch.int64, device=x.device).random_(0, 2**48)
        bits = draws.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n].view(x.shape)
        keep = 1.0 - (self.threshold + 32768) / 65536
        return x * (bits >= self.threshold) * (1.0 / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every LoRA nn.Dropout in a PEFT model with FastDropout; returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, d in list(drops.items()):
                if isinstance(d, nn.Dropout) and d.p > 0:
                    drops[name] = FastDropout(d.p)
                    replaced += 1
    return replaced


# Below this many logit elements (answer positions x vocabulary) the plain head + cross-entropy is faster
# than tiling (tiny vocabularies, CPU); above it the logits are never materialised.
CHUNKED_ABOVE = 2 ** 24


def answer_nll(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module) -> dict:
    """Summed next-token NLL, trained-token count and top-1 hits over the answer positions only.

    hidden: the decoder's last hidden states [batch, seq, hidden]; labels: [batch, seq] with -100
    where nothing is trained. Position t predicts labels[t + 1] (causal shift), as TRL and
    transformers compute it.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE
    h = hidden[:, :-1][mask]
    wanted = targets[mask]
    n = wanted.numel()
    weight = head.weight
    if n == 0:  # a differentiable zero keeps backward well-defined
        zero = hidden.sum() * 0.0
        return {"nll": zero, "n_valid": mask.sum(), "n_correct": mask.sum()}
    if n * weight.shape[0] <= CHUNKED_ABOVE or weight.requires_grad:
        logits = head(h).float()
        nll = F.cross_entropy(logits, wanted, reduction="sum")
        with torch.no_grad():
            correct = (logits.argmax(-1) == wanted).sum()
        return {"nll": nll, "n_valid": mask.sum(), "n_correct": correct}
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    log_probs, _, _, _, top1 = ChunkedLogProbFunction.apply(h, weight, getattr(head, "bias", None), wanted, 1.0,
                                                            _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("is_top1",))
    return {"nll": -log_probs.float().sum(), "n_valid": mask.sum(), "n_correct": top1.sum()}


def add_answer_head(model: nn.Module) -> None:
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


def compact_lm_loss(model: nn.Module, inputs: dict, num_items_in_batch=None):
    """Causal-LM loss with the LM head applied only where labels are trained (calls the decoder directly).

    Returns (loss, n_valid, n_correct): loss is the summed token NLL divided by num_items_in_batch
    (gradient-accumulation aware, as transformers' Trainer expects) or by n_valid.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = base.get_decoder()(**forward, use_cache=False).last_hidden_state
    out = answer_nll(hidden, inputs["labels"], base.get_output_embeddings())
    denom = num_items_in_batch if num_items_in_batch is not None else out["n_valid"].clamp(min=1)
    loss = out["nll"] / torch.as_tensor(denom, device=out["nll"].device)
    return loss, out["n_valid"], out["n_correct"]
