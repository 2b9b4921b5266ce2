"""Every Qwen family rustcoder claims, as shipped (special tokens and ids, eos lists, tying, stock template) at a tiny
width: the template rustcoder picks (thinking per family), the stop ids, no injected system prompt, tools refused,
one prompt in train, eval and serve, and truncation that keeps the user turn's end. No engine runs here; the
answer parity across backends is in test_eval_backends_vllm.py."""

from __future__ import annotations

import json

import pytest

from conftest import families

from rustcoder.errors import UsageError

FAMILIES = families()
SERVED = [n for n, f in FAMILIES.items() if f["thinking"] != "always"]
MESSAGES = [{"role": "system", "content": "You write Rust."}, {"role": "user", "content": "Sum a Vec<i32>."}]


def _tok(path):
    from rustcoder.modeling import load_config, load_tokenizer

    return load_tokenizer(str(path), model_type=load_config(str(path)).model_type)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_fixture_is_what_the_family_ships(family_dir, name):
    from transformers import AutoTokenizer

    fam, path = FAMILIES[name], family_dir(name)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_tokens_to_ids(fam["tokens"]) == list(range(151643, 151643 + len(fam["tokens"])))
    ids = tok("fn main() {}<|im_end|>", add_special_tokens=False).input_ids  # Qwen's BPE, then the special token
    assert ids[-1] == 151645 and max(ids[:-1]) < 151643 and tok.decode(ids[:-1]) == "fn main() {}"
    assert tok.eos_token == fam["eos_token"]
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["model_type"], cfg["vocab_size"], cfg["tie_word_embeddings"], cfg["eos_token_id"]) == (
        fam["model_type"], fam["vocab_size"], fam["tie_word_embeddings"], fam["eos_token_id"])
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == \
        fam["generation_config"]["eos_token_id"]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_thinking_is_decided_per_family_from_its_template(family_dir, name):
    """Hybrids (Qwen3 dense and MoE) get thinking off, -2507 Instruct plain ChatML, Thinking-2507 is refused."""
    fam = FAMILIES[name]
    if fam["thinking"] == "always":
        with pytest.raises(UsageError, match="thinking-only model"):
            _tok(family_dir(name))
        return
    tok, template = _tok(family_dir(name))
    assert template == {"hybrid": "chatml_nothink", "none": "chatml"}[fam["thinking"]]
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if fam["thinking"] == "hybrid"
                                                         else ""))


@pytest.mark.parametrize("name", SERVED)
def test_stop_ids_are_the_end_of_turn_and_the_models_eos(family_dir, name):
    from rustcoder.modeling import model_eos_ids, stop_token_ids

    tok, _ = _tok(family_dir(name))
    # base models (eos <|endoftext|>) still stop at the end of the chat turn
    assert stop_token_ids(tok, model_eos_ids(str(family_dir(name)))) == [151645, 151643]


@pytest.mark.parametrize("name", SERVED)
def test_no_default_system_prompt_and_tools_refused(family_dir, name):
    """The stock defaults differ per family (Qwen2.5: 'You are Qwen...', Qwen2: 'You are a helpful assistant.',
    Qwen3: none); rustcoder injects none, in train, eval and serve alike (docs/train.md)."""
    from jinja2.exceptions import TemplateError

    tok, _ = _tok(family_dir(name))
    prompt = tok.apply_chat_template(MESSAGES[1:], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>user\n") and "system" not in prompt
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(TemplateError, match="take no tools"):
        tok.apply_chat_template(MESSAGES, tools=tools, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", SERVED)
def test_one_prompt_in_train_eval_and_serve(family_dir, name, tmp_path):
    """Training's prompt (data.tokenize.render_prompt), the transformers eval backend's, and the one an engine
    renders from the template a run saves beside its adapter (serve's --chat-template) are byte-identical."""
    from transformers import AutoTokenizer

    from rustcoder.data.tokenize import render_prompt
    from rustcoder.eval.backends import TransformersBackend

    tok, _ = _tok(family_dir(name))
    train = render_prompt(tok, MESSAGES + [{"role": "assistant", "content": "fn s() {}"}])
    backend = TransformersBackend(str(family_dir(name)), log=lambda *_: None)
    tok.save_pretrained(tmp_path)  # what train writes into RUN/adapter
    served = AutoTokenizer.from_pretrained(tmp_path, chat_template=(tmp_path / "chat_template.jinja").read_text())
    assert backend.prompt_text(MESSAGES) == train == served.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True)
    assert backend.stop_ids == [151645, 151643]


@pytest.mark.parametrize("name", ["qwen3-hybrid", "qwen2.5-instruct"])
def test_truncation_keeps_the_user_turns_end_and_the_assistant_header(family_dir, name):
    """An over-long prompt keeps its tail from the user turn's <|im_end|> on: 9 tokens with Qwen3's empty think
    block (a constant 8 lost the <|im_end|>), 5 with plain ChatML."""
    from rustcoder.data.tokenize import tokenize_examples
    from rustcoder.modeling import prompt_tail_tokens

    tok, _ = _tok(family_dir(name))
    assert prompt_tail_tokens(tok) == (9 if name.startswith("qwen3") else 5)
    long = [MESSAGES[0], {"role": "user", "content": "fn a() {} " * 400}, {"role": "assistant", "content": "ok"}]
    row = tokenize_examples(tok, [long], max_length=128)[0]
    prompt = [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
    full = tok.apply_chat_template(long[:2], tokenize=False, add_generation_prompt=True)
    tail = tok(full[full.rindex("<|im_end|>"):], add_special_tokens=False).input_ids
    assert len(prompt) < 128 and prompt[-len(tail):] == tail and tail[0] == 151645
