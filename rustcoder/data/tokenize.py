"""Tokenizing chat examples for SFT: the loss mask covers exactly the answer and its <|im_end|>.

The prompt (system + user + the assistant header) is rendered with the chat template and tokenized
on its own, exactly as at inference; the answer is tokenized separately and followed by the
end-of-turn token. Labels are -100 on the prompt. Long examples keep the prompt's head and tail
(the user turn's <|im_end|> and the assistant header, measured on the template: 9 tokens for Qwen3
with thinking off, 5 for plain ChatML with Qwen's vocabulary) and the start of the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


@dataclass
class TokenizeStats:
    """How many examples were truncated, and token counts (for throughput and dry runs)."""

    examples: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    answer_tokens: int = 0


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text: every message but the final answer, plus the assistant header."""
    prompt_messages = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)


def _fit(prompt: list[int], answer: list[int], max_length: int, tail_tokens: int
         ) -> tuple[list[int], list[int], bool]:
    if len(prompt) + len(answer) <= max_length:
        return prompt, answer, False
    answer_keep = min(len(answer), max(max_length - len(prompt), max_length // 2))
    prompt_keep = max_length - answer_keep
    if len(prompt) > prompt_keep:
        tail = min(tail_tokens, prompt_keep // 2)
        prompt = prompt[: prompt_keep - tail] + (prompt[-tail:] if tail else [])
    return prompt, answer[:answer_keep], True


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added: the Rust backend's fast path when there is one.

    Same ids as ``tokenizer(texts, add_special_tokens=False)`` without building offsets or
    attention masks (a test holds the two equal).
    """
    from ..compat import encode_without_state

    ids = encode_without_state(tokenizer, texts)  # the Rust backend, its padding/truncation state left as found
    if ids is not None:
        return ids
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def tokenize_examples(tokenizer, conversations: list[list[dict]], max_length: int,
                      stats: TokenizeStats | None = None) -> list[dict]:
    """input_ids / labels / length for each conversation (system, user, assistant)."""
    from ..modeling import prompt_tail_tokens

    end_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    tail_tokens = prompt_tail_tokens(tokenizer)
    prompts = [render_prompt(tokenizer, m) for m in conversations]
    answers = [m[-1]["content"] for m in conversations]
    prompt_ids = encode_batch(tokenizer, prompts)
    answer_ids = encode_batch(tokenizer, answers)
    out = []
    for p, a in zip(prompt_ids, answer_ids):
        p, a, cut = _fit(p, a + [end_id], max_length, tail_tokens)
        if stats is not None:
            stats.examples += 1
            stats.truncated += int(cut)
            stats.prompt_tokens += len(p)
            stats.answer_tokens += len(a)
        out.append({"input_ids": p + a, "labels": [IGNORE] * len(p) + a, "length": len(p) + len(a)})
    return out


def tokenize_to_table(tokenizer, conversations: list[list[dict]], max_length: int,
                      stats: TokenizeStats | None = None, chunk_size: int = 2048, memory_map: bool = False):
    """Like tokenize_examples, but chunk by chunk into a compact Arrow table (int32 columns).

    Python int lists cost about 36 bytes per token; Arrow int32 costs 4. With memory_map=True the
    chunks are streamed to a temporary Arrow file that is memory-mapped and unlinked at once (the
    mapping keeps it readable; nothing is left on disk), so the token ids stay off the heap, as
    `datasets`' own cache files do.
    """
    import os
    import tempfile

    import pyarrow as pa

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                        ("length", pa.int32())])

    def batches():
        for start in range(0, len(conversations), chunk_size):
            rows = tokenize_examples(tokenizer, conversations[start:start + chunk_size], max_length, stats)
            yield pa.record_batch([pa.array([r["input_ids"] for r in rows], type=pa.list_(pa.int32())),
                                   pa.array([r["labels"] for r in rows], type=pa.list_(pa.int32())),
                                   pa.array([r["length"] for r in rows], type=pa.int32())], schema=schema)

    if not memory_map:
        return pa.Table.from_batches(list(batches()), schema=schema)
    fd, path = tempfile.mkstemp(prefix="rustcoder-tokens-", suffix=".arrow")
    os.close(fd)
    try:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches():
                writer.write_batch(batch)
        table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
    finally:
        os.unlink(path)
    return table


def pad_batch(features: list[dict], pad_id: int) -> dict:
    """Right-padded input_ids / labels / attention_mask tensors for a list of tokenized examples."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.as_tensor(f["input_ids"])
        labels[i, :n] = torch.as_tensor(f["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
