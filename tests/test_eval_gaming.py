"""Scores a model cannot game: answers written the way an adversary would, scored end to end
through ``evaluate(--predictions)``. Compiler crashes count against the answer, test suites that
run nothing or pass against broken code score 0, unanswered items score 0 with the coverage
stated, duplicate ids are refused, and sandbox failures stop the evaluation instead of shrinking
the denominator. Needs rustc (skipped without it); no model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rustcoder import sandbox
from rustcoder.errors import DataError, RustcoderError
from rustcoder.eval import EvalConfig, evaluate
from rustcoder.eval.suites import dataset_suite, load_items
from rustcoder.sandbox import rustc_available

pytestmark = pytest.mark.skipif(not rustc_available(), reason="rustc not installed")

QUIET = dict(log=lambda *_: None)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _scores(eval_dir: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, (eval_dir / "scores.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def sample_items():
    out: dict[str, list] = {}
    for it in load_items(dataset_suite("sample")).items:
        out.setdefault(it.category, []).append(it)
    return out


# ---- compiler crashes are the answer's fault ---------------------------------------------------

ADD_PROMPT = "/// Adds two numbers.\npub fn add(a: i32, b: i32) -> i32 {"
ADD_TEST = "#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn adds() { assert_eq!(add(2, 3), 5); }\n}"
# set_var is safe in Rust 2021 and unsafe in 2024: a row without "edition" must run as 2021
ENV_PROMPT = "/// Sets A=1 in the environment and returns true.\npub fn set_a() -> bool {"
ENV_TEST = ("#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn sets() { assert!(set_a()); "
            "assert_eq!(std::env::var(\"A\").unwrap(), \"1\"); }\n}")


def _benchmark(tmp_path: Path) -> Path:
    tasks = [{"task_id": f"t/{i}", "prompt": ADD_PROMPT, "canonical_solution": "    a + b\n}", "test": ADD_TEST,
              "entry_point": "add"} for i in range(3)]
    tasks.append({"task_id": "t/env", "prompt": ENV_PROMPT,
                  "canonical_solution": "    std::env::set_var(\"A\", \"1\");\n    true\n}", "test": ENV_TEST,
                  "entry_point": "set_a"})
    return _write(tmp_path / "bench.jsonl", tasks)


def test_compiler_crashes_score_as_failures_and_the_edition_default_is_2021(tmp_path):
    bench = _benchmark(tmp_path)
    nested = "pub fn add(a: i32, b: i32) -> i32 " + "{" * 3000 + "a + b" + "}" * 3000
    blowup = ("macro_rules! boom { ($($t:tt)*) => { boom!($($t)* $($t)*); }; }\n"
              "pub fn add(a: i32, b: i32) -> i32 { boom!(a); a + b }")
    preds = [
        {"id": "t/0", "answer": f"```rust\n{nested}\n```"},
        {"id": "t/1", "answer": f"```rust\n{blowup}\n```"},
        {"id": "t/2", "answer": "```rust\npub fn add(a: i32, b: i32) -> i32 { a - b }\n```"},
        {"id": "t/env", "answer": "```rust\npub fn set_a() -> bool {\n    std::env::set_var(\"A\", \"1\");\n"
                                  "    true\n}\n```"},
    ]
    out = tmp_path / "eval"
    result = evaluate(EvalConfig(predictions=str(_write(tmp_path / "p.jsonl", preds)), benchmark=str(bench),
                                 output_dir=str(out), workers=2, compile_timeout=20), **QUIET)
    s = _scores(out)
    for i in (0, 1):
        rec = s[f"predictions:t/{i}:0"]
        assert rec["status"] == "compile_error" and rec["primary"] == 0.0, rec
    ex = {r["key"]: r for r in map(json.loads, (out / "executions.jsonl").read_text().splitlines())}
    assert "stack overflow" in ex["predictions:t/0:0"]["detail"]
    assert "rustc crashed" in ex["predictions:t/1:0"]["detail"]
    assert s["predictions:t/2:0"]["status"] == "test_fail"
    assert s["predictions:t/env:0"]["status"] == "pass", ex["predictions:t/env:0"]["diagnostics"]
    overall = result.metrics["models"]["predictions"]["overall"]
    assert overall["pass@1"] == pytest.approx(25.0)  # 1 of 4, not 1 of 2
    assert result.metrics["edition"] == {"default": "2021", "items_using_default": 4}
    assert "compiled as Rust 2021" in (out / "report.md").read_text()


# ---- test_generation: tests must run and must notice broken code -------------------------------

def test_test_suites_that_test_nothing_score_zero(sample_items, tmp_path):
    percent = next(i for i in sample_items["test_generation"] if "percent" in json.dumps(i.data))
    p = lambda tag, answer: {"model": tag, "id": percent.id, "answer": answer}  # noqa: E731
    preds = [
        p("good", percent.reference),
        p("commented", "```rust\n// #[test] goes here later\nfn helper() {}\n```"),
        p("none", "```rust\nfn helper() -> u32 { 1 }\n```"),
        p("trivial", "```rust\n#[test]\nfn always() { assert_eq!(2 + 2, 4); }\n```"),
        p("ignored", "```rust\n#[test]\n#[ignore]\nfn later() { assert_eq!(percent(1, 2), 50); }\n```"),
    ]
    out = tmp_path / "eval"
    result = evaluate(EvalConfig(predictions=str(_write(tmp_path / "p.jsonl", preds)), dataset="sample",
                                 categories=["test_generation"], output_dir=str(out), workers=2), **QUIET)
    s = _scores(out)
    per_item = {g["id"]: g for g in result.metrics["models"]["good"]["generated_tests"]}
    assert per_item[percent.id]["tests_failed_broken"] >= 1
    assert "fail on broken code" in (out / "report.md").read_text()
    good = s[f"good:{percent.id}:0"]
    assert good["status"] == "pass" and good["primary"] == 100.0
    assert good["tests_passed"] >= 1 and good["tests_failed_broken"] >= 1, good  # both counts per item
    assert s[f"commented:{percent.id}:0"]["status"] == "no_tests"
    assert s[f"none:{percent.id}:0"]["status"] == "no_tests"
    assert s[f"ignored:{percent.id}:0"]["status"] == "no_tests"
    trivial = s[f"trivial:{percent.id}:0"]
    assert trivial["status"] == "weak_tests" and trivial["tests_failed_broken"] == 0, trivial
    for tag in ("commented", "none", "trivial", "ignored"):
        assert s[f"{tag}:{percent.id}:0"]["primary"] == 0.0


def test_break_function_bodies_keeps_tests_and_breaks_the_code():
    from rustcoder.eval.extract import BROKEN_BODY, break_function_bodies

    code = ('pub fn f(x: &str) -> usize { let s = "}"; x.len() + s.len() }\n'
            "trait T { fn decl(&self); fn dflt(&self) -> u8 { 1 } }\n"
            "#[cfg(test)]\nmod tests {\n    use super::*;\n    fn helper() -> usize { 3 }\n"
            "    #[test] fn t() { assert_eq!(f(\"ab\"), helper()); }\n}\n")
    broken, n = break_function_bodies(code)
    assert n == 2 and broken.count(BROKEN_BODY) == 2
    assert "fn decl(&self);" in broken and "fn helper() -> usize { 3 }" in broken
    assert 'assert_eq!(f("ab"), helper())' in broken


# ---- coverage and duplicates -------------------------------------------------------------------

def test_partial_predictions_count_the_rest_as_missing(sample_items, tmp_path):
    roman = next(i for i in sample_items["code_generation"] if "to_roman" in json.dumps(i.data))
    names = sample_items["function_naming"]
    preds = [{"id": roman.id, "answer": roman.reference}] + [
        {"id": it.id, "answer": it.data["output_data"]["function_name"]} for it in names]
    out = tmp_path / "eval"
    result = evaluate(EvalConfig(predictions=str(_write(tmp_path / "p.jsonl", preds)), dataset="sample",
                                 output_dir=str(out), workers=2), **QUIET)
    overall = result.metrics["models"]["predictions"]["overall"]
    total = sum(len(v) for v in sample_items.values())
    answered = 1 + len(names)
    assert overall["coverage"] == {"expected": total, "answered": answered, "missing": total - answered,
                                   "percent": pytest.approx(100.0 * answered / total)}
    assert overall["statuses"]["missing"] == total - answered
    assert overall["score"] < 50, "every answer given is right, but most items were not answered"
    cats = result.metrics["models"]["predictions"]["categories"]
    assert cats["function_naming"]["primary"] == 100.0 and cats["code_summarization"]["primary"] == 0.0
    assert "Warning: coverage" in (out / "report.md").read_text()
    assert "coverage" in result.table()


def test_duplicate_ids_are_an_error_unless_numbered_samples(sample_items, tmp_path):
    roman = next(i for i in sample_items["code_generation"] if "to_roman" in json.dumps(i.data))
    dup = _write(tmp_path / "dup.jsonl", [{"id": roman.id, "answer": "a"}, {"id": roman.id, "answer": "b"}])
    with pytest.raises(DataError, match=r"dup.jsonl:2: id .* already answered at line 1.*sample_index"):
        evaluate(EvalConfig(predictions=str(dup), dataset="sample", no_exec=True,
                            output_dir=str(tmp_path / "e1")), **QUIET)
    twice = _write(tmp_path / "twice.jsonl", [{"id": roman.id, "answer": "a", "sample_index": 0},
                                              {"id": roman.id, "answer": "b", "sample_index": 0}])
    with pytest.raises(DataError, match="appears twice"):
        evaluate(EvalConfig(predictions=str(twice), dataset="sample", no_exec=True,
                            output_dir=str(tmp_path / "e2")), **QUIET)
    samples = _write(tmp_path / "samples.jsonl", [{"id": roman.id, "answer": roman.reference, "sample_index": 0},
                                                  {"id": roman.id, "answer": "no code", "sample_index": 1}])
    result = evaluate(EvalConfig(predictions=str(samples), dataset="sample", categories=["code_generation"],
                                 output_dir=str(tmp_path / "e3"), workers=2), **QUIET)
    s = _scores(tmp_path / "e3")
    assert s[f"predictions:{roman.id}:0"]["status"] == "pass"
    assert s[f"predictions:{roman.id}:1"]["status"] == "no_code"
    assert result.plan.samples == 2


def test_a_predictions_file_cannot_exclude_its_own_answers(sample_items, tmp_path):
    roman = next(i for i in sample_items["code_generation"] if "to_roman" in json.dumps(i.data))
    preds = _write(tmp_path / "p.jsonl", [{"id": roman.id, "answer": "nothing useful", "finish_reason": "error"}])
    evaluate(EvalConfig(predictions=str(preds), dataset="sample", categories=["code_generation"],
                        output_dir=str(tmp_path / "e"), workers=2), **QUIET)
    rec = _scores(tmp_path / "e")[f"predictions:{roman.id}:0"]
    assert rec["status"] == "no_code" and rec["primary"] == 0.0


# ---- sandbox failures stop the evaluation ------------------------------------------------------

def _code_preds(sample_items, tmp_path: Path) -> Path:
    return _write(tmp_path / "p.jsonl", [{"id": it.id, "answer": it.reference}
                                         for it in sample_items["code_generation"] + sample_items["code_review"]])


def test_a_broken_sandbox_stops_the_eval_before_blaming_the_model(sample_items, tmp_path, monkeypatch):
    sandbox._reset_setup()
    try:
        setup = sandbox._get_setup()
        if setup.mounts:
            monkeypatch.setattr(setup, "mount_script",
                                setup.mount_script.replace("-a -T ", "-a -T /nonexistent", 1))
        else:
            monkeypatch.setattr(setup, "compiler", "/nonexistent/rustc")
        with pytest.raises(RustcoderError, match="the sandbox does not work here .*self-check failed"):
            evaluate(EvalConfig(predictions=str(_code_preds(sample_items, tmp_path)), dataset="sample",
                                categories=["code_generation", "code_review"], output_dir=str(tmp_path / "e"),
                                workers=2), **QUIET)
    finally:
        sandbox._reset_setup()


def test_too_many_sandbox_errors_stop_the_eval_and_are_retried(sample_items, tmp_path, monkeypatch):
    real_run_many = sandbox.run_many

    def failing(sources, **kwargs):
        return [sandbox.ExecutionResult(status="sandbox_error", mode=kwargs.get("mode", "test"),
                                        detail="simulated sandbox failure") for _ in sources]

    monkeypatch.setattr(sandbox, "run_many", failing)
    preds = _code_preds(sample_items, tmp_path)
    cfg = dict(predictions=str(preds), dataset="sample", categories=["code_generation", "code_review"],
               output_dir=str(tmp_path / "e"), workers=2)
    with pytest.raises(RustcoderError, match=r"failed in the sandbox itself .*simulated sandbox failure"):
        evaluate(EvalConfig(**cfg), **QUIET)
    monkeypatch.setattr(sandbox, "run_many", real_run_many)
    result = evaluate(EvalConfig(**cfg), **QUIET)  # the rerun retries them with a working sandbox
    statuses = result.metrics["models"]["predictions"]["overall"]["statuses"]
    assert "sandbox_error" not in statuses and statuses["pass"] == len(
        sample_items["code_generation"] + sample_items["code_review"])


def test_a_sandbox_that_breaks_mid_run_is_caught_by_the_batchs_own_self_check(sample_items, tmp_path, monkeypatch):
    """Every batch runs the self-check beside its programs: when the sandbox breaks after the first check, the
    batch's results are not recorded (nothing is blamed on the model) and the evaluation stops; a rerun with a
    working sandbox finishes them."""
    from rustcoder.eval import pipeline

    real = sandbox.sandbox_self_check
    calls = []

    def breaks_after_first(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            return real(*a, **kw)
        return sandbox.ExecutionResult(status="sandbox_error", detail="sandbox self-check failed (simulated)")

    monkeypatch.setattr(sandbox, "sandbox_self_check", breaks_after_first)
    cfg = dict(predictions=str(_code_preds(sample_items, tmp_path)), dataset="sample",
               categories=["code_generation", "code_review"], output_dir=str(tmp_path / "e"), workers=2)
    with pytest.raises(RustcoderError, match="the sandbox does not work here \\(alongside this batch\\)"):
        evaluate(EvalConfig(**cfg), **QUIET)
    assert len(calls) == 2  # before the first batch, then alongside it
    executions = tmp_path / "e" / pipeline.EXECUTIONS
    assert not executions.exists() or not executions.read_text().strip()  # the unproven batch was not kept
    monkeypatch.setattr(sandbox, "sandbox_self_check", real)
    result = evaluate(EvalConfig(**cfg), **QUIET)
    assert result.metrics["models"]["predictions"]["overall"]["statuses"]["pass"] == len(
        sample_items["code_generation"] + sample_items["code_review"])
