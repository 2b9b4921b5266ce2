"""The ASGI gateway in front of ``transformers serve``: an API key, one served model name and a
/v1/models that lists it, no client-side model loading, and OpenAI's error shapes.
"""

from __future__ import annotations

import hmac
import json
import time

from .spec import HEALTH_PATH

_MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/systemone")


_BLOCKED_ROUTES = ("/load_model", "/reset")


OPEN_ROUTES = (HEALTH_PATH,)


def openai_error(message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> dict:
    """An error body the way OpenAI clients expect it: {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def request_problem(path: str, body: bytes) -> tuple[object, tuple[str, str | None, str] | None]:
    """(parsed JSON body, None) or (None, (message, param, code)) for a request OpenAI would refuse with 400."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError as e:
        return None, (f"the request body is not valid JSON ({e}); send a JSON object with "
                      "Content-Type: application/json", None, "invalid_json")
    if not isinstance(payload, dict):
        return None, (f"the request body must be a JSON object, not {type(payload).__name__}", None, "invalid_json")
    if path == "/v1/chat/completions":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return None, ("'messages' is required: a non-empty list of {\"role\": ..., \"content\": ...} objects",
                          "messages", "missing_required_parameter" if messages is None else "invalid_value")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                return None, (f"messages[{i}] must be an object with a 'role' (system, user or assistant) and "
                              "'content'", f"messages[{i}]", "invalid_value")
    return payload, None


def openai_error_response(status: int, body: bytes) -> tuple[int, bytes]:
    """An engine's error answer in OpenAI's shape: FastAPI's 422 {"detail": ...} becomes 400, any other
    error body becomes {"error": {...}}. Successful answers pass unchanged."""
    if status < 400:
        return status, body
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict) and "message" in payload["error"]:
        return status, body
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        if isinstance(detail, list):  # pydantic: [{"loc": [...], "msg": ...}, ...]
            detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []) if x != 'body') or 'body'}: "
                               f"{d.get('msg', d)}" if isinstance(d, dict) else str(d) for d in detail)
        message = str(detail)
    elif isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message = payload["error"]
    else:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if status == 422:
        status = 400
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, json.dumps(openai_error(message, kind)).encode()


class Gateway:
    """ASGI wrapper: API key, one served model name, no model loading by clients."""

    def __init__(self, app, served_name: str, forced_model: str, api_key: str | None):
        self.app = app
        self.served_name = served_name
        self.forced_model = forced_model
        self.api_key = api_key
        self.created = int(time.time())

    async def _json(self, send, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _error(self, message: str, kind: str, code: str | None, param: str | None = None) -> dict:
        return openai_error(message, kind, code, param)

    def _authorized(self, scope) -> bool:
        if not self.api_key:
            return True
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), self.api_key.encode())

    def _model_card(self) -> dict:
        return {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "rustcoder",
                "root": self.forced_model}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if path in _BLOCKED_ROUTES:
            return await self._json(send, 404, self._error("not available: this server serves one fixed model",
                                                           "invalid_request_error", "not_found"))
        if path not in OPEN_ROUTES and not self._authorized(scope):
            return await self._json(send, 401, self._error("invalid or missing API key (Authorization: Bearer KEY)",
                                                           "invalid_request_error", "invalid_api_key"))
        if path == "/v1/models" and method == "GET":
            return await self._json(send, 200, {"object": "list", "data": [self._model_card()]})
        if path.startswith("/v1/models/") and method == "GET":
            if path[len("/v1/models/"):] == self.served_name:
                return await self._json(send, 200, self._model_card())
            return await self._json(send, 404, self._error(f"model {path[11:]!r} does not exist",
                                                           "invalid_request_error", "model_not_found"))
        if method == "POST" and path in _MODEL_ROUTES:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            payload, problem = request_problem(path, body)
            if problem:
                return await self._json(send, 400, self._error(problem[0], "invalid_request_error", problem[2],
                                                               param=problem[1]))
            if isinstance(payload, dict):
                requested = payload.get("model")
                if requested not in (None, "", self.served_name, self.forced_model):
                    return await self._json(send, 404, self._error(
                        f"The model `{requested}` does not exist. This server serves `{self.served_name}`.",
                        "NotFoundError", "model_not_found"))
                payload["model"] = self.forced_model
                body = json.dumps(payload).encode()
                headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
                scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, self._renaming_send(send))
        return await self.app(scope, receive, send)

    def _renaming_send(self, send):
        """Answers name the model as clients asked for it (the served name), not the engine's path."""
        served = json.dumps(self.served_name).encode()
        olds = [b'"model":' + json.dumps(name).encode() for name in (f"{self.forced_model}@main", self.forced_model)]
        state = {"stream": False, "start": None, "parts": []}

        def rename(data: bytes) -> bytes:
            for old in olds:
                data = data.replace(old, b'"model":' + served)
            return data

        async def renaming_send(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                state["stream"] = b"text/event-stream" in headers.get(b"content-type", b"")
                if state["stream"]:
                    return await send(message)
                state["start"] = message  # JSON: hold the headers until the whole body is renamed
                return None
            if message["type"] == "http.response.body":
                if state["stream"]:
                    body = rename(message.get("body", b""))
                    if not message.get("more_body"):
                        body += b"data: [DONE]\n\n"  # OpenAI streams end with this line; clients wait for it
                    return await send({**message, "body": body})
                state["parts"].append(message.get("body", b""))
                if message.get("more_body"):
                    return None
                start = state["start"]
                original = rename(b"".join(state["parts"]))
                status, body = openai_error_response(start.get("status", 200), original)
                dropped = (b"content-length",) if body == original else (b"content-length", b"content-type")
                headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() not in dropped]
                if body != original:
                    headers.append((b"content-type", b"application/json"))
                await send({**start, "status": status,
                            "headers": headers + [(b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            return await send(message)

        return renaming_send


def stream_delta(text: str, sent: list[str], final: bool = False) -> str:
    """The part of TEXT (the decode of every token so far) not streamed yet; records it in SENT.

    Until ``final``, a trailing U+FFFD (bytes of a character still to come) is held back, so a
    delta never carries half a character.
    """
    done = "".join(sent)
    if not text.startswith(done):  # a decode that changed earlier text: wait for the end
        return ""
    ready = text if final else text.rstrip("\ufffd")
    delta = ready[len(done):]
    if delta:
        sent.append(delta)
    return delta
