"""Loading base models and tokenizers, the chat template rustcoder trains and serves with, and the one stop
rule every backend uses.

Every artifact (run directory, merged model) carries the same template: ChatML with generation
markers around the answer and its ``<|im_end|>``, no injected default system prompt, and ``tools``
refused. Thinking is decided per model from its stock template, not its model type: hybrid-thinking
models (Qwen3 dense and MoE) get an empty think block at the start of every assistant turn (thinking
off), in training, evaluation and serving alike; thinking-only models (Qwen3-*-Thinking-2507) are
refused. Answers stop on token ids (``stop_token_ids``): the end-of-turn token plus the model's own
eos ids, whatever the backend.
"""

from __future__ import annotations

import re
import warnings
from importlib import resources
from pathlib import Path

from . import hub
from .errors import RustcoderError, UsageError
from .tiny import TINY_MODELS, tiny_model_dir

END_OF_TURN = "<|im_end|>"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "qwen3_moe")  # the families the README names
TESTED_MODEL_TYPES = SUPPORTED_MODEL_TYPES + ("llama",)  # + SmolLM2-135M-Instruct, the real model in the tests
DOCUMENT_END = "<|endoftext|>"  # Qwen's end of document (the eos of its base models); a stop token too
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
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


def thinking_mode(stock_template: str | None, render=None) -> str:
    """How a model's stock chat template handles thinking: "hybrid" (it has an ``enable_thinking`` switch:
    Qwen3 dense and MoE), "always" (its generation prompt opens a think block: Qwen3-*-Thinking-2507) or
    "none" (Qwen2, Qwen2.5, Qwen3-*-Instruct-2507, SmolLM2).

    ``render(enable_thinking=None)`` renders a one-message generation prompt with the stock template (a
    tokenizer's apply_chat_template); without it the template text alone decides."""
    text = stock_template or ""
    if render is not None and text:
        try:
            if render(None).rstrip().endswith(THINK_OPEN):
                return "always"
        except Exception:  # a template that cannot render a bare user turn decides on its text
            pass
    if "enable_thinking" in text:
        return "hybrid"
    if render is None and re.search(r"assistant\\n<think>\\n'\s*}}\s*{%-?\s*endif", text):
        return "always"
    return "none"


def choose_template(model_type: str, stock_template: str | None, mode: str | None = None) -> str:
    """'chatml_nothink' for hybrid-thinking models (keyed on the stock template, so Qwen3 MoE counts and
    Qwen3-Instruct-2507 does not), else 'chatml'. ``model_type`` is kept for callers; it does not decide."""
    mode = mode or thinking_mode(stock_template)
    return "chatml_nothink" if mode == "hybrid" else "chatml"


def refuse_thinking_only(name: str) -> UsageError:
    """The error for a thinking-only model (its stock template always opens a think block)."""
    return UsageError(f"{name!r} is a thinking-only model: its chat template opens every answer with "
                      f"{THINK_OPEN} (Qwen3-*-Thinking-2507). rustcoder trains and scores direct answers, with "
                      "thinking off: use the hybrid model (e.g. Qwen/Qwen3-8B) or the Instruct-2507 variant.")


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


def _render_user_turn(tok):
    def render(enable_thinking):
        kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        return tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True,
                                       **kw)
    return render


def load_tokenizer(name: str, revision: str | None = None, model_type: str | None = None):
    """Tokenizer with rustcoder's chat template, eos = <|im_end|> and a pad token distinct from eos.

    Returns (tokenizer, template_name). The stop ids are read before eos is set (``stop_token_ids``);
    a thinking-only model is refused (``refuse_thinking_only``).
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
        raise UsageError(f"{name!r} has no ChatML tokens ({', '.join(missing)}): rustcoder trains ChatML chat "
                         "models. Use a Qwen2/Qwen2.5/Qwen3 instruct or base model (or another ChatML model).")
    stock = tok.chat_template if isinstance(tok.chat_template, str) else None
    is_rustcoder = stock is not None and stock in (template_text("chatml"), template_text("chatml_nothink"))
    mode = thinking_mode(stock, None if is_rustcoder else _render_user_turn(tok))
    if mode == "always":
        raise refuse_thinking_only(name)
    template = "chatml_nothink" if stock == template_text("chatml_nothink") else choose_template(
        model_type or "", stock, mode)
    tok.rustcoder_eos_ids = eos_id_list(tok.eos_token_id)  # the model's own eos, before rustcoder's replaces it
    tok.chat_template = template_text(template)
    tok.eos_token = END_OF_TURN
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        for candidate in (DOCUMENT_END, "<|fim_pad|>"):
            if candidate in vocab:
                tok.pad_token = candidate
                break
        else:
            raise UsageError(f"{name!r} has no pad token distinct from {END_OF_TURN}; rustcoder needs one so "
                             "the model still learns to stop. Add <|endoftext|> to the tokenizer.")
    tok.padding_side = "right"
    return tok, template


def eos_id_list(value) -> list[int]:
    """An eos_token_id setting (None, an id or a list) as a list of ids."""
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value if v is not None]


def model_eos_ids(name: str, revision: str | None = None) -> list[int]:
    """The eos ids a model ships: its generation_config.json's (a list for Qwen instruct models) and its
    config.json's. Read from the files only (no weights); [] when neither says."""
    from transformers import AutoConfig, GenerationConfig

    path = resolve_model(name)
    ids: list[int] = []
    for loader in (GenerationConfig, AutoConfig):
        try:
            cfg = loader.from_pretrained(path, revision=revision, **_hub_kwargs(path))
        except (OSError, ValueError):
            continue
        eos = getattr(cfg, "eos_token_id", None)
        if eos is None and hasattr(cfg, "get_text_config"):
            eos = getattr(cfg.get_text_config(), "eos_token_id", None)
        ids += [i for i in eos_id_list(eos) if i not in ids]
    return ids


def stop_token_ids(tokenizer, model_eos: list[int] | tuple[int, ...] = ()) -> list[int]:
    """The token ids every backend stops on, end-of-turn first: <|im_end|>, then the model's own eos ids
    (``model_eos``: ``model_eos_ids``; the tokenizer's eos before ``load_tokenizer`` replaced it), then
    <|endoftext|> where the vocabulary has it.

    One rule for transformers (``eos_token_id`` of generate), vLLM (``SamplingParams.stop_token_ids``),
    vLLM servers (``stop_token_ids`` in the request) and the transformers engine (its generation_config):
    stopping on token ids, never on the string ``<|im_end|>``, which vLLM drops from the text before it
    checks stop strings (a Qwen base model's eos is <|endoftext|>: such an answer ran to max_tokens)."""
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    candidates = [vocab.get(END_OF_TURN)] + list(model_eos) + list(getattr(tokenizer, "rustcoder_eos_ids", []))
    for i in candidates + [vocab.get(DOCUMENT_END)]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def prompt_tail_tokens(tokenizer) -> int:
    """How many tokens end every rendered prompt from the user turn's <|im_end|> on (the assistant header,
    think block included): what truncation must keep. Measured on the tokenizer's own template."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    ids = tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                        tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = list(ids)
    last = max(i for i, t in enumerate(ids) if t == end)
    return len(ids) - last


def architecture_note(model_type: str | None, name: str) -> str | None:
    """The one message about a base's architecture (train, its dry run, eval, merge and serve print it):
    None for a tested family. Any ChatML chat model is supported; only these are tested."""
    if model_type in TESTED_MODEL_TYPES:
        return None
    return (f"note: {name!r} is a {model_type!r} model. rustcoder supports any ChatML chat model and is tested on "
            f"Qwen2, Qwen2.5, Qwen3 (dense and MoE) and SmolLM2 (llama); check its answers with `rustcoder eval`.")


def check_architecture(config, name: str, log=None) -> str | None:
    """Say ``architecture_note`` once (through ``log``; a UserWarning without one) and return it."""
    note = architecture_note(getattr(config, "model_type", None), name)
    if note:
        if log is not None:
            log(note)
        else:
            warnings.warn(note, stacklevel=2)
    return note


def saved_model_type(name: str | Path) -> str | None:
    """The model_type a local model directory's config.json names (None when unknown: a hub id, no config)."""
    import json

    try:
        return json.loads((Path(name) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


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
