"""What a merge reads: the adapter and base it resolves from a run, their identity (for no-op
detection), the base's config (dtype, tied embeddings, quantization), and both loaded as models.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import read_json
from ..errors import RustcoderError, UsageError
from ..rundir import adapter_dir_of, base_of, read_manifest
from .tensors import ST_DTYPES, tensor_shapes, weight_files

MERGE_FORMAT = 1  # bump when the merge arithmetic or output layout changes (invalidates no-op detection)


# The merged weights are saved in one of these dtypes ("auto": the base's).
MERGE_DTYPES = ("bfloat16", "float16", "float32")


_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


@dataclass
class Source:
    """A resolved merge input: the adapter, the base and what the run recorded about them."""

    adapter_dir: Path
    run_dir: Path | None
    manifest: dict
    adapter_config: dict
    base_name: str        # as the user or the run names it (hub id, tiny name or directory)
    base_dir: Path        # a local directory holding the base's files
    base_revision: str | None
    trained_base: str     # what the adapter was trained on (for messages)
    base_overridden: bool


def _missing_adapter_files(adapter_dir: Path) -> list[str]:
    missing = []
    if not (adapter_dir / "adapter_config.json").is_file():
        missing.append(str(adapter_dir / "adapter_config.json"))
    if not any((adapter_dir / n).is_file() for n in _ADAPTER_WEIGHTS):
        missing.append(str(adapter_dir / _ADAPTER_WEIGHTS[0]))
    if not (adapter_dir / "tokenizer_config.json").is_file():
        missing.append(str(adapter_dir / "tokenizer_config.json"))
    if not ((adapter_dir / "tokenizer.json").is_file()
            or ((adapter_dir / "vocab.json").is_file() and (adapter_dir / "merges.txt").is_file())):
        missing.append(str(adapter_dir / "tokenizer.json"))
    if not (adapter_dir / "chat_template.jinja").is_file():
        missing.append(str(adapter_dir / "chat_template.jinja"))
    return missing


def _missing_base_files(base_dir: Path, streaming: bool) -> list[str]:
    missing = []
    if not (base_dir / "config.json").is_file():
        missing.append(str(base_dir / "config.json"))
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        for name in sorted(set(read_json(index)["weight_map"].values())):
            if not (base_dir / name).is_file():
                missing.append(str(base_dir / name))
    elif not (base_dir / "model.safetensors").is_file():
        has_bin = (base_dir / "pytorch_model.bin").is_file() or (base_dir / "pytorch_model.bin.index.json").is_file()
        if streaming or not has_bin:
            missing.append(str(base_dir / "model.safetensors") + (" (streaming reads safetensors only)"
                                                                  if has_bin else ""))
    return missing


def local_base_dir(name: str, revision: str | None) -> Path:
    """A local directory with the base's files: the directory itself, a tiny model, or a hub snapshot."""
    from ..modeling import resolve_model

    path = resolve_model(name)
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, ...
        from ..hub import hub_hint

        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RustcoderError(f"could not get the base model {name!r}: {first}\n"
                             + hub_hint(path, "pass a local model directory with --base")) from None


def resolve_source(run_dir: str | Path, base: str | None, streaming: bool) -> Source:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist. List runs with `rustcoder runs`.")
    adapter_dir, real_run = adapter_dir_of(run_dir)
    manifest = read_manifest(real_run) if real_run else {}
    missing = _missing_adapter_files(adapter_dir)
    if missing:
        status = manifest.get("status")
        hint = (f" The run's status is {status!r}: it has no adapter until training finishes."
                if status and status != "finished" else "")
        raise RustcoderError(f"cannot merge {run_dir}: missing {len(missing)} file(s):\n"
                             + "\n".join(f"  - {m}" for m in missing) + f"\n{hint.strip() or 'Train the run again, or pass a complete run directory.'}")
    adapter_config = read_json(adapter_dir / "adapter_config.json")
    ref = base_of(run_dir, override=base)  # the one precedence rule (rustcoder.rundir)
    trained_base = manifest.get("base_model") or adapter_config.get("base_model_name_or_path") or "?"
    name, revision, overridden = ref.name, ref.revision, ref.source == "override"
    display = base or manifest.get("base_model") or name
    base_dir = local_base_dir(name, revision)
    missing = _missing_base_files(base_dir, streaming)
    if missing:
        raise RustcoderError(f"the base model {display!r} ({base_dir}) is incomplete: missing {len(missing)} file(s):\n"
                             + "\n".join(f"  - {m}" for m in missing)
                             + "\nPass a complete model directory with --base.")
    return Source(adapter_dir=adapter_dir, run_dir=real_run, manifest=manifest, adapter_config=adapter_config,
                   base_name=display, base_dir=base_dir, base_revision=revision, trained_base=trained_base,
                   base_overridden=overridden)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """sha256 of the adapter weights and the adapter-config fields that change the merged weights."""
    adapter_dir = Path(adapter_dir)
    weights = next(adapter_dir / n for n in _ADAPTER_WEIGHTS if (adapter_dir / n).is_file())
    cfg = read_json(adapter_dir / "adapter_config.json")
    relevant = {k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern",
                                        "alpha_pattern", "modules_to_save", "fan_in_fan_out", "lora_bias",
                                        "layer_replication", "trainable_token_indices", "target_parameters")}
    h = hashlib.sha256(_sha256_file(weights).encode())
    h.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    return h.hexdigest()


def base_identity(base_dir: str | Path) -> dict[str, Any]:
    """What identifies a base checkpoint cheaply: its config and its weight files' sizes and headers."""
    base_dir = Path(base_dir)
    files = {}
    for f in weight_files(base_dir) or sorted(base_dir.glob("pytorch_model*.bin")):
        entry = {"bytes": f.stat().st_size}
        if f.suffix == ".safetensors":
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                entry["header_sha256"] = hashlib.sha256(fh.read(n)).hexdigest()
        files[f.name] = entry
    ident = {"config_sha256": _sha256_file(base_dir / "config.json"), "files": files}
    ident["sha256"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return ident


def merge_key(adapter_sha: str, base_sha: str, dtype: str) -> str:
    return hashlib.sha256(f"{MERGE_FORMAT}:{adapter_sha}:{base_sha}:{dtype}".encode()).hexdigest()


def text_config(cfg: dict) -> dict:
    return cfg.get("text_config") or cfg


def check_not_quantized(config: dict, base_name: str, trained_base: str | None = None) -> None:
    """Refuse a 4-bit/8-bit (or otherwise quantized) base: merging into it would round the adapter away."""
    q = config.get("quantization_config") or text_config(config).get("quantization_config")
    if not q:
        return
    method = q.get("quant_method", "unknown method")
    bits = ("4-bit" if q.get("load_in_4bit") else "8-bit" if q.get("load_in_8bit")
            else f"{q['bits']}-bit" if q.get("bits") else "quantized")
    hint = f" (the adapter was trained on {trained_base!r})" if trained_base and trained_base != base_name else ""
    raise RustcoderError(
        f"the base model {base_name!r} is quantized ({method}, {bits}): merging an adapter into quantized weights "
        f"rounds the adapter's update away and the result is not the model you trained. Pass the full-precision "
        f"base with --base ID_OR_DIR{hint}; quantize the merged model afterwards if you need to.")


def save_dtype_of(config: dict, base_dir: Path) -> str:
    """The dtype the merged model is saved in: the base config's dtype, else its stored weights' dtype."""
    from ..modeling import config_dtype

    named = config_dtype(config)
    if named:
        return named
    for _, (shape, code) in tensor_shapes(base_dir).items():
        if ST_DTYPES.get(code) in MERGE_DTYPES:
            return ST_DTYPES[code]
    return "float32"


def tied_keys(config: dict) -> tuple[str, str]:
    """(output embedding key, input embedding key) of the architecture (Qwen's names when transformers has no
    class for it)."""
    from ..compat import tied_embedding_keys

    return tied_embedding_keys(config.get("architectures") or []) or ("lm_head.weight", "model.embed_tokens.weight")


def tie_word_embeddings(base_dir: Path) -> bool:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base_dir)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return bool(getattr(text, "tie_word_embeddings", getattr(cfg, "tie_word_embeddings", False)))


def skeleton(model_dir: Path):
    """The model's module tree on the meta device (takes no memory): float32, sdpa attention, eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def load_base_fp32(base_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa")


def load_adapter(model, adapter_dir: Path):
    """PeftModel over model, without PEFT's warnings about tied layers (rustcoder unties them itself)."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(adapter_dir))
