"""The task registry: how each kind of task turns an answer into programs and scores, as data.

A ``TaskSpec`` says which code an answer holds (first/last block, a fragment), how the program that
rustc sees is assembled (with the row's ``code_context``, prefix + suffix, the row's or benchmark's
tests), which reference field prose or names are compared with, and the category's primary metric.
Keys are the 15 Strandset categories plus ``humaneval-rust`` for benchmarks in that format.
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import extract

# Every per-sample status an evaluation can report (docs/eval.md explains each).
EXEC_STATUSES = ("pass", "test_fail", "compile_error", "needs_crate", "timeout", "runtime_error",
                 "output_limit", "sandbox_error", "forbidden")
STATUSES = EXEC_STATUSES + (
    "empty_answer",      # the model produced nothing (or only whitespace / a think block)
    "no_code",           # a code task whose answer holds no Rust
    "no_tests",          # test_generation: the answer holds no #[test] function, or none of them ran
    "weak_tests",        # test_generation: the tests also pass against every wrong-valued variant of the code
    "no_change",         # fix/review/refactor/optimize: the answer's code is the given code (comments aside)
    "unrelated",         # fix/review/refactor/optimize: the answer's code shares (almost) nothing with the given code
    "code_changed",      # comment_generation: the code is not the input code once comments are removed
    "stub",              # completion/search: the answer's code is a todo!/unimplemented!/unreachable! stub
    "missing",           # --predictions: no answer for this item (or sample): scored 0
    "not_executed",      # --no-exec: code was extracted but not compiled
    "match",             # name / API tasks: exact match after normalisation
    "mismatch",          # name / API tasks: no exact match
    "scored",            # prose tasks: scored by chrF (and the judge)
    "generation_error",  # the backend failed for this sample (endpoint error after retries)
)
# Not the model's fault: left out of rate denominators and counted on their own.
EXCLUDED_STATUSES = ("needs_crate", "sandbox_error", "not_executed", "generation_error")

PRIMARY_LABELS = {"pass": "pass rate %", "chrf": "chrF", "exact": "exact match %"}


@dataclass(frozen=True)
class TaskSpec:
    """How one task category is scored."""

    name: str
    answer_kind: str  # code, text+code, text, name, api, benchmark
    primary: str  # "pass", "chrf" or "exact": the category's headline metric (0-100)
    code: str | None = None  # which Rust to take from the answer: first, last, all, fragment
    program: str | None = None  # how to assemble the program: context, completion, tests_for_code, benchmark
    text_field: str | None = None  # output field the prose part is compared with (chrF)
    match_field: str | None = None  # output field for exact match / edit similarity
    match: str | None = None  # "name" or "code" normalisation
    checks: tuple[str, ...] = ()  # extra checks: code_preserved (comments only), identifier
    given_field: str | None = None  # input field holding the code the answer must change (and relate to)
    description: str = ""


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("code_generation", "code", "pass", code="first", program="context",
             description="code_context + answer code (+ the row's tests): compiles, tests pass"),
    TaskSpec("code_completion", "code", "pass", code="fragment", program="completion",
             match_field="completion", match="code",
             description="prefix + completion + suffix compiles; exact match and edit similarity"),
    TaskSpec("bug_detection", "text+code", "pass", code="last", program="context",
             text_field="bug_description", given_field="buggy_code",
             description="the fixed code changes and relates to the buggy code and compiles with the context; "
                         "chrF of the explanation"),
    TaskSpec("code_review", "text+code", "pass", code="last", program="context", text_field="review_comment",
             given_field="code_before",
             description="the code after review changes and relates to the code before and compiles; chrF of the "
                         "review comment"),
    TaskSpec("code_refactoring", "text+code", "pass", code="last", program="context", text_field="rationale",
             given_field="code_before",
             description="the refactored code changes and relates to the code before and compiles; chrF of the "
                         "rationale"),
    TaskSpec("code_optimization", "text+code", "pass", code="last", program="context", text_field="rationale",
             given_field="code_before",
             description="the optimized code changes and relates to the code before and compiles; chrF of the "
                         "rationale"),
    TaskSpec("docstring_generation", "text", "chrf", text_field="docstring",
             description="chrF of the doc comment"),
    TaskSpec("comment_generation", "code", "pass", code="first", program="context", checks=("code_preserved",),
             description="the commented code compiles and is the input code once comments are removed (both "
                         "needed to pass)"),
    TaskSpec("code_summarization", "text", "chrf", text_field="summary", description="chrF of the summary"),
    TaskSpec("code_explanation", "text", "chrf", text_field="explanation", description="chrF of the explanation"),
    TaskSpec("function_naming", "name", "exact", match_field="function_name", match="name",
             checks=("identifier",), description="exact match of the normalised name; token F1"),
    TaskSpec("variable_naming", "name", "exact", match_field="variable_name", match="name",
             checks=("identifier",), description="exact match of the normalised name; token F1"),
    TaskSpec("code_search", "code", "pass", code="first", program="context", text_field="code_snippet",
             description="the snippet compiles with the context; chrF against the reference snippet"),
    TaskSpec("test_generation", "code", "pass", code="all", program="tests_for_code",
             description="context + code_to_test + the generated tests in a tests module: they compile, pass, and "
                         "fail against at least one wrong-valued variant (mutant) of the code under test"),
    TaskSpec("api_usage_prediction", "api", "exact", match_field="next_api_call", match="code",
             description="exact match and edit similarity of the normalised call"),
    TaskSpec("humaneval-rust", "benchmark", "pass", code="first", program="benchmark",
             description="the function + the benchmark's tests pass (pass@k)"),
)}

# rustc codes of "defined twice" errors: the answer restated something the context already defines.
DUPLICATE_DEFINITION_CODES = {"E0428", "E0252", "E0201", "E0119", "E0255"}


@dataclass
class Program:
    """One Rust program to run in the sandbox: ``source`` is the code (and, with ``tests``, the code under test of
    the verdict harness, ``sandbox.verdict``)."""

    source: str
    mode: str  # "check" or "test"
    edition: str
    label: str
    has_tests: bool
    tests: str | None = None  # the test source the harness runs against ``source``
    tests_untrusted: bool = False  # the tests are the answer's (test_generation); ``source`` is the given code
    returns: dict[str, str] | None = None  # return types the task fixes ({function: type})
    answer: str | None = None  # the model's part of ``source`` (None: all of it, or the tests are the answer)
    given: str | None = None  # the task's part of ``source`` (a context, a prompt)
    signatures: dict[str, str] | None = None  # function heads the task fixes; rustc checks the answer's types

    def run_args(self) -> dict:
        """The per-program keyword arguments of ``sandbox.run_rust``."""
        if self.tests is None:
            return {}
        return {"tests": self.tests, "tests_untrusted": self.tests_untrusted, "returns": self.returns,
                "answer": self.answer, "given": self.given, "signatures": self.signatures}

    def key(self) -> tuple:
        """What makes two programs the same run."""
        return (self.source, self.mode, self.edition, self.tests, self.tests_untrusted,
                tuple(sorted((self.returns or {}).items())), self.answer, self.given,
                tuple(sorted((self.signatures or {}).items())))


@dataclass
class ProgramPlan:
    """What to run for a sample: a status decided before execution, or programs to try in order.

    ``programs[1:]`` are fallbacks tried only when the previous one failed with nothing but
    duplicate-definition errors (the answer restated the context).
    """

    status: str | None = None
    code: str | None = None
    programs: list[Program] = field(default_factory=list)


# Statuses of a mutant's run that show the tests notice the wrong values.
DISCRIMINATING_STATUSES = ("test_fail", "runtime_error", "timeout", "output_limit")

MAX_MUTANTS = 4  # wrong-valued variants tried per passing set of generated tests


def mutant_programs(program: Program) -> list[Program]:
    """Wrong-valued variants of the code under test of a test_generation program (one function's body replaced by
    a plausible wrong value: 0, 1, false, an empty string or vector, ``None``, ``Default::default()``, or nothing
    for a function returning ``()``), at most ``MAX_MUTANTS``; tests that assert something fail on at least one."""
    out = []
    for source, what in extract.mutants(program.source)[:MAX_MUTANTS]:
        out.append(Program(source, "test", program.edition, f"{program.label} (mutant: {what})", True,
                           program.tests, program.tests_untrusted, program.returns))
    return out


def broken_program(program: Program) -> tuple[Program, int] | None:
    """``program`` with every function body of the code under test replaced by a panic, and how many bodies were
    replaced; None when there is no body to break. Used only when no wrong-valued variant compiles."""
    source, replaced = extract.break_function_bodies(program.source)
    if not replaced:
        return None
    return Program(source, "test", program.edition, program.label + " (code under test broken)", True,
                   program.tests, program.tests_untrusted, program.returns), replaced


KEYWORDS = frozenset("as break const continue crate else enum extern false fn for if impl in let loop match mod move "
                     "mut pub ref return self Self static struct super trait true type unsafe use where while async "
                     "await dyn".split())
RELATED_SHARE = 0.25  # the share of the given code's identifiers and numbers the answer's code must keep


def _tokens(code: str) -> set[str]:
    from ..sandbox.rustsrc import mask

    return {t for t in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d[\d_]*(?:\.\d+)?", mask(code)) if t not in KEYWORDS}


_NOOPS = re.compile(
    r"\bconst\s+_\s*:[^=;]*=[^;]*;"                                  # const _: () = ();
    r"|\bstatic\s+_\w*\s*:[^=;]*=[^;]*;"
    r"|(?:pub\s*)?fn\s+_\w*\s*\(\s*\)\s*(?:->\s*\(\s*\)\s*)?\{\s*\}"     # fn _x() {}
    r"|#\s*\[\s*(?:allow|warn|inline|must_use|doc|rustfmt::skip|cold|track_caller)\b[^\]]*\]"  # inert attributes
    r"|\blet\s+_\s*=\s*\(\s*\)\s*;"
    r"|;\s*(?=;)")  # stray semicolons


def _without_noops(code: str) -> str:
    """``code`` without comments and without items or attributes that change nothing (F5: `const _: () = ();`
    added to the given code made a "change")."""
    text = extract.strip_comments(code)
    while True:
        new = _NOOPS.sub(" ", text)
        if new == text:
            return text
        text = new


def change_status(given: str, code: str) -> tuple[str | None, str]:
    """(status, detail) for an answer's code that must rework ``given``: "no_change" when it is the given code with
    only comments or whitespace changed, "unrelated" when it keeps less than ``RELATED_SHARE`` of the given code's
    identifiers and numbers (``fn _x() {}``, a comment alone); (None, "") otherwise."""
    if not given.strip():
        return None, ""
    from .metrics import normalize_code

    same = normalize_code(_without_noops(given)) == normalize_code(_without_noops(code))
    if same:
        return "no_change", "the answer's code is the given code (comments and whitespace aside)"
    want, got = _tokens(given), _tokens(code)
    share = len(want & got) / len(want) if want else 1.0
    if share < RELATED_SHARE:
        return "unrelated", (f"the answer's code keeps {100 * share:.0f}% of the given code's identifiers and numbers "
                             f"(at least {100 * RELATED_SHARE:.0f}% needed): it does not rework the given code")
    return None, ""


def task_of(category: str) -> TaskSpec:
    """The spec for a Strandset category or benchmark kind (KeyError names the known ones)."""
    try:
        return TASKS[category]
    except KeyError:
        raise KeyError(f"no task spec for {category!r}; known: {', '.join(TASKS)}") from None


def _answer_code(spec: TaskSpec, answer: str, entry_point: str | None = None) -> str | None:
    if spec.code == "fragment":
        frag = extract.extract_fragment(answer)
        return frag or None
    if spec.code == "first" and entry_point:
        for b in extract.rust_blocks(extract.strip_thinking(answer)):
            if f"fn {entry_point}" in b.code:
                return b.code
    return extract.extract_code(answer, spec.code or "first")


def _signature_returns(signature: str) -> dict[str, str] | None:
    """{function name: return type} of a task's given signature (None when it names no function)."""
    from ..sandbox.verdict import return_type

    m = re.search(r"\bfn\s+(?:r#)?([A-Za-z_][A-Za-z0-9_]*)", signature or "")
    if not m:
        return None
    ret = return_type(signature + " {}", m.group(1))
    return None if ret is None else {m.group(1): ret}


def _without_restated(context: str, code: str) -> str | None:
    """The fallback program of an answer that restated the context (defined twice): the context without the items
    the answer restates IDENTICALLY (comments and whitespace aside), then the answer. None when the answer
    restates a context item differently (its own `Point` with an always-true `==`, F20): the context's items are
    part of the task, so the duplicate-definition error of the first program stands."""
    from ..sandbox.rustsrc import top_items

    def norm(text: str) -> str:
        return re.sub(r"\s+", "", extract.strip_comments(text))

    mine = {}
    for key, text in top_items(code):
        mine.setdefault(key, set()).add(norm(text))
    kept = []
    for key, text in top_items(context):
        if key in mine:
            if mine[key] != {norm(text)}:
                return None
            continue
        kept.append(text)
    return extract.join_rust("\n".join(kept), code)


_STUB = r"(?:::)?(?:std\s*::\s*|core\s*::\s*)?(?:todo|unimplemented|unreachable)\s*!\s*(?:\([^()]*\)|\[[^\]]*\]|\{[^{}]*\})"


def _is_stub(code: str) -> bool:
    """Whether completion/search code is, or has as a whole function body or match arm, a ``todo!()``-family
    macro (F14), or defines nothing but empty functions."""
    from ..sandbox.rustsrc import mask

    m = mask(code).strip()
    if re.fullmatch(_STUB + r"\s*[;,]?", m):
        return True
    if re.search(r"=>\s*" + _STUB + r"|\{\s*" + _STUB + r"\s*;?\s*\}", m):
        return True
    return bool(re.fullmatch(r"(?:(?:pub\s*)?fn\s+\w+\s*\(\s*\)\s*\{\s*\}\s*)+", m))


def reference_needs(item_data: dict, crates: list[str]) -> bool:
    """Whether the task's own text (context, reference code, prompt, canonical solution, tests) names every one of
    ``crates``: only then is a ``needs_crate`` answer excluded from the denominator rather than failed (F17)."""
    parts = [str(item_data.get(k) or "") for k in ("prompt", "canonical_solution", "test")]
    for field in ("input_data", "output_data"):
        parts += [str(v) for v in (item_data.get(field) or {}).values()]
    text = "\n".join(parts)
    return bool(crates) and all(re.search(rf"\b{re.escape(c)}\b", text) for c in crates)


def _reference_signatures(item_data: dict, test: str) -> dict[str, str]:
    """{function: head} of the reference solution's top-level functions that the tests call (rows that give no
    function_signature): the answer must keep their types."""
    from ..sandbox.rustsrc import mask
    from ..sandbox.verdict import signature_of

    ref = str((item_data.get("output_data") or {}).get("code") or "")
    masked = mask(ref)
    called = set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(", mask(test)))
    out = {}
    for m in re.finditer(r"\bfn\s+(?:r#)?([A-Za-z_][A-Za-z0-9_]*)", masked):
        name = m.group(1)
        if name in called and name not in out and masked[:m.start()].count("{") == masked[:m.start()].count("}"):
            head = signature_of(ref, name)
            if head:
                out[name] = head
    return out


def build_programs(spec: TaskSpec, item_data: dict, answer: str, default_edition: str = "2021") -> ProgramPlan:
    """The programs that check an answer (or the status that makes running one pointless).

    Programs with tests run under the sandbox's verdict harness: the answer's code and the tests are separate
    (``Program.tests``), so nothing in the answer can change what the tests are or how they report.
    """
    if not extract.strip_thinking(answer or "").strip():
        return ProgramPlan(status="empty_answer")
    if spec.program is None:
        return ProgramPlan()
    code = _answer_code(spec, answer, item_data.get("entry_point"))
    if not code or not code.strip():
        return ProgramPlan(status="no_code")
    inp = item_data.get("input_data") or {}
    test = str(item_data.get("test") or "").strip()
    edition = str(item_data.get("edition") or default_edition)
    plan = ProgramPlan(code=code)
    if spec.given_field:
        status, _detail = change_status(str(inp.get(spec.given_field) or ""), code)
        if status:
            return ProgramPlan(status=status, code=code)

    def add(source: str, label: str, returns: dict | None = None, answer: str | None = None,
            given: str | None = None, signatures: dict | None = None) -> None:
        plan.programs.append(Program(source, "test" if test else "check", edition, label + ("+test" if test else ""),
                                     bool(test), test or None, False, returns if test else None,
                                     answer if test else None, given if test else None,
                                     signatures if test else None))

    if spec.name in ("code_completion", "code_search") and _is_stub(code):
        return ProgramPlan(status="stub", code=code)
    if spec.program == "context":
        ctx = str(inp.get("code_context") or "")
        body = extract.strip_test_modules(code) if test else code
        sig = str(inp.get("function_signature") or "")
        returns = _signature_returns(sig)
        signatures = {next(iter(returns)): sig} if returns else None
        if returns is None and test:  # no signature given: the reference's fixes the functions the tests call (F13)
            signatures = _reference_signatures(item_data, test)
            returns = {}
            for name, head in signatures.items():
                returns.update(_signature_returns(head) or {})
            returns = returns or None
        add(extract.merge_context(ctx, body), "context+code", returns, body, ctx, signatures)
        fallback = _without_restated(ctx, body) if ctx.strip() else None
        if fallback is not None:
            add(fallback, "code", returns, body, ctx, signatures)
    elif spec.program == "completion":
        prefix, suffix = str(inp.get("prefix") or ""), str(inp.get("suffix") or "")
        add(prefix + code + suffix, "prefix+completion+suffix", None, code, prefix + "\n" + suffix)
    elif spec.program == "tests_for_code":
        if "#[test]" not in code:
            return ProgramPlan(status="no_tests", code=code)
        ctx = str(inp.get("code_context") or "")
        under_test = str(inp.get("code_to_test") or "")
        if extract.has_test_module(code):  # the answer may restate the code under test next to its tests
            tests = extract.test_modules(code)
        else:
            tests = extract.wrap_tests(code, str(inp.get("test_context") or ""))
        plan.programs.append(Program(extract.join_rust(ctx, under_test), "test", edition,
                                     "context+code_to_test+tests", True, tests, True))
    elif spec.program == "benchmark":
        prompt = str(item_data.get("prompt") or "")
        entry = str(item_data.get("entry_point") or "")
        body = extract.strip_test_modules(code)
        if entry and f"fn {entry}" in body:  # the answer is the whole function: its return type is the prompt's
            from ..sandbox.verdict import return_type

            from ..sandbox.verdict import signature_of

            want = return_type(prompt + "\n}", entry)
            head = signature_of(prompt + "\n}", entry)
            add(extract.join_rust(extract.prompt_uses(prompt, body), body), "code",
                {entry: want} if want is not None else None, body, prompt, {entry: head} if head else None)
        else:  # the answer continues the prompt (a function body)
            cont = body if extract.brace_balance(prompt + "\n" + body) <= 0 else body + "\n}"
            add(prompt + "\n" + cont + "\n", "prompt+body", None, body, prompt)
    else:  # pragma: no cover - registry typo
        raise ValueError(f"unknown program kind {spec.program!r}")
    return plan
