"""The gateway's hold on the engine's connection (``rustcoder.serve.gateway.Job.hang_up``): at
``--max-request-seconds`` and when a client leaves, the engine's connection is closed at once, whatever the
engine does and even where the stack below httpx absorbs the cancellation that would otherwise end the read.

The engine here is a raw Unix-socket server that answers headers and one token, then sends nothing, ever, and
records when the gateway closed its connection. The gateway is driven as an ASGI app in the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile

import pytest

pytest.importorskip("httpx")
httpcore_anyio = pytest.importorskip("httpcore._backends.anyio")

from rustcoder.serve.gateway import Gateway, GatewayLimits  # noqa: E402

CAP = 1.0  # --max-request-seconds
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}).encode()
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"fn "},"finish_reason":null}]}\n\n'


class SilentEngine:
    """Headers and one streamed token, then silence until the gateway hangs up (``closed_at``, loop time)."""

    def __init__(self):
        self.uds = os.path.join(tempfile.mkdtemp(prefix="silent-engine-"), "engine.sock")
        self.closed_at: float | None = None

    async def handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(re.search(rb"content-length: *(\d+)", head, re.I).group(1)))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(TOKEN), TOKEN))
        await writer.drain()
        with contextlib.suppress(OSError):
            while await reader.read(1024):  # nothing more is sent: this ends when the gateway closes
                pass
        self.closed_at = asyncio.get_running_loop().time()
        writer.close()


def run(coro):
    """CORO on the loop uvicorn serves the gateway with: uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@pytest.fixture
def absorbed(monkeypatch):
    """The stack below httpx swallows every cancellation of a read (what issue 23 first suspected of vLLM's
    stalls): only closing the connection can end such a read."""
    read = httpcore_anyio.AnyIOStream.read

    async def absorbing_read(self, max_bytes, timeout=None):
        while True:
            try:
                return await read(self, max_bytes, timeout)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()

    monkeypatch.setattr(httpcore_anyio.AnyIOStream, "read", absorbing_read)


async def ask(stream: bool, leave_after: float | None = None):
    """Run one chat request through a gateway to a SilentEngine: (status, body text, took, engine closed after,
    what reached the loop's exception handler)."""
    engine = SilentEngine()
    server = await asyncio.start_unix_server(engine.handle, path=engine.uds)
    app = Gateway(served=["m"], engine="transformers", upstream_uds=engine.uds,
                  limits=GatewayLimits(max_request_seconds=CAP, max_concurrent=1))
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    left, sent, body = asyncio.Event(), [], [b""]

    async def receive():
        if body[0] is not None:
            body[0] = None
            return {"type": "http.request", "body": BODY if not stream else BODY[:-1] + b', "stream": true}',
                    "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    if leave_after is not None:
        loop.call_later(leave_after, left.set)
    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST",
             "headers": [(b"content-type", b"application/json")]}
    t = loop.time()
    try:
        await asyncio.wait_for(app(scope, receive, send), 10)  # the bar is CAP + 0.5: 10 only ends a broken run
        took = loop.time() - t
        for _ in range(50):  # the engine sees the close within a loop turn or two
            if engine.closed_at is not None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # callbacks of the closed connection run
    finally:
        await app.aclose()
        server.close()
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    return status, text, took, (engine.closed_at - t if engine.closed_at is not None else None), errors


@pytest.mark.parametrize("cancel", ["plain", "absorbed"])
@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "streamed"])
def test_the_time_cap_holds_on_a_silent_engine(request, cancel, stream):
    """Headers and one token, then silence: the answer ends at the cap as a "length" cut (not a 503), and the
    engine's connection is closed then, even when the read's cancellation is absorbed."""
    if cancel == "absorbed":
        request.getfixturevalue("absorbed")
    status, text, took, closed, errors = run(ask(stream))
    assert status == 200, text
    if stream:
        events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    else:
        choice = json.loads(text)["choices"][0]
        assert choice["finish_reason"] == "length" and choice["message"]["content"] == "fn "
    assert CAP - 0.05 < took < CAP + 0.5
    assert closed is not None and closed < CAP + 0.5
    # nothing logged (closing a socket under a read being cancelled made anyio set a cancelled future's result);
    # with the cancellation absorbed, anyio's own bookkeeping of the read it re-enters is not this test's
    assert cancel == "absorbed" or not errors, errors


@pytest.mark.parametrize("cancel", ["plain", "absorbed"])
def test_a_client_that_leaves_closes_the_engine_connection_at_once(request, cancel):
    if cancel == "absorbed":
        request.getfixturevalue("absorbed")
    status, text, took, closed, errors = run(ask(stream=False, leave_after=0.3))
    assert status is None  # nobody to answer
    assert took < 0.6 and closed is not None and closed < 0.6
    assert cancel == "absorbed" or not errors, errors
