"""The served model's tokenizer as the gateway needs it: a chat request's prompt size and the special tokens.

Loaded from the model dir's ``tokenizer.json`` with the ``tokenizers`` library (no transformers import in the
gateway process: it is small and fast), so the gateway can refuse a prompt the context cannot hold before an
engine spends an uncancellable prefill on it (red-team F6), and refuse control tokens inside content (F9).
"""

from __future__ import annotations

from pathlib import Path

# Chat-template control tokens refused in content even without a tokenizer (Qwen's, the models served here).
DEFAULT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# Template tokens around each message (Qwen: "<|im_start|>", the role, "\n", "<|im_end|>", "\n" = 5) and for the
# generation prompt, counted high on purpose: the count is an estimate that never undercounts a template like it.
PER_MESSAGE = 8


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

    def count(self, messages: list[dict]) -> int:
        """Tokens of MESSAGES' contents plus PER_MESSAGE per message and for the generation prompt."""
        encoded = self.tokenizer.encode_batch([m["content"] for m in messages], add_special_tokens=False)
        return sum(len(e.ids) for e in encoded) + PER_MESSAGE * (len(messages) + 1)
