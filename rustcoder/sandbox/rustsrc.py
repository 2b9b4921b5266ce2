"""Reading Rust source text without a parser: comments and literals blanked, matching delimiters, the module
path of a position, and the ``#[test]`` functions of a test file. Enough for the verdict harness to find
tests and for the static checks to see identifiers; never used to decide that code is *correct*.

A hand-written scanner (not ``syn`` or tree-sitter) because the sandbox is standard-library only and the
questions asked are lexical: where are comments, strings and braces, which identifiers appear.
"""

from __future__ import annotations

import dataclasses
import functools
import re

_RAW_STRING = re.compile(r'[bc]?r(#*)"')  # r"..", br#".."#, cr#".."# (raw C strings, Rust 1.77+)
_LITERAL_PREFIXES = ("b", "c")  # b"..", c"..", b'..': every other `ident"` / `ident'` is not Rust rustcoder knows
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_]")
_CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|.)|[^\\'\n])'")
_OPEN = {"{": "}", "(": ")", "[": "]"}


def mask(source: str) -> str:
    """``source`` with comments and the insides of string and char literals blanked (same length and
    offsets; newlines kept), so that searching it finds only code."""
    return scan(source)[0]


def unreadable(source: str) -> list[str]:
    """Why the scanner may not read ``source`` the way rustc does (an unknown literal prefix, a literal or block
    comment that never ends); empty when it reads it all. Callers refuse such text: fail closed."""
    return list(scan(source)[1])


def _prefix(source: str, i: int) -> str:
    """The identifier characters right before index ``i``."""
    k = i
    while k > 0 and _IDENT_CHAR.match(source[k - 1]):
        k -= 1
    return source[k:i]


@functools.lru_cache(maxsize=512)  # one harness asks for the same text's mask several times
def scan(source: str) -> tuple[str, tuple[str, ...]]:
    """(mask, problems): the masked text, and what the scanner could not read as rustc 1.95 lexes it."""
    masked, problems, _ = _lex(source)
    return masked, problems


@functools.lru_cache(maxsize=64)
def comment_spans(source: str) -> tuple[tuple[int, int], ...]:
    """(start, end) of every comment of ``source`` (line, nested block, a shebang line), as ``scan`` reads them."""
    return _lex(source)[2]


def _lex(source: str) -> tuple[str, tuple[str, ...], tuple[tuple[int, int], ...]]:
    """(mask, problems, comment spans): the one pass both ``scan`` and ``comment_spans`` read."""
    out = list(source)
    problems: list[str] = []
    comments: list[tuple[int, int]] = []
    i, n = 0, len(source)

    def blank(a: int, b: int) -> None:
        for k in range(a, min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    if source.startswith("#!") and not source[2:].lstrip().startswith("["):  # a shebang line
        j = source.find("\n")
        j = n if j < 0 else j
        blank(0, j)
        comments.append((0, j))
        i = j
    while i < n:
        c, nxt = source[i], source[i + 1:i + 2]
        if c == "/" and nxt == "/":
            j = source.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            comments.append((i, j))
            i = j
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if source.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif source.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                problems.append(f"a block comment at character {i} never ends")
            blank(i, j)
            comments.append((i, min(j, n)))
            i = j
        elif c in "rbc" and (raw := _RAW_STRING.match(source, i, i + 260)) \
                and (i == 0 or not _IDENT_CHAR.match(source[i - 1])):
            j = source.find('"' + raw.group(1), raw.end())
            if j < 0:
                problems.append(f"a raw string at character {i} never ends")
            j = n if j < 0 else j + 1 + len(raw.group(1))
            blank(raw.end(), j - 1 - len(raw.group(1)))
            i = j
        elif c == '"':
            pre = _prefix(source, i)
            if pre and pre not in _LITERAL_PREFIXES:
                problems.append(f"the literal prefix `{pre[-20:]}` before a string at character {i} is unknown")
            j = i + 1
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            if j >= n:
                problems.append(f"a string at character {i} never ends")
            blank(i + 1, j)
            i = j + 1
        elif c == "'":
            pre = _prefix(source, i)
            if pre and pre != "b":
                problems.append(f"the literal prefix `{pre[-20:]}` before a quote at character {i} is unknown")
            m = _CHAR.match(source, i, i + 14)
            if m:
                blank(i + 1, i + m.end() - i - 1)
                i = m.end()
            else:  # a lifetime or a label
                i += 1
        else:
            i += 1
    masked = "".join(out)
    depth = 0
    stack: list[str] = []
    for ch in masked:  # delimiters must pair up once literals and comments are gone
        if ch in _OPEN:
            stack.append(_OPEN[ch])
        elif ch in ")]}":
            if not stack or stack.pop() != ch:
                depth = -1
                break
    if depth < 0 or stack:
        problems.append("its brackets do not pair up once comments and literals are set aside")
    return masked, tuple(problems), tuple(comments)


def matching(masked: str, open_index: int) -> int | None:
    """Index of the delimiter closing the one at ``open_index`` in masked text (None when unbalanced)."""
    stack: list[str] = []
    for j in range(open_index, len(masked)):
        c = masked[j]
        if c in _OPEN:
            stack.append(_OPEN[c])
        elif c in ")]}":
            if not stack or stack.pop() != c:
                return None
            if not stack:
                return j
    return None


def depth_at(masked: str, index: int) -> int:
    """Curly-brace nesting depth at ``index`` of masked text (a prefix array computed once per text: F12)."""
    return _depths(masked)[index]


@functools.lru_cache(maxsize=64)
def _depths(masked: str) -> list[int]:
    out, depth = [0], 0
    for c in masked:
        depth += (c == "{") - (c == "}")
        out.append(depth)
    return out


def segments(masked: str) -> list[tuple[int, str]]:
    """(start, text) of the runs of masked text between ``{``, ``}`` and ``;`` (each run ends just before one), in
    one pass: item headers (``impl .. for ..``, ``use ..``) lie within one run, so per-run checks stay linear."""
    out, start = [], 0
    for m in re.finditer(r"[{};]", masked):
        out.append((start, masked[start:m.start()]))
        start = m.end()
    out.append((start, masked[start:]))
    return out


_MOD = re.compile(r"\bmod\s+(?:r#)?([A-Za-z_][A-Za-z0-9_]*)\s*\{")


def module_spans(masked: str) -> list[tuple[str, int, int]]:
    """(name, index just after its ``{``, index of its ``}``) of every inline ``mod NAME { ... }``."""
    spans = []
    ends = pairs(masked)
    for m in _MOD.finditer(masked):
        close = ends.get(m.end() - 1)
        if close is not None:
            spans.append((m.group(1), m.end(), close))
    return spans


@dataclasses.dataclass
class TestFn:
    """One ``#[test]`` function of a test file."""

    name: str
    path: list[str]  # enclosing inline modules, outermost first
    body_end: int  # index just after the closing brace of its body
    ignored: bool
    should_panic: bool
    expected: str | None  # should_panic(expected = "...")


_TEST_ATTR = re.compile(r"#\s*\[\s*test\s*\]")
_FN_HEAD = re.compile(r"\s*(?:pub\s*(?:\([^)]*\))?\s*)?(?:(?:const|async|unsafe)\s+)*(?:extern\s*\"[^\"]*\"\s*)?"
                      r"fn\s+(?:r#)?([A-Za-z_][A-Za-z0-9_]*)")
_EXPECTED = re.compile(r'expected\s*=\s*"((?:[^"\\]|\\.)*)"', re.DOTALL)


def test_functions(source: str) -> list[TestFn]:
    """Every ``#[test]`` function of ``source``, in order, with its module path and attributes."""
    masked = mask(source)
    mods = module_spans(masked)
    found = []
    for m in _TEST_ATTR.finditer(masked):
        pos, attrs = m.end(), []
        while True:  # the other attributes between #[test] and fn
            k = pos
            while k < len(masked) and masked[k].isspace():
                k += 1
            if not masked.startswith("#", k):
                break
            b = masked.find("[", k)
            close = matching(masked, b) if b >= 0 and not masked[k + 1:b].strip() else None
            if close is None:
                break
            attrs.append(source[b + 1:close])
            pos = close + 1
        head = _FN_HEAD.match(masked, pos)
        if not head:
            continue
        j, depth = head.end(), 0
        while j < len(masked):
            c = masked[j]
            if c in "([":
                depth += 1
            elif c in ")]":
                depth -= 1
            elif c == "{" and depth == 0:
                break
            elif c == ";" and depth == 0:
                j = len(masked)
                break
            j += 1
        close = matching(masked, j) if j < len(masked) else None
        if close is None:
            continue
        names = [a.split("(")[0].split("=")[0].strip() for a in attrs]
        expected = None
        for a in attrs:
            if a.strip().startswith("should_panic"):
                e = _EXPECTED.search(a)
                if e:
                    expected = e.group(1).replace('\\"', '"').replace("\\\\", "\\")
        found.append(TestFn(name=head.group(1), path=[n for n, a, b in mods if a <= m.start() < b],
                            body_end=close + 1, ignored="ignore" in names,
                            should_panic="should_panic" in names, expected=expected))
    return found


_IDENT = r"(?:r#)?([A-Za-z_][A-Za-z0-9_]*)"


def defined_names(source: str) -> list[tuple[str, str, int]]:
    """(kind, name, brace depth) of the items, variants, imports-as and macros ``source`` defines."""
    masked = mask(source)
    out = []
    for m in re.finditer(r"\b(struct|enum|union|trait|type|fn|const|static|mod)\s+(?:mut\s+)?" + _IDENT, masked):
        out.append((m.group(1), m.group(2), depth_at(masked, m.start())))
    for m in re.finditer(r"\bmacro_rules\s*!\s*" + _IDENT, masked):
        out.append(("macro", m.group(1), depth_at(masked, m.start())))
    for m in re.finditer(r"\bas\s+" + _IDENT, masked):
        if re.search(r"\buse\b[^;]*$", masked[max(0, m.start() - 400):m.start()]):
            out.append(("use-as", m.group(1), depth_at(masked, m.start())))
    ends = pairs(masked)
    for m in re.finditer(r"\benum\s+" + _IDENT + r"[^{;]*\{", masked):
        close = ends.get(m.end() - 1)
        if close is None:
            continue
        body = masked[m.end():close]
        for v in re.finditer(r"(?:^|,)\s*(?:#\s*\[[^\]]*\]\s*)*" + _IDENT, body):
            out.append(("variant", v.group(1), depth_at(masked, m.start()) + 1))
    return out


_ITEM_KEY = re.compile(r"\b(struct|enum|union|trait|type|fn|const|static|mod|macro_rules\s*!)\s+(?:mut\s+)?"
                       + _IDENT)


def top_items(source: str) -> list[tuple[str, str]]:
    """(key, text) of each top-level item of ``source`` in order, its attributes and doc comments included. The
    key names what it defines (``struct Point``, ``fn f``, ``impl PartialEq for Point`` with whitespace removed,
    ``use ...``); one linear pass over the masked text."""
    masked = mask(source)
    out, start, depth, i, n = [], 0, 0, 0, len(masked)
    while i < n:
        c = masked[i]
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
            if depth == 0 and c == "}":
                # an item ends at its closing brace unless a `;` follows on the same item (`struct S {..};` no)
                text = source[start:i + 1]
                out.append((_item_key(mask(text)), text))
                start = i + 1
        elif c == ";" and depth == 0:
            text = source[start:i + 1]
            out.append((_item_key(mask(text)), text))
            start = i + 1
        i += 1
    if source[start:].strip():
        out.append((_item_key(masked[start:]), source[start:]))
    return [(k, t) for k, t in out if t.strip()]


def _item_key(masked_item: str) -> str:
    body = re.sub(r"#\s*!?\s*\[[^\]]*\]", " ", masked_item)
    head = body.split("{", 1)[0]
    impl = re.search(r"\bimpl\b(.*)", head, re.DOTALL)
    if impl:
        return "impl " + re.sub(r"\s+", "", impl.group(1))
    m = _ITEM_KEY.search(head)
    if m:
        return re.sub(r"\s+", "", m.group(1)) + " " + m.group(2)
    return re.sub(r"\s+", " ", head).strip()


@functools.lru_cache(maxsize=64)
def pairs(masked: str) -> dict[int, int]:
    """{index of an opening delimiter: index of its closing one} of masked text, in one pass (linear: callers ask
    for many items' ends, F12)."""
    out, stack = {}, []
    for j, c in enumerate(masked):
        if c in _OPEN:
            stack.append(j)
        elif c in ")]}":
            if stack:
                out[stack.pop()] = j
    return out
