"""Loading base models and tokenizers, and the chat template rustcoder trains and serves with.

Every artifact (run directory, merged model) carries the same template: ChatML with generation
markers around the answer and its ``<|im_end|>``; for hybrid-thinking Qwen3 models the assistant turn
starts with an empty think block (thinking off), in training, evaluation and serving alike.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

from . import hub
from .errors import RustcoderError, UsageError
from .tiny import TINY_MODELS, tiny_model_dir

END_OF_TURN = "<|im_end|>"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that fits an adapter of this rank."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise UsageError(f"LoRA rank {rank} is above the largest rank vLLM serves ({VLLM_LORA_RANKS[-1]}); merge the "
                     "adapter (`rustcoder merge`) and serve or evaluate the merged model instead.")


def resolve_model(name: str) -> str:
    """A loadable path or hub id: built-in tiny names become their cached directory."""
    if name in TINY_MODELS:
        return str(tiny_model_dir(name))
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise UsageError(f"{name!r} is a directory but not a model (no config.json). Pass a model "
                             "directory, a hub id such as Qwen/Qwen2-7B-Instruct, or tiny-qwen2.")
        return str(p.resolve())
    from .artifacts import missing_path_message

    missing = missing_path_message(name, "model directory")
    if missing:
        raise UsageError(missing + " Pass a model directory, a hub id such as Qwen/Qwen2-7B-Instruct, or tiny-qwen2.")
    return name


def _hub_kwargs(path: str) -> dict:
    """Offline without HF_HUB_OFFLINE: read the hub cache only, instead of five retries per file."""
    if Path(path).exists() or hub.hub_offline() or hub.hub_reachable():
        return {}
    return {"local_files_only": True}


def template_text(name: str) -> str:
    """The text of a shipped chat template ('chatml' or 'chatml_nothink')."""
    return (resources.files("rustcoder") / "templates" / f"{name}.jinja").read_text()


def choose_template(model_type: str, stock_template: str | None) -> str:
    """'chatml_nothink' for hybrid-thinking Qwen3 models, else 'chatml'."""
    if model_type == "qwen3" and stock_template and "enable_thinking" in stock_template:
        return "chatml_nothink"
    return "chatml"


def _load_error(what: str, name: str, e: Exception) -> RustcoderError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if Path(name).expanduser().exists():
        fix = "Is the directory a complete model (config.json, tokenizer, weights)?"
    else:
        fix = hub.hub_hint(name, "pass a local model directory, or try --model tiny-qwen2")
    return RustcoderError(f"could not load the {what} of {name!r}: {first}\n{fix}")


def load_config(name: str, revision: str | None = None):
    """The transformers config of a model (small download for hub ids)."""
    from transformers import AutoConfig

    try:
        path = resolve_model(name)
        return AutoConfig.from_pretrained(path, revision=revision, **_hub_kwargs(path))
    except (OSError, ValueError) as e:
        raise _load_error("config", name, e) from None


def load_tokenizer(name: str, revision: str | None = None, model_type: str | None = None):
    """Tokenizer with rustcoder's chat template, eos = <|im_end|> and a pad token distinct from eos.

    Returns (tokenizer, template_name).
    """
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, **_hub_kwargs(path))
    except (OSError, ValueError) as e:
        raise _load_error("tokenizer", name, e) from None
    vocab = tok.get_vocab()
    missing = [t for t in ("<|im_start|>", END_OF_TURN) if t not in vocab]
    if missing:
        raise UsageError(f"{name!r} has no ChatML tokens ({', '.join(missing)}): rustcoder trains Qwen-style "
                         "chat models. Use a Qwen2/Qwen2.5/Qwen3 instruct or base model.")
    template = choose_template(model_type or "", tok.chat_template)
    tok.chat_template = template_text(template)
    tok.eos_token = END_OF_TURN
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        for candidate in ("<|endoftext|>", "<|fim_pad|>"):
            if candidate in vocab:
                tok.pad_token = candidate
                break
        else:
            raise UsageError(f"{name!r} has no pad token distinct from {END_OF_TURN}; rustcoder needs one so "
                             "the model still learns to stop. Add <|endoftext|> to the tokenizer.")
    tok.padding_side = "right"
    return tok, template


def check_architecture(config, name: str) -> None:
    """Warn when the base is not a Qwen2/Qwen3 model (ChatML models still work)."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        warnings.warn(f"{name!r} is a {config.model_type!r} model; rustcoder is built and tested for "
                      f"{', '.join(SUPPORTED_MODEL_TYPES)} (Qwen2, Qwen2.5, Qwen3).", stacklevel=2)


def saved_dtype(name: str | Path) -> str | None:
    """The dtype a local model directory's config.json says its weights are saved in (None when unknown)."""
    import json

    cfg_path = Path(name) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config_dtype(cfg)


def config_dtype(cfg: dict) -> str | None:
    """The weights dtype a config dict names (dtype / torch_dtype, or its text_config's): bfloat16, float16,
    float32, or None."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    for d in (cfg.get("dtype"), cfg.get("torch_dtype"), text.get("dtype"), text.get("torch_dtype")):
        if d in ("bfloat16", "float16", "float32"):
            return d
    return None


def pick_dtype(requested: str, saved: str | None = None):
    """torch dtype for an explicit name, or for 'auto': on a GPU the dtype the model was saved in (a float32
    merge stays float32; bf16, or fp16 where bf16 is unsupported, when unknown), on CPU float32."""
    import torch

    names = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if requested == "auto":
        if torch.cuda.is_available():
            if saved in ("float32", "float16"):
                return names[saved]
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return names[requested]


def load_model(name: str, revision: str | None = None, dtype: str = "auto"):
    """The base causal LM in full precision or bf16 (never quantized)."""
    from transformers import AutoModelForCausalLM

    try:
        path = resolve_model(name)
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=pick_dtype(dtype, saved_dtype(path)),
                                                     attn_implementation="sdpa", **_hub_kwargs(path))
    except (OSError, ValueError) as e:
        raise _load_error("weights", name, e) from None
    return model
