"""Exact attention over packed examples: the best path present, named in the run's manifest.

A flattened (padding-free) forward holds several examples in one row; none may attend to another.
In order of preference, each used only where it runs:

1. ``flash_attention_2``: the flash-attn package (CUDA); transformers reads ``cu_seq_lens`` (varlen).
2. ``kernels-community/flash-attn2``: transformers' Hub-kernel integration, when the ``kernels``
   package is installed and the kernel is already in the local cache (CUDA).
3. ``torch-varlen``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (CUDA), registered with
   transformers' ``AttentionInterface`` here because transformers 5.23 ships no such entry.
4. ``flex_attention``: transformers' FlexAttention integration, a block mask built from the
   position ids (CUDA, where torch.compile makes it fast).
5. ``sdpa``: transformers builds a block-diagonal causal mask from the position ids.

Padded layouts (one example per row) need no such care: plain SDPA with the padding mask.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from dataclasses import dataclass

TORCH_VARLEN = "torch-varlen"
KERNEL_REPO = "kernels-community/flash-attn2"


@dataclass
class AttentionPath:
    """How packed forwards attend: the name shown to people, what transformers loads, whether to pass cu_seq_lens."""

    name: str
    attn_implementation: str
    varlen_kwargs: bool


def has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _kernel_cached(repo: str) -> bool:
    """True when a Hub kernel repo is already in the local Hugging Face cache (no network needed)."""
    try:
        from huggingface_hub import scan_cache_dir

        return any(r.repo_id == repo for r in scan_cache_dir().repos)
    except Exception:  # no cache dir, unreadable cache: not available
        return False


def torch_varlen_available() -> bool:
    """torch.nn.attention.varlen.varlen_attn exists in the installed torch (it runs on CUDA only)."""
    return has_module("torch.nn.attention.varlen")


def choose_attention(device: str, layout: str, requested: str = "auto") -> AttentionPath:
    """The attention path for a layout on a device (``RUSTCODER_ATTENTION`` or ``requested`` forces one)."""
    requested = os.environ.get("RUSTCODER_ATTENTION", requested)
    if layout != "padding-free":
        return AttentionPath("sdpa (padded rows)", "sdpa", False)
    if requested != "auto":
        return attention_function(requested)
    if device == "cuda":
        if has_module("flash_attn"):
            return attention_function("flash_attention_2")
        if has_module("kernels") and _kernel_cached(KERNEL_REPO):
            return attention_function(KERNEL_REPO)
        if torch_varlen_available():
            return attention_function(TORCH_VARLEN)
        return attention_function("flex_attention")
    return attention_function("sdpa")


def attention_function(name: str) -> AttentionPath:
    if name == "flash_attention_2":
        return AttentionPath("flash-attn varlen", "flash_attention_2", True)
    if name == KERNEL_REPO:
        return AttentionPath(f"{KERNEL_REPO} (transformers kernels) varlen", KERNEL_REPO, True)
    if name == TORCH_VARLEN:
        register_torch_varlen()
        return AttentionPath("torch varlen_attn", TORCH_VARLEN, True)
    if name == "flex_attention":
        return AttentionPath("FlexAttention block mask", "flex_attention", False)
    if name == "sdpa":
        return AttentionPath("SDPA block-diagonal mask", "sdpa", False)
    raise ValueError(f"unknown attention path {name!r}: choose auto, flash_attention_2, {KERNEL_REPO}, "
                     f"{TORCH_VARLEN}, flex_attention or sdpa")


def torch_varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                           **kwargs):
    """transformers attention function over torch's varlen_attn: one flattened row, segments from cu_seq_lens."""
    import torch
    from torch.nn.attention import varlen

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    batch, _, length, _ = query.shape
    if cu_q is None:  # unpacked rows (generation, a single example): each row one segment, no padding allowed
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("torch-varlen attention takes flattened rows with cu_seq_lens, not padded batches")
        cu_q = cu_k = torch.arange(0, (batch + 1) * length, length, device=query.device)
        kwargs["max_length_q"] = kwargs["max_length_k"] = length
    if dropout:
        raise ValueError("torch-varlen attention has no attention dropout; Qwen models use none in training")
    q, k, v = (t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in (query, key, value))  # [B*T, heads, d]
    params = inspect.signature(varlen.varlen_attn).parameters  # the API grew between torch releases
    extra = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        extra["scale"] = scaling
    elif scaling is not None and scaling != q.shape[-1] ** -0.5:  # torch 2.9's has no scale: fold it into q
        q = q * (scaling * q.shape[-1] ** 0.5)
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    out = varlen.varlen_attn(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), int(kwargs["max_length_q"]),
                             int(kwargs["max_length_k"]), **extra)
    return out.reshape(batch, length, out.shape[1], out.shape[2]), None  # [B, T, heads, head_dim] as transformers wants


def register_torch_varlen() -> None:
    """Make ``attn_implementation="torch-varlen"`` loadable by transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
    # Like flash attention, varlen needs no mask tensor: the segments come from cu_seq_lens.
    AttentionMaskInterface.register(TORCH_VARLEN, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
