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
