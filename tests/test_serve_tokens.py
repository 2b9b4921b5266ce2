"""rustcoder.serve.tokens: the gateway's prompt count is exact where it decides, and a long prompt costs only
what it takes to know it is too long (or that its client left)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("tokenizers")

RUST = """/// Sums the even values.
pub fn sum_even(values: &[i64]) -> i64 {
    values.iter().copied().filter(|v| v % 2 == 0).sum()
}

fn main() {\n\tlet xs = vec![1, 2, 3,    4];   println!("{}", sum_even(&xs));\n}\n\n\n"""


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    from tokenizers import Tokenizer

    from rustcoder.serve.tokens import PromptTokens
    from rustcoder.tiny import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(out)  # byte-level BPE with Qwen's pre-tokenizer, as the tiny test models have
    return PromptTokens(Tokenizer.from_file(str(out / "tokenizer.json")))


def _messages(chars: int) -> list[dict]:
    text = (RUST * (chars // len(RUST) + 1))[:chars]
    return [{"role": "system", "content": "You write Rust."}, {"role": "user", "content": text}]


def test_a_long_prompt_that_fits_is_counted_as_the_whole_text_is(counter):
    """Cut into pieces just before whitespace runs, the count is the whole text's (or errs high)."""
    from rustcoder.serve.tokens import PER_MESSAGE

    messages = _messages(300_000)
    whole = counter._exact([m["content"] for m in messages]) + PER_MESSAGE * 3
    n, exact = counter.count(messages, limit=10 ** 9)
    assert exact and whole <= n <= whole + 2 * (300_000 // 8_000 + 2)
    assert counter.count(messages) == (whole, True)  # no limit: one whole count


def test_a_count_near_the_limit_is_exact(counter):
    from rustcoder.serve.tokens import PER_MESSAGE

    messages = _messages(120_000)
    whole = counter._exact([m["content"] for m in messages]) + PER_MESSAGE * 3
    for limit in (whole - 1, whole, whole + 1):
        assert counter.count(messages, limit=limit) == (whole, True)


def test_a_prompt_far_past_the_limit_stops_counting_early(counter):
    """A 1.9 MB prompt against a 32k context: a few pieces are tokenized, not the whole text (whole, such a body
    took 7.6 s and 400 MB, and 150 abandoned ones held the gateway for minutes)."""
    from rustcoder.serve.tokens import PromptTokens

    messages = _messages(1_900_000)
    encoded = []

    class Spy:  # the counter's tokenizer, noting how many characters each call tokenizes
        def __getattr__(self, name):
            return getattr(counter.tokenizer, name)

        def encode(self, text, **kw):
            encoded.append(len(text))
            return counter.tokenizer.encode(text, **kw)

    spied = PromptTokens(Spy())
    n, exact = spied.count(messages, limit=32_768)
    assert not exact and n > 32_768
    assert sum(encoded) < 400_000, f"tokenized {sum(encoded)} of 1,900,000 characters"


def test_a_count_stops_when_its_request_is_cancelled(counter):
    from rustcoder.serve.tokens import CountCancelled

    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(CountCancelled):
        counter.count(_messages(1_900_000), limit=10 ** 9, cancelled=cancelled)
    assert counter.count(_messages(1000), limit=10 ** 9, cancelled=cancelled)[1]  # short: counted in one call


def test_pieces_rebuild_the_text_and_cut_before_whitespace():
    from rustcoder.serve.tokens import PIECE, _pieces

    text = RUST * 2000
    pieces = list(_pieces(text))
    assert "".join(pieces) == text and len(pieces) > 10
    assert all(len(p) <= PIECE for p in pieces)
    assert all(p[0].isspace() for p in pieces[1:])
    assert "".join(_pieces("x" * (3 * PIECE + 5))) == "x" * (3 * PIECE + 5)  # no whitespace at all


# ---- the body's JSON depth check (rustcoder.serve.schema.nesting_depth) -------------------------------------

def _reference_depth(text: str, limit: int) -> int:
    """The character-by-character scan the gateway used to run (correct, but 0.23 s of GIL per 1.9 MB body)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def test_the_depth_check_agrees_with_a_character_scan_on_valid_json():
    import json
    import random

    from rustcoder.serve.schema import nesting_depth

    rng = random.Random(0)

    def value(level):
        if level > 40 or rng.random() < 0.3:
            return rng.choice(['1', '"a[b{"', '"\\\\"', '"x\\"]}"', 'null', '"\\u005b"'])
        if rng.random() < 0.5:
            return "[" + ",".join(value(level + 1) for _ in range(rng.randint(0, 3))) + "]"
        return "{" + ",".join(f'"k{i}]": ' + value(level + 1) for i in range(rng.randint(0, 3))) + "}"

    deep = 0
    for _ in range(2000):
        text = value(0)
        json.loads(text)
        assert nesting_depth(text, 32) == _reference_depth(text, 32), text
        deep += _reference_depth(text, 32) > 32
    assert deep  # some were past the limit


@pytest.mark.parametrize("text", ["[" * 1_000_000, "{" * 50 + "}" * 49, "[[[]", '{"a":' * 40 + "1" + "}" * 40,
                                  "[" * 10_000 + "]" * 10_000])
def test_deep_or_unbalanced_bodies_are_refused_not_a_recursion_error(text):
    from rustcoder.serve.schema import parse_json_body

    payload, problem = parse_json_body(text.encode())
    assert payload is None and problem.status == 400 and problem.code == "invalid_json"
