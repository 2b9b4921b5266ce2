"""The one OpenAI-compatible client rustcoder uses (playground, demo, eval through an endpoint or a served
engine, the judge): the official ``openai`` SDK, made by ``openai_client``, with endpoint URLs normalised by
``normalize_endpoint`` and failures turned into messages that say what to do.
"""

from __future__ import annotations

import re
from typing import Iterator

from .errors import MissingExtraError, RustcoderError

INSTALL = "pip install 'rustcoder[serve]'  (or: pip install openai)"


class EndpointError(RustcoderError):
    """The endpoint could not be reached or answered with an error."""


def normalize_endpoint(url: str) -> str:
    """An OpenAI base URL ending in /v1 (accepts http://host:port, host:port, .../v1 or .../v1/chat/completions)."""
    url = url.strip().rstrip("/").removesuffix("/chat/completions")
    if not re.match(r"^https?://", url):
        url = "http://" + url
    if not re.search(r"/v\d+$", url):
        url += "/v1"
    return url


def chat_url(endpoint: str) -> str:
    """The chat completions URL (``.../v1/chat/completions``) of an endpoint given in any form normalize_endpoint
    accepts."""
    return normalize_endpoint(endpoint) + "/chat/completions"


def _sdk():
    try:
        import openai
    except ImportError:
        raise MissingExtraError("the openai SDK (the OpenAI-compatible client)", INSTALL) from None
    return openai


def openai_client(endpoint: str, *, api_key: str | None = None, timeout: float = 300, retries: int = 3):
    """The OpenAI SDK client of an endpoint. It retries connection errors, 408, 409, 429 and 5xx with backoff
    (``retries`` times); a loopback endpoint is reached directly, never through a proxy set in the environment.
    MissingExtraError with the install command when the SDK is missing."""
    import urllib.parse

    import httpx

    from .net import is_loopback

    openai = _sdk()
    url = normalize_endpoint(endpoint)
    local = is_loopback(urllib.parse.urlsplit(url).hostname or "")
    return openai.OpenAI(base_url=url, api_key=api_key or "none", max_retries=retries,
                         timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                         http_client=httpx.Client(trust_env=not local))


def served_models(endpoint: str, api_key: str | None = None) -> list[str]:
    """Model names an OpenAI-compatible server lists at /v1/models (RustcoderError when it cannot say)."""
    openai = _sdk()
    try:
        return [m.id for m in openai_client(endpoint, api_key=api_key, timeout=30, retries=1).models.list()
                if getattr(m, "id", None)]
    except openai.OpenAIError as e:
        raise RustcoderError(f"cannot list the models at {normalize_endpoint(endpoint)}: {e}") from None


class ChatClient:
    """Chat completions, streamed or not, and the model list of one OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0, max_retries: int = 0):
        self.base_url = normalize_endpoint(base_url)
        self._openai = _sdk()
        self._client = openai_client(base_url, api_key=api_key, timeout=timeout, retries=max_retries)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _error(self, e: Exception) -> EndpointError:
        openai = self._openai
        if isinstance(e, openai.APIConnectionError):
            return EndpointError(f"cannot reach {self.base_url} ({type(e.__cause__ or e).__name__}: "
                                 f"{e.__cause__ or e}). Is the server running? Start one with `rustcoder serve`.")
        if isinstance(e, openai.APIStatusError):
            body = e.body if isinstance(e.body, dict) else {}
            detail = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
            detail = detail or body.get("message") or body.get("detail") or getattr(e, "message", "") or str(e)
            hint = " (check --api-key)" if e.status_code == 401 else ""
            return EndpointError(f"{self.base_url} answered HTTP {e.status_code}: {str(detail)[:500]}{hint}")
        return EndpointError(f"{self.base_url}: {type(e).__name__}: {e}")

    def models(self) -> list[str]:
        """The model ids the endpoint serves (GET /models)."""
        try:
            return [m.id for m in self._client.models.list()]
        except self._openai.OpenAIError as e:
            raise self._error(e) from None

    def _request(self, messages: list[dict], model: str | None, params: dict) -> dict:
        known = {"temperature", "top_p", "max_tokens", "seed", "stop", "n", "presence_penalty", "frequency_penalty"}
        given = {k: v for k, v in params.items() if v is not None}
        extra = {k: v for k, v in given.items() if k not in known}
        return {"model": model or self.models()[0], "messages": messages,
                **{k: v for k, v in given.items() if k in known}, **({"extra_body": extra} if extra else {})}

    def chat(self, messages: list[dict], model: str | None = None, **params) -> str:
        """One chat completion; returns the answer text (model None: the endpoint's first model)."""
        try:
            reply = self._client.chat.completions.create(**self._request(messages, model, params))
        except self._openai.OpenAIError as e:
            raise self._error(e) from None
        return reply.choices[0].message.content or ""

    def stream_chat(self, messages: list[dict], model: str | None = None, **params) -> Iterator[str]:
        """Stream a chat completion: yields text deltas as the server sends them.

        Closing the generator closes the connection, which makes the engine stop generating."""
        try:
            stream = self._client.chat.completions.create(stream=True, **self._request(messages, model, params))
            with stream:
                for chunk in stream:
                    for choice in chunk.choices or []:
                        if choice.delta and choice.delta.content:
                            yield choice.delta.content
        except self._openai.OpenAIError as e:
            raise self._error(e) from None
