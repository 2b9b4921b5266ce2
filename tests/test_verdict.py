"""The verdict harness (rustcoder/sandbox/verdict.py) through ``run_rust``/``run_many``: a test passes only when it
ran to its end, seen through a channel the code under test cannot write; the set that ran must be the harness's
own; what no correct answer needs is ``forbidden``. The static parts run without rustc; the rest skip cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rustcoder.sandbox import rustc_available, run_many, run_rust
from rustcoder.sandbox import rustsrc, verdict

needs_rustc = pytest.mark.skipif(not rustc_available(), reason="rustc not installed")

TESTS = """#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds() { assert_eq!(add(2, 3), 5); }

    mod more {
        use super::*;
        #[test]
        fn negative() { assert_eq!(add(-2, 3), 1); }
        #[test]
        #[ignore]
        fn later() { assert_eq!(add(0, 0), 1); }
    }
}
"""
HONEST = "pub fn add(a: i32, b: i32) -> i32 { a + b }\n"


# ---- static parts (no rustc) ---------------------------------------------------------------------

def test_the_harness_finds_each_test_with_its_module_path_and_leaves_ignored_ones_out():
    cases = rustsrc.test_functions(TESTS)
    assert [(c.name, c.path, c.ignored) for c in cases] == [
        ("adds", ["tests"], False), ("negative", ["tests", "more"], False), ("later", ["tests", "more"], True)]
    h = verdict.build_harness(HONEST, TESTS)
    assert [c.name for c in h.cases] == ["adds", "negative"] and not h.forbidden
    assert h.run_args() == ["--exact", "__rustcoder_harness::tests::__rustcoder_t0",
                            "__rustcoder_harness::tests::more::__rustcoder_t1"]
    files = h.files()
    root = files[h.root]
    # the tests come before the code, which is pulled in whole: nothing it says can attach to them
    assert root.index("mod __rustcoder_harness") < root.index(f'include!("{h.code_file}")')
    assert root.count("use ::std::{assert, assert_eq") == 3  # the harness module and both test modules
    assert h.compile_flags() == ["-F", "unsafe_code"]


def test_should_panic_tests_keep_their_expected_message():
    tests = ('#[test]\n#[should_panic(expected = "divide by \\"zero\\"")]\nfn boom() { div(1, 0); }\n'
             "#[test] #[should_panic] fn any() { div(1, 0); }\n")
    cases = rustsrc.test_functions(tests)
    assert [(c.should_panic, c.expected) for c in cases] == [(True, 'divide by "zero"'), (True, None)]
    wrapped = verdict.build_harness("fn div(a: i32, b: i32) -> i32 { a / b }", tests).tests
    assert 'run_should_panic(0, Some("divide by \\"zero\\""), boom)' in wrapped
    assert "run_should_panic(1, None, any)" in wrapped


@pytest.mark.parametrize("code, why", [
    ("fn f() { std::process::exit(0) }", "ends the process"),
    ("fn f() { std::process::abort() }", "ends the process"),
    ("use std::process::{exit, Command};", "ends the process"),
    ('const S: &str = include_str!("main.rs");', "reads files at compile time"),
    ('macro_rules! m { ($i:ident) => { $i!("x") } } fn f() { m!(include_bytes); }', "reads files at compile time"),
    ("core::arch::global_asm!(\"nop\");", "assembly"),
    ("fn f() { unsafe { } }", "`unsafe`"),
    ("#[no_mangle] pub extern \"C\" fn main() {}", "symbols or link sections"),
    ("std::panic::set_hook(Box::new(|_| {}));", "panic hook"),
    ("#![no_main]\nfn f() {}", "crate attribute `#![no_main]`"),
    ("#![cfg_attr(all(), no_std)]\nfn f() {}", "crate attribute `#![cfg_attr]`"),
    ("macro_rules! vec { () => { 1 } }", "`vec!`"),
    ("pub struct String;", "`String`"),
    ("enum E { Ok(u8), Err(u8) } use E::*;", "`Ok`"),
    ("use my::Thing as Vec;", "`Vec`"),
    ("#[allow(non_camel_case_types)] type usize = u8;", "`usize`"),
    ("fn drop<T>(_: T) {}", "`drop`"),
    ("impl<T> PartialEq<T> for X { fn eq(&self, _: &T) -> bool { true } }", "between different types"),
    ("fn __rustcoder_t0() {}", "reserved for the test harness"),
    ("use std::cmp::PartialEq as Pe;\nimpl Pe<bool> for M { fn eq(&self, _: &bool) -> bool { true } }",
     "standard trait under another name"),
    ("macro_rules! m { ($t:ident) => { impl $t<bool> for M { fn eq(&self, _: &bool) -> bool { true } } } }",
     "macro variable"),
    # F2: a trait method found by method probing before the deref target's (or an inherent &self) method
    ("pub struct Anything;\nimpl Anything { pub fn contains(&self, _n: &str) -> bool { true } }\n"
     "pub trait Lower { fn to_lowercase(&self) -> Anything; }\n"
     "impl Lower for String { fn to_lowercase(&self) -> Anything { Anything } }", "`to_lowercase`"),
    ("pub trait AsDeref { fn as_deref(self) -> u8; }\nimpl AsDeref for Option<String> { fn as_deref(self) -> u8 { 0 } }",
     "`as_deref`"),
    ("trait T { fn len(&self) -> usize; }\nimpl<X> T for X { fn len(&self) -> usize { 3 } }", "`len`"),
    # F1: the red team's safe memory read (rustc #25860) that stole the nonce; the elided (no `for<`) form too
    ("static UNIT: &'static &'static () = &&();\n"
     "fn lt<'a, 'b, T: ?Sized>(_a: &'a &'b (), b: &'b mut T) -> &'a mut T { b }\n"
     "fn expand_mut<'a, 'b, T: ?Sized>(x: &'a mut T) -> &'b mut T {\n"
     "    let f: fn(_, &mut T) -> &'b mut T = lt;\n    f(UNIT, x)\n}", "known soundness hole"),
])
def test_what_no_correct_answer_needs_is_forbidden(code, why):
    reasons = verdict.forbidden(code)
    assert any(why in r for r in reasons), reasons


@pytest.mark.parametrize("code", [
    "pub fn include(items: &[u8], include: bool) -> usize { if include { items.len() } else { 0 } }",
    "impl Drop for X { fn drop(&mut self) {} }\nimpl Default for X { fn default() -> Self { X } }",
    "#[derive(Debug, PartialEq)] pub struct P(u8);\nimpl PartialEq for Q { fn eq(&self, o: &Self) -> bool { true } }",
    'fn f() -> String { let s = "std::process::exit(0) unsafe include_str!"; s.to_string() } // unsafe',
    "fn f() { #![allow(unused)] let x = 1; }",
    "struct P;\nimpl std::fmt::Display for P { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { Ok(()) } }",
    "pub trait Largest { fn largest_item(&self) -> Option<&u8>; }\n"
    "impl Largest for Vec<u8> { fn largest_item(&self) -> Option<&u8> { self.iter().max() } }",
])
def test_ordinary_code_is_not_forbidden(code):
    assert verdict.forbidden(code) == []


def test_names_the_given_code_defines_may_be_restated_and_unused_ones_redefined():
    given = "pub type Result<T> = std::result::Result<T, String>;"
    answer = given + "\npub fn f() -> Result<u8> { Ok(1) }"
    assert verdict.forbidden(answer, given) == []
    tests = "#[test] fn t() { assert_eq!(f().unwrap(), 1); }"
    assert verdict.forbidden(answer, tests) == []  # the tests never name Result: the answer's alias is its own
    assert verdict.forbidden(answer, tests + "\n#[test] fn u() -> Result<u8> { f() }")  # now they do: refused
    assert verdict.forbidden("#[derive(PartialEq)] enum O { Some(u8) }", "#[test] fn t() { Some(1); }")


@pytest.mark.parametrize("code", [
    # F11: a raw C string (`cr#"a"b"#`, Rust 1.77+) once desynchronised the scanner and hid the code after it
    'fn f() { let _h = cr#"a"b"#; for k in 0..64 { ::__rustcoder_verdict::run(k, || ()); } let _r = \'"\'; }',
    'fn f() { let _h = c"a\\"b"; std::process::exit(0); let _r = \'"\'; }',
    'fn f() { let _h = br##"a"#b"##; std::process::exit(0); }',
])
def test_every_literal_kind_is_lexed_so_nothing_hides_behind_one(code):
    assert verdict.forbidden(code), code


@pytest.mark.parametrize("code, why", [
    ('fn f() { let _h = zr"a"; }', "literal prefix `zr`"),
    ("fn f() { let _h = \"open; }", "never ends"),
    ("fn f() { /* /* */ std::process::exit(0) }", "never ends"),
])
def test_text_the_scanner_cannot_read_as_rustc_does_is_refused(code, why):
    """Fail closed: an unknown literal prefix or a literal/comment that never ends means the scanner and rustc
    may disagree about what is code."""
    reasons = verdict.forbidden(code)
    assert any("could not be read" in r and why in r for r in reasons), reasons


def test_scanner_reads_shebangs_raw_idents_lifetimes_and_nested_comments():
    src = "#!/usr/bin/env run\nfn r#match<'a>(x: &'a str) -> char { /* a /* b */ c */ let _ = b'\\''; 'x' }"
    masked = rustsrc.mask(src)
    assert "usr" not in masked and "r#match<'a>(x: &'a str)" in masked and " c " not in masked
    assert rustsrc.unreadable(src) == []


def test_a_copy_of_the_given_code_hides_nothing_behind_a_comment():
    """F24: `//` + the given prompt + code on the signature's line. Only a copy the scanner reads exactly as the
    given code alone is set aside; here the `//` swallows the copy's first line, so the whole answer is checked."""
    prompt = "// check the numbers\nfn below_zero(ops: &[i32]) -> bool {"
    answer = "//" + prompt + " for k in 0..64 { ::__rustcoder_verdict::run(k, || ()); } std::process::exit(0)\n}"
    h = verdict.build_harness(answer, TESTS, answer=answer, given=prompt)
    assert any("reserved for the test harness" in r for r in h.forbidden), h.forbidden
    honest = prompt + "\n    ops.iter().sum::<i32>() < 0\n}"
    assert verdict.build_harness(honest, TESTS, answer=honest, given=prompt).forbidden == []


def test_only_the_models_part_is_held_to_the_rules():
    """A task's context may use `unsafe`; an answer restating it verbatim is not blamed for it, and the crate is
    then built without -F unsafe_code (the textual check still holds the answer's own code)."""
    ctx = "pub fn raw(v: &[u8]) -> u8 { unsafe { *v.get_unchecked(0) } }"
    answer = ctx + "\npub fn first(v: &[u8]) -> u8 { raw(v) }"
    h = verdict.build_harness(answer, TESTS, answer=answer, given=ctx)
    assert h.forbidden == [] and not h.forbid_unsafe
    h = verdict.build_harness(answer + "\nfn more() { unsafe {} }", TESTS, answer=answer + "\nfn more() { unsafe {} }",
                              given=ctx)
    assert any("unsafe" in r for r in h.forbidden)
    assert verdict.build_harness(HONEST, TESTS).forbid_unsafe


def test_lint_level_crate_attributes_are_dropped_and_the_rest_reported():
    code, others = verdict.crate_attributes("#![allow(dead_code)]\n#![deny(warnings)]\n#![no_std]\nfn f() {}")
    assert "allow" not in code and "deny" not in code and "#![no_std]" in code and others == ["no_std"]


def test_return_types_are_read_through_generics_and_where_clauses():
    rt = verdict.return_type
    assert rt("fn f<F: Fn(i32) -> i32>(g: F, x: (u8, u8)) -> Vec<String> where F: Copy { }", "f") == "Vec<String>"
    assert rt("pub fn f(x: i32) { }", "f") == "" and rt("fn g() {}", "f") is None
    h = verdict.build_harness("fn f(x: i32) -> Magic { Magic }", "#[test] fn t() { f(1); }", returns={"f": "bool"})
    assert any("return type of `f` from `bool` to `Magic`" in r for r in h.forbidden)


def test_judging_needs_the_nonce_every_test_and_a_clean_exit():
    h = verdict.build_harness(HONEST, TESTS)
    line = lambda i, nonce=h.nonce: f"\n{verdict.MARK}:{nonce}:{i}\n"  # noqa: E731
    assert h.judge(line(0) + line(1), 0, None)[0] == "pass"
    assert h.judge(line(0), 101, None)[:1] == ("test_fail",)
    assert h.judge(line(0), 0, None)[0] == "runtime_error"  # a process exit before the second test ended
    assert h.judge(line(0) + line(1), 3, None)[0] == "runtime_error"
    assert h.judge(line(0) + line(1), 0, "SIGABRT")[0] == "runtime_error"
    forged = line(0, "0" * 32) + line(1, "0" * 32) + "test result: ok. 2 passed; 0 failed"
    assert h.judge(forged, 0, None)[:3] == ("runtime_error", h.judge(forged, 0, None)[1], 0)


# ---- through the sandbox ---------------------------------------------------------------------------

DIRECT = [  # (name, code, status): the classes and more, straight through run_many
    ("honest", HONEST, "pass"),
    ("wrong", "pub fn add(a: i32, b: i32) -> i32 { a - b }", "test_fail"),
    ("trailing_cfg", "pub fn add(a: i32, b: i32) -> i32 { todo!() }\n#[test] fn ok() {}\n#[cfg(any())]",
     "compile_error"),
    ("asserts_shadowed", "macro_rules! assert_eq { ($($t:tt)*) => {} }\npub fn add(a: i32, b: i32) -> i32 { 0 }",
     "forbidden"),
    ("no_main", "#![no_main]\npub fn add(a: i32, b: i32) -> i32 { a + b }", "forbidden"),
    ("exit_hidden", "use std::process as p;\npub fn add(a: i32, b: i32) -> i32 { if a < 0 { p::exit(0) } a + b }",
     "runtime_error"),
    ("own_tests_do_not_count", "pub fn add(a: i32, b: i32) -> i32 { 0 }\n#[test] fn a() {}\n#[test] fn b() {}",
     "test_fail"),
    ("allow_unsafe_attribute",  # rustc: allow(unsafe_code) is incompatible with the harness's -F (E0453)
     "#[allow(unsafe_code)] pub fn add(a: i32, b: i32) -> i32 { a + b }", "forbidden"),
]

PROBE = """
pub fn add(a: i32, b: i32) -> i32 {
    use std::io::Write;
    let mut seen = Vec::new();
    for f in ["/proc/self/mem", "/proc/self/environ", "/proc/self/exe"] {
        seen.push(format!("{f}={}", std::fs::File::open(f).is_ok()));
    }
    let nonce = std::env::vars().any(|(k, _)| k.contains("VERDICT"));
    let files: Vec<String> = std::fs::read_dir(".").into_iter().flatten().flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let _ = writeln!(std::io::stdout(), "PROBE {} nonce_in_env={nonce} files={files:?}", seen.join(" "));
    a + b
}
"""


@needs_rustc
def test_the_harness_through_run_many():
    """The issue's trick classes through the API, a probe of what the code under test can read, should_panic
    and Result-returning tests, and a test binary whose code cannot read the nonce, its sources or its binary."""
    panics = ('#[test]\n#[should_panic(expected = "negative")]\nfn rejects() { checked(-1); }\n'
              "#[test]\nfn returns_ok() -> Result<(), String> {\n"
              "    if checked(2) == 2 { Ok(()) } else { Err(\"no\".into()) }\n}\n")
    cases = DIRECT + [
        ("probe", PROBE, "pass"),
        ("should_panic_right", 'pub fn checked(x: i32) -> i32 { if x < 0 { panic!("negative input") } x }', "pass"),
        ("should_panic_wrong_message", 'pub fn checked(x: i32) -> i32 { if x < 0 { panic!("bad") } x }', "test_fail"),
        ("result_err", "pub fn checked(x: i32) -> i32 { x + 1 }", "test_fail"),
    ]
    per_item = [{"tests": panics if n.startswith(("should_panic", "result")) else TESTS} for n, _, _ in cases]
    results = run_many([c for _, c, _ in cases], per_item=per_item, workers=2, edition="2021")
    by_name = dict(zip([n for n, _, _ in cases], results))
    for (name, _, want), r in zip(cases, results):
        assert r.status == want, (name, r.status, r.detail, r.diagnostics[:500])
    assert by_name["honest"].tests_passed == 2 and by_name["honest"].tests_failed == 0
    assert by_name["own_tests_do_not_count"].tests_passed == 0
    probe = next(line for line in by_name["probe"].stdout.splitlines() if line.startswith("PROBE"))
    assert "nonce_in_env=false" in probe and ".rs" not in probe.split("files=")[1], probe
    if os.geteuid() == 0:  # as root the binary is root's 0111 and the process is not dumpable
        assert "/proc/self/mem=false" in probe and "/proc/self/environ=false" in probe, probe
        assert "/proc/self/exe=false" in probe, probe


@needs_rustc
def test_every_edition_and_a_test_file_without_a_module():
    """Bare #[test] functions with their own `use` and a lint-level `#![allow]`, in each edition."""
    tests = ("#![allow(unused)]\nuse std::collections::HashMap;\n#[test]\nfn t() { let _m: HashMap<u8, u8> = "
             "HashMap::new(); assert_eq!(add(1, 2), 3); assert!(vec![1][0] == 1); }\n")
    editions = ["2015", "2018", "2021", "2024"]
    results = run_many([HONEST] * 4, per_item=[{"tests": tests, "edition": e} for e in editions], workers=2)
    assert [(r.status, r.tests_passed) for r in results] == [("pass", 1)] * 4, [r.diagnostics for r in results]


@needs_rustc
def test_the_compilers_forbid_backs_the_textual_check(monkeypatch):
    """With the textual `unsafe` check switched off, `#[allow(unsafe_code)]` and `unsafe` still get `forbidden`
    from rustc itself (-F unsafe_code cannot be lowered by an attribute)."""
    monkeypatch.setattr(verdict, "_CHECKS", tuple(c for c in verdict._CHECKS if "unsafe" not in c[1]))
    r = run_rust("#[allow(unsafe_code)] pub fn add(a: i32, b: i32) -> i32 { unsafe { a + b } }", tests=TESTS)
    assert r.status == "forbidden" and "unsafe" in r.detail, (r.status, r.detail, r.diagnostics)


@needs_rustc
def test_without_tests_a_test_run_still_reports_libtests_own_summary():
    r = run_rust(HONEST + TESTS, mode="test")
    assert r.status == "pass" and (r.tests_passed, r.tests_ignored) == (2, 1)  # self-reported: trusted programs only


LAYERS = [  # with every static check switched off, what the harness's structure alone does to each trick
    ("macro_rules_assert", "macro_rules! assert_eq { ($($t:tt)*) => {} }\npub fn add(a: i32, b: i32) -> i32 { 0 }",
     {"test_fail"}),
    ("macro_export_assert",
     "#[macro_export] macro_rules! assert_eq { ($($t:tt)*) => {} }\npub fn add(a: i32, b: i32) -> i32 { 0 }",
     {"test_fail"}),
    ("exit_in_body", 'pub fn add(a: i32, b: i32) -> i32 { println!("test result: ok. 2 passed; 0 failed"); '
     "std::process::exit(0) }", {"runtime_error"}),
    ("panic_hook", "pub fn add(a: i32, b: i32) -> i32 { std::panic::set_hook(Box::new(|_| std::process::exit(0))); 0 }",
     {"runtime_error"}),
    ("constructor", 'pub fn add(a: i32, b: i32) -> i32 { 0 }\n#[link_section = ".init_array"]\n#[used]\n'
     'static C: extern "C" fn() = { extern "C" fn c() { std::process::exit(0) } c };', {"forbidden"}),
    ("include_source", 'pub fn add(a: i32, b: i32) -> i32 { include_str!("main.rs").len() as i32 }',
     {"compile_error"}),
    ("shadowed_some", "#[allow(non_snake_case)] fn Some<T>(_: T) -> Option<i32> { Option::Some(0) }\n"
     "pub fn add(a: i32, b: i32) -> i32 { 0 }", {"test_fail"}),
    # F11: the module that prints verdict lines is private to the harness module (rustc's privacy, E0603), and
    # the runtime crate only hands out the nonce once, to the harness, before any code under test runs
    ("runtime_private_module", "pub fn add(a: i32, b: i32) -> i32 { for k in 0..8 { "
     "crate::__rustcoder_harness::__rustcoder_rt::run(k, || ()); } std::process::exit(0) }", {"compile_error"}),
    ("runtime_crate_run", "pub fn add(a: i32, b: i32) -> i32 { for k in 0..8 { ::__rustcoder_verdict::run(k, || ()); "
     "} std::process::exit(0) }", {"compile_error"}),
    ("runtime_crate_nonce", "pub fn add(a: i32, b: i32) -> i32 { let n = ::__rustcoder_verdict::take_nonce(); "
     'for k in 0..8 { println!("\\nrustcoder-verdict:{}:{}", n, k); } std::process::exit(0) }', {"runtime_error"}),
]


@needs_rustc
def test_each_layer_holds_without_the_static_checks(monkeypatch):
    """The static checks are one layer: with them off, the code/tests split, the absolute macro imports, the
    completion lines and rustc's own forbid still give every trick a failing status."""
    monkeypatch.setattr(verdict, "forbidden", lambda untrusted, trusted="": [])
    results = run_many([c for _, c, _ in LAYERS], per_item=[{"tests": TESTS}] * len(LAYERS), workers=2,
                       edition="2021")
    for (name, _, want), r in zip(LAYERS, results):
        assert r.status in want, (name, r.status, r.detail, r.diagnostics[:300])


def test_the_gaming_files_name_a_status_for_every_answer():
    import yaml

    spec = yaml.safe_load((Path(__file__).parent / "gaming" / "humaneval_tricks.yaml").read_text())
    assert len(spec["tricks"]) >= 30 and all(t.get("status") and t.get("class") for t in spec["tricks"])


@pytest.mark.parametrize("unit", ["impl ", "fn g{k}() {{}}\n", "impl PartialEq for X where process::{{ ", "mod m{k} {{ "])
def test_the_static_checks_scale_linearly(unit):
    """F12: the checks ran a regex from each `impl` to the end of the text and re-counted braces from the start
    for each item (quadratic: 40 KB of `impl ` took 33 s). Four times the text must cost well under 16 times the
    work: the best of three timings of n and 4n repetitions, ratio bound (not an absolute time)."""
    import time

    def cost(n: int) -> float:
        answer = "pub fn add(a: i32, b: i32) -> i32 { a + b }\n" + "".join(unit.format(k=k) for k in range(n))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            rustsrc.scan.cache_clear()
            verdict.build_harness(answer, TESTS)
            best = min(best, time.perf_counter() - t)
        return best

    small, large = cost(3000), cost(12000)  # sizes where the fixed cost is small beside the per-unit one
    assert large / small < 10, (unit, small, large)  # linear: ~4; quadratic: ~16
