"""Strandset parsing, bad-row handling, sampling, the stratified split and prompt building."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import make_row, make_rows, write_jsonl
from rustcoder.data.categories import CATEGORIES, CATEGORY_NAMES, build_messages
from rustcoder.data.strandset import (BadRow, collect_examples, parse_field, parse_row, prepare_data,
                                      read_rows, stratified_split)
from rustcoder.errors import DataError


def test_fifteen_categories():
    assert len(CATEGORY_NAMES) == 15


def test_parse_json_and_python_literal_forms():
    d = {"code": "fn main() { println!(\"it's\"); }", "code_context": ""}
    assert parse_field(json.dumps(d)) == d
    assert parse_field(repr(d)) == d  # single-quoted dict literal, as in the real dataset
    assert parse_field(d) == d


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/rustcoder-pwned')",
    "{'a': __import__('os').getcwd()}",
    "(lambda: 1)()",
    "open('/etc/passwd').read()",
])
def test_parse_never_evaluates_code(text, tmp_path):
    with pytest.raises(ValueError):
        parse_field(text)


@pytest.mark.parametrize("text", ["[1, 2]", "'just a string'", "not a dict at all {", ""])
def test_parse_rejects_non_dicts(text):
    with pytest.raises(ValueError):
        parse_field(text)


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r.update(input_data="{broken"), "unparsable_input"),
    (lambda r: r.update(output_data="oops: not a dict"), "unparsable_output"),
    (lambda r: r.pop("output_data"), "missing_column"),
    (lambda r: r.update(task_category="poetry"), "unknown_category"),
    (lambda r: r.update(input_data=json.dumps({"code_context": ""})), "missing_input_field"),
    (lambda r: r.update(output_data=json.dumps({"other": "x"})), "missing_output_field"),
    (lambda r: r.update(output_data=json.dumps({"summary": "   "})), "empty_answer"),
])
def test_bad_rows_name_their_reason(mutate, reason):
    row = make_row("code_summarization", 1)
    mutate(row)
    with pytest.raises(BadRow) as e:
        parse_row(row)
    assert e.value.reason == reason


def test_bad_rows_counted_and_threshold_stops(tmp_path):
    rows = make_rows(10)  # 150 good rows
    rows += [dict(make_row("code_search", 99), input_data="{bad")] * 3
    rows += [dict(make_row("code_search", 98), task_category="nope")] * 2
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    with pytest.raises(DataError) as e:
        prepare_data(str(path))  # 5/155 = 3.2% > 1%
    assert "unparsable_input=3" in str(e.value) and "--max-bad-fraction" in str(e.value)
    data = prepare_data(str(path), max_bad_fraction=0.05)
    assert data.bad_counts == {"unparsable_input": 3, "unknown_category": 2}
    assert len(data.train) + len(data.eval) == 150


def test_sampling_is_seeded_and_exact(rows_file):
    a = prepare_data(str(rows_file), num_examples=300, seed=42)
    b = prepare_data(str(rows_file), num_examples=300, seed=42)
    c = prepare_data(str(rows_file), num_examples=300, seed=7)
    assert [e.id for e in a.train] == [e.id for e in b.train]
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.train) + len(a.eval) == 300
    assert len(a.eval) == 30


def test_split_is_stratified_disjoint_and_research_sized(tmp_path):
    rows = make_rows(700)  # 10,500 rows
    examples, _, _ = collect_examples(rows, 10_000, seed=42)
    train, held = stratified_split(examples, 0.1, seed=42)
    assert (len(train), len(held)) == (9000, 1000)
    assert not {e.id for e in train} & {e.id for e in held}
    all_counts = Counter(e.category for e in examples)
    held_counts = Counter(e.category for e in held)
    for cat, n in all_counts.items():
        assert abs(held_counts[cat] - n * 0.1) <= 1, cat


def test_categories_filter(rows_file):
    data = prepare_data(str(rows_file), categories=["bug_detection", "code_review"])
    cats = {e.category for e in data.train + data.eval}
    assert cats == {"bug_detection", "code_review"}
    assert data.bad_total == 0


def test_local_parquet_json_and_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_rows(4)
    d = tmp_path / "ds" / "data"
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), d / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:15]), d / "test-00000-of-00001.parquet")
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    assert len(list(read_rows(str(d / "train-00000-of-00001.parquet")))) == 60
    assert len(list(read_rows(str(tmp_path / "ds")))) == 60            # picks the train split
    assert len(list(read_rows(str(tmp_path / "ds"), split="test"))) == 15
    assert len(list(read_rows(str(tmp_path / "rows.json")))) == 60


def test_bad_jsonl_line_named(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(make_row("code_search", 1)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"r.jsonl:2"):
        list(read_rows(str(p)))


def test_builtin_sample_parses_cleanly():
    for split, per_cat in (("train", 5), ("test", 2)):
        rows = list(read_rows("sample", split=split))
        examples, bad, _ = collect_examples(rows)
        assert not bad, bad
        counts = Counter(e.category for e in examples)
        assert set(counts) == set(CATEGORY_NAMES)
        assert min(counts.values()) >= per_cat


# ---- prompts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("category", CATEGORY_NAMES)
def test_prompt_for_every_category(category):
    row = make_row(category, 3)
    ex = parse_row(row)
    system, user, assistant = ex.messages
    assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
    assert system["content"] == CATEGORIES[category].system
    cat = CATEGORIES[category]
    inp, out = json.loads(row["input_data"]), json.loads(row["output_data"])
    for k in cat.inputs:  # every required input reaches the user turn
        assert inp[k].strip() in user["content"], k
    for k in cat.outputs:  # every output field is in the answer, and only there
        assert out[k].strip() in assistant["content"], k
        assert out[k].strip() not in user["content"]
    if cat.answer_kind in ("code", "text+code"):
        assert "```rust\n" in assistant["content"]


def test_test_cases_list_is_joined():
    msgs = build_messages("test_generation", {"code_to_test": "fn f() {}", "code_context": ""},
                          {"test_cases": ["#[test]\nfn a() {}", "#[test]\nfn b() {}"]})
    assert "fn a() {}" in msgs[-1]["content"] and "fn b() {}" in msgs[-1]["content"]
    assert "['#[test]" not in msgs[-1]["content"]


def test_optional_function_signature():
    base = {"title": "Add", "description": "Add two numbers", "code_context": ""}
    without = build_messages("code_generation", base)[1]["content"]
    with_sig = build_messages("code_generation", {**base, "function_signature": "fn add(a: i32, b: i32) -> i32"})
    assert "Signature" not in without
    assert "fn add(a: i32, b: i32) -> i32" in with_sig[1]["content"]
