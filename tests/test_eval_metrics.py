"""Scoring building blocks: pass@k, chrF, edit similarity, normalisation, Rust extraction, program
assembly, suite files and eval settings. Pure Python: no model, no rustc."""

from __future__ import annotations

import math

import pytest

from rustcoder.errors import ConfigError
from rustcoder.eval import extract, metrics, tasks
from rustcoder.eval.config import EvalConfig


# ---- pass@k -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,c,k,expected", [
    (10, 3, 1, 0.3),               # pass@1 is the pass rate
    (10, 3, 10, 1.0),              # any pass among all samples
    (10, 0, 1, 0.0), (10, 0, 10, 0.0),
    (10, 10, 1, 1.0), (5, 5, 5, 1.0),  # n == c
    (1, 1, 1, 1.0), (1, 0, 1, 0.0),
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),  # 1 - 21/252 = 0.91666...
    (4, 1, 2, 0.5),                # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (20, 1, 10, 0.5),              # 1 - C(19,10)/C(20,10) = 1 - 10/20
])
def test_pass_at_k_known_values(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_impossible_inputs_and_ks_follow_n():
    for n, c, k in [(5, 6, 1), (5, 2, 6), (5, 2, 0), (5, -1, 1)]:
        with pytest.raises(ValueError):
            metrics.pass_at_k(n, c, k)
    assert metrics.ks_for(1) == [1]
    assert metrics.ks_for(5) == [1, 5]
    assert metrics.ks_for(20, (1, 5, 10)) == [1, 5, 10]


# ---- chrF ---------------------------------------------------------------------------------------

def test_chrf_hand_derived_values():
    # "ab" vs "abc": 1-grams p=2/2 r=2/3, 2-grams p=1/1 r=1/2; 3..6-grams: the hypothesis has none, so
    # those orders do not count. P=1, R=7/12, F2 = 5PR/(4P+R) = (35/12)/(55/12) = 7/11.
    assert metrics.chrf("ab", "abc") == pytest.approx(700 / 11)
    # identical, and whitespace is ignored (sacreBLEU removes it before counting)
    assert metrics.chrf("fn main() {}", "fn main(){}") == pytest.approx(100.0)
    # "aa" vs "a": 1-grams p=1/2 r=1; 2-grams: the reference has none. F2 = 5*0.5*1/(2+1) = 5/6
    assert metrics.chrf("aa", "a") == pytest.approx(250 / 3)
    # nothing in common, empty hypothesis or reference
    assert metrics.chrf("xyz", "abc") == 0.0
    assert metrics.chrf("", "abc") == 0.0 and metrics.chrf("abc", "") == 0.0
    # beta 2 weights recall: a short exact prefix scores lower than it would with beta 1
    assert metrics.chrf("abc", "abcdef", beta=1) > metrics.chrf("abc", "abcdef")


def test_chrf_matches_sacrebleu_published_values():
    # Values printed by sacreBLEU's chrF (char order 6, beta 2) in the HF `chrf` metric card.
    hyp = "The relationship between Obama and Netanyahu is not exactly friendly."
    ref = "The ties between Obama and Netanyahu are not particularly friendly."
    assert metrics.chrf(hyp, ref) == pytest.approx(61.576379378113785, abs=1e-9)
    hyps = ["The relationship between cats and dogs is not exactly friendly.",
            "a good bookshop is just a genteel black hole that knows how to read."]
    refs = ["The relationship between dogs and cats is not exactly friendly.",
            "A good bookshop is just a genteel Black Hole that knows how to read."]
    assert metrics.corpus_chrf(hyps, refs) == pytest.approx(84.64214891738334, abs=1e-9)


# ---- edit similarity, normalisation -------------------------------------------------------------

def test_edit_similarity_and_levenshtein():
    assert metrics.levenshtein("kitten", "sitting") == 3
    assert metrics.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert metrics.edit_similarity("", "") == 1.0
    assert metrics.edit_similarity("abc", "") == 0.0
    assert metrics.edit_similarity("same", "same") == 1.0


@pytest.mark.parametrize("answer,expected", [
    ("reserve_stock", "reserve_stock"),
    ("`reserve_stock`", "reserve_stock"),
    ("The function could be named `Reserve_Stock`.", "reserve_stock"),
    ("pub fn capitalize_words(s: &str) -> String", "capitalize_words"),
    ("let mut previous", "previous"),
    ("Variable name: buffer", "buffer"),
    ("```rust\nbuffer\n```", "buffer"),
    ("reserve_stock()\nbecause it reserves stock", "reserve_stock"),
    ("", ""),
])
def test_normalize_name(answer, expected):
    assert metrics.normalize_name(answer) == expected


def test_name_token_f1_and_identifier_check():
    assert metrics.name_token_f1("reserve_stock", "reserve_stock") == 1.0
    assert metrics.name_token_f1("reserve_items", "reserve_stock") == 0.5
    assert metrics.name_token_f1("foo", "bar") == 0.0
    assert metrics.is_valid_identifier("buffer") and not metrics.is_valid_identifier("fn")
    assert not metrics.is_valid_identifier("1abc") and not metrics.is_valid_identifier("_")


def test_normalize_code_ignores_layout_not_tokens():
    a = metrics.normalize_code("let earliest = heap.pop( ).map(|Reverse(d)| d) ;")
    b = metrics.normalize_code("```rust\nlet earliest = heap.pop().map(|Reverse(d)| d);\n```")
    assert a == b == "let earliest=heap.pop().map(|Reverse(d)|d)"
    assert metrics.normalize_code("let x") != metrics.normalize_code("letx")


def test_paired_bootstrap_interval():
    assert metrics.paired_bootstrap([1.0]) is None
    lo, hi = metrics.paired_bootstrap([10.0] * 20)
    assert lo == hi == 10.0
    lo, hi = metrics.paired_bootstrap([0.0, 100.0] * 10)
    assert 20 < lo < 50 < hi < 80


# ---- extraction ---------------------------------------------------------------------------------

def test_extract_code_blocks_fences_and_bare_code():
    answer = "Here:\n```rust\nfn a() {}\n```\nand\n```\nfn b() {}\n```\n```python\nprint(1)\n```"
    assert extract.extract_code(answer) == "fn a() {}"
    assert extract.extract_code(answer, "last") == "fn b() {}"
    assert extract.extract_code(answer, "all") == "fn a() {}\n\nfn b() {}"
    # cut at max_new_tokens: the unclosed block runs to the end
    assert extract.extract_code("```rust\nfn a() {\n    1") == "fn a() {\n    1"
    # bare code is taken; prose is not
    assert extract.extract_code("pub fn f() -> u8 { 1 }") == "pub fn f() -> u8 { 1 }"
    assert extract.extract_code("I cannot help with that.") is None
    assert extract.extract_code("```python\nprint(1)\n```") is None
    # thinking is dropped before anything else
    assert extract.extract_code("<think>```rust\nfn wrong() {}\n```</think>```rust\nfn right() {}\n```") \
        == "fn right() {}"


def test_text_without_code_and_fragments():
    answer = "The seed is off by one.\n\nFixed code:\n```rust\nfn f() {}\n```"
    assert extract.text_without_code(answer) == "The seed is off by one."
    assert extract.extract_fragment("`heap.pop()`") == "heap.pop()"
    assert extract.extract_fragment("```rust\nv.len()\n```") == "v.len()"
    assert extract.unfence("```rust\n/// Doc.\n```") == "/// Doc."


def test_rust_lexing_helpers():
    src = 'fn f() -> &\'static str { "}" } // }\n/* { */ let c = \'{\';'
    assert extract.brace_balance(src) == 0
    assert extract.brace_balance("fn f() {") == 1
    code = ("pub fn f() -> u8 { 1 }\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n"
            "    fn t() { assert_eq!(f(), 1); let s = \"}\"; }\n}\n")
    stripped = extract.strip_test_modules(code)
    assert "mod tests" not in stripped and "pub fn f() -> u8 { 1 }" in stripped
    assert extract.has_test_module(code) and not extract.has_test_module(stripped)
    assert extract.strip_comments("let x = 1; // one\n/* two */ let y = \"// kept\";") \
        == 'let x = 1; let y = "// kept";'


def test_extract_reads_rust_with_the_sandbox_scanner():
    """One lexer for the project (sandbox/rustsrc): a quote in a char literal, a raw string holding `//` and
    braces, nested block comments and a test module quoted in a string are read as rustc reads them."""
    src = 'let q = \'"\'; let r = r#"// no comment {"#; /* a /* nested */ comment */ let z = 1; // end'
    assert extract.strip_comments(src) == 'let q = \'"\'; let r = r#"// no comment {"#; let z = 1;'
    assert extract.brace_balance(src) == 0 and extract.brace_balance('let s = r"}"; fn f() {') == 1
    quoted = 'const S: &str = "mod tests { #[test] fn t() {} }";\nfn f() {}\n'
    assert not extract.has_test_module(quoted) and extract.strip_test_modules(quoted) == quoted


def test_merge_context_drops_repeated_uses_and_whole_context():
    ctx = "use std::collections::HashMap;\nuse std::fmt;"
    code = "use std::collections::HashMap;\nfn f() {}"
    merged = extract.merge_context(ctx, code)
    assert merged.count("use std::collections::HashMap;") == 1 and "use std::fmt;" in merged
    assert extract.merge_context("struct A;", "struct A;\nfn f() {}") == "struct A;\nfn f() {}"


# ---- program assembly (the task registry) -------------------------------------------------------

def test_every_category_has_a_task_spec():
    from rustcoder.data.categories import CATEGORIES

    for name, cat in CATEGORIES.items():
        spec = tasks.task_of(name)
        assert spec.primary in tasks.PRIMARY_LABELS
        if cat.answer_kind in ("text", "name", "api"):
            assert spec.program is None
        if cat.answer_kind == "text+code":
            assert spec.program and spec.text_field in cat.outputs
        for f in (spec.text_field, spec.match_field):
            assert f is None or f in cat.outputs
    assert set(tasks.EXCLUDED_STATUSES) <= set(tasks.STATUSES)


def test_build_programs_per_kind():
    data = {"input_data": {"code_context": "use std::fmt;"}, "test": "#[cfg(test)]\nmod tests { #[test] fn t() {} }"}
    plan = tasks.build_programs(tasks.task_of("code_generation"), data,
                                "```rust\nfn f() {}\n#[cfg(test)]\nmod tests { #[test] fn mine() {} }\n```")
    first = plan.programs[0]
    assert first.mode == "test" and first.source.startswith("use std::fmt;")
    assert "mine" not in first.source and "mod tests" not in first.source  # the answer's tests are dropped
    assert first.tests.count("mod tests") == 1 and first.answer == "fn f() {}\n"  # the row's, run by the harness
    assert len(plan.programs) == 2  # fallback without the context
    assert tasks.build_programs(tasks.task_of("code_generation"), data, "   ").status == "empty_answer"
    assert tasks.build_programs(tasks.task_of("code_generation"), data, "No idea, sorry.").status == "no_code"

    comp = tasks.build_programs(tasks.task_of("code_completion"),
                                {"input_data": {"prefix": "fn f() -> u8 { ", "suffix": " }"}}, "`1 + 1`")
    assert comp.programs[0].source.strip() == "fn f() -> u8 { 1 + 1 }" and comp.programs[0].mode == "check"

    gen = tasks.build_programs(tasks.task_of("test_generation"),
                               {"input_data": {"code_to_test": "fn f() -> u8 { 1 }", "code_context": "",
                                               "test_context": ""}},
                               "```rust\n#[test]\nfn one() { assert_eq!(f(), 1); }\n```")
    assert gen.programs[0].tests_untrusted and gen.programs[0].source.strip() == "fn f() -> u8 { 1 }"
    assert "mod tests" in gen.programs[0].tests and "use super::*;" in gen.programs[0].tests
    assert tasks.build_programs(tasks.task_of("test_generation"), {"input_data": {"code_to_test": "fn f() {}"}},
                                "```rust\nfn helper() {}\n```").status == "no_tests"

    bench = {"prompt": "use std::cmp::max;\nfn m(a: i32, b: i32) -> i32 {", "entry_point": "m",
             "test": "#[cfg(test)]\nmod tests { use super::*; #[test] fn t() { assert_eq!(m(1, 2), 2); } }",
             "edition": "2024"}
    whole = tasks.build_programs(tasks.task_of("humaneval-rust"), bench,
                                 "```rust\nfn m(a: i32, b: i32) -> i32 { max(a, b) }\n```").programs[0]
    assert whole.label == "code+test" and whole.source.startswith("use std::cmp::max;") and whole.edition == "2024"
    body = tasks.build_programs(tasks.task_of("humaneval-rust"), bench, "```rust\nmax(a, b)\n```").programs[0]
    assert body.label == "prompt+body+test" and extract.brace_balance(body.source) == 0


# ---- suites and settings ------------------------------------------------------------------------

def test_shipped_suites_load_and_pin_the_training_revision():
    from rustcoder.config import STRANDSET_ID, STRANDSET_REVISION
    from rustcoder.eval.suites import load_suite, suite_files

    files = suite_files()
    assert {"strandset-test", "sample-test", "humaneval-rust"} <= set(files)
    for name in files:
        suite = load_suite(name)
        assert suite.kind in ("strandset", "humaneval-rust") and suite.generation["max_new_tokens"] > 0
    test = load_suite("strandset-test")
    assert (test.dataset, test.revision, test.split) == (STRANDSET_ID, STRANDSET_REVISION, "test")
    he = load_suite("humaneval-rust")
    assert he.path.endswith("/evals/humaneval-rust/HumanEval_rust.jsonl") and he.k == [1, 5, 10]
    assert "{prompt}" in he.prompt["user"]
    assert all(set(v) <= {"exclude", "reason"} for v in he.known_issues.values())


def test_eval_config_reports_every_problem_at_once():
    cfg = EvalConfig(samples=4, temperature=0.0, oracle=True, model="runs/x", limit=0, backend="vlm",
                     predictions="p.jsonl", endpoint="http://x", dataset="sample", categories=["code_gen"])
    with pytest.raises(ConfigError) as e:
        cfg.check()
    msg = str(e.value)
    for flag in ("--samples", "--oracle", "--limit", "--backend", "--predictions", "--categories"):
        assert flag in msg
    assert "did you mean 'vllm'" in msg and "did you mean 'code_generation'" in msg
    with pytest.raises(ConfigError, match="--benchmark"):
        EvalConfig(benchmark="humaneval-rust", dataset="sample").check()


def test_deltas_get_an_interval_only_with_enough_paired_items():
    from rustcoder.eval.report import MIN_PAIRS_FOR_CI, compare_models

    def recs(model, n, value):
        return {f"{model}:{i}:0": {"key": f"{model}:{i}:0", "model": model, "id": str(i), "category": "c",
                                   "primary": value} for i in range(n)}

    for n, expect_ci in ((MIN_PAIRS_FOR_CI - 1, False), (10, True)):
        scores = recs("adapter", n, 100.0) | recs("base", n, 0.0)
        models = {t: {"overall": {"score": v}, "categories": {"c": {}}} for t, v in (("adapter", 100.0), ("base", 0.0))}
        comp = compare_models(scores, {}, mine="adapter", base="base", categories=["c"],
                              ids={str(i) for i in range(n)}, models=models)
        e = comp["categories"]["c"]
        assert e["delta"] == 100.0 and e["n_pairs"] == n
        assert (e["ci"] is not None) is expect_ci and e["significant"] is expect_ci
        assert comp["overall"]["improved"] == (["c"] if expect_ci else [])
