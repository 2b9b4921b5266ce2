"""The transformers engine process (``python -m rustcoder.serve transformers-engine ... -- serve
MODEL``): transformers' own ``transformers serve`` with rustcoder's gateway, adapter, chat
template, stop token and OpenAI sampling semantics.

transformers serve has no public options for these, so this is the one module that adapts its
internals (``ModelManager``, ``BaseHandler``, ``DirectStreamer``, ``chat_completion``);
tests/test_serve_adaptation.py fails loudly when an upgrade moves one of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .gateway import Gateway, stream_delta
from .spec import API_KEY_ENV

def install_patches(model: str, served_name: str, api_key: str | None, adapter: str | None,
                                  chat_template: str | None) -> None:
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
        # Answers end at <|im_end|> however the base's generation_config was written.
        tok = getattr(processor, "tokenizer", processor)
        eot = tok.convert_tokens_to_ids(END_OF_TURN) if END_OF_TURN in tok.get_vocab() else None
        eos = loaded.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if eot is not None and eot not in eos:
            loaded.generation_config.eos_token_id = eos + [eot]
        return loaded, processor

    original_build = server.build_server

    def build_server(*args, **kwargs):
        return Gateway(original_build(*args, **kwargs), served_name, model, api_key)

    # OpenAI semantics: a temperature above 0 samples, even when the model's generation_config
    # says do_sample=False (transformers serve would silently decode greedily).
    handler = serving_utils.BaseHandler
    original_config = handler._build_generation_config

    def build_generation_config(self, body, model_generation_config, *args, **kwargs):
        config = original_config(self, body, model_generation_config, *args, **kwargs)
        if body.get("temperature") is not None and float(body["temperature"]) > 0:
            config.do_sample = True
        return config

    manager._load_processor = load_processor
    manager.load_model_and_processor = load_model_and_processor
    server.build_server = build_server
    handler._build_generation_config = build_generation_config
    install_consistent_text_patches()


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


def engine_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m rustcoder.serve transformers-engine")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--chat-template")
    parser.add_argument("transformers_args", nargs=argparse.REMAINDER,
                        help="-- serve MODEL [transformers serve options]")
    args = parser.parse_args(argv)
    tf_args = args.transformers_args[1:] if args.transformers_args[:1] == ["--"] else args.transformers_args
    if len(tf_args) < 2 or tf_args[0] != "serve":
        parser.error("expected: -- serve MODEL [options]")
    api_key = os.environ.pop(API_KEY_ENV, None)
    install_patches(tf_args[1], args.served_model_name, api_key, args.adapter, args.chat_template)
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
