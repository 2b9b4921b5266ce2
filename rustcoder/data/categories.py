"""The 15 Strandset-Rust-v1 task categories: their fields, prompts and reference answers.

Each category is data: the input fields it reads, the output fields its answer is made of, a system
prompt, and how the user turn and the assistant answer are written. Code in answers is fenced as
```rust blocks so that evaluation can extract it the same way for every category.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

SYSTEM_PREAMBLE = "You are an expert Rust programmer. "


def _ctx(inp: dict) -> str:
    ctx = str(inp.get("code_context") or "").strip()
    return f"\n\nContext:\n```rust\n{ctx}\n```" if ctx else ""


def _code(text: str) -> str:
    return f"```rust\n{str(text).strip()}\n```"


def _join_tests(value) -> str:
    if isinstance(value, (list, tuple)):
        return "\n\n".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


@dataclass(frozen=True)
class Category:
    """One task category: required input/output fields, prompts, and the kind of answer."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    system: str
    user: Callable[[dict], str]
    answer: Callable[[dict], str]
    answer_kind: str  # "code", "text+code", "text", "name", "api" (what evaluation scores)
    optional_inputs: tuple[str, ...] = ("code_context",)


def _gen_user(i: dict) -> str:
    sig = str(i.get("function_signature") or "").strip()
    sig_part = f"\n\nSignature:\n{_code(sig)}" if sig else ""
    return f"{str(i['title']).strip()}\n\n{str(i['description']).strip()}{sig_part}{_ctx(i)}"


_CATEGORIES = [
    Category(
        "code_generation", ("title", "description"), ("code",),
        SYSTEM_PREAMBLE + "Write correct, idiomatic Rust that implements the request. Answer with the code.",
        _gen_user, lambda o: _code(o["code"]), "code",
        optional_inputs=("code_context", "function_signature"),
    ),
    Category(
        "code_completion", ("prefix", "suffix"), ("completion",),
        SYSTEM_PREAMBLE + "Fill in the missing code between the prefix and the suffix. Answer with only the "
        "missing code.",
        lambda i: f"Prefix:\n{_code(i['prefix'])}\n\nSuffix:\n{_code(i['suffix'])}",
        lambda o: _code(o["completion"]), "code", optional_inputs=(),
    ),
    Category(
        "bug_detection", ("buggy_code",), ("bug_description", "fixed_code"),
        SYSTEM_PREAMBLE + "Find the bug in the code, explain it, then give the fixed code.",
        lambda i: f"Find and fix the bug:\n{_code(i['buggy_code'])}{_ctx(i)}",
        lambda o: f"{str(o['bug_description']).strip()}\n\nFixed code:\n{_code(o['fixed_code'])}", "text+code",
    ),
    Category(
        "code_review", ("code_before",), ("review_comment", "code_after"),
        SYSTEM_PREAMBLE + "Review the code: write a review comment, then give the improved code.",
        lambda i: f"Review this code:\n{_code(i['code_before'])}{_ctx(i)}",
        lambda o: f"{str(o['review_comment']).strip()}\n\nImproved code:\n{_code(o['code_after'])}", "text+code",
    ),
    Category(
        "code_refactoring", ("code_before",), ("rationale", "code_after"),
        SYSTEM_PREAMBLE + "Refactor the code for readability and idiom without changing behaviour. Explain "
        "why, then give the refactored code.",
        lambda i: f"Refactor this code:\n{_code(i['code_before'])}{_ctx(i)}",
        lambda o: f"{str(o['rationale']).strip()}\n\nRefactored code:\n{_code(o['code_after'])}", "text+code",
    ),
    Category(
        "code_optimization", ("code_before",), ("rationale", "code_after"),
        SYSTEM_PREAMBLE + "Optimize the code for performance without changing behaviour. Explain why, then "
        "give the optimized code.",
        lambda i: f"Optimize this code:\n{_code(i['code_before'])}{_ctx(i)}",
        lambda o: f"{str(o['rationale']).strip()}\n\nOptimized code:\n{_code(o['code_after'])}", "text+code",
    ),
    Category(
        "docstring_generation", ("code",), ("docstring",),
        SYSTEM_PREAMBLE + "Write a Rust doc comment (///) for the code. Answer with the doc comment only.",
        lambda i: f"Write the documentation for:\n{_code(i['code'])}{_ctx(i)}",
        lambda o: str(o["docstring"]).strip(), "text",
    ),
    Category(
        "comment_generation", ("code",), ("commented_code",),
        SYSTEM_PREAMBLE + "Add helpful inline comments to the code. Answer with the commented code.",
        lambda i: f"Add comments to this code:\n{_code(i['code'])}{_ctx(i)}",
        lambda o: _code(o["commented_code"]), "code",
    ),
    Category(
        "code_summarization", ("code",), ("summary",),
        SYSTEM_PREAMBLE + "Summarize what the code does in a few sentences.",
        lambda i: f"Summarize this code:\n{_code(i['code'])}{_ctx(i)}",
        lambda o: str(o["summary"]).strip(), "text",
    ),
    Category(
        "code_explanation", ("code",), ("explanation",),
        SYSTEM_PREAMBLE + "Explain how the code works, step by step.",
        lambda i: f"Explain this code:\n{_code(i['code'])}{_ctx(i)}",
        lambda o: str(o["explanation"]).strip(), "text",
    ),
    Category(
        "function_naming", ("code",), ("function_name",),
        SYSTEM_PREAMBLE + "Suggest a descriptive snake_case name for the function written as "
        "__placeholder__. Answer with the name only.",
        lambda i: f"Name the function __placeholder__:\n{_code(i['code'])}{_ctx(i)}",
        lambda o: str(o["function_name"]).strip(), "name",
    ),
    Category(
        "variable_naming", ("code",), ("variable_name",),
        SYSTEM_PREAMBLE + "Suggest a descriptive snake_case name for the variable written as "
        "__placeholder__. Answer with the name only.",
        lambda i: f"Name the variable __placeholder__:\n{_code(i['code'])}{_ctx(i)}",
        lambda o: str(o["variable_name"]).strip(), "name",
    ),
    Category(
        "code_search", ("query",), ("code_snippet",),
        SYSTEM_PREAMBLE + "Answer the query with a short Rust code snippet.",
        lambda i: f"{str(i['query']).strip()}{_ctx(i)}",
        lambda o: _code(o["code_snippet"]), "code",
    ),
    Category(
        "test_generation", ("code_to_test",), ("test_cases",),
        SYSTEM_PREAMBLE + "Write unit tests (#[test] functions) for the code. Answer with the tests.",
        lambda i: (f"Write tests for:\n{_code(i['code_to_test'])}{_ctx(i)}"
                   + (f"\n\nTest context:\n{_code(i['test_context'])}"
                      if str(i.get("test_context") or "").strip() else "")),
        lambda o: _code(_join_tests(o["test_cases"])), "code",
        optional_inputs=("code_context", "test_context"),
    ),
    Category(
        "api_usage_prediction", ("code",), ("next_api_call",),
        SYSTEM_PREAMBLE + "Predict the next API call that follows the code. Answer with the call only.",
        lambda i: f"What is the next API call?\n{_code(i['code'])}{_ctx(i)}",
        lambda o: str(o["next_api_call"]).strip(), "api",
    ),
]

CATEGORIES: dict[str, Category] = {c.name: c for c in _CATEGORIES}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)


def build_messages(category: str, input_data: dict, output_data: dict | None = None) -> list[dict]:
    """Chat messages for one row: system, user, and (when output_data is given) the assistant answer."""
    cat = CATEGORIES[category]
    messages = [
        {"role": "system", "content": cat.system},
        {"role": "user", "content": cat.user(input_data)},
    ]
    if output_data is not None:
        messages.append({"role": "assistant", "content": cat.answer(output_data)})
    return messages
