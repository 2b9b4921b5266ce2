"""Scores a model cannot game: answers written the way an adversary would, scored end to end
through ``evaluate(--predictions)`` and ``rustcoder eval --predictions``. The gaming suite
(tests/gaming/*.yaml: every trick class of issue 22 and more) scores 0 beside honest answers that
pass; compiler crashes count against the answer, test suites that run nothing or catch no
wrong-valued variant score 0, unanswered items score 0 with the coverage stated, duplicate ids are
refused, and sandbox failures stop the evaluation instead of shrinking the denominator. Needs rustc
(skipped without it); no model is loaded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from rustcoder import sandbox
from rustcoder.errors import DataError, RustcoderError
from rustcoder.eval import EvalConfig, evaluate, tasks
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


# ---- test_generation: tests must run and must notice wrong values -------------------------------

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
    assert per_item[percent.id]["mutants_killed"] >= 1
    assert "mutants caught" in (out / "report.md").read_text()
    good = s[f"good:{percent.id}:0"]
    assert good["status"] == "pass" and good["primary"] == 100.0
    assert good["tests_passed"] >= 1 and good["mutants_killed"] >= 1, good  # both counts per item
    assert s[f"commented:{percent.id}:0"]["status"] == "no_tests"
    assert s[f"none:{percent.id}:0"]["status"] == "no_tests"
    assert s[f"ignored:{percent.id}:0"]["status"] == "no_tests"
    trivial = s[f"trivial:{percent.id}:0"]
    assert trivial["status"] == "weak_tests" and trivial["mutants_killed"] == 0, trivial
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


def test_mutants_change_one_value_at_a_time_and_skip_equivalent_bodies():
    from rustcoder.eval.extract import mutants

    code = ("pub fn percent(part: u64, whole: u64) -> u8 { if whole == 0 { return 0; } 7 }\n"
            "fn none() -> Option<u8> { None }\nimpl S { fn set(&mut self) { self.0 = 1; } }\n")
    made = dict((what, src) for src, what in mutants(code))
    assert list(made)[:3] == ["percent result perturbed (+ 1)", "none returns Default::default()",
                              "set returns at once"]  # F21: the nudged result comes first
    assert ".wrapping_add(1)" in made["percent result perturbed (+ 1)"]
    assert "none returns None" not in made  # the same body: not a wrong value
    assert "{ 0 }" in made["percent returns 0"] and "self.0 = 1" in made["percent returns 0"]
    assert "fn set(&mut self) {  }" in made["set returns at once"]


# ---- the gaming suite: every trick scores 0, honest answers beside them keep their scores ---------

GAMING = Path(__file__).parent / "gaming"


def _statuses(want) -> set[str]:
    return set(want) if isinstance(want, list) else {want}


def test_every_humaneval_trick_scores_zero_through_eval_predictions(tmp_path, monkeypatch):
    """Each hostile answer in tests/gaming/humaneval_tricks.yaml, through `rustcoder eval --predictions` on the
    real HumanEval-Rust row, gets its status and scores 0; the honest answers beside them pass."""
    import yaml
    from click.testing import CliRunner

    from rustcoder.cli import main
    from rustcoder.eval.suites import benchmark_suite

    spec = yaml.safe_load((GAMING / "humaneval_tricks.yaml").read_text())
    rows = {r["task_id"]: r for r in map(json.loads, Path(benchmark_suite("humaneval-rust").path).read_text()
                                         .splitlines())}
    row = rows[spec["task"]]
    signature = row["prompt"].rstrip().rstrip("{").strip().splitlines()[-1].strip()
    bench = _write(tmp_path / "bench.jsonl", [row])
    preds, expect = [], {}
    for tag, entries in (("tricks", spec["tricks"]), ("honest", spec["honest"])):
        for k, t in enumerate(entries):
            code = t["body"] if "body" in t else t["code"].replace("{SIG}", signature)
            preds.append({"model": tag, "id": row["task_id"], "sample_index": k, "answer": f"```rust\n{code}```"})
            expect[f"{tag}:{row['task_id']}:{k}"] = (t["name"], _statuses(t["status"]))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["eval", "--predictions", str(_write(tmp_path / "p.jsonl", preds)), "--benchmark",
                                    str(bench), "--output-dir", "out", "--workers", "2"])
    assert res.exit_code == 0, res.output
    scores, got = _scores(tmp_path / "out"), {}
    executions = {r["key"]: r for r in map(json.loads,
                                           (tmp_path / "out" / "executions.jsonl").read_text().splitlines())}
    for key, (name, want) in expect.items():
        rec = scores[key]
        got[name] = rec["status"]
        assert rec["status"] in want, (name, rec["status"], executions[key]["detail"])
        assert rec["primary"] == (100.0 if "pass" in want else 0.0), (name, rec)
    forged = executions[next(k for k, (n, _) in expect.items() if n == "forge_markers")]
    assert "rustcoder-verdict:" in forged["stdout_tail"] and forged["tests_passed"] == 0
    print("\n" + "\n".join(f"{n}: {s}" for n, s in got.items()))


def _row(items, word: str):
    return next(i for i in items if word in json.dumps(i.data))


def test_strandset_tricks_score_zero_and_references_pass(sample_items, tmp_path):
    """tests/gaming/strandset_tricks.yaml on the built-in Strandset sample through evaluate(--predictions):
    code_generation with the row's tests, test_generation (mutants), bug_detection / code_refactoring (the code
    must change and rework the given code), comment_generation (the code must be kept)."""
    import yaml

    spec = yaml.safe_load((GAMING / "strandset_tricks.yaml").read_text())
    preds, expect = [], {}
    for group in spec:
        item = _row(sample_items[group["category"]], group["row"])
        given_field = {"bug_detection": "buggy_code", "code_refactoring": "code_before"}.get(group["category"])
        for k, a in enumerate(group["answers"]):
            if a.get("reference"):
                answer = item.reference
            elif a.get("given"):
                answer = f"Fixed:\n```rust\n// fixed\n{item.data['input_data'][given_field]}\n```"
            else:
                answer = f"Here it is.\n```rust\n{a['code']}```"
            tag = group["category"]
            preds.append({"model": tag, "id": item.id, "sample_index": k, "answer": answer})
            expect[f"{tag}:{item.id}:{k}"] = (f"{tag}/{a['name']}", _statuses(a["status"]))
    out = tmp_path / "eval"
    evaluate(EvalConfig(predictions=str(_write(tmp_path / "p.jsonl", preds)), dataset="sample",
                        categories=[g["category"] for g in spec], output_dir=str(out), workers=2), **QUIET)
    scores = _scores(out)
    for key, (name, want) in expect.items():
        rec = scores[key]
        assert rec["status"] in want, (name, rec["status"], rec)
        assert rec["primary"] == (100.0 if "pass" in want else 0.0), (name, rec)
    print("\n" + "\n".join(f"{name}: {scores[key]['status']}" for key, (name, _) in expect.items()))


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
    from rustcoder.eval import store

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
    executions = tmp_path / "e" / store.EXECUTIONS
    assert not executions.exists() or not executions.read_text().strip()  # the unproven batch was not kept
    monkeypatch.setattr(sandbox, "sandbox_self_check", real)
    result = evaluate(EvalConfig(**cfg), **QUIET)
    assert result.metrics["models"]["predictions"]["overall"]["statuses"]["pass"] == len(
        sample_items["code_generation"] + sample_items["code_review"])


# ---- F20 / F13 / F3: the context and the signature are the task's ----------------------------------

POINT_ROW = {"input_data": {"code_context": "#[derive(Debug, PartialEq)]\npub struct Point { pub x: i32, pub y: i32 }",
                            "function_signature": "pub fn midpoint(a: Point, b: Point) -> Point"},
             "output_data": {"code": "pub fn midpoint(a: Point, b: Point) -> Point { Point { x: (a.x + b.x) / 2, "
                                     "y: (a.y + b.y) / 2 } }"},
             "test": "#[test] fn halves() { assert_eq!(midpoint(Point { x: 0, y: 0 }, Point { x: 2, y: 4 }), "
                     "Point { x: 1, y: 2 }); }"}


def _answer(code: str) -> str:
    return f"```rust\n{code}\n```"


def test_an_answer_redefining_the_contexts_type_gets_no_answer_alone_fallback():
    """F20: the fallback after duplicate-definition errors drops only context items the answer restates
    identically; an answer with its own `Point` (an always-true `==`) keeps the first program's compile error."""
    spec = tasks.task_of("code_generation")
    forge = ("#[derive(Debug)]\npub struct Point { pub x: i32, pub y: i32 }\n"
             "impl PartialEq for Point { fn eq(&self, _o: &Self) -> bool { true } }\n"
             "pub fn midpoint(a: Point, _b: Point) -> Point { a }")
    plan = tasks.build_programs(spec, POINT_ROW, _answer(forge))
    assert [p.label for p in plan.programs] == ["context+code+test"]
    honest = POINT_ROW["input_data"]["code_context"] + "\n" + POINT_ROW["output_data"]["code"]
    plan = tasks.build_programs(spec, POINT_ROW, _answer(honest))
    assert [p.label for p in plan.programs] == ["context+code+test", "code+test"]
    assert "pub struct Point" in plan.programs[1].source
    # the context quoted inside a comment is not a restatement: the context stays in the first program
    quoted = "/*\n" + POINT_ROW["input_data"]["code_context"] + "\n*/\n" + POINT_ROW["output_data"]["code"]
    assert tasks.build_programs(spec, POINT_ROW, _answer(quoted)).programs[0].source.count("pub struct Point") == 2


def test_the_signature_is_pinned_for_rustc_from_the_row_or_the_reference():
    """F3/F13: the harness holds `const _: fn(..) -> T = super::f;` built from the row's signature, or from the
    reference code's when the row gives none, so rustc refuses an answer whose real function has another type."""
    from rustcoder.sandbox import verdict

    spec = tasks.task_of("code_generation")
    plan = tasks.build_programs(spec, POINT_ROW, _answer(POINT_ROW["output_data"]["code"]))
    assert plan.programs[0].signatures == {"midpoint": "pub fn midpoint(a: Point, b: Point) -> Point"}
    row = {**POINT_ROW, "input_data": {"code_context": POINT_ROW["input_data"]["code_context"]}}
    plan = tasks.build_programs(spec, row, _answer(POINT_ROW["output_data"]["code"]))
    assert plan.programs[0].signatures == {"midpoint": "pub fn midpoint(a: Point, b: Point) -> Point"}
    assert plan.programs[0].returns == {"midpoint": "Point"}
    h = verdict.build_harness("fn f() {}", POINT_ROW["test"], signatures=plan.programs[0].signatures)
    assert "const _: fn(Point, Point) -> Point = super::midpoint;" in h.files()[h.root]


def test_a_crate_the_task_never_names_counts_as_a_failure_not_an_exclusion(sample_items):
    """F17: `use made_up::x;` made an answer needs_crate, which left the denominator; now only a crate the task's
    own text names is excluded, any other keeps the needs_crate status and scores 0."""
    from rustcoder.eval.score_rules import score_sample

    roman = next(i for i in sample_items["code_generation"] if "to_roman" in json.dumps(i.data))
    sample = {"key": "m:x:0", "model": "m", "sample_index": 0, "answer": "```rust\nuse made_up::x;\n```"}
    rec = score_sample(roman, sample, {"status": "needs_crate", "missing_crates": ["made_up"], "has_tests": True})
    assert rec["status"] == "needs_crate" and rec["primary"] == 0.0
    data = {**roman.data, "input_data": {**roman.data["input_data"], "code_context": "use made_up::x;"}}
    named = dataclasses.replace(roman, data=data)
    rec = score_sample(named, sample, {"status": "needs_crate", "missing_crates": ["made_up"], "has_tests": True})
    assert rec["status"] == "needs_crate" and rec["primary"] is None


@pytest.mark.parametrize("indices, why", [([2000], "over the limit"), ([0, 2], "sample 1 is missing")])
def test_sample_indices_are_capped_and_dense_per_id(sample_items, tmp_path, indices, why):
    """F19: one line with `"sample_index": 2000` made the eval build items x 2000 missing records (1.5 GB);
    indices must be 0..N-1 per id and under the cap, else a DataError naming the file, line and field."""
    roman = next(i for i in sample_items["code_generation"] if "to_roman" in json.dumps(i.data))
    preds = _write(tmp_path / "p.jsonl", [{"id": roman.id, "answer": "x", "sample_index": k} for k in indices])
    with pytest.raises(DataError, match=rf"p\.jsonl:\d+: .*sample_index.*{why}|p\.jsonl:\d+: .*{why}"):
        evaluate(EvalConfig(predictions=str(preds), dataset="sample", categories=["code_generation"],
                            output_dir=str(tmp_path / "e"), workers=2), **QUIET)


def test_comment_generation_must_add_a_comment_and_completions_may_not_be_stubs(sample_items, tmp_path):
    """F23: the input code handed back without a comment passed comment_generation; F14: `todo!()` as a
    completion / a snippet of empty functions passed code_completion / code_search (they only compile)."""
    preds, want = [], {}
    for cat, answer, status in [
        ("comment_generation", lambda it: f"```rust\n{it.data['input_data']['code']}\n```", "no_change"),
        ("comment_generation", lambda it: it.reference, "pass"),
        ("code_completion", lambda it: "```rust\ntodo!()\n```", "stub"),
        ("code_search", lambda it: "```rust\nfn _nothing() {}\n```", "stub"),
        ("code_search", lambda it: it.reference, "pass")]:
        it = sample_items[cat][0]
        k = len([p for p in preds if p["id"] == it.id])
        preds.append({"model": cat, "id": it.id, "sample_index": k, "answer": answer(it)})
        want[f"{cat}:{it.id}:{k}"] = status
    out = tmp_path / "e"
    evaluate(EvalConfig(predictions=str(_write(tmp_path / "p.jsonl", preds)), dataset="sample",
                        categories=["comment_generation", "code_completion", "code_search"], output_dir=str(out),
                        workers=2), **QUIET)
    scores = _scores(out)
    assert {k: scores[k]["status"] for k in want} == want


@pytest.mark.parametrize("extra", ["\nconst _: () = ();", "\nfn _x() {}", "\n#[allow(dead_code)]\nstatic _S: u8 = 0;"])
def test_a_no_op_item_added_to_the_given_code_is_no_change(extra):
    """F5: the given code plus `const _: () = ();` counted as a change and passed bug_detection & co."""
    given = "pub fn mean(v: &[f64]) -> f64 { v.iter().sum::<f64>() / v.len() as f64 }"
    assert tasks.change_status(given, given + extra)[0] == "no_change"
    assert tasks.change_status(given, given.replace("v.len()", "v.len().max(1)"))[0] is None
