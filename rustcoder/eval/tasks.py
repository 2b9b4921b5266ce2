"""The task registry: how each kind of task turns an answer into programs and scores, as data.

A ``TaskSpec`` says which code an answer holds (first/last block, a fragment), how the program that
rustc sees is assembled (with the row's ``code_context``, prefix + suffix, the row's or benchmark's
tests), which reference field prose or names are compared with, and the category's primary metric.
Keys are the 15 Strandset categories plus ``humaneval-rust`` for benchmarks in that format.
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import extract

# Every per-sample status an evaluation can report (docs/eval.md explains each).
EXEC_STATUSES = ("pass", "test_fail", "compile_error", "needs_crate", "timeout", "runtime_error",
                 "output_limit", "sandbox_error")
STATUSES = EXEC_STATUSES + (
    "empty_answer",      # the model produced nothing (or only whitespace / a think block)
    "no_code",           # a code task whose answer holds no Rust
    "no_tests",          # test_generation: the answer holds no #[test] function, or none of them ran
    "weak_tests",        # test_generation: the tests also all pass against a broken version of the code
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
    description: str = ""


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("code_generation", "code", "pass", code="first", program="context",
             description="code_context + answer code (+ the row's tests): compiles, tests pass"),
    TaskSpec("code_completion", "code", "pass", code="fragment", program="completion",
             match_field="completion", match="code",
             description="prefix + completion + suffix compiles; exact match and edit similarity"),
    TaskSpec("bug_detection", "text+code", "pass", code="last", program="context",
             text_field="bug_description",
             description="the fixed code compiles with the context; chrF of the explanation"),
    TaskSpec("code_review", "text+code", "pass", code="last", program="context", text_field="review_comment",
             description="the code after review compiles; chrF of the review comment"),
    TaskSpec("code_refactoring", "text+code", "pass", code="last", program="context", text_field="rationale",
             description="the refactored code compiles; chrF of the rationale"),
    TaskSpec("code_optimization", "text+code", "pass", code="last", program="context", text_field="rationale",
             description="the optimized code compiles; chrF of the rationale"),
    TaskSpec("docstring_generation", "text", "chrf", text_field="docstring",
             description="chrF of the doc comment"),
    TaskSpec("comment_generation", "code", "pass", code="first", program="context", checks=("code_preserved",),
             description="the commented code compiles and is the input code once comments are removed"),
    TaskSpec("code_summarization", "text", "chrf", text_field="summary", description="chrF of the summary"),
    TaskSpec("code_explanation", "text", "chrf", text_field="explanation", description="chrF of the explanation"),
    TaskSpec("function_naming", "name", "exact", match_field="function_name", match="name",
             checks=("identifier",), description="exact match of the normalised name; token F1"),
    TaskSpec("variable_naming", "name", "exact", match_field="variable_name", match="name",
             checks=("identifier",), description="exact match of the normalised name; token F1"),
    TaskSpec("code_search", "code", "pass", code="first", program="context", text_field="code_snippet",
             description="the snippet compiles with the context; chrF against the reference snippet"),
    TaskSpec("test_generation", "code", "pass", code="all", program="tests_for_code",
             description="context + code_to_test + the generated tests in a tests module: they compile and pass"),
    TaskSpec("api_usage_prediction", "api", "exact", match_field="next_api_call", match="code",
             description="exact match and edit similarity of the normalised call"),
    TaskSpec("humaneval-rust", "benchmark", "pass", code="first", program="benchmark",
             description="the function + the benchmark's tests pass (pass@k)"),
)}

# rustc codes of "defined twice" errors: the answer restated something the context already defines.
DUPLICATE_DEFINITION_CODES = {"E0428", "E0252", "E0201", "E0119", "E0255"}


@dataclass
class Program:
    """One Rust source to run in the sandbox."""

    source: str
    mode: str  # "check" or "test"
    edition: str
    label: str
    has_tests: bool


@dataclass
class ProgramPlan:
    """What to run for a sample: a status decided before execution, or programs to try in order.

    ``programs[1:]`` are fallbacks tried only when the previous one failed with nothing but
    duplicate-definition errors (the answer restated the context).
    """

    status: str | None = None
    code: str | None = None
    programs: list[Program] = field(default_factory=list)


# Statuses of the broken-code run that show the tests notice a broken implementation.
DISCRIMINATING_STATUSES = ("test_fail", "runtime_error", "timeout", "output_limit")


def broken_program(program: Program) -> tuple[Program, int] | None:
    """``program`` with every function body outside its tests replaced by a panic, and how many
    bodies were replaced; None when there is no body to break (nothing to check the tests against)."""
    source, replaced = extract.break_function_bodies(program.source)
    if not replaced:
        return None
    return Program(source, "test", program.edition, program.label + " (code under test broken)", True), replaced


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


def build_programs(spec: TaskSpec, item_data: dict, answer: str, default_edition: str = "2021") -> ProgramPlan:
    """The programs that check an answer (or the status that makes running one pointless)."""
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

    def add(source: str, label: str, tests: bool) -> None:
        plan.programs.append(Program(source, "test" if tests else "check", edition, label, tests))

    if spec.program == "context":
        ctx = str(inp.get("code_context") or "")
        body = extract.strip_test_modules(code) if test else code
        add(extract.join_rust(extract.merge_context(ctx, body), test), "context+code" + ("+test" if test else ""),
            bool(test))
        if ctx.strip():
            add(extract.join_rust(body, test), "code" + ("+test" if test else ""), bool(test))
    elif spec.program == "completion":
        source = str(inp.get("prefix") or "") + code + str(inp.get("suffix") or "")
        add(extract.join_rust(source, test), "prefix+completion+suffix" + ("+test" if test else ""), bool(test))
    elif spec.program == "tests_for_code":
        if "#[test]" not in code:
            return ProgramPlan(status="no_tests", code=code)
        ctx = str(inp.get("code_context") or "")
        under_test = str(inp.get("code_to_test") or "")
        tests = code if extract.has_test_module(code) else extract.wrap_tests(code, str(inp.get("test_context") or ""))
        add(extract.join_rust(ctx, under_test, tests), "context+code_to_test+tests", True)
        if extract.has_test_module(code):  # the answer may restate the code under test next to its tests
            add(extract.join_rust(extract.merge_context(ctx, code)), "context+answer", True)
    elif spec.program == "benchmark":
        prompt = str(item_data.get("prompt") or "")
        entry = str(item_data.get("entry_point") or "")
        body = extract.strip_test_modules(code)
        if entry and f"fn {entry}" in body:  # the answer is the whole function
            source = extract.join_rust(extract.prompt_uses(prompt, body), body, test)
            label = "code+test"
        else:  # the answer continues the prompt (a function body)
            cont = body if extract.brace_balance(prompt + "\n" + body) <= 0 else body + "\n}"
            source = extract.join_rust(prompt + "\n" + cont, test)
            label = "prompt+body+test"
        add(source, label, bool(test))
    else:  # pragma: no cover - registry typo
        raise ValueError(f"unknown program kind {spec.program!r}")
    return plan
