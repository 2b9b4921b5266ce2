"""Benchmarks in the HumanEval-Rust format: pass@k from known samples, unusable tasks set aside,
and the oracle (prompt + canonical_solution + test) on the real HumanEval-Rust file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.eval import EvalConfig, evaluate
from rustcoder.sandbox import rustc_available

needs_rustc = pytest.mark.skipif(not rustc_available(), reason="rustc not installed")
HUMANEVAL_RUST = Path(__file__).resolve().parents[1] / "evals" / "humaneval-rust" / "HumanEval_rust.jsonl"

TEST_ADD = ("#[cfg(test)]\n    mod tests {\n        use super::*;\n\n        #[test]\n        fn t() {\n"
            "            assert_eq!(add(2, 3), 5);\n            assert_eq!(add(-1, 1), 0);\n        }\n    }")
TEST_SUM = ("#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn t() {\n"
            "        assert_eq!(sum_even(&[1, 2, 3, 4]), 6);\n    }\n}")
TASKS = [
    {"task_id": "Mini/add", "category": "codegen", "prompt": "// Add two numbers.\nfn add(a: i32, b: i32) -> i32 {",
     "canonical_solution": "a + b\n}", "test": TEST_ADD, "entry_point": "add", "edition": "2021"},
    {"task_id": "Mini/sum_even", "category": "transform",
     "prompt": "// Sum the even numbers.\nfn sum_even(v: &[i32]) -> i32 {",
     "canonical_solution": "v.iter().filter(|x| *x % 2 == 0).sum()\n}", "test": TEST_SUM, "entry_point": "sum_even"},
    {"task_id": "Mini/truncated", "category": "codegen", "prompt": "fn f() -> i32 {", "canonical_solution": "1\n}",
     "test": "#[cfg(test)]\nmod tests {\n    use super::*;\n\n    // BEGIN_TESTS\n\n    ", "entry_point": "f"},
]


def _bench(tmp_path: Path) -> Path:
    path = tmp_path / "mini_bench.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    return path


@needs_rustc
def test_pass_at_k_from_known_samples_and_unusable_tasks(tmp_path):
    bench = _bench(tmp_path)
    add_whole = "```rust\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n```"
    add_body = "```rust\na + b\n}\n```"  # continues the prompt
    add_wrong = "```rust\nfn add(a: i32, b: i32) -> i32 {\n    a - b\n}\n```"
    sum_wrong = "```rust\nfn sum_even(v: &[i32]) -> i32 {\n    v.iter().sum()\n}\n```"
    # several samples of one item are numbered (a repeated id without sample_index is an error)
    preds = ([{"id": "Mini/add", "answer": a, "sample_index": j}
              for j, a in enumerate((add_whole, add_body, add_wrong, add_wrong, add_wrong))]
             + [{"id": "Mini/sum_even", "answer": sum_wrong, "sample_index": j} for j in range(5)]
             + [{"id": "Mini/truncated", "answer": "```rust\nfn f() -> i32 { 1 }\n```"}])
    pred_file = tmp_path / "preds.jsonl"
    pred_file.write_text("".join(json.dumps(p) + "\n" for p in preds))
    out = tmp_path / "eval"
    result = evaluate(EvalConfig(benchmark=str(bench), predictions=str(pred_file), output_dir=str(out), workers=2),
                      log=lambda *_: None)
    m = result.metrics
    assert m["generation"]["k"] == [1, 5]
    o = m["models"]["predictions"]["overall"]
    # add: 2 of 5 pass -> pass@1 0.4, pass@5 1.0; sum_even: 0 of 5 -> 0, 0
    assert o["pass@1"] == pytest.approx(20.0) and o["pass@5"] == pytest.approx(50.0)
    cats = m["models"]["predictions"]["categories"]
    assert cats["codegen"]["pass@1"] == pytest.approx(40.0) and cats["codegen"]["pass@5"] == pytest.approx(100.0)
    assert cats["transform"]["pass@5"] == 0.0 and cats["transform"]["statuses"] == {"test_fail": 5}
    # the truncated task is unusable: not scored, listed with the reason
    assert [t["id"] for t in m["data"]["invalid_tasks"]] == ["Mini/truncated"]
    assert "no #[test]" in m["data"]["invalid_tasks"][0]["reason"]
    assert "Mini/truncated" not in (out / "scores.jsonl").read_text()
    report = (out / "report.md").read_text()
    assert "pass@5" in report and "Mini/truncated" in report


@needs_rustc
def test_oracle_on_a_small_benchmark_file_flags_what_fails(tmp_path):
    bench = _bench(tmp_path)
    result = evaluate(EvalConfig(oracle=True, benchmark=str(bench), output_dir=str(tmp_path / "o"), workers=2),
                      log=lambda *_: None)
    o = result.metrics["oracle"]
    assert (o["pass"], o["total"], o["scorable"], o["scorable_pass"]) == (2, 3, 2, 2)
    (failure,) = o["failures"]
    assert failure["id"] == "Mini/truncated" and failure["invalid"] and failure["expected"]
    assert o["unexpected"] == 0


@needs_rustc
@pytest.mark.slow
def test_oracle_on_the_real_humaneval_rust_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.time()
    res = CliRunner().invoke(main, ["eval", "--oracle", "--benchmark", str(HUMANEVAL_RUST.resolve()),
                                    "--workers", "2", "--by-task"])
    seconds = time.time() - started
    assert res.exit_code == 0, res.output
    eval_dir = next(Path("evals-out").glob("oracle/*"))
    o = json.loads((eval_dir / "metrics.json").read_text())["oracle"]
    assert o["total"] == 180 and o["unexpected"] == 0
    # every task that can be scored passes, except one whose reference solution is known to be wrong
    assert o["scorable_pass"] >= o["scorable"] - 1 and o["scorable"] >= 140
    assert o["invalid"] == 32  # test blocks cut off after "// BEGIN_TESTS" in the file itself
    assert f"oracle: {o['pass']}/180 pass" in res.output
    print(f"\nHumanEval-Rust oracle: {o['pass']}/180 pass, scorable {o['scorable_pass']}/{o['scorable']}, "
          f"{seconds:.1f} s")


def test_the_benchmark_ships_inside_the_package_with_its_license_and_a_missing_file_is_an_error(tmp_path):
    """HumanEval-Rust lives in the top-level evals/ and ships in the wheel as package data of
    rustcoder.evals (pyproject's package-dir mapping; tests/test_first_contact.py installs the wheel),
    with its MIT license and source note."""
    from rustcoder.errors import DataError
    from rustcoder.eval.suites import benchmark_suite, evals_dir, load_items

    root = Path(__file__).resolve().parents[1]
    shipped = root / "evals" / "humaneval-rust"
    assert evals_dir() == root / "evals"
    assert "MIT License" in (shipped / "LICENSE").read_text() and "d4a655e" in (shipped / "SOURCE.md").read_text()
    suite = benchmark_suite("humaneval-rust")
    assert Path(suite.path).resolve() == HUMANEVAL_RUST.resolve() == shipped / "HumanEval_rust.jsonl"
    assert len(load_items(suite).items) > 140 and suite.known_issues  # prompts and known issues, not lost
    import tomllib

    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert data["package-dir"]["rustcoder.evals"] == "evals" and "rustcoder.evals" in data["packages"]
    assert {"*.yaml", "humaneval-rust/*"} <= set(data["package-data"]["rustcoder.evals"])
    suite.path = str(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load_items(suite)
