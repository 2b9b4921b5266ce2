"""Every bad input file gets a message, not a traceback: the file, the line or row, what is wrong
and the fix, with exit code 1 or 2. Each case is tried where a user can pass it: as training data
(``train --dry-run``), as an eval dataset, as a predictions file and as a benchmark. Fields of the
wrong type (numbers, lists where text is expected) are bad rows, counted per reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.data.strandset import prepare_data, sample_path
from rustcoder.errors import DataError

# name -> (file name, bytes, what the message must say)
BAD_FILES = {
    "non_utf8": ("rows.jsonl", b'{"crate_name": "caf\xe9"}\n', ["rows.jsonl:1", "not UTF-8", "Save the file as UTF-8"]),
    "deep_json": ("rows.jsonl", b"[" * 200_000 + b"]" * 200_000 + b"\n", ["rows.jsonl:1", "nested too deeply"]),
    "line_is_a_number": ("rows.jsonl", b"42\n", ["rows.jsonl:1", "int 42", "not a JSON object"]),
    "line_is_null": ("rows.jsonl", b'\n\nnull\n', ["rows.jsonl:3", "null", "not a JSON object"]),
    "array_of_non_objects": ("rows.json", b"[1, 2, 3]", ["rows.json", "item 0", "not a row object"]),
    "garbage_parquet": ("rows.parquet", b"PAR1" + bytes(range(256)) * 4, ["rows.parquet", "not a readable parquet"]),
    "empty_parquet": ("rows.parquet", b"", ["rows.parquet", "0 bytes", "not a readable parquet"]),
}
CONTEXTS = ("train", "eval_dataset", "predictions", "benchmark")


def _run(args: list[str]):
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return result, text


@pytest.fixture
def good_predictions(tmp_path) -> Path:
    path = tmp_path / "good_preds.jsonl"
    path.write_text(json.dumps({"id": "x", "answer": "a"}) + "\n")
    return path


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gets_a_message(case, context, tmp_path, good_predictions):
    name, content, wanted = BAD_FILES[case]
    bad = tmp_path / name
    bad.write_bytes(content)
    out = str(tmp_path / "out")
    args = {
        "train": ["train", "--model", "tiny-qwen2", "--dataset", str(bad), "--dry-run"],
        "eval_dataset": ["eval", "--predictions", str(good_predictions), "--dataset", str(bad), "--no-exec",
                         "--output-dir", out],
        "predictions": ["eval", "--predictions", str(bad), "--dataset", "sample", "--no-exec", "--output-dir", out],
        "benchmark": ["eval", "--predictions", str(good_predictions), "--benchmark", str(bad), "--no-exec",
                      "--output-dir", out],
    }[context]
    result, text = _run(args)
    assert result.exit_code in (1, 2), text
    assert "Traceback" not in text and not isinstance(result.exception, (RecursionError, UnicodeDecodeError,
                                                                           AttributeError, TypeError)), text
    for fragment in wanted:
        assert fragment in text, (fragment, text)


def _sample_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in sample_path("train").read_text().splitlines() if line.strip()]
    return rows[:n]


def test_fields_of_the_wrong_type_are_bad_rows_counted_per_reason(tmp_path):
    rows = _sample_rows(40)
    gen = next(r for r in rows if r["task_category"] == "code_generation")
    out_data = json.loads(gen["output_data"])
    as_number = dict(gen, output_data=json.dumps({**out_data, "code": 12345}))
    as_list = dict(gen, output_data=json.dumps({**out_data, "code": ["fn a() {}", "fn b() {}"]}))
    category_number = dict(gen, task_category=7)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + [as_number, as_list, category_number]))

    with pytest.raises(DataError, match=r"wrong_type=3.*--max-bad-fraction"):
        prepare_data(str(path), eval_fraction=0.1)
    data = prepare_data(str(path), eval_fraction=0.1, max_bad_fraction=0.5)
    assert data.bad_counts == {"wrong_type": 3}
    texts = [m["content"] for e in data.train + data.eval for m in e.messages]
    assert not any("12345" in t or "['fn a() {}'" in t for t in texts), "a number or list was trained on"


def test_a_list_of_strings_stays_valid_where_the_format_allows_it(tmp_path):
    rows = _sample_rows(105)
    tg = next(r for r in rows if r["task_category"] == "test_generation")
    out_data = json.loads(tg["output_data"])
    assert "test_cases" in out_data
    listed = dict(tg, output_data=json.dumps({**out_data, "test_cases": ["#[test]\nfn a() {}", "#[test]\nfn b() {}"]}))
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:20] + [listed]))
    data = prepare_data(str(path), eval_fraction=0.1)
    assert data.bad_counts == {}


def test_wrong_typed_prediction_answer_names_the_line(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "a", "answer": "x"}) + "\n" + json.dumps({"id": "b", "answer": 12345}) + "\n")
    result, text = _run(["eval", "--predictions", str(preds), "--dataset", "sample", "--no-exec",
                         "--output-dir", str(tmp_path / "out")])
    # ids a and b are not in the sample: the type is checked before the id is looked up
    assert result.exit_code == 1 and "preds.jsonl:2" in text and "int, not text" in text, text


def test_benchmark_task_with_wrong_types_or_edition_is_unusable_not_a_crash(tmp_path):
    from rustcoder.eval.suites import validate_benchmark_task

    task = {"task_id": "t", "prompt": "fn f() -> i32 {", "canonical_solution": "1 }", "entry_point": "f",
            "test": "#[test]\nfn t() { assert_eq!(f(), 1); }"}
    assert validate_benchmark_task(task) is None
    assert "prompt (int)" in validate_benchmark_task({**task, "prompt": 5})
    assert "edition '2019'" in validate_benchmark_task({**task, "edition": "2019"})
