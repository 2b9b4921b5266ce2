"""The loss mask covers exactly the answer plus <|im_end|>; chat templates; tokenizer setup."""

from __future__ import annotations

import pytest

from conftest import make_row
from rustcoder.data.categories import CATEGORY_NAMES
from rustcoder.data.strandset import parse_row
from rustcoder.data.tokenize import IGNORE, tokenize_examples
from rustcoder.modeling import load_tokenizer


@pytest.fixture(scope="module", params=["tiny-qwen2", "tiny-qwen3"])
def tok(request, tiny_qwen2, tiny_qwen3):
    return load_tokenizer(request.param, model_type=request.param.split("-")[1])


def test_tokenizer_setup(tok):
    tokenizer, template = tok
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token != tokenizer.eos_token
    assert "{% generation %}" in tokenizer.chat_template


def test_qwen3_thinking_off_everywhere(tiny_qwen3):
    tokenizer, template = load_tokenizer("tiny-qwen3", model_type="qwen3")
    assert template == "chatml_nothink"
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": "a"}], tokenize=False)
    assert full.startswith(prompt)  # training renders the same empty think block as inference


@pytest.mark.parametrize("category", CATEGORY_NAMES)
def test_loss_mask_is_exactly_answer_plus_end_of_turn(tok, category):
    tokenizer, _ = tok
    ex = parse_row(make_row(category, 5))
    row = tokenize_examples(tokenizer, [ex.messages], max_length=4096)[0]
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) == row["length"]
    start = next(i for i, l in enumerate(labels) if l != IGNORE)
    assert all(l == IGNORE for l in labels[:start])          # prompt fully masked
    assert labels[start:] == ids[start:]                     # answer fully trained, contiguous to the end
    answer_text = tokenizer.decode(ids[start:])
    assert answer_text == ex.messages[-1]["content"] + "<|im_end|>"
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # and it agrees with the chat template's own generation markers
    full = tokenizer.apply_chat_template(ex.messages, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True)
    assert full["input_ids"][: len(ids)] == ids
    assert [t for t, m in zip(full["input_ids"], full["assistant_masks"]) if m] == ids[start:]


def test_truncation_keeps_prompt_framing_and_answer_start(tok):
    tokenizer, _ = tok
    ex = parse_row(make_row("code_explanation", 2, answer_words=200))
    full = tokenize_examples(tokenizer, [ex.messages], max_length=100_000)[0]
    short = tokenize_examples(tokenizer, [ex.messages], max_length=120)[0]
    assert short["length"] == 120 < full["length"]
    start = next(i for i, l in enumerate(short["labels"]) if l != IGNORE)
    full_start = next(i for i, l in enumerate(full["labels"]) if l != IGNORE)
    # the assistant header survives at the end of the prompt; the answer keeps its beginning
    assert short["input_ids"][start - 3:start] == full["input_ids"][full_start - 3:full_start]
    assert short["input_ids"][start:] == full["input_ids"][full_start:full_start + 120 - start]


def test_fast_batch_encoding_matches_tokenizer_call(tok):
    from rustcoder.data.tokenize import encode_batch

    tokenizer, _ = tok
    texts = ["fn main() {\n    println!(\"héllo\");\n}", "<|im_start|>user\nx<|im_end|>\n", "  \t\n", "Ω≈ç √∫"]
    assert encode_batch(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_encoding_ignores_padding_left_on_by_a_padded_call(tok):
    from rustcoder.data.tokenize import encode_batch

    tokenizer, _ = tok
    texts = ["fn a() {}", "fn a_much_longer_function_name(x: u32) -> u32 { x }"]
    plain = encode_batch(tokenizer, texts)
    tokenizer(texts, padding=True)  # what batched generation does
    assert encode_batch(tokenizer, texts) == plain


def test_arrow_table_equals_python_rows(tok):
    from rustcoder.data.tokenize import tokenize_to_table

    tokenizer, _ = tok
    convs = [parse_row(make_row(c, i)).messages for i, c in enumerate(CATEGORY_NAMES)]
    rows = tokenize_examples(tokenizer, convs, 4096)
    table = tokenize_to_table(tokenizer, convs, 4096, chunk_size=4)
    mapped = tokenize_to_table(tokenizer, convs, 4096, chunk_size=4, memory_map=True)
    assert mapped.equals(table)
    assert table.column("input_ids").to_pylist() == [r["input_ids"] for r in rows]
    assert table.column("labels").to_pylist() == [r["labels"] for r in rows]
    assert table.column("length").to_pylist() == [r["length"] for r in rows]
