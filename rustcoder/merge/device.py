"""Where the merge's verification runs: on the GPU when one is present and the layer-by-layer
verification's working set fits its free memory, else on the CPU; and with which verification mode.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError

VERIFY_DEVICES = ("auto", "cpu", "cuda")

# What the layerwise verification keeps on the device, beyond the weights it reads: the probes' float32
# logits (about 500 positions x a 152k vocabulary, four sets at most: ~1.2 GB for Qwen) and the kernels'
# workspace. A bound, not a measurement: the report's device_peak_bytes gives the real figure.
WORKING_BYTES = 2 * 2**30


def plan_bytes(plan) -> int:
    """What the adapter occupies on the device for the whole pass: every update's A, B (and DoRA magnitude)
    as stored, and each replaced tensor (modules_to_save) with two float32 copies (PEFT's, and its rounding)."""
    size = 0
    for u in plan.updates.values():
        size += sum(t.numel() * t.element_size() for t in (u.A, u.B, u.magnitude) if t is not None)
    for t in plan.replacements.values():
        size += t.numel() * (t.element_size() + 8)
    return size


def layerwise_device_bytes(model_dir: Path, plan=None) -> int:
    """Device memory the layerwise verification needs for model_dir (and plan, the adapter): one decoder
    layer in float32 three times (the base's tensors, the rounded merge's, the file's as read), the
    embeddings in float32 twice (lm_head upcast, and its rounded merge when the adapter changes it), the
    adapter (plan_bytes) and WORKING_BYTES."""
    from .layerwise import weight_sizes

    sizes = weight_sizes(model_dir)
    adapter = plan_bytes(plan) if plan is not None else 0
    return 3 * sizes["largest_layer_fp32"] + 2 * 2 * sizes["embeddings"] + adapter + WORKING_BYTES


def check_verify_device(requested: str | None) -> str:
    """--verify-device normalised ("auto", "cpu", "cuda", "cuda:N"), or a usage error."""
    requested = (requested or "auto").strip().lower()
    if requested not in VERIFY_DEVICES and not re.fullmatch(r"cuda:\d+", requested):
        raise UsageError(f"--verify-device {requested!r} is not one of auto, cpu, cuda, cuda:N")
    return requested


def choose_verify_device(requested: str, model_dir: Path, plan=None) -> tuple[str, str]:
    """(device, why) for --verify-device: "cpu", "cuda[:N]" or "auto" (a CUDA GPU when present and
    layerwise_device_bytes of model_dir and plan fit 90% of its free memory, else the CPU). An explicit CUDA
    device that is not there, or too full, is a usage error."""
    requested = check_verify_device(requested)
    if requested == "cpu":
        return "cpu", "--verify-device cpu"
    import torch

    if not torch.cuda.is_available():
        if requested != "auto":
            raise UsageError(f"--verify-device {requested}: no CUDA GPU is visible to torch here "
                             f"(torch {torch.__version__}); use --verify-device cpu or auto")
        return "cpu", "no CUDA GPU"
    index = int(requested.split(":")[1]) if ":" in requested else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UsageError(f"--verify-device {requested}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                         "(cuda:0 ...)")
    device = f"cuda:{index}"
    need = layerwise_device_bytes(model_dir, plan)
    free = int(torch.cuda.mem_get_info(index)[0])
    if need > 0.9 * free:
        why = (f"it needs about {need / 2**30:.1f} GiB of GPU memory and {device} has {free / 2**30:.1f} GiB free")
        if requested != "auto":
            raise UsageError(f"--verify-device {requested}: {why}; use --verify-device cpu")
        return "cpu", why
    return device, f"{torch.cuda.get_device_name(index)}, about {need / 2**30:.1f} of {free / 2**30:.1f} GiB free needed"


def verification_mode(streaming: bool, device: str, layerwise_why: str | None) -> str:
    """"layerwise" for streaming merges, and for in-memory merges verified on a GPU (reading the saved
    files one layer at a time there is faster than the whole model's float32 generate on the CPU and
    needs no float32 copy of it); "full" otherwise, or when layerwise cannot run (layerwise_why)."""
    if streaming:
        return "layerwise"
    return "layerwise" if device != "cpu" and layerwise_why is None else "full"
