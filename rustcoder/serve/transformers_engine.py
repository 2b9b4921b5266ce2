"""The transformers engine process (``python -m rustcoder.serve transformers-engine ... -- serve
MODEL``): transformers' own ``transformers serve`` with rustcoder's gateway, adapter, chat
template, stop token and OpenAI sampling semantics.

transformers serve has no public options for these, so this is the one module that adapts its
internals (``ModelManager``, ``BaseHandler``, ``DirectStreamer``, ``chat_completion``);
tests/test_serve_adaptation.py fails loudly when an upgrade moves one of them.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import sys
from pathlib import Path

from .gateway import stream_delta
from .turns import Cancelled, TurnPool, Turns
from .spec import API_KEY_ENV, HEALTH_PATH

ENGINE_ROUTES = {HEALTH_PATH: "GET", "/v1/chat/completions": "POST"}
# the streamers (generations) the current chat request started: cancelled when its ASGI call ends
REQUEST_STREAMERS: contextvars.ContextVar[list | None] = contextvars.ContextVar("rustcoder_streamers", default=None)
# the current chat request's seed: its generation's own random stream (turns.Turn), never the process's global one
REQUEST_SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar("rustcoder_seed", default=None)


class EngineAdapter:
    """ASGI wrapper of transformers serve's app inside the engine process: only the two routes rustcoder's
    gateway uses exist (transformers serve's /load_model, /v1/audio/transcriptions, /docs ... answer 404),
    and every chat request is pinned to the model given at start (a client cannot name a path to load).
    The public checks (key, validation, limits) are the gateway's; the engine listens on a private socket."""

    def __init__(self, app, model: str):
        self.app = app
        self.model = model

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http" or ENGINE_ROUTES.get(scope["path"]) != scope["method"]:
            body = json.dumps({"error": {"message": "not found", "type": "invalid_request_error", "param": None,
                                         "code": "unknown_url"}}).encode()
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        if scope["path"] == HEALTH_PATH:
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            payload = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        payload["model"] = self.model
        seed = payload.get("seed")
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        # transformers serve starts the generation before its stream is first read and cancels it only from
        # inside that stream: a client (the gateway) that leaves before the first chunk left a generation
        # running to max_tokens, and every later request queued behind it. Whatever ends this call ends them.
        streamers: list = []
        answered = False

        async def send_and_note(message):
            nonlocal answered
            await send(message)
            answered = answered or (message["type"] == "http.response.body" and not message.get("more_body"))

        token = REQUEST_STREAMERS.set(streamers)
        seed_token = REQUEST_SEED.set(seed if isinstance(seed, int) and not isinstance(seed, bool) else None)
        try:
            return await self.app(scope, replay, send_and_note)
        finally:
            REQUEST_SEED.reset(seed_token)
            REQUEST_STREAMERS.reset(token)
            if not answered:  # ended before its answer did
                for streamer in streamers:
                    streamer.cancel()

def install_patches(model: str, served_name: str, api_key: str | None, adapter: str | None,
                    chat_template: str | None, uds: str | None = None, slots: int = 1) -> None:
    """Adapt transformers serve: the adapter and chat template at load, rustcoder's stop ids, the engine adapter
    around its app, OpenAI sampling semantics, consistent text, ``slots`` generations sharing the model by turns;
    with ``uds``, listen on that Unix socket only.
    (``served_name`` and ``api_key`` are the gateway's business; kept for callers.)"""
    from transformers.cli.serving import model_manager, server
    from transformers.cli.serving import utils as serving_utils

    from ..modeling import END_OF_TURN

    template_text = Path(chat_template).read_text() if chat_template else None
    manager = model_manager.ModelManager
    original_processor = manager._load_processor
    original_load = manager.load_model_and_processor

    def load_processor(self, model_id_and_revision, gguf_file=None):
        if adapter and gguf_file is None:
            model_id_and_revision = f"{adapter}@main"  # the tokenizer the adapter was trained with
        processor = original_processor(self, model_id_and_revision, gguf_file=gguf_file)
        if template_text is not None:
            processor.chat_template = template_text
        return processor

    def load_model_and_processor(self, *args, **kwargs):
        loaded, processor = original_load(self, *args, **kwargs)
        if adapter and not getattr(loaded, "_rustcoder_adapter", False):
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(loaded, adapter).merge_and_unload()
            loaded._rustcoder_adapter = True
            for timed in self.loaded_models.values():
                timed.model = loaded
        # Answers end on rustcoder's stop ids (end of turn + the model's eos), as in every eval backend.
        tok = getattr(processor, "tokenizer", processor)
        if END_OF_TURN in tok.get_vocab():
            from ..modeling import eos_id_list, stop_token_ids

            eos = eos_id_list(loaded.generation_config.eos_token_id)
            loaded.generation_config.eos_token_id = stop_token_ids(tok, eos)
        return loaded, processor

    original_build = server.build_server

    def build_server(*args, **kwargs):
        return EngineAdapter(original_build(*args, **kwargs), model)

    # OpenAI semantics: a temperature above 0 samples, even when the model's generation_config
    # says do_sample=False (transformers serve would silently decode greedily).
    handler = serving_utils.BaseHandler
    original_config = handler._build_generation_config

    def build_generation_config(self, body, model_generation_config, *args, **kwargs):
        # the seed is the generation's own (REQUEST_SEED, applied with its turn): transformers serve would seed the
        # process's global generator here, in the middle of whatever other generation is sampling
        body = {k: v for k, v in body.items() if k != "seed"}
        config = original_config(self, body, model_generation_config, *args, **kwargs)
        if body.get("temperature") is not None and float(body["temperature"]) > 0:
            config.do_sample = True
        return config

    manager._load_processor = load_processor
    manager.load_model_and_processor = load_model_and_processor
    server.build_server = build_server
    handler._build_generation_config = build_generation_config
    install_consistent_text_patches()
    install_turns(slots)
    if uds:
        listen_on_unix_socket(uds)


def listen_on_unix_socket(path: str) -> None:
    """transformers serve binds --host/--port with uvicorn; the engine binds the private socket PATH instead,
    and gives in-flight requests 3 s at shutdown (the gateway has already closed them)."""
    import uvicorn

    original = uvicorn.Config

    class Config(original):
        def __init__(self, app, *args, **kwargs):
            kwargs.pop("host", None)
            kwargs.pop("port", None)
            kwargs.setdefault("timeout_graceful_shutdown", 3)
            super().__init__(app, *args, uds=path, **kwargs)

    uvicorn.Config = Config


def install_consistent_text_patches() -> None:
    """Streamed and non-streamed answers carry the same text, and no delta splits a UTF-8 character.

    transformers serve runs Qwen answers through a response parser (for tool calls and thinking) that
    strips the non-streamed text but not the streamed one, and streams whatever each token decodes to.
    Without ``tools`` in the request, both paths here return the plain decode of the generated tokens
    (special tokens skipped), and the stream sends only text that is final: a tail that decodes to
    U+FFFD (a character whose bytes are not all generated yet) waits for its next token.
    """
    from transformers.cli.serving import chat_completion
    from transformers.cli.serving import utils as serving_utils

    original_parser = chat_completion.build_response_parser
    original_parse = chat_completion.parse_assistant_message

    def build_response_parser(processor, model, input_ids, tools=None):
        return original_parser(processor, model, input_ids, tools=tools) if tools else None

    def parse_assistant_message(processor, model, generated_ids, input_ids, cleaned_content="", tools=None):
        if tools:
            return original_parse(processor, model, generated_ids, input_ids, cleaned_content=cleaned_content,
                                  tools=tools)
        return cleaned_content, None, None

    chat_completion.build_response_parser = build_response_parser
    chat_completion.parse_assistant_message = parse_assistant_message

    streamer = serving_utils.DirectStreamer
    original_put, original_end = streamer.put, streamer.end

    def put(self, value):
        try:  # between two decoding steps: the next waiting generation's turn (turns.Turns)
            TURNS.step(self._cancelled.is_set)
        except Cancelled:
            raise serving_utils._GenerationCancelled() from None
        if self._parser is not None:
            return original_put(self, value)
        if self._cancelled.is_set():
            raise serving_utils._GenerationCancelled()
        if self._first:  # the prompt
            self._first = False
            return
        ids = self.__dict__.setdefault("_rustcoder_ids", [])
        new = value.tolist()
        new = new if isinstance(new, list) else [new]
        ids.extend(int(t) for t in (new[0] if new and isinstance(new[0], list) else new))
        self.total_tokens = len(ids)
        delta = stream_delta(self._tokenizer.decode(ids, skip_special_tokens=True),
                             self.__dict__.setdefault("_rustcoder_sent", []))
        if delta:
            self._enqueue(delta)

    def end(self):
        if self._parser is None:
            ids = self.__dict__.get("_rustcoder_ids", [])
            delta = stream_delta(self._tokenizer.decode(ids, skip_special_tokens=True),
                                 self.__dict__.setdefault("_rustcoder_sent", []), final=True)
            if delta:
                self._enqueue(delta)
        return original_end(self)

    streamer.put, streamer.end = put, end
    install_cancel_with_request()


TURNS = Turns()


def install_turns(slots: int) -> None:
    """transformers serve's one inference thread becomes ``slots`` threads sharing the model by turns, token by
    token (``turns``): a long answer no longer holds the model while the requests behind it wait."""
    from transformers.cli.serving import utils as serving_utils

    manager = serving_utils.GenerateManager
    if getattr(manager.__init__, "_rustcoder", False):
        return

    def __init__(self):
        self._thread = TurnPool(TURNS, slots, seed_of=REQUEST_SEED.get)

    __init__._rustcoder = True
    manager.__init__ = __init__


def install_cancel_with_request() -> None:
    """Every streamer (plain and continuous batching) registers with the chat request that created it, so the
    EngineAdapter cancels it when that request ends (normally, or because its client left)."""
    from transformers.cli.serving import utils as serving_utils

    for cls in (serving_utils.DirectStreamer, serving_utils.CBStreamer):
        original_init = cls.__init__
        if getattr(original_init, "_rustcoder", False):
            continue

        def __init__(self, *args, _original=original_init, **kwargs):
            _original(self, *args, **kwargs)
            streamers = REQUEST_STREAMERS.get()
            if streamers is not None:
                streamers.append(self)

        __init__._rustcoder = True
        cls.__init__ = __init__


def engine_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m rustcoder.serve transformers-engine")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--chat-template")
    parser.add_argument("--uds", help="listen on this Unix socket instead of --host/--port")
    parser.add_argument("--slots", type=int, default=1,
                        help="generations that share the model at once, by turns (1 with transformers' --compile)")
    parser.add_argument("transformers_args", nargs=argparse.REMAINDER,
                        help="-- serve MODEL [transformers serve options]")
    args = parser.parse_args(argv)
    tf_args = args.transformers_args[1:] if args.transformers_args[:1] == ["--"] else args.transformers_args
    if len(tf_args) < 2 or tf_args[0] != "serve":
        parser.error("expected: -- serve MODEL [options]")
    api_key = os.environ.pop(API_KEY_ENV, None)
    slots = 1 if "--compile" in tf_args else max(1, args.slots)  # compiled CUDA graphs live in one thread
    install_patches(tf_args[1], args.served_model_name, api_key, args.adapter, args.chat_template, uds=args.uds,
                    slots=slots)
    from transformers.cli.transformers import app

    app(args=tf_args, prog_name="transformers")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["transformers-engine"]:
        engine_main(argv[1:])
    else:
        sys.exit("usage: python -m rustcoder.serve transformers-engine --served-model-name NAME "
                 "[--adapter DIR] [--chat-template FILE] -- serve MODEL [options]\n"
                 "(this is the engine process `rustcoder serve --engine transformers` starts; run that instead)")
