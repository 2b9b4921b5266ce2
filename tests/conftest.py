"""Shared fixtures: offline environment, tiny models built from a config, Strandset-shaped rows."""

from __future__ import annotations

import json
import os
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
