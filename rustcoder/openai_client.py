"""The one OpenAI-compatible chat client rustcoder uses (playground, demo, eval through an endpoint): the
official ``openai`` SDK, with endpoint URLs normalised and failures turned into messages that say what to do.
"""

from __future__ import annotations

import re
from typing import Iterator

from .errors import MissingExtraError, RustcoderError

INSTALL = "pip install 'rustcoder[serve]'  (or: pip install openai)"


class EndpointError(RustcoderError):
    """The endpoint could not be reached or answered with an error."""


def normalize_endpoint(url: str) -> str:
    """An OpenAI base URL ending in /v1 (accepts http://host:port, host:port or .../v1)."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        url = "http://" + url
    if not re.search(r"/v\d+$", url):
        url += "/v1"
    return url


def _sdk():
    try:
        import openai
    except ImportError:
        raise MissingExtraError("the openai SDK (the OpenAI-compatible client)", INSTALL) from None
    return openai


class ChatClient:
    """Chat completions, streamed or not, and the model list of one OpenAI-compatible endpoint."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0, max_retries: int = 0):
        import httpx

        openai = _sdk()
        self.base_url = normalize_endpoint(base_url)
        self._openai = openai
        # Local endpoints must not go through a proxy from the environment (trust_env=False).
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=max_retries,
                                     timeout=httpx.Timeout(timeout, connect=10.0),
                                     http_client=httpx.Client(trust_env=False))

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
