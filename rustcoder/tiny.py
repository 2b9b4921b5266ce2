"""Tiny Qwen2/Qwen3 models and tokenizers built locally from a config: no download, seconds on CPU.

They are random: they show the mechanics of the whole loop (train, eval, merge, serve) offline, not
quality. Built once into a cache directory (``$RUSTCODER_CACHE`` or ``~/.cache/rustcoder``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_MODELS = ("tiny-qwen2", "tiny-qwen3")
TINY_VERSION = 1  # bump when the recipe changes so stale caches are rebuilt
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]

# The same pre-tokenizer transformers' Qwen2Tokenizer rebuilds on load (see platform notes): train
# with it or ids silently differ between load paths.
QWEN_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
                    r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# A hybrid-thinking Qwen3-style template (mentions enable_thinking), so rustcoder's Qwen3 handling
# (thinking off, the same way everywhere) is exercised by the tiny model too.
_QWEN3_STOCK_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
_QWEN2_STOCK_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def cache_root() -> Path:
    """Where built-in artifacts are cached."""
    return Path(os.environ.get("RUSTCODER_CACHE", Path.home() / ".cache" / "rustcoder"))


def _tokenizer_corpus() -> list[str]:
    from .data.categories import CATEGORIES
    from .data.strandset import iter_rows, sample_path

    texts = [c.system for c in CATEGORIES.values()]
    for split in ("train", "test"):
        p = sample_path(split)
        if p.exists():
            for row in iter_rows(p):
                texts.extend([row.get("input_data", ""), row.get("output_data", ""), row.get("test", "")])
    texts.append("fn main() { let mut v: Vec<i32> = Vec::new(); println!(\"{:?}\", v); }")
    return texts


def train_tokenizer(out_dir: Path, vocab_size: int = 1024, arch: str = "qwen2") -> None:
    """Train a byte-level BPE tokenizer with Qwen's pre-tokenizer and save it as a Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = SPECIAL_TOKENS + (THINK_TOKENS if arch == "qwen3" else [])
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    # vocab.json + merges.txt: the files Qwen2Tokenizer itself rebuilds from.
    model = json.loads(tok.to_str())["model"]
    (out_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 4096,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "bos_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "chat_template": _QWEN3_STOCK_TEMPLATE if arch == "qwen3" else _QWEN2_STOCK_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def tiny_config(arch: str = "qwen2", vocab_size: int = 1024, hidden_size: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate: int | None = None, **extra):
    """A transformers config for a tiny Qwen2 or Qwen3 causal LM."""
    from transformers import Qwen2Config, Qwen3Config

    cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    kw = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate or hidden_size * 2,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=4096, tie_word_embeddings=True, use_cache=True,
              bos_token_id=None, eos_token_id=2, pad_token_id=0)
    if arch == "qwen3":
        kw["head_dim"] = hidden_size // heads
    kw.update(extra)
    return cls(**kw)


def build_tiny_model(out_dir: str | Path, arch: str = "qwen2", seed: int = 0, hidden_size: int = 64,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab_size: int = 1024) -> Path:
    """Build a random tiny Qwen model + tokenizer into ``out_dir`` (written atomically) and return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        train_tokenizer(tmp, vocab_size=vocab_size, arch=arch)
        tok = AutoTokenizer.from_pretrained(tmp)
        ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        cfg = tiny_config(arch, vocab_size=len(tok), hidden_size=hidden_size, layers=layers, heads=heads,
                          kv_heads=kv_heads, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
        model.generation_config = GenerationConfig(
            eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
            do_sample=False, max_new_tokens=64)
        model.save_pretrained(tmp)
        (tmp / "rustcoder_tiny.json").write_text(json.dumps({"arch": arch, "version": TINY_VERSION, "seed": seed,
                                                            "hidden_size": hidden_size, "layers": layers}))
        if (out_dir / "rustcoder_tiny.json").exists():  # another process finished first
            shutil.rmtree(tmp)
            return out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def tiny_model_dir(name: str) -> Path:
    """The cached directory of a built-in tiny model ('tiny-qwen2' or 'tiny-qwen3'), built on first use."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; choose from {', '.join(TINY_MODELS)}")
    arch = name.split("-", 1)[1]
    path = cache_root() / "models" / f"{name}-v{TINY_VERSION}"
    marker = path / "rustcoder_tiny.json"
    if not marker.exists():
        build_tiny_model(path, arch=arch)
    return path


# Real Qwen shapes (hidden, layers, heads, kv heads, intermediate, vocab, tied): throughput, memory and
# numerics (bf16 merge rounding, packing isolation) depend on the shape, not on the weights.
QWEN_SHAPES = {
    "0.5b": dict(hidden_size=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab_size=151936, tied=True),
    "1.5b": dict(hidden_size=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab_size=151936, tied=True),
    "7b": dict(hidden_size=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab_size=152064, tied=False),
    # the 0.5B's vocabulary and tying on a CPU-sized body: the GPU layer's logic rehearsed on CPU
    "mini": dict(hidden_size=128, layers=2, heads=4, kv_heads=2, intermediate=256, vocab_size=151936, tied=True),
}


def build_shaped_model(out_dir: str | Path, shape: str, *, device: str = "cuda", dtype: str = "bfloat16",
                       seed: int = 0) -> Path:
    """A Qwen2 with a real model's shape (QWEN_SHAPES) and random weights, built on ``device`` in ``dtype``,
    saved with the tiny tokenizer (its ids are a subset of the vocabulary). For GPU tests and benchmarks
    on machines that cannot download the real weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    s = QWEN_SHAPES[shape]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out_dir, arch="qwen2")
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    cfg = tiny_config("qwen2", vocab_size=s["vocab_size"], hidden_size=s["hidden_size"], layers=s["layers"],
                      heads=s["heads"], kv_heads=s["kv_heads"], intermediate=s["intermediate"],
                      tie_word_embeddings=s["tied"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out_dir, max_shard_size="2GB")
    del model
    return out_dir
