"""The adapter as arithmetic: PEFT's saved tensors turned into per-base-tensor updates
(W + scale * B @ A, embeddings, DoRA, modules_to_save), checked against the base's shapes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RustcoderError
from .sources import text_config

PEFT_PREFIX = "base_model.model."


@dataclass
class Update:
    """How one base weight changes: PEFT's own formulas, in PEFT's order of operations."""

    kind: str  # "linear" | "embedding"
    A: Any
    B: Any
    scale: float
    magnitude: Any = None  # DoRA

    def apply(self, w32):
        A, B = self.A.float(), self.B.float()
        if self.kind == "embedding":
            delta = (B @ A).T * self.scale
        else:
            delta = (B @ A) * self.scale
        if self.magnitude is None:
            return w32 + delta
        import torch

        norm = torch.linalg.norm(w32 + 1 * delta, dim=1).to(w32.dtype)
        factor = self.magnitude.float() / norm
        return factor.view(-1, 1) * (w32 + delta)

    def to(self, device) -> "Update":
        """The same update with its tensors on device."""
        return Update(self.kind, self.A.to(device), self.B.to(device), self.scale,
                      None if self.magnitude is None else self.magnitude.to(device))

    def rows(self, r0: int, r1: int) -> "Update":
        """The update of rows r0:r1 of the weight (every formula above is row by row)."""
        if self.kind == "embedding":  # delta = (B @ A).T: its rows are A's columns
            return Update(self.kind, self.A[:, r0:r1], self.B, self.scale, self.magnitude)
        mag = None if self.magnitude is None else self.magnitude[r0:r1]
        return Update(self.kind, self.A, self.B[r0:r1], self.scale, mag)


@dataclass
class MergePlan:
    """What the adapter does to each base tensor, and what a streaming merge cannot do."""

    updates: dict[str, Update] = field(default_factory=dict)        # base key -> low-rank update
    replacements: dict[str, Any] = field(default_factory=dict)       # base key -> full tensor
    unsupported: list[str] = field(default_factory=list)             # reasons streaming must refuse
    adapter_keys: int = 0

    @property
    def touched(self) -> set[str]:
        return set(self.updates) | set(self.replacements)

    def to(self, device) -> "MergePlan":
        """A copy whose updates and replacement tensors are on device (this plan is left as it is)."""
        return MergePlan({k: u.to(device) for k, u in self.updates.items()},
                         {k: t.to(device) for k, t in self.replacements.items()},
                         list(self.unsupported), self.adapter_keys)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha pattern lookup (peft.utils.other.get_pattern_key)."""
    for key in patterns or {}:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def load_adapter_tensors(adapter_dir: str | Path) -> dict[str, Any]:
    """The adapter's saved tensors (adapters are small: loaded whole)."""
    adapter_dir = Path(adapter_dir)
    st = adapter_dir / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    import torch

    return torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)


def plan_merge(adapter_tensors: dict[str, Any], adapter_config: dict) -> MergePlan:
    """Turn PEFT's saved tensors into per-base-tensor updates (PEFT key naming -> checkpoint names)."""
    plan = MergePlan(adapter_keys=len(adapter_tensors))
    cfg = adapter_config
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RustcoderError(f"rustcoder merges LoRA adapters; this adapter is {cfg.get('peft_type')}.")
    for flag, why in (("fan_in_fan_out", "fan_in_fan_out (Conv1D layers)"), ("lora_bias", "lora_bias"),
                      ("layer_replication", "layer_replication"), ("trainable_token_indices", "trainable tokens"),
                      ("target_parameters", "target_parameters (LoRA on parameters)"),
                      ("use_qalora", "QA-LoRA"), ("use_bdlora", "BD-LoRA")):
        if cfg.get(flag):
            plan.unsupported.append(why)
    parts: dict[str, dict[str, Any]] = {}
    for key, t in adapter_tensors.items():
        k = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = re.match(r"(.+)\.(lora_A|lora_B)\.weight$", k) or re.match(r"(.+)\.(lora_embedding_A|lora_embedding_B)$", k) \
            or re.match(r"(.+)\.(lora_magnitude_vector)(?:\.weight)?$", k)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = t
            continue
        if ".lora_" in k or "token_adapter" in k or "trainable_tokens" in k:
            plan.unsupported.append(f"adapter tensor {key}")
            continue
        m = re.match(r"(.+)\.base_layer\.(weight|bias)$", k)
        if m:  # PEFT saves the base embedding next to an embedding adapter (save_embedding_layers)
            plan.replacements[f"{m.group(1)}.{m.group(2)}"] = t
            continue
        plan.replacements[k.replace(".modules_to_save", "")] = t  # modules_to_save: a full trained copy
    for module, p in sorted(parts.items()):
        r_cfg = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", 8))
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
        if "lora_A" in p and "lora_B" in p:
            kind, A, B = "linear", p["lora_A"], p["lora_B"]
        elif "lora_embedding_A" in p and "lora_embedding_B" in p:
            kind, A, B = "embedding", p["lora_embedding_A"], p["lora_embedding_B"]
        else:
            plan.unsupported.append(f"{module} has an incomplete LoRA pair ({', '.join(sorted(p))})")
            continue
        r = int(A.shape[0])
        if r != r_cfg:
            plan.unsupported.append(f"{module} has rank {r} but the adapter config says {r_cfg}")
        scale = alpha / math.sqrt(r_cfg) if cfg.get("use_rslora") else alpha / r_cfg
        magnitude = p.get("lora_magnitude_vector")
        if cfg.get("use_dora") and magnitude is None:
            plan.unsupported.append(f"{module} is a DoRA layer without a magnitude vector")
        if magnitude is not None and kind == "embedding":
            plan.unsupported.append(f"{module}: DoRA on an embedding")
        plan.updates[f"{module}.weight"] = Update(kind, A, B, scale, magnitude)
    return plan


def check_fit(plan: MergePlan, base_shapes: dict[str, tuple[list[int], str]], base_name: str,
              trained_base: str, base_config: dict | None = None, trained_config: dict | None = None) -> None:
    """Refuse a base whose architecture or shapes do not fit the adapter, naming each mismatch."""
    problems = []
    if base_config is not None and trained_config is not None:
        bc, tc = text_config(base_config), text_config(trained_config)
        for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size"):
            if k in tc and bc.get(k) != tc.get(k):
                problems.append(f"config {k}: the adapter's base has {tc[k]!r}, {base_name!r} has {bc.get(k)!r}")
    for key, u in sorted(plan.updates.items()):
        module = key.removesuffix(".weight")
        if u.kind == "embedding":
            want = [int(u.A.shape[1]), int(u.B.shape[0])]
            what = "embedding (vocab x hidden)"
        else:
            want = [int(u.B.shape[0]), int(u.A.shape[1])]
            what = "weight (out x in)"
        if key not in base_shapes:
            problems.append(f"{module}: the adapter targets it, but {base_name!r} has no tensor {key}")
            continue
        have = list(base_shapes[key][0])
        if have != want:
            problems.append(f"{module}: adapter expects {what} {'x'.join(map(str, want))}, "
                            f"{base_name!r} has {'x'.join(map(str, have))}")
        if u.magnitude is not None and list(u.magnitude.shape) != [have[0]]:
            problems.append(f"{module}: DoRA magnitude has {list(u.magnitude.shape)}, weight has {have[0]} rows")
    for key, t in sorted(plan.replacements.items()):
        if key in base_shapes and list(base_shapes[key][0]) != list(t.shape):
            problems.append(f"{key}: the adapter saves {'x'.join(map(str, t.shape))}, {base_name!r} has "
                            f"{'x'.join(map(str, base_shapes[key][0]))}")
    if problems:
        shown = problems[:12]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise RustcoderError(
            f"the base model {base_name!r} does not fit this adapter ({len(problems)} mismatch"
            f"{'es' if len(problems) != 1 else ''}):\n" + "\n".join(f"  - {p}" for p in shown) + more
            + f"\nThe adapter was trained on {trained_base!r}; pass that model (or one with the same "
              "architecture and shapes) with --base.")
