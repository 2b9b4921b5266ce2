"""Getting Rust out of model answers, and the small source surgery programs need.

Answers fence code as ```rust blocks (the training targets do, see ``data/categories.py``), but
models also answer with an unlabeled fence, an unclosed fence (cut at max_new_tokens), or bare
code. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUST_LANGS = {"rust", "rs", ""}
_FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*$", re.MULTILINE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_RUST_HINTS = re.compile(
    r"(^|\n)\s*(pub\s+)?(fn|struct|enum|impl|trait|use|mod|let|const|static|type|#\[)\b|::|;\s*$|=>|\{\s*$",
    re.MULTILINE,
)


@dataclass
class CodeBlock:
    """A fenced block: its language tag, text, and whether its closing fence was missing."""

    lang: str
    code: str
    closed: bool
    start: int
    end: int


def strip_thinking(text: str) -> str:
    """Remove <think>...</think> spans (an unclosed one runs to the end) and stray end-of-turn markers."""
    text = _THINK.sub("", text or "")
    return text.replace("<|im_end|>", "").replace("<|endoftext|>", "")


def code_blocks(text: str) -> list[CodeBlock]:
    """Every fenced block in order; a block whose closing fence is missing runs to the end of the text."""
    blocks: list[CodeBlock] = []
    pos = 0
    while True:
        m = _FENCE_OPEN.search(text, pos)
        if not m:
            break
        body_start = m.end() + 1 if m.end() < len(text) else m.end()
        close = re.compile(r"^[ \t]*```[ \t]*$", re.MULTILINE).search(text, body_start)
        if close:
            blocks.append(CodeBlock(m.group(1).lower(), text[body_start:close.start()].rstrip("\n"), True,
                                    m.start(), close.end()))
            pos = close.end()
        else:
            blocks.append(CodeBlock(m.group(1).lower(), text[body_start:].rstrip(), False, m.start(), len(text)))
            break
    return blocks


def rust_blocks(text: str) -> list[CodeBlock]:
    """Fenced blocks tagged rust/rs or untagged."""
    return [b for b in code_blocks(text) if b.lang in RUST_LANGS]


def looks_like_rust(text: str) -> bool:
    """A cheap test that unfenced text is code rather than prose."""
    return bool(_RUST_HINTS.search(text or ""))


def extract_code(answer: str, which: str = "first") -> str | None:
    """The Rust in an answer, or None when it has none.

    ``which``: "first" block, "last" block (text+code answers end with the code), or "all" blocks
    joined. Without fences, the whole answer when it looks like Rust.
    """
    text = strip_thinking(answer)
    blocks = [b for b in rust_blocks(text) if b.code.strip()]
    if blocks:
        if which == "last":
            return blocks[-1].code
        if which == "all":
            return "\n\n".join(b.code for b in blocks)
        return blocks[0].code
    if code_blocks(text):  # only blocks in another language (```python ...)
        return None
    stripped = text.strip()
    return stripped if stripped and looks_like_rust(stripped) else None


def extract_fragment(answer: str) -> str:
    """A code fragment (completion, API call): the first fenced block, else the answer without backticks."""
    text = strip_thinking(answer)
    blocks = [b for b in rust_blocks(text) if b.code.strip()]
    if blocks:
        return blocks[0].code.strip()
    stripped = text.strip()
    if stripped.startswith("`") and stripped.endswith("`") and "\n" not in stripped:
        stripped = stripped.strip("`")
    return stripped


def text_without_code(answer: str) -> str:
    """The prose of an answer: fenced blocks removed, and a "Fixed code:"-style label right before one."""
    text = strip_thinking(answer)
    out, pos = [], 0
    for b in code_blocks(text):
        before = text[pos:b.start]
        before = re.sub(r"(?:^|\n)[^\n]{0,40}:\s*$", "", before.rstrip())  # "Fixed code:"
        out.append(before)
        pos = b.end
    out.append(text[pos:])
    return re.sub(r"\n{3,}", "\n\n", "\n".join(p.strip("\n") for p in out if p.strip())).strip()


def unfence(answer: str) -> str:
    """An answer that is a single fenced block, without its fence; other answers unchanged (stripped)."""
    text = strip_thinking(answer).strip()
    blocks = code_blocks(text)
    if len(blocks) == 1 and text.startswith("```") and (not blocks[0].closed or text.endswith("```")):
        return blocks[0].code.strip()
    return text


# ---- braces and comments, read by the sandbox's Rust scanner (``rustsrc``: one lexer for the project) ------

def brace_balance(source: str) -> int:
    """Open minus close curly braces outside strings and comments (> 0: unclosed)."""
    masked = _masked(source)
    return masked.count("{") - masked.count("}")


def _matching_close(masked: str, open_index: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_index`` of masked text, counting curly braces only."""
    depth = 0
    for i in range(open_index, len(masked)):
        c = masked[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


_TEST_MOD = re.compile(r"(?:#\[cfg\(test\)\]\s*)?(?:pub\s+)?mod\s+\w+\s*\{")


def strip_test_modules(source: str) -> str:
    """Remove ``#[cfg(test)] mod x { ... }`` blocks (and any module holding #[test]) from code.

    Used when the row or benchmark brings its own tests: two ``mod tests`` would collide (E0428).
    """
    masked = _masked(source)
    out, pos = [], 0
    for start, end in _test_spans(masked):
        if start < pos:  # a test module inside one already removed
            continue
        out.append(source[pos:start])
        pos = end
    out.append(source[pos:])
    return "".join(out)


def has_test_module(source: str) -> bool:
    """True when the code already wraps its #[test] functions in a module."""
    masked = _masked(source)
    for m in _TEST_MOD.finditer(masked):
        close = _matching_close(masked, m.end() - 1)
        if close is not None and "#[test]" in masked[m.start():close + 1]:
            return True
    return False


def strip_comments(source: str) -> str:
    """Source with // and /* */ comments removed (strings kept), whitespace collapsed."""
    from ..sandbox.rustsrc import comment_spans

    out, pos = [], 0
    for start, end in comment_spans(source):
        out.append(source[pos:start])
        pos = end
    out.append(source[pos:])
    return re.sub(r"\s+", " ", "".join(out)).strip()


def _use_lines(source: str) -> set[str]:
    return {re.sub(r"\s+", "", line) for line in source.splitlines() if line.strip().startswith("use ")}


def merge_context(context: str, code: str) -> str:
    """code_context + code without repeating what the code already has.

    The whole context is dropped when the code contains it; otherwise ``use`` lines of the context
    that the code repeats are dropped (a second identical ``use`` is E0252).
    """
    ctx = (context or "").strip()
    if not ctx:
        return code
    if ctx in code:  # restated as code, not quoted inside a comment or a string (the scanner reads it as alone)
        from ..sandbox.rustsrc import mask

        k = code.find(ctx)
        if mask(code)[k:k + len(ctx)] == mask(ctx):
            return code
    seen = _use_lines(code)
    kept = [line for line in ctx.splitlines()
            if not (line.strip().startswith("use ") and re.sub(r"\s+", "", line) in seen)]
    return join_rust("\n".join(kept), code)


def join_rust(*parts: str) -> str:
    """Join source parts with blank lines, skipping empty ones."""
    return "\n\n".join(p.strip("\n") for p in parts if p and p.strip()) + "\n"


def wrap_tests(tests: str, test_context: str = "") -> str:
    """Generated #[test] functions inside ``#[cfg(test)] mod tests { use super::*; ... }``."""
    body = join_rust(test_context, tests)
    return f"#[cfg(test)]\nmod tests {{\n    use super::*;\n\n{body}}}\n"


def prompt_uses(prompt: str, code: str) -> str:
    """``use`` lines of a benchmark prompt that the model's code does not repeat."""
    seen = _use_lines(code)
    return "\n".join(line for line in prompt.splitlines()
                     if line.strip().startswith("use ") and re.sub(r"\s+", "", line) not in seen)


# ---- a broken version of the code under test (do the generated tests test anything?) -----------

BROKEN_BODY = '{ panic!("rustcoder: body removed to check that the tests test it") }'
_FN_NAME = re.compile(r"\bfn\s+[A-Za-z_][A-Za-z0-9_]*")


def _masked(source: str) -> str:
    """``source`` with comments, string and char literals blanked (same length, same offsets)."""
    from ..sandbox.rustsrc import mask

    return mask(source)


def _test_spans(masked: str) -> list[tuple[int, int]]:
    spans = []
    for m in _TEST_MOD.finditer(masked):
        close = _matching_close(masked, m.end() - 1)
        if close is not None and (m.group(0).startswith("#[cfg(test)]") or "#[test]" in masked[m.start():close]):
            spans.append((m.start(), close + 1))
    return spans


def _function_bodies(source: str) -> list[tuple[str, int, int, str]]:
    """(name, index of the body's ``{``, index after its ``}``, signature text) of every function with a body
    outside test code (test modules, ``#[test]`` functions) and not returning ``impl Trait``."""
    masked = _masked(source)
    skip = _test_spans(masked)
    found: list[tuple[str, int, int, str]] = []
    pos = 0
    for m in _FN_NAME.finditer(masked):
        start = m.start()
        if start < pos or any(a <= start < b for a, b in skip):
            continue
        head = masked[max(0, start - 300):start]
        item_start = max(head.rfind("}"), head.rfind(";"))
        if "#[test]" in head[item_start + 1:]:
            continue
        depth, j = 0, m.end()
        while j < len(masked):
            ch = masked[j]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch in "{;":
                break
            j += 1
        if j >= len(masked) or masked[j] == ";":
            continue  # a declaration without a body (trait method, extern fn)
        close = _matching_close(masked, j)
        if close is None:
            continue
        pos = close + 1
        if re.search(r"->\s*impl\b", masked[m.end():j]):
            continue
        found.append((m.group(0).split()[-1], j, close + 1, source[m.start():j]))
    return found


def break_function_bodies(source: str) -> tuple[str, int]:
    """``source`` with the body of every function outside test code replaced by a panic, and the
    number of bodies replaced.

    Tests that still all pass against this version do not exercise the code under test. Test
    modules (``#[cfg(test)] mod``, or any module holding ``#[test]``) and ``#[test]`` functions are
    kept; functions returning ``impl Trait`` are kept too (a panicking body does not name a type).
    """
    edits = [(a, b) for _, a, b, _ in _function_bodies(source)]
    out = source
    for a, b in reversed(edits):
        out = out[:a] + BROKEN_BODY + out[b:]
    return out, len(edits)


_INTEGERS = {"i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize"}


def _wrong_values(ret: str) -> list[str]:
    """Plausible wrong values for a function returning ``ret`` (whitespace removed), most telling first."""
    if ret in ("", "()"):
        return [""]  # does nothing
    if ret == "bool":
        return ["true", "false"]
    if ret in _INTEGERS:
        return ["0", "1"]
    if ret in ("f32", "f64"):
        return ["0.0", "1.0"]
    if ret == "char":
        return ["'\\0'", "'x'"]
    if ret == "String":
        return ["String::new()", 'String::from("xyzzy")']
    if re.fullmatch(r"&('\w+)?str", ret):
        return ['""', '"xyzzy"']
    if re.fullmatch(r"&('\w+)?(mut)?\[.*\]", ret):
        return ["&mut []" if "mut" in ret.split("[")[0] else "&[]"]
    if ret.startswith(("Option<", "std::option::Option<")):
        return ["None", "Default::default()"]
    if ret.startswith(("Vec<", "std::vec::Vec<")):
        return ["Vec::new()"]
    return ["Default::default()"]


def mutants(source: str) -> list[tuple[str, str]]:
    """Wrong-valued variants of ``source``: (mutated source, what changed), one function body replaced by a wrong
    value each, ordered so that every function gets its first value before any gets its second."""
    from ..sandbox.verdict import return_type

    per_fn = []
    for name, a, b, signature in _function_bodies(source):
        if name == "main":
            continue
        ret = return_type(signature + " {}", name)
        body = re.sub(r"\s+", "", source[a:b])
        variants = [(source[:a] + "{ " + v + " }" + source[b:], f"{name} returns {v or 'at once'}")
                    for v in _wrong_values(ret or "") if re.sub(r"\s+", "", "{" + v + "}") != body]
        if ret in _INTEGERS or ret == "bool":  # F21: the right value nudged, not a constant
            inner = f"(move || -> {ret} {source[a:b]})()"
            nudged = f"!{inner}" if ret == "bool" else f"{inner}.wrapping_add(1)"
            variants.insert(0, (source[:a] + "{ " + nudged + " }" + source[b:],
                                f"{name} result perturbed ({'negated' if ret == 'bool' else '+ 1'})"))
        per_fn.append(variants)
    out = []
    for rank in range(max((len(v) for v in per_fn), default=0)):
        out += [v[rank] for v in per_fn if rank < len(v)]
    return out


def test_modules(source: str) -> str:
    """Only the test modules of ``source`` (``#[cfg(test)] mod ...`` or a module holding ``#[test]``), joined."""
    masked = _masked(source)
    return "\n\n".join(source[a:b] for a, b in _test_spans(masked)) + "\n"
