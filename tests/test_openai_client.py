"""rustcoder.openai_client is the one OpenAI client and URL normaliser (playground, demo, eval endpoint and judge)."""

from __future__ import annotations

import pytest

pytest.importorskip("openai", reason="the OpenAI SDK is an extra: pip install 'rustcoder[serve]'")

from rustcoder.errors import RustcoderError  # noqa: E402
from rustcoder.net import free_port  # noqa: E402
from rustcoder.openai_client import chat_url, normalize_endpoint, openai_client, served_models  # noqa: E402


@pytest.mark.parametrize("given", ["127.0.0.1:8000", "http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/",
                                   "http://127.0.0.1:8000/v1/chat/completions"])
def test_every_spelling_of_an_endpoint_gives_one_base_and_chat_url(given):
    assert normalize_endpoint(given) == "http://127.0.0.1:8000/v1"
    assert chat_url(given) == "http://127.0.0.1:8000/v1/chat/completions"


def test_local_endpoints_bypass_environment_proxies_and_remote_ones_use_them(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    local = openai_client("localhost:8000", retries=0)
    remote = openai_client("https://api.example.com/v1", retries=0)
    assert str(local.base_url).rstrip("/") == "http://localhost:8000/v1" and local.max_retries == 0
    # the SDK keeps the httpx client it was given as _client; httpx.Client.trust_env is public
    assert local._client.trust_env is False and remote._client.trust_env is True


def test_listing_models_of_a_dead_endpoint_says_where():
    port = free_port()
    with pytest.raises(RustcoderError, match=f"cannot list the models at http://127.0.0.1:{port}/v1"):
        served_models(f"127.0.0.1:{port}")
