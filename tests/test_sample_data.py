"""Checks for the built-in Strandset-shaped sample data (rustcoder/data/sample).

Structure: every row has the five string columns, input/output parse as JSON or
as a Python dict literal (both forms present), all 15 categories are covered
with the keys Strandset uses. Rust: every piece of code that should compile is
compiled with rustc (edition 2021), and the tests of code_generation and
test_generation rows are built with ``rustc --test`` and run. The rustc checks
are skipped when rustc is not installed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "rustcoder" / "data" / "sample"
SPLITS = {
    "train": SAMPLE_DIR / "strandset_train.jsonl",
    "test": SAMPLE_DIR / "strandset_test.jsonl",
}
MIN_PER_CATEGORY = {"train": 7, "test": 2}
ROW_KEYS = {"crate_name", "input_data", "output_data", "task_category", "test"}

# category -> (required input keys, required output keys)
SCHEMA = {
    "code_generation": ({"title", "description", "code_context"}, {"code"}),
    "code_completion": ({"prefix", "suffix"}, {"completion"}),
    "bug_detection": ({"buggy_code", "code_context"}, {"bug_description", "fixed_code"}),
    "code_review": ({"code_before", "code_context"}, {"review_comment", "code_after"}),
    "code_refactoring": ({"code_before", "code_context"}, {"rationale", "code_after"}),
    "code_optimization": ({"code_before", "code_context"}, {"rationale", "code_after"}),
    "docstring_generation": ({"code", "code_context"}, {"docstring"}),
    "comment_generation": ({"code", "code_context"}, {"commented_code"}),
    "code_summarization": ({"code", "code_context"}, {"summary"}),
    "code_explanation": ({"code", "code_context"}, {"explanation"}),
    "function_naming": ({"code", "code_context"}, {"function_name"}),
    "variable_naming": ({"code", "code_context"}, {"variable_name"}),
    "code_search": ({"query", "code_context"}, {"code_snippet"}),
    "test_generation": ({"code_context", "code_to_test", "test_context"}, {"test_cases"}),
    "api_usage_prediction": ({"code", "code_context"}, {"next_api_call"}),
}
OPTIONAL_INPUT = {"code_generation": {"function_signature"}}
PROSE_KEYS = {"title", "description", "query", "bug_description", "review_comment", "rationale", "summary", "explanation"}

RUSTC = shutil.which("rustc")
RUSTC_TIMEOUT = 120  # seconds per rustc invocation
RUN_TIMEOUT = 30  # seconds per test binary
needs_rustc = pytest.mark.skipif(RUSTC is None, reason="rustc not installed")


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------
def parse_field(text: str) -> tuple[dict, str]:
    """Parse a serialized dict the way the training code must: JSON, else a Python literal."""
    try:
        return json.loads(text), "json"
    except json.JSONDecodeError:
        return ast.literal_eval(text), "python"


def load_rows(split: str) -> list[dict]:
    rows = []
    with open(SPLITS[split], encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                rows.append({"split": split, "lineno": lineno, "raw": json.loads(line)})
    return rows


def parsed(row: dict) -> tuple[str, dict, dict, str]:
    raw = row["raw"]
    inp, _ = parse_field(raw["input_data"])
    out, _ = parse_field(raw["output_data"])
    return raw["task_category"], inp, out, raw["test"]


ALL_ROWS = [row for split in SPLITS for row in load_rows(split)]


def row_id(row: dict) -> str:
    raw = row["raw"]
    return f"{row['split']}:{row['lineno']}:{raw['task_category']}:{raw['crate_name']}"


# --------------------------------------------------------------------------
# building the Rust sources to check
# --------------------------------------------------------------------------
def join_rust(*parts: str) -> str:
    return "\n\n".join(p.strip("\n") for p in parts if p and p.strip()) + "\n"


def wrap_tests(test_context: str, test_cases) -> str:
    cases = [test_cases] if isinstance(test_cases, str) else list(test_cases)
    body = join_rust(test_context, *cases)
    return f"#[cfg(test)]\nmod tests {{\n    use super::*;\n\n{body}}}\n"


def rust_checks(category: str, inp: dict, out: dict, test: str) -> list[tuple[str, str, str]]:
    """(label, mode, source) for every piece of a row that must compile.

    mode is "lib" (``--crate-type lib``) or "test" (``--test``, then run the binary).
    """
    ctx = inp.get("code_context", "")
    checks: list[tuple[str, str, str]] = []

    def lib(label: str, *parts: str) -> None:
        checks.append((label, "lib", join_rust(*parts)))

    if category == "code_generation":
        lib("context+code", ctx, out["code"])
        checks.append(("context+code+test", "test", join_rust(ctx, out["code"], test)))
    elif category == "code_completion":
        lib("prefix+completion+suffix", inp["prefix"] + out["completion"] + inp["suffix"])
    elif category == "bug_detection":
        lib("context+buggy_code", ctx, inp["buggy_code"])
        lib("context+fixed_code", ctx, out["fixed_code"])
    elif category in ("code_review", "code_refactoring", "code_optimization"):
        lib("context+code_before", ctx, inp["code_before"])
        lib("context+code_after", ctx, out["code_after"])
    elif category == "comment_generation":
        lib("context+code", ctx, inp["code"])
        lib("context+commented_code", ctx, out["commented_code"])
    elif category == "docstring_generation":
        lib("context+docstring+code", ctx, out["docstring"].rstrip("\n") + "\n" + inp["code"])
    elif category in ("code_summarization", "code_explanation"):
        lib("context+code", ctx, inp["code"])
    elif category == "function_naming":
        lib("context+named code", ctx, inp["code"].replace("__placeholder__", out["function_name"]))
    elif category == "variable_naming":
        lib("context+named code", ctx, inp["code"].replace("__placeholder__", out["variable_name"]))
    elif category == "code_search":
        lib("context+code_snippet", ctx, out["code_snippet"])
    elif category == "test_generation":
        checks.append(
            (
                "context+code_to_test+tests",
                "test",
                join_rust(ctx, inp["code_to_test"], wrap_tests(inp["test_context"], out["test_cases"])),
            )
        )
    # api_usage_prediction: `code` is a statement fragment; nothing standalone to compile.
    return checks


def run_check(mode: str, source: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="rustcoder-sample-") as tmp:
        src = Path(tmp) / "sample.rs"
        src.write_text(source, encoding="utf-8")
        cmd = [RUSTC, "--edition", "2021", "-A", "warnings", "--crate-name", "sample"]
        if mode == "lib":
            cmd += ["--crate-type", "lib", "--out-dir", tmp]
        else:
            cmd += ["--test", "-o", str(Path(tmp) / "sample_tests")]
        proc = subprocess.run(cmd + [str(src)], capture_output=True, text=True, timeout=RUSTC_TIMEOUT)
        if proc.returncode != 0:
            return False, f"rustc failed:\n{proc.stderr}"
        if mode == "test":
            proc = subprocess.run(
                [str(Path(tmp) / "sample_tests"), "--test-threads", "1"],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
            if proc.returncode != 0:
                return False, f"tests failed:\n{proc.stdout}\n{proc.stderr}"
            if not re.search(r"test result: ok\. [1-9]\d* passed", proc.stdout):
                return False, f"no test ran:\n{proc.stdout}"
        return True, ""


COMPILED_ROWS = [row for row in ALL_ROWS if rust_checks(*parsed(row))]


@pytest.fixture(scope="session")
def rustc_results(request) -> dict:
    """Compile (in parallel) the checks of every row selected in this session."""
    selected = {
        row_id(item.callspec.params["row"])
        for item in request.session.items
        if item.originalname == "test_rust_compiles"
    }
    jobs = []
    for row in COMPILED_ROWS:
        if row_id(row) in selected:
            for label, mode, source in rust_checks(*parsed(row)):
                jobs.append((row_id(row), label, mode, source))
    workers = max(2, (os.cpu_count() or 2) + 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda job: run_check(job[2], job[3]), jobs))
    results: dict[str, list] = {}
    for (rid, label, mode, source), (ok, log) in zip(jobs, outcomes):
        results.setdefault(rid, []).append((label, ok, log, source))
    return results


# --------------------------------------------------------------------------
# structure tests
# --------------------------------------------------------------------------
@pytest.mark.parametrize("split", list(SPLITS))
def test_file_shape(split):
    rows = load_rows(split)
    forms = set()
    counts: dict[str, int] = {}
    for row in rows:
        raw = row["raw"]
        assert set(raw) == ROW_KEYS, row_id(row)
        assert all(isinstance(v, str) for v in raw.values()), row_id(row)
        assert raw["crate_name"].strip(), row_id(row)
        for field in ("input_data", "output_data"):
            value, form = parse_field(raw[field])
            assert isinstance(value, dict), (row_id(row), field)
            forms.add(form)
        counts[raw["task_category"]] = counts.get(raw["task_category"], 0) + 1
    assert forms == {"json", "python"}, f"{split}: both serializations must appear, got {forms}"
    assert set(counts) == set(SCHEMA), f"{split}: categories {sorted(counts)}"
    low = {c: n for c, n in counts.items() if n < MIN_PER_CATEGORY[split]}
    assert not low, f"{split}: too few rows for {low}"


def test_train_and_test_are_disjoint():
    def key(row):
        category, inp, _, _ = parsed(row)
        return category, json.dumps(inp, sort_keys=True)

    train = {key(r) for r in ALL_ROWS if r["split"] == "train"}
    test = [key(r) for r in ALL_ROWS if r["split"] == "test"]
    assert len(set(test)) == len(test), "duplicate rows in test split"
    assert train.isdisjoint(test), "held-out rows leak into train"
    assert len(train) == sum(r["split"] == "train" for r in ALL_ROWS), "duplicate rows in train split"


@pytest.mark.parametrize("row", ALL_ROWS, ids=row_id)
def test_row_fields(row):
    category, inp, out, test = parsed(row)
    need_in, need_out = SCHEMA[category]
    allowed_in = need_in | OPTIONAL_INPUT.get(category, set())
    assert need_in <= set(inp) <= allowed_in, f"input keys {sorted(inp)}"
    assert set(out) == need_out, f"output keys {sorted(out)}"
    for key, value in {**inp, **out}.items():
        if key == "test_cases" and isinstance(value, list):
            assert value and all(isinstance(v, str) and v.strip() for v in value)
        else:
            assert isinstance(value, str), key
    for key in need_out:
        assert out[key] if isinstance(out[key], list) else out[key].strip(), f"empty {key}"

    if category == "code_generation":
        assert "#[cfg(test)]" in test and "mod tests" in test and "#[test]" in test
    else:
        assert test == "", "only code_generation rows carry a `test` block"
    if category in ("function_naming", "variable_naming"):
        assert "__placeholder__" in inp["code"]
        name = out["function_name" if category == "function_naming" else "variable_name"]
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
    if category == "test_generation":
        cases = out["test_cases"]
        for case in [cases] if isinstance(cases, str) else cases:
            assert "#[test]" in case

    # std only: no external crates in any code-bearing field.
    fields = {**inp, **out, "test": test}
    text = "\n".join(
        v if isinstance(v, str) else "\n".join(v) for k, v in fields.items() if k not in PROSE_KEYS
    )
    assert "extern crate" not in text
    for m in re.finditer(r"^\s*(?:pub\s+)?use\s+(?:::)?([A-Za-z_][A-Za-z0-9_]*)", text, re.M):
        assert m.group(1) in {"std", "core", "alloc", "super", "crate", "self"}, m.group(0)


def test_test_cases_come_in_both_shapes():
    shapes = set()
    for row in ALL_ROWS:
        category, _, out, _ = parsed(row)
        if category == "test_generation":
            shapes.add(type(out["test_cases"]).__name__)
    assert shapes == {"list", "str"}


# --------------------------------------------------------------------------
# Rust compile / test checks
# --------------------------------------------------------------------------
@needs_rustc
@pytest.mark.parametrize("row", COMPILED_ROWS, ids=row_id)
def test_rust_compiles(row, rustc_results):
    failures = [
        f"--- {label} ---\n{log}\n--- source ---\n{source}"
        for label, ok, log, source in rustc_results[row_id(row)]
        if not ok
    ]
    assert not failures, "\n\n".join(failures)
