"""CPU fast paths for LoRA SFT, each exact in what it computes.

- ``compact_lm_loss``: project through the LM head only the positions whose next token is trained
  (the answer), not the prompt or padding. On CPU, TRL's fused head scores every position (it
  compacts only on Triton devices).
- ``FastDropout``: LoRA dropout with the same keep probability (to 2**-16) and scaling, drawing
  16 random bits per element from 64-bit draws instead of one Bernoulli sample per element;
  torch's CPU Bernoulli was a quarter of a LoRA training step here.
"""

from __future__ import annotations

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


def compact_lm_loss(model: nn.Module, inputs: dict, num_items_in_batch=None):
    """Causal-LM loss with the LM head applied only where labels are trained.

    Returns (loss, n_valid, n_correct): loss is the summed token NLL divided by num_items_in_batch
    (gradient-accumulation aware, as transformers' Trainer expects) or by n_valid.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    forward = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = base.get_decoder()(**forward, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE
    head = base.get_output_embeddings()
    logits = head(hidden[:, :-1][mask]).float()
    wanted = targets[mask]
    nll = F.cross_entropy(logits, wanted, reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
    loss = nll / torch.as_tensor(denom, device=nll.device)
    with torch.no_grad():
        correct = (logits.argmax(-1) == wanted).sum()
    return loss, mask.sum(), correct
