"""What a valid request to the served API is: the body parsed with limits (UTF-8, nesting depth, duplicate
keys, lone surrogates) and checked against pydantic models of the OpenAI chat-completions request, so that
every malformed request is a 400 ``invalid_request_error`` that names its field, before any engine sees it.

``parse_chat_request`` is the one entry point; it returns the request normalised for the engines (content
parts joined, one ``max_tokens``, fields the engines do not need dropped) or a ``Problem``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .tokens import DEFAULT_SPECIAL_TOKENS

MAX_DEPTH = 32  # nesting of JSON arrays/objects; a chat request needs 5
MAX_MESSAGES = 1024

MAX_STOP = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 300  # OpenAI's limit
SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)  # int64, as OpenAI documents and torch.manual_seed accepts

# Fields OpenAI defines that this server refuses with a 400 naming them (rather than ignoring them silently).
UNSUPPORTED = {
    "tools": "tools (function calling) are not supported by this server; send the request without 'tools'",
    "tool_choice": "tool_choice is not supported by this server (no tools); drop it",
    "functions": "functions (function calling) are not supported by this server; drop them",
    "function_call": "function_call is not supported by this server; drop it",
    "parallel_tool_calls": "parallel_tool_calls is not supported by this server (no tools); drop it",
    "logprobs": "logprobs are not supported by this server; drop 'logprobs'",
    "top_logprobs": "top_logprobs are not supported by this server; drop it",
    "response_format": "response_format is not supported by this server (plain text answers only); drop it",
    "audio": "audio output is not supported by this server",
    "modalities": "modalities other than text are not supported by this server; drop it",
    "prediction": "predicted outputs are not supported by this server; drop 'prediction'",
    "web_search_options": "web search is not supported by this server",
}


@dataclasses.dataclass
class Problem:
    """Why a request is refused: HTTP status, message, the field (OpenAI's ``param``) and a code."""

    message: str
    param: str | None = None
    code: str | None = "invalid_value"
    status: int = 400


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str, limit: int) -> int:
    """The deepest nesting of JSON arrays/objects in TEXT, or the first level beyond LIMIT.

    Written by hand because Python's json has no depth limit (a deep body is a RecursionError); run before
    json.loads. In C-speed passes (``re``, not a Python loop over characters: that held the GIL for 0.23 s per
    1.9 MB body and starved the gateway's event loop under 150 of them): strings and everything but brackets
    removed, then one pass per level removing the innermost pairs. Unbalanced brackets stop the passes early
    (their leading unclosed openers still count; json.loads then reports the body as invalid)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = 0
    while brackets and depth <= limit:  # a marker, so that removing "[]" cannot make a "{}" removed in this pass
        fewer = brackets.replace("[]", "\0").replace("{}", "\0").replace("\0", "")
        if len(fewer) == len(brackets):  # unbalanced: its unclosed openers count too ("[" * 10**6 is deep)
            return depth + len(brackets) - len(brackets.lstrip("[{"))
        brackets, depth = fewer, depth + 1
    return depth


def _path(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _lone_surrogate(value, path: str = "") -> str | None:
    """The path of the first string (or key) that cannot be UTF-8 (a lone surrogate from a \\ud800 escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _lone_surrogate(v, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(value, dict):
        for k, v in value.items():
            if _lone_surrogate(k):
                return path or "body"
            found = _lone_surrogate(v, f"{path}.{k}" if path else k)
            if found:
                return found
    return None


def parse_json_body(body: bytes, max_depth: int = MAX_DEPTH) -> tuple[dict | None, Problem | None]:
    """The body as a JSON object, or the Problem: not UTF-8, nesting beyond MAX_DEPTH, not JSON, duplicate
    keys, not an object, a lone surrogate."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, Problem(f"the request body is not UTF-8 (byte {e.start}); send UTF-8 JSON", None, "invalid_json")
    if not text.strip():
        return None, Problem("the request body is empty; send a JSON object with 'messages'", "messages",
                             "missing_required_parameter")
    if nesting_depth(text, max_depth) > max_depth:
        return None, Problem(f"the request body nests JSON deeper than {max_depth} levels", None, "invalid_json")
    try:
        payload = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        return None, Problem(f"the request body has the key {str(e)!r} twice in one object; send it once",
                             str(e), "duplicate_key")
    except RecursionError:  # not reached after the depth check; kept so that no body can make this a 500
        return None, Problem(f"the request body nests JSON deeper than {max_depth} levels", None, "invalid_json")
    except ValueError as e:
        return None, Problem(f"the request body is not valid JSON ({e}); send a JSON object with "
                             "Content-Type: application/json", None, "invalid_json")
    if not isinstance(payload, dict):
        return None, Problem(f"the request body must be a JSON object, not {type(payload).__name__}", None,
                             "invalid_json")
    bad = _lone_surrogate(payload)
    if bad:
        return None, Problem(f"{bad} holds a lone surrogate (an unpaired \\ud800-\\udfff escape): not valid text",
                             bad, "invalid_value")
    return payload, None


_STRICT = ConfigDict(extra="forbid", strict=True)


def _finite(lo: float, hi: float, *, gt: bool = False):
    return Field(None, gt=lo, le=hi, allow_inf_nan=False) if gt else Field(None, ge=lo, le=hi, allow_inf_nan=False)


class TextPart(BaseModel):
    """One part of a message's content: only text is served."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One chat message."""

    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Any
    name: str | None = Field(None, max_length=64)

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value):
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            return [TextPart.model_validate(p) for p in value]
        raise ValueError('content must be a string or a non-empty list of {"type": "text", "text": "..."} parts')

    def text(self) -> str:
        """The content as one string (text parts joined by newlines)."""
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    """``stream_options``."""

    model_config = _STRICT
    include_usage: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: only plain text (the others are refused as unsupported before this model)."""

    model_config = _STRICT
    type: Literal["text"]


# A temperature this small is greedy decoding (as vLLM's _SAMPLING_EPS): dividing logits by 1e-39 gives infinities,
# and transformers' sampler failed with "probability tensor contains inf, nan or element < 0" (red team, session 8).
GREEDY_BELOW = 1e-5


class ChatRequest(BaseModel):
    """The OpenAI chat-completions request fields this server serves, with OpenAI's ranges."""

    model_config = _STRICT
    model: str | None = Field(None, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = _finite(0.0, 2.0)
    top_p: float | None = _finite(0.0, 1.0, gt=True)
    frequency_penalty: float | None = _finite(-2.0, 2.0)
    presence_penalty: float | None = _finite(-2.0, 2.0)
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)
    # accepted and ignored (OpenAI's SDKs and wrappers send them): nothing is stored, no tiers, text answers
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None  # true is refused as unsupported before this model
    store: bool | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None:
            if len(stops) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences (got {len(stops)})")
            if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
                raise ValueError(f"each stop sequence must be 1 to {MAX_STOP_CHARS} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        if value is not None:
            if len(value) > MAX_LOGIT_BIAS:
                raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased (got {len(value)})")
            for key, bias in value.items():
                if not key.isdigit() or len(key) > 9:
                    raise ValueError(f"keys are token ids (decimal strings), not {key[:20]!r}")
                if not math.isfinite(bias) or not -100 <= bias <= 100:
                    raise ValueError(f"biases are numbers from -100 to 100 (token {key}: {bias})")
        return value


@dataclasses.dataclass
class RequestLimits:
    """What the served model and the server's flags allow a request (see ``parse_chat_request``)."""

    max_tokens: int = 4096  # server cap on new tokens per request (--max-tokens)
    context_length: int | None = None  # the model's context (prompt + answer); None: unknown
    vocab_size: int | None = None
    engine: str = "transformers"
    stop_token_ids: tuple[int, ...] = ()  # vLLM: added to every request (modeling.stop_token_ids of the model)
    prompt_tokens: Any = None  # a tokens.PromptTokens: prompt + max_tokens beyond the context is refused (F6)
    special_tokens: tuple[str, ...] = DEFAULT_SPECIAL_TOKENS  # refused inside message content (F9)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}  # pydantic's union members in an error's loc


def _problem_from(error: ValidationError) -> Problem:
    first = error.errors(include_url=False)[0]
    loc = [p for p in first.get("loc", ()) if isinstance(p, int) or (p.replace("_", "").isalnum() and p not in _TYPE_TAGS)]
    param = _path(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return Problem(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if kind == "missing":
        return Problem(f"'{param}' is required", param, "missing_required_parameter")
    if param and param.endswith(".role") and kind == "literal_error":
        msg = "role must be one of system, developer, user, assistant"
    if param == "n":
        msg = "only n=1 is supported (one choice per request): send n requests instead"
    if "inf_nan" in kind or kind == "finite_number":
        msg = "must be a finite number (not NaN or infinity)"
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {json.dumps(given)[:40]})"
    return Problem(f"{param}: {msg}{shown}" if param else msg, param, "invalid_value")


def parse_chat_request(payload: dict, limits: RequestLimits,
                       cancelled: threading.Event | None = None) -> tuple[dict | None, Problem | None]:
    """(the request as the engine gets it, None) or (None, Problem) for a parsed /v1/chat/completions body.
    CANCELLED set (the client left): the prompt's count stops (tokens.CountCancelled).

    ``max_tokens`` beyond the model's context or the server's cap is a 400 (as OpenAI answers a
    max_tokens beyond a model's limit), never silently clamped; absent, it is the server's cap.
    """
    for field, why in UNSUPPORTED.items():
        if payload.get(field) not in (None, False) and not (field == "response_format"
                                                             and payload[field] == {"type": "text"}):
            return None, Problem(why, field, "unsupported_parameter")
    try:
        req = ChatRequest.model_validate(payload)
    except ValidationError as e:
        return None, _problem_from(e)
    if req.stream_options is not None and not req.stream:  # as OpenAI answers it
        return None, Problem("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                             "stream_options")
    if req.metadata and any(len(k) > 64 or len(v) > 512 for k, v in req.metadata.items()):
        return None, Problem("metadata: keys are at most 64 characters and values at most 512", "metadata")
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    which = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if asked is not None and limits.context_length and asked >= limits.context_length:
        return None, Problem(f"{which} is too large: {asked}. This model's maximum context length is "
                             f"{limits.context_length} tokens (prompt and answer together)", which)
    if asked is not None and asked > limits.max_tokens:
        return None, Problem(f"{which} is too large: {asked}. This server allows at most {limits.max_tokens} new "
                             "tokens per request (rustcoder serve --max-tokens)", which)
    if req.logit_bias and limits.vocab_size:
        over = [k for k in req.logit_bias if int(k) >= limits.vocab_size]
        if over:
            return None, Problem(f"logit_bias: token id {over[0]} is outside the vocabulary (0 to "
                                 f"{limits.vocab_size - 1})", "logit_bias")
    if limits.engine == "transformers":  # what transformers serve cannot honour: refused, not ignored
        if req.presence_penalty:
            return None, Problem("presence_penalty is not supported by the transformers engine (use "
                                 "frequency_penalty, or --engine vllm)", "presence_penalty", "unsupported_parameter")
        if req.frequency_penalty is not None and req.frequency_penalty <= -1:
            return None, Problem("frequency_penalty must be above -1 with the transformers engine (it becomes a "
                                 "repetition penalty of 1 + frequency_penalty)", "frequency_penalty")
    out: dict[str, Any] = {"messages": [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                                        for m in req.messages],
                           "max_tokens": asked or _default_tokens(limits)}
    for i, message in enumerate(out["messages"]):  # content is text: a control token in it would forge turns (F9)
        found = next((t for t in limits.special_tokens if t in message["content"]), None)
        if found:
            return None, Problem(f"messages[{i}].content contains the chat-template control token {found}, which "
                                 "this server refuses in content (it would be read as the start or end of a turn); "
                                 "remove it", f"messages[{i}].content")
    if limits.prompt_tokens is not None and limits.context_length:
        prompt, exact = limits.prompt_tokens.count(out["messages"], limits.context_length - (asked or 1), cancelled)
        room = limits.context_length - prompt
        if asked is None and room >= 1:  # as OpenAI: absent, the answer may use what the prompt leaves
            out["max_tokens"] = min(out["max_tokens"], room)
        elif prompt + out["max_tokens"] > limits.context_length:
            return None, Problem(f"This model's maximum context length is {limits.context_length} tokens. However, "
                                 f"your messages resulted in {'about' if exact else 'more than'} {prompt} tokens "
                                 f"and {which} asks for "
                                 f"{out['max_tokens']}. Please reduce the length of the messages or {which}.",
                                 "messages", "context_length_exceeded")
    for field in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "stop", "logit_bias"):
        value = getattr(req, field)
        if value is not None:
            out[field] = value
    if 0 < out.get("temperature", 1.0) < GREEDY_BELOW:  # logits / 1e-39 overflow: the engine's sampler failed (500)
        out["temperature"] = 0.0
    if limits.engine == "vllm" and limits.stop_token_ids:  # vLLM stops on its eos only, not at the end of turn
        out["stop_token_ids"] = list(limits.stop_token_ids)
    return out, None


def _default_tokens(limits: RequestLimits) -> int:
    if limits.context_length:
        return max(1, min(limits.max_tokens, limits.context_length // 2))
    return limits.max_tokens


def wants_usage_in_stream(payload: dict) -> bool:
    """Whether a validated streaming request asked for the usage chunk (``stream_options.include_usage``)."""
    options = payload.get("stream_options") or {}
    return bool(options.get("include_usage"))
