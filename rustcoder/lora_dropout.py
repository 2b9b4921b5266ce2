"""Fast LoRA dropout (the ``fast_dropout`` setting; on by default on CPU): the same keep probability (to 2**-16)
and scaling as ``nn.Dropout``, drawing 16 random bits per element from 64-bit draws instead of one Bernoulli
sample per element; torch's CPU Bernoulli was a quarter of a LoRA training step here.
"""

from __future__ import annotations

import torch
from torch import nn


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
