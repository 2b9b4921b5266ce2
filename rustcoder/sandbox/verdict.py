"""What a test run proves, and the harness that makes the proof the answer's own code cannot write.

Two ways to run tests:

* ``Harness`` (``run_rust(code, tests=...)``, what ``rustcoder eval`` uses): the code under test and the tests
  are kept apart. The tests (with a wrapper per ``#[test]``) sit in a harness module ahead of the code, which is
  pulled in with ``include!`` from a file of its own, so the code's attributes, ``#![...]`` lines, trailing
  tokens and ``macro_rules!`` cannot reach the tests, and each test module imports the standard assertion
  macros by absolute path. The untrusted part is first checked for what a correct answer never needs
  (``forbidden``). The binary runs only the harness's wrappers (``--exact``), and a wrapper reports that its
  test ran to its end by printing a per-run random nonce through a small runtime crate (``__rustcoder_verdict``,
  compiled once per process, linked with ``--extern``): before any code under test runs it takes the nonce out
  of the environment and makes the process non-dumpable, so neither the code nor a child it spawns can read
  the nonce from ``/proc/self/environ`` or ``/proc/self/mem``. A test passes only when its line with the nonce
  came back; the set of passed tests must equal the harness's own list, and the binary must end with exit 0.
* ``count_tests``/``libtest_status``: a single source file tested with libtest, read from its own summary. The
  program reports its own result: fine for a caller's trusted programs, never a verdict on untrusted code.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import subprocess
import threading

from . import rustsrc
from .policy import ExecutionResult

_TEST_SUMMARY = re.compile(
    r"^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured",
    re.MULTILINE,
)


_TEST_RUNNING = re.compile(r"^running (\d+) tests?$", re.MULTILINE)


_TEST_LINE = re.compile(r"^test .+ \.\.\. (ok|FAILED|ignored)\s*$", re.MULTILINE)


def count_tests(result: ExecutionResult, stdout: str) -> None:
    """Fill the result's test counts from libtest's summary (or its per-test lines when it crashed first)."""
    summaries = _TEST_SUMMARY.findall(stdout)
    if summaries:
        _, passed, failed, ignored, _measured = summaries[-1]
        result.tests_passed, result.tests_failed = int(passed), int(failed)
        result.tests_ignored = int(ignored)
    else:  # crashed before the summary: count what was reported
        lines = _TEST_LINE.findall(stdout)
        result.tests_passed = lines.count("ok")
        result.tests_failed = lines.count("FAILED")
        result.tests_ignored = lines.count("ignored")


def libtest_status(stdout: str, returncode: int, sig: str | None) -> tuple[str, str]:
    """(status, detail) of a finished test binary from its stdout, exit code and fatal signal."""
    summaries = _TEST_SUMMARY.findall(stdout)
    running = _TEST_RUNNING.findall(stdout)
    if sig:
        return "runtime_error", f"test binary killed by {sig}"
    if not summaries:
        return "runtime_error", (f"test binary exited with code {returncode} before "
                                 "libtest printed its summary (process::exit or crash)")
    verdict, passed, failed, ignored, measured = summaries[-1]
    counted = int(passed) + int(failed) + int(ignored) + int(measured)
    if running and int(running[0]) != counted:
        return "runtime_error", (f"libtest summary counts {counted} tests but {running[0]} were "
                                 "started: output is inconsistent")
    if verdict == "FAILED" or int(failed) > 0:
        return "test_fail", f"{failed} of {counted} tests failed"
    if returncode != 0:
        return "runtime_error", f"tests passed but the binary exited with code {returncode}"
    return "pass", f"{passed} passed, {ignored} ignored"


# ---- the runtime crate -------------------------------------------------------------------------

RUNTIME_CRATE = "__rustcoder_verdict"
NONCE_VAR = "RUSTCODER_VERDICT_NONCE"
MARK = "rustcoder-verdict"

RUNTIME_SOURCE = r'''
//! rustcoder's verdict runtime crate: only what needs `unsafe` (the crate under test is compiled with
//! `-F unsafe_code`). It hands the nonce out ONCE: the harness's private module takes it before any code under
//! test runs, so a later call (from code under test) gets "". Everything that prints a verdict line lives in
//! that private module, which the code under test cannot name.
use std::sync::atomic::{AtomicBool, Ordering};

static TAKEN: AtomicBool = AtomicBool::new(false);

#[cfg(target_os = "linux")]
extern "C" {
    fn prctl(option: i32, ...) -> i32;
    static mut environ: *mut *mut u8;
}

pub fn take_nonce() -> String {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return String::new();
    }
    // After this, /proc/self/{mem,environ} belong to root (PR_SET_DUMPABLE 0), and the nonce has left the
    // environment: its bytes in the environment block are overwritten in place (remove_var alone would only
    // unlink the pointer and leave the text on the stack).
    let n = std::env::var("RUSTCODER_VERDICT_NONCE").unwrap_or_default();
    #[cfg(target_os = "linux")]
    unsafe {
        prctl(4, 0usize, 0usize, 0usize, 0usize);
        let key = b"RUSTCODER_VERDICT_NONCE=";
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = *p;
            let mut len = 0usize;
            while *entry.add(len) != 0 {
                len += 1;
            }
            if len >= key.len() && std::slice::from_raw_parts(entry, key.len()) == key {
                for k in key.len()..len {
                    std::ptr::write_volatile(entry.add(k), b'0');
                }
            }
            p = p.add(1);
        }
    }
    std::env::remove_var("RUSTCODER_VERDICT_NONCE");
    n
}
'''

# The module that prints verdict lines: a PRIVATE module of the harness module, so code at the crate root (the
# code under test) cannot name it whatever it hides from the static checks (privacy, checked by rustc).
RT_MODULE = "__rustcoder_rt"
RT_SOURCE = '''
mod __rustcoder_rt {
    use ::std::io::Write;
    static NONCE: ::std::sync::OnceLock<::std::string::String> = ::std::sync::OnceLock::new();

    fn nonce() -> &'static str {
        // every wrapper calls this first; the others wait here, so no code under test runs before it
        NONCE.get_or_init(::__rustcoder_verdict::take_nonce)
    }

    pub trait Outcome {
        fn succeeded(&self) -> bool;
    }

    impl Outcome for () {
        fn succeeded(&self) -> bool {
            true
        }
    }

    impl<T, E> Outcome for ::std::result::Result<T, E> {
        fn succeeded(&self) -> bool {
            self.is_ok()
        }
    }

    fn done(index: usize) {
        let line = ::std::format!("\\nrustcoder-verdict:{}:{}\\n", nonce(), index);
        let mut out = ::std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    pub fn run<T: Outcome>(index: usize, test: fn() -> T) {
        nonce();
        let outcome = test();
        let ok = outcome.succeeded();
        ::std::mem::drop(outcome);
        if !ok {
            ::std::panic!("the test returned an error");
        }
        done(index);
    }

    pub fn run_should_panic<T>(index: usize, expected: ::std::option::Option<&str>, test: fn() -> T) {
        nonce();
        match ::std::panic::catch_unwind(test) {
            ::std::result::Result::Ok(value) => {
                ::std::mem::drop(value);
                ::std::panic!("the test did not panic");
            }
            ::std::result::Result::Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<::std::string::String>().cloned());
                ::std::mem::drop(payload);
                if let ::std::option::Option::Some(want) = expected {
                    if !message.as_deref().unwrap_or("").contains(want) {
                        ::std::panic!("the test panicked with {:?}, not with a message containing {:?}",
                                      message, want);
                    }
                }
                done(index);
            }
        }
    }
}
'''

_RUNTIME_LOCK = threading.Lock()
_RUNTIMES: dict[tuple[str, str], str] = {}


def runtime_rlib(rustc: str, directory: str) -> str:
    """The runtime crate compiled by ``rustc`` (a path on this host) into ``directory``, once per process.

    It is rustcoder's own code, so it is compiled outside the sandbox; only its .rlib goes into a job.
    Raises OSError or subprocess.SubprocessError when it cannot be built.
    """
    key = (rustc, directory)
    with _RUNTIME_LOCK:
        path = _RUNTIMES.get(key)
        if path and os.path.isfile(path):
            return path
        src = os.path.join(directory, f"{RUNTIME_CRATE}.rs")
        path = os.path.join(directory, f"lib{RUNTIME_CRATE}.rlib")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(RUNTIME_SOURCE)
        done = subprocess.run([rustc, "--edition", "2021", "--crate-type", "rlib", "--crate-name", RUNTIME_CRATE,
                               "-C", "debuginfo=0", "--cap-lints=allow", "-o", path, src],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise subprocess.SubprocessError(f"could not build the verdict runtime: {done.stderr[-500:]}")
        os.chmod(path, 0o644)
        _RUNTIMES[key] = path
        return path


# ---- what a correct answer never needs -----------------------------------------------------------

PRELUDE = frozenset("""Copy Send Sized Sync Unpin Drop Fn FnMut FnOnce Box ToOwned Clone PartialEq PartialOrd Eq Ord
AsRef AsMut Into From Default Iterator Extend IntoIterator DoubleEndedIterator ExactSizeIterator Option Some None
Result Ok Err String ToString Vec TryFrom TryInto FromIterator Future IntoFuture""".split())
PRELUDE_FUNCTIONS = frozenset("drop size_of size_of_val align_of align_of_val".split())
PRIMITIVES = frozenset("bool char str i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize f32 f64".split())
STD_MACROS = ("assert", "assert_eq", "assert_ne", "debug_assert", "debug_assert_eq", "debug_assert_ne", "panic",
              "vec", "format", "format_args", "matches", "print", "println", "eprint", "eprintln", "write",
              "writeln", "unreachable", "unimplemented", "todo", "dbg", "concat", "stringify")
_LINT_LEVELS = ("allow", "warn", "deny", "forbid", "expect")
_VALUE_NAMES = frozenset({"Some", "None", "Ok", "Err"})

_CHECKS = (
    (re.compile(r"__rustcoder"), "uses a name reserved for the test harness (`__rustcoder...`)"),
    (re.compile(r"\b(?:include_str|include_bytes)\b|\binclude\s*!"),
     "reads files at compile time (`include!`, `include_str!`, `include_bytes!`)"),
    (re.compile(r"\b(?:global_asm|naked_asm)\b"), "places assembly outside any function (`global_asm!`)"),
    (re.compile(r"\bunsafe\b"), "uses `unsafe`"),
    (re.compile(r"\b(?:no_mangle|export_name|link_section|link_name)\b"),
     "changes symbols or link sections (`#[no_mangle]`, `#[export_name]`, `#[link_section]`)"),
    (re.compile(r"\bprocess\s*::\s*(?:exit|abort)\b"), "ends the process (`std::process::exit` / `abort`)"),
    (re.compile(r"\b(?:set_hook|take_hook)\b"), "installs a panic hook (`std::panic::set_hook`)"),
    # F1: the known shape of rustc's soundness hole #25860 (a safe transmute through the implied bounds of a
    # reference to a reference, coerced to a higher-ranked fn pointer). Fragile by nature: docs/sandbox.md states
    # "safe Rust is memory-safe apart from refused shapes" as an assumption of the threat model.
    (re.compile(r"&\s*'[A-Za-z_][A-Za-z0-9_]*\s+(?:mut\s+)?&\s*'[A-Za-z_]"),
     "uses a reference to a reference with named lifetimes (`&'a &'b`), the shape of a known soundness hole"),

    # the check above reads trait names: they may not hide behind a rename or a macro's variable (F3)
    (re.compile(r"\b(?:PartialEq|PartialOrd|Eq|Ord|Deref|DerefMut|Hash|Debug|Display|Index|IndexMut|Not|Iterator"
                r"|IntoIterator|From|Into|AsRef|Borrow|ToString|FromStr|Clone|Default)\s+as\s+(?!_\b)[A-Za-z_]"),
     "imports a standard trait under another name (`use std::cmp::PartialEq as Pe`)"),
)

# Checks of one item header (the text after its first `impl`, up to the next `{`/`}`/`;`): run per segment, so
# the work stays linear however many `impl` an answer repeats (F12: a regex from each `impl` to the end was not).
_HEADER_CHECKS = (
    (re.compile(r"\b(?:PartialEq|PartialOrd)\s*<"),
     "implements `PartialEq`/`PartialOrd` between different types (a value that equals anything)"),
    (re.compile(r"\$\s*[A-Za-z_][A-Za-z0-9_]*\s*<.*\bfor\b", re.DOTALL),
     "implements a trait named by a macro variable with type parameters"),
)
_IMPL = re.compile(r"\bimpl\b")


def _header_reasons(masked: str) -> list[str]:
    """What the item headers of masked text show that no correct answer needs (``_HEADER_CHECKS``), plus
    `process::{.., exit}` imports; linear in the text."""
    found = []
    for _start, seg in rustsrc.segments(masked):
        m = _IMPL.search(seg)
        if m:
            tail = seg[m.end():]
            found += [why for pattern, why in _HEADER_CHECKS if pattern.search(tail)]
    # `use std::process::{exit, ..}`: an exit/abort token inside a brace group that follows `process::`
    ends = rustsrc.pairs(masked)
    stops = [m.start() for m in re.finditer(r"\b(?:exit|abort)\b", masked)]
    import bisect

    for m in re.finditer(r"\bprocess\s*::\s*\{", masked):
        close = ends.get(m.end() - 1, len(masked))
        k = bisect.bisect_left(stops, m.end())
        if k < len(stops) and stops[k] < close:
            found.append("ends the process (`std::process::exit` / `abort`)")
            break
    return list(dict.fromkeys(found))



def crate_attributes(code: str) -> tuple[str, list[str]]:
    """``code`` with its top-level lint-level ``#![allow(...)]``-style lines blanked, and the names of the other
    top-level inner attributes (``no_main``, ``no_std``, ``cfg``, ``feature``, ...), which the harness refuses."""
    masked = rustsrc.mask(code)
    out, others = list(code), []
    for m in re.finditer(r"#\s*!\s*\[", masked):
        if rustsrc.depth_at(masked, m.start()) != 0:
            continue
        close = rustsrc.pairs(masked).get(m.end() - 1)
        if close is None:
            continue
        name = re.match(r"\s*([A-Za-z_][A-Za-z0-9_:]*)", masked[m.end():close])
        name = name.group(1) if name else "?"
        if name in _LINT_LEVELS:
            for k in range(m.start(), close + 1):
                if out[k] != "\n":
                    out[k] = " "
        else:
            others.append(name)
    return "".join(out), others


def forbidden(untrusted: str, trusted: str = "") -> list[str]:
    """Why ``untrusted`` (an answer) cannot be run under the harness: constructs no correct answer to a
    function-with-tests task needs that could change what the tests are or how they report. Empty when none.

    ``trusted`` is the rest of the program (tests, given code): names it defines may be restated, and a standard
    name the answer redefines counts only where ``trusted`` uses it (every name, when ``trusted`` is empty)."""
    masked = rustsrc.mask(untrusted)
    reasons = [why for pattern, why in _CHECKS if pattern.search(masked)]
    reasons += [why for why in _header_reasons(masked) if why not in reasons]
    problems = [p for p in rustsrc.unreadable(untrusted) if "brackets" not in p]  # an answer may be a fragment
    if problems:
        reasons.append("could not be read by the checks the way rustc reads it (" + "; ".join(problems[:3]) + ")")
    _, attrs = crate_attributes(untrusted)
    reasons += [f"sets the crate attribute `#![{a}]`" for a in dict.fromkeys(attrs)]
    given = {name for _, name, _ in rustsrc.defined_names(trusted)}
    # a standard name matters where the tests or the given code use it: there the answer's item would stand in
    # for the standard one (an "Option" whose == is always true); an answer's own `type Result<T>` that nothing
    # given mentions is left alone
    used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rustsrc.mask(trusted))) if trusted.strip() else None
    shadowed = []
    for kind, name, depth in rustsrc.defined_names(untrusted):
        if name in given:
            continue
        if kind == "macro":
            if name in STD_MACROS:
                shadowed.append(name + "!")
            continue
        if used is not None and name not in used:
            continue
        if kind in ("struct", "enum", "union", "trait", "type", "const", "static", "use-as", "variant", "mod") \
                and (name in PRELUDE or name in PRIMITIVES or name in ("std", "core", "alloc")):
            shadowed.append(name)
        elif kind == "fn" and (name in _VALUE_NAMES or (depth == 0 and name in PRELUDE_FUNCTIONS)):
            shadowed.append(name)
    mine = rustsrc.defined_names(untrusted)
    hidden = _shadowing_methods(masked, given | {name for kind, name, _depth in mine
                                                  if kind in ("struct", "enum", "union", "type")},
                                {name for kind, name, _depth in mine if kind == "trait"} - given)
    if hidden:
        reasons.append("implements a method named like a standard one for a type the task does not define (it "
                       "would stand in for the method the tests call): " + ", ".join(f"`{n}`" for n in hidden[:5]))
    if shadowed:
        reasons.append("redefines standard name(s) the tests rely on: "
                       + ", ".join(f"`{n}`" for n in dict.fromkeys(shadowed)))
    return reasons


_IMPL_FOR = re.compile(r"\bimpl\b(?:\s*<[^{;]*?>)?\s*([^{;]*?)\s+for\s+([^{;]*?)\s*(?:\bwhere\b[^{;]*)?\{")


def _shadowing_methods(masked: str, own_types: set[str], own_traits: set[str]) -> list[str]:
    """Methods of impls of the answer's own traits (``own_traits``: the orphan rule lets only a local trait be
    implemented for a foreign type) for types not in ``own_types`` (std types, type parameters) named like a method of a
    standard type (F2: `impl Lower for String { fn to_lowercase(&self) -> Anything }` wins method probing over
    `str::to_lowercase`; a by-value `as_deref(self)` on `Option<String>` wins over the inherent one)."""
    from .std_methods import STD_METHOD_NAMES

    ends = rustsrc.pairs(masked)
    found = []
    for start, seg in rustsrc.segments(masked):
        i = _IMPL.search(seg)
        if not i or start + len(seg) >= len(masked) or masked[start + len(seg)] != "{":
            continue
        m = _IMPL_FOR.match(masked, start + i.start(), start + len(seg) + 1)
        if not m:
            continue
        target = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"'[A-Za-z_]\w*|\b(?:mut|dyn|const)\b", " ",
                                                            m.group(2)))
        head = next((t for t in target if t not in ("std", "core", "alloc", "crate", "super", "self")), "")
        trait = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"<.*", "", m.group(1), flags=re.DOTALL))
        if head in own_types or not trait or trait[-1] not in own_traits:
            continue
        close = ends.get(m.end() - 1, len(masked))
        for f in re.finditer(r"\bfn\s+(?:r#)?([A-Za-z_][A-Za-z0-9_]*)", masked[m.end():close]):
            if f.group(1) in STD_METHOD_NAMES:
                found.append(f.group(1))
    return list(dict.fromkeys(found))


def return_type(code: str, function: str) -> str | None:
    """The return type of the first ``fn function`` in ``code``, whitespace removed ("" for none; None when
    there is no such function)."""
    masked = rustsrc.mask(code)
    m = re.search(r"\bfn\s+(?:r#)?" + re.escape(function) + r"\b\s*", masked)
    if not m:
        return None
    j = m.end()
    if masked.startswith("<", j):  # generics: skip to the matching '>' (an arrow's '>' does not count)
        depth = 0
        while j < len(masked):
            c = masked[j]
            if c == "<":
                depth += 1
            elif c == ">" and masked[j - 1] != "-":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        j += 1
    open_paren = masked.find("(", j)
    close = rustsrc.matching(masked, open_paren) if open_paren >= 0 else None
    if close is None:
        return None
    rest = masked[close + 1:]
    stop = re.search(r"[{;]|\bwhere\b", rest)
    head = rest[:stop.start() if stop else len(rest)].strip()
    return re.sub(r"\s+", "", head[2:]) if head.startswith("->") else ""


def fn_pointer_type(signature: str, function: str) -> str | None:
    """The fn-pointer type of the free function ``function`` as ``signature`` (any text holding its head) declares
    it, e.g. ``for<'a> fn(&'a str, usize) -> &'a str``; None where no fn pointer can stand for it (type or const
    generics, ``impl Trait``, a ``self`` receiver, ``async``, a ``where`` clause, no such function)."""
    masked = rustsrc.mask(signature)
    m = re.search(r"(\basync\s+(?:unsafe\s+)?)?\bfn\s+(?:r#)?" + re.escape(function) + r"\b\s*", masked)
    if not m or m.group(1):
        return None
    j, lifetimes = m.end(), []
    if masked.startswith("<", j):
        close = masked.find(">", j)
        if close < 0:
            return None
        params = [p.strip() for p in masked[j + 1:close].split(",") if p.strip()]
        if not all(re.fullmatch(r"'[A-Za-z_][A-Za-z0-9_]*", p) for p in params):
            return None  # type/const generics, or bounded lifetimes (early-bound)
        lifetimes, j = params, close + 1
    if not masked.startswith("(", j):
        return None
    close = rustsrc.matching(masked, j)
    if close is None:
        return None
    args, depth, start = [], 0, j + 1
    for k in range(j + 1, close + 1):
        c = masked[k]
        if c in "([{<":
            depth += 1
        elif c in ")]}" or (c == ">" and masked[k - 1] != "-"):
            depth -= 1
        if (c == "," and depth == 0) or k == close:
            part = signature[start:k].strip()
            start = k + 1
            if not part:
                continue
            colon = re.search(r"(?<!:):(?!:)", rustsrc.mask(part))
            if colon is None:
                return None  # `self`, `&self`, `&mut self`
            ty = part[colon.end():].strip()
            if re.search(r"\bimpl\b|\bSelf\b", ty):
                return None
            args.append(ty)
    ret = return_type(signature + (" {}" if "{" not in masked[close:] else ""), function)
    rest = masked[close + 1:]
    stop = re.search(r"[{;]", rest)
    if ret is None or re.search(r"\bwhere\b", rest[:stop.start() if stop else len(rest)]) or \
            re.search(r"\bimpl\b|\bSelf\b", ret):
        return None
    head = rest[:stop.start() if stop else len(rest)].strip()
    ret_text = signature[close + 1:close + 1 + len(rest[:stop.start() if stop else len(rest)])].strip()
    ret_text = ret_text[2:].strip() if head.startswith("->") else ""
    binder = f"for<{', '.join(lifetimes)}> " if lifetimes else ""
    return f"{binder}fn({', '.join(args)})" + (f" -> {ret_text}" if ret_text else "")


def signature_of(code: str, function: str) -> str | None:
    """The head of the first ``fn function`` in ``code`` (from its qualifiers to just before its body), or None."""
    masked = rustsrc.mask(code)
    m = re.search(r"(?:\bpub\s*(?:\([^)]*\))?\s*)?(?:(?:const|async|unsafe)\s+)*\bfn\s+(?:r#)?"
                  + re.escape(function) + r"\b", masked)
    if not m:
        return None
    body = masked.find("{", m.end())
    semi = masked.find(";", m.end())
    end = min(x for x in (body, semi, len(masked)) if x >= 0)
    return code[m.start():end].strip()


# ---- the harness -------------------------------------------------------------------------------

def _literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    return '"' + "".join(out) + '"'


def _imports(tests: str) -> str:
    used = " ".join(line for line in rustsrc.mask(tests).splitlines() if re.search(r"\buse\b", line))
    names = [n for n in STD_MACROS if not re.search(rf"\b{n}\b", used)]
    return ("#[allow(unused_imports)] use ::std::{" + ", ".join(names) + "};\n") if names else ""


@dataclasses.dataclass
class Harness:
    """One harnessed test program: the code under test, the tests, and what the run must show."""

    code: str  # the code under test (one file, pulled in with include!)
    tests: str  # the tests, instrumented with one wrapper per #[test]
    tests_untrusted: bool  # True when the tests are the answer (test_generation)
    cases: list[rustsrc.TestFn]  # the tests that must run to their end, wrapper i = cases[i]
    forbidden: list[str]  # non-empty: do not run it (status "forbidden")
    forbid_unsafe: bool  # -F unsafe_code for the whole crate (the trusted parts have no unsafe)
    imports: str = ""  # the absolute std macro imports each module of trusted tests gets
    pins: str = ""  # `const _: fn(..) -> T = super::f;` lines: rustc checks the task's signatures (F3/F13)
    nonce: str = dataclasses.field(default_factory=lambda: secrets.token_hex(16))
    tag: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))

    @property
    def root(self) -> str:
        """File name of the crate root (random, so nothing compiled can name it)."""
        return f"harness_{self.tag}.rs"

    @property
    def code_file(self) -> str:
        """File name of the code under test."""
        return f"code_{self.tag}.rs"

    @property
    def tests_file(self) -> str:
        """File name of the tests when they are the answer's."""
        return f"tests_{self.tag}.rs"

    def files(self) -> dict[str, str]:
        """{file name: text} to write into the job directory before compiling."""
        module = "#[allow(unused_imports, dead_code, non_snake_case, unused_macros)]\nmod __rustcoder_harness {\n" \
                 "    #[allow(unused_imports)]\n    use super::*;\n" + RT_SOURCE + self.pins
        if self.tests_untrusted:
            module += f'    include!("{self.tests_file}");\n}}\n'
        else:
            module += self.imports + self.tests + "\n}\n"
        root = (f"// rustcoder verdict harness (generated)\nextern crate {RUNTIME_CRATE};\n\n{module}\n"
                f'include!("{self.code_file}");\n')
        files = {self.root: root, self.code_file: self.code}
        if self.tests_untrusted:
            files[self.tests_file] = self.tests
        return files

    def compile_flags(self) -> list[str]:
        """rustc flags beyond edition, output and error format (no --cap-lints: it would cap the forbid)."""
        return ["-F", "unsafe_code"] if self.forbid_unsafe else []

    def run_args(self) -> list[str]:
        """Arguments of the test binary: exactly the wrappers, nothing the code under test added."""
        return ["--exact", *(self.test_name(i) for i in range(len(self.cases)))]

    def test_name(self, index: int) -> str:
        """libtest's name of wrapper ``index``."""
        return "::".join(["__rustcoder_harness", *self.cases[index].path, f"__rustcoder_t{index}"])

    def judge(self, stdout: str, returncode: int, sig: str | None) -> tuple[str, str, int, int]:
        """(status, detail, tests passed, tests failed) of a run that ended on its own (no timeout or cap)."""
        seen = {int(i) for i in re.findall(rf"{MARK}:{self.nonce}:(\d+)", stdout)}
        total = len(self.cases)
        passed = len(seen & set(range(total)))
        missing = [self.cases[i].name for i in range(total) if i not in seen]
        if sig:
            return ("runtime_error", f"test binary killed by {sig} after {passed} of {total} test(s) completed",
                    passed, total - passed)
        if missing and returncode == 101:
            return ("test_fail", f"{len(missing)} of {total} test(s) failed: {', '.join(missing[:5])}",
                    passed, total - passed)
        if missing:
            return ("runtime_error", f"the test binary ended with exit code {returncode} before "
                    f"{len(missing)} of {total} test(s) completed ({', '.join(missing[:5])}): the code under test "
                    "ended the process", passed, total - passed)
        if returncode != 0:
            return ("runtime_error", f"all {total} test(s) completed, then the binary exited with code "
                    f"{returncode}", passed, 0)
        return "pass", f"{passed} of {total} test(s) ran to their end", passed, 0


def _blank_copies(text: str, copy: str) -> str:
    """``text`` with each verbatim copy of ``copy`` blanked (same length, newlines kept), but only a copy that the
    scanner reads exactly as it reads ``copy`` alone (never one that a comment or literal around it swallows, or
    that opens one for its neighbours): the checks then see the rest of ``text`` as rustc does."""
    masked, alone = rustsrc.mask(text), rustsrc.mask(copy)
    out, start = text, 0
    while (k := text.find(copy, start)) >= 0:
        end = k + len(copy)
        before = masked[k - 1] if k else "\n"
        if masked[k:end] == alone and (before.isspace() or before in ";}{"):
            out = out[:k] + re.sub(r"[^\n]", " ", copy) + out[end:]
        start = end
    return out


def build_harness(code: str, tests: str, *, tests_untrusted: bool = False, answer: str | None = None,
                  given: str | None = None, returns: dict[str, str] | None = None,
                  signatures: dict[str, str] | None = None) -> Harness:
    """A harness for ``code`` (the code under test) and ``tests`` (test source with ``#[test]`` functions).

    By default the code is the answer and the tests are trusted. ``answer`` is the model's part of ``code`` and
    ``given`` the task's (a context, a prompt): only the answer, minus any verbatim copy of the given code in
    it, is checked for what no correct answer needs; names the given code defines may be restated.
    ``tests_untrusted=True`` is the reverse (generated tests for given code). ``returns`` maps function names to
    the return type the task fixes (whitespace ignored): an answer that changes one is refused. ``signatures``
    maps function names to the head the task fixes (``fn f(a: &[f32]) -> bool``): where a fn pointer can stand for
    it, the harness holds ``const _: fn(&[f32]) -> bool = super::f;``, so rustc itself refuses (compile_error)
    an answer whose real item has another type, whatever decoy text the answer shows the static checks.
    """
    if tests_untrusted:
        untrusted, trusted = tests, code
    else:
        untrusted = code if answer is None else answer
        if given and given.strip():  # the answer restated the given code: that copy is not held to the rules
            untrusted = _blank_copies(untrusted, given.strip())
        if given is None and answer is not None and answer.strip() in code:
            given = code.replace(answer.strip(), "", 1)  # what is not the answer's is the task's
        trusted = (given or "") + "\n" + tests
    given = code if tests_untrusted else trusted
    code, _ = crate_attributes(code)  # the given code's non-lint ones fail in include! (compile_error)
    # the return types a task fixes are given text too: an answer's own `bool` or `Option` would change them
    reasons = forbidden(untrusted, trusted + "\n" + " ".join((returns or {}).values()))
    whole = [p for p in rustsrc.unreadable(code) if "brackets" in p]
    if whole and not any(r.startswith("could not be read") for r in reasons):  # fail closed: scanner != rustc
        reasons.append("the program could not be read by the checks the way rustc reads it (" + whole[0] + ")")
    for name, want in (returns or {}).items():
        got = return_type(code, name)
        if got is not None and got != re.sub(r"\s+", "", want):
            reasons.append(f"changes the return type of `{name}` from `{want or '()'}` to `{got or '()'}`")
    tests, _ = crate_attributes(tests)  # lint-level #![...] of a test file would be refused inside the module
    cases = [t for t in rustsrc.test_functions(tests) if not t.ignored]
    inserts: list[tuple[int, str]] = []
    for i, case in enumerate(cases):
        if case.should_panic:
            call = (f"crate::__rustcoder_harness::{RT_MODULE}::run_should_panic({i}, "
                    f"{'Some(' + _literal(case.expected) + ')' if case.expected is not None else 'None'}, {case.name})")
        else:
            call = f"crate::__rustcoder_harness::{RT_MODULE}::run({i}, {case.name})"
        inserts.append((case.body_end, f"\n#[test]\nfn __rustcoder_t{i}() {{ {call} }}\n"))
    line = "" if tests_untrusted else _imports(tests)
    inserts += [(start, "\n" + line) for _, start, _ in rustsrc.module_spans(rustsrc.mask(tests)) if line]
    for pos, text in sorted(inserts, key=lambda x: x[0], reverse=True):
        tests = tests[:pos] + text + tests[pos:]
    forbid_unsafe = not re.search(r"\bunsafe\b|\bno_mangle\b|\bexport_name\b|\blink_section\b",
                                  rustsrc.mask(given))
    pins = ""
    for name, sig in ({} if tests_untrusted else (signatures or {})).items():
        ptr = fn_pointer_type(sig, name)
        if ptr is not None:
            pins += f"    const _: {ptr} = super::{name};\n"
    return Harness(code=code, tests=tests, tests_untrusted=tests_untrusted, cases=cases, forbidden=reasons,
                   forbid_unsafe=forbid_unsafe, imports=line, pins=pins)


def stage(harness: Harness, workdir: str, runtime: str) -> None:
    """Write the harness's files and the runtime .rlib into a job's directory."""
    for name, text in harness.files().items():
        path = os.path.join(workdir, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(path, 0o644)
    shutil.copyfile(runtime, os.path.join(workdir, os.path.basename(runtime)))


def seal(harness: Harness, workdir: str, binary: str) -> None:
    """After compiling: remove every source (the run cannot read the tests) and, as root, hand the binary to
    root with mode 0111 (it runs, but the code under test cannot read its own binary)."""
    for name in harness.files():
        try:
            os.unlink(os.path.join(workdir, name))
        except FileNotFoundError:
            pass
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(binary, 0, 0)
        os.chmod(binary, 0o111)


def is_forbidden_diagnostic(diag: dict) -> bool:
    """rustc's diagnostics that mean the forbidden unsafe code (the unsafe_code lint, or allow against the forbid)."""
    code = (diag.get("code") or {}).get("code")
    return code in ("unsafe_code", "E0453")
