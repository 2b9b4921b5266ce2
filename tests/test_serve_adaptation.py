"""rustcoder.serve.transformers_engine adapts internals of `transformers serve` that have no public option. This
test names every one of them, with the parameters rustcoder relies on: an upgrade of transformers that moves or
reshapes one fails here, loudly and by name, instead of silently serving without a gateway, an adapter, the
chat template, OpenAI sampling or consistent streamed text."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("fastapi", reason="transformers serving is not installed: pip install 'rustcoder[serve]'")


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_transformers_serve_internals_rustcoder_adapts_are_where_it_expects_them():
    from transformers.cli import transformers as cli
    from transformers.cli.serving import chat_completion, model_manager, server
    from transformers.cli.serving import utils as serving_utils

    manager = model_manager.ModelManager
    assert _params(manager._load_processor)[:3] == ["self", "model_id_and_revision", "gguf_file"]
    assert callable(manager.load_model_and_processor)
    assert "loaded_models" in inspect.getsource(manager)  # where the adapter-merged model is put back
    assert callable(server.build_server)
    assert _params(serving_utils.BaseHandler._build_generation_config)[:3] == ["self", "body", "model_generation_config"]
    assert _params(chat_completion.build_response_parser)[:4] == ["processor", "model", "input_ids", "tools"]
    assert _params(chat_completion.parse_assistant_message)[:6] == ["processor", "model", "generated_ids", "input_ids",
                                                                     "cleaned_content", "tools"]
    streamer = serving_utils.DirectStreamer
    assert callable(streamer.put) and callable(streamer.end) and callable(streamer._enqueue)
    source = inspect.getsource(streamer)
    for attribute in ("self._parser", "self._cancelled", "self._first", "self._tokenizer", "self.total_tokens"):
        assert attribute in source, f"DirectStreamer no longer has {attribute}"
    assert issubclass(serving_utils._GenerationCancelled, BaseException)
    assert callable(serving_utils.CBStreamer.cancel) and callable(streamer.cancel)
    assert callable(cli.app)
    # the generation threads (turns.TurnPool) replace the one InferenceThread the plain engine submits to, and the
    # request's seed is taken out of _build_generation_config, which seeds the process's global generator
    manager = serving_utils.GenerateManager
    assert "self._thread = InferenceThread()" in inspect.getsource(manager.__init__)
    for method in (manager.submit, manager.async_submit):
        assert "self._thread." in inspect.getsource(method)
    assert 'set_torch_seed(body["seed"])' in inspect.getsource(serving_utils.BaseHandler._build_generation_config)


def test_installing_the_adaptation_replaces_exactly_those_internals(monkeypatch, tmp_path):
    from transformers.cli.serving import chat_completion, model_manager, server
    from transformers.cli.serving import utils as serving_utils

    from rustcoder.serve.transformers_engine import install_patches

    targets = [(model_manager.ModelManager, "_load_processor"), (model_manager.ModelManager, "load_model_and_processor"),
               (server, "build_server"), (serving_utils.BaseHandler, "_build_generation_config"),
               (chat_completion, "build_response_parser"), (chat_completion, "parse_assistant_message"),
               (serving_utils.DirectStreamer, "put"), (serving_utils.DirectStreamer, "end"),
               (serving_utils.DirectStreamer, "__init__"), (serving_utils.CBStreamer, "__init__"),
               (serving_utils.GenerateManager, "__init__")]
    for owner, name in targets:  # restored after the test, whatever install_patches does
        monkeypatch.setattr(owner, name, getattr(owner, name))
    before = {(id(o), n): getattr(o, n) for o, n in targets}
    install_patches("model", "served", None, None, None)
    changed = [n for o, n in targets if getattr(o, n) is not before[(id(o), n)]]
    assert changed == [n for _, n in targets]


def _chat_through_the_adapter(leave_before_the_answer: bool):
    """A chat request through EngineAdapter to an app that starts a generation (a DirectStreamer) before its
    response, as transformers serve does; the client leaves before the answer or reads it to its end."""
    import asyncio

    from transformers.cli.serving import utils as serving_utils

    from rustcoder.serve.transformers_engine import EngineAdapter, install_cancel_with_request

    install_cancel_with_request()
    made = []

    async def app(scope, receive, send):
        await receive()  # the (replayed) body
        made.append(serving_utils.DirectStreamer(None, asyncio.get_running_loop(), asyncio.Queue()))
        if leave_before_the_answer:  # the client is gone before the first chunk: as Starlette does, just return
            assert (await receive())["type"] == "http.disconnect"
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done", "more_body": False})

    messages = [{"type": "http.request", "body": b"{}", "more_body": False}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    async def send(message):
        pass

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    asyncio.run(EngineAdapter(app, "model")(scope, receive, send))
    return made[0]


def test_a_generation_whose_client_left_before_its_first_chunk_is_cancelled(monkeypatch):
    """transformers serve starts generating before its stream is read and cancels only from inside the stream:
    a request the gateway abandoned that early generated to max_tokens while later requests queued behind it."""
    from transformers.cli.serving import utils as serving_utils

    monkeypatch.setattr(serving_utils.DirectStreamer, "__init__", serving_utils.DirectStreamer.__init__)
    monkeypatch.setattr(serving_utils.CBStreamer, "__init__", serving_utils.CBStreamer.__init__)
    assert _chat_through_the_adapter(leave_before_the_answer=True)._cancelled.is_set()
    assert not _chat_through_the_adapter(leave_before_the_answer=False)._cancelled.is_set()  # answered: left alone
