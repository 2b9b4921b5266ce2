"""The served model's tokenizer as the gateway needs it: a chat request's prompt size and the special tokens.

Loaded from the model dir's ``tokenizer.json`` with the ``tokenizers`` library (no transformers import in the
gateway process: it is small and fast), so the gateway can refuse a prompt the context cannot hold before an
engine spends an uncancellable prefill on it (red-team F6), and refuse control tokens inside content (F9).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

# Chat-template control tokens refused in content even without a tokenizer (Qwen's, the models served here).
DEFAULT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# Template tokens around each message (Qwen: "<|im_start|>", the role, "\n", "<|im_end|>", "\n" = 5) and for the
# generation prompt, counted high on purpose: the count is an estimate that never undercounts a template like it.
PER_MESSAGE = 8
# A long prompt is tokenized this many characters at a time, so counting stops once it is past the context and
# when its client leaves: one 1.9 MB body took 7.6 s and 400 MB to tokenize whole, and 150 such bodies abandoned
# at once kept the gateway busy (2.6 GB, no other request answered) for minutes. Shorter prompts: one call.
PIECE = 16_384
# Cutting between pieces (just before a whitespace run) changes the count by at most this many tokens per cut.
PER_CUT = 2


class CountCancelled(Exception):
    """The request whose prompt was being counted ended (its client left)."""


class PromptTokens:
    """Counts a chat prompt's tokens and lists the model's special tokens, from a ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder().values()
        self.special_tokens = tuple(sorted({*DEFAULT_SPECIAL_TOKENS, *(t.content for t in added if t.special)}))

    @classmethod
    def from_dir(cls, *dirs: str | Path | None) -> "PromptTokens | None":
        """The counter for the first of DIRS (an adapter's, then its base model's) holding a tokenizer.json;
        None when none does (the engine's own context check is then the only one)."""
        for d in dirs:
            if d and (Path(d) / "tokenizer.json").is_file():
                from tokenizers import Tokenizer

                return cls(Tokenizer.from_file(str(Path(d) / "tokenizer.json")))
        return None

    def count(self, messages: list[dict], limit: int | None = None,
              cancelled: threading.Event | None = None) -> tuple[int, bool]:
        """(tokens, exact) of MESSAGES' contents plus PER_MESSAGE per message and for the generation prompt.

        With LIMIT, a long prompt is counted piece by piece and the count stops as soon as it is surely past
        LIMIT: then ``exact`` is False and the number is a lower bound above LIMIT. A count near LIMIT is
        exact. CANCELLED set: raises CountCancelled at the next piece."""
        texts = [m["content"] for m in messages]
        fixed = PER_MESSAGE * (len(messages) + 1)
        if limit is None or sum(map(len, texts)) <= 4 * PIECE:
            return self._exact(texts) + fixed, True
        total, cuts = fixed, 0
        for text in texts:
            for piece in _pieces(text):
                if cancelled is not None and cancelled.is_set():
                    raise CountCancelled
                total += len(self.tokenizer.encode(piece, add_special_tokens=False).ids)
                cuts += 1
                if total - PER_CUT * cuts > limit:  # past it whatever the cuts changed
                    return total - PER_CUT * cuts, False
        if total + PER_CUT * cuts <= limit:  # within it whatever the cuts changed: counted high
            return total + PER_CUT * cuts, True
        return self._exact(texts) + fixed, True  # near the limit: the exact count decides

    def _exact(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False))


_CUT = re.compile(r"\s+")


def _pieces(text: str):
    """TEXT in pieces of about PIECE characters, each cut just before a whitespace run (where the byte-level
    pre-tokenizers of the families served here split anyway), or at PIECE characters in text without any."""
    start = 0
    while len(text) - start > PIECE:
        end = start + PIECE
        window = text[start + PIECE // 2:end]
        runs = list(_CUT.finditer(window))
        if runs:
            end = start + PIECE // 2 + runs[-1].start()
        yield text[start:end]
        start = end
    yield text[start:]
