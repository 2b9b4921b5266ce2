"""What the gateway makes of an engine's stream that is not what it should be (``Job._read_upstream``).

transformers serve writes its error event as ``data: {"error": "<message>"}`` without escaping the message (red
team, session 8): one with a quote or a newline is not JSON. The gateway used to skip such a line and answer 200
with the text so far, as if the answer were complete; now it is the engine's failure, in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile

import pytest

pytest.importorskip("httpx")

from rustcoder.serve.gateway import Gateway, GatewayLimits  # noqa: E402

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}).encode()
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"fn "},"finish_reason":null}]}\n\n'


def engine_sending(events: list[bytes]):
    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(re.search(rb"content-length: *(\d+)", head, re.I).group(1)))
        payload = b"".join(events)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(payload), payload))
        await writer.drain()
        writer.close()
    return handle


async def ask(events: list[bytes], stream: bool):
    uds = os.path.join(tempfile.mkdtemp(prefix="events-engine-"), "engine.sock")
    server = await asyncio.start_unix_server(engine_sending(events), path=uds)
    app = Gateway(served=["m"], engine="transformers", upstream_uds=uds, limits=GatewayLimits(max_request_seconds=10))
    sent, given = [], [False]

    async def receive():
        if not given[0]:
            given[0] = True
            return {"type": "http.request", "body": BODY[:-1] + b', "stream": true}' if stream else BODY,
                    "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST",
             "headers": [(b"content-type", b"application/json")]}
    try:
        await asyncio.wait_for(app(scope, receive, send), 10)
    finally:
        await app.aclose()
        server.close()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


BROKEN_ERRORS = [b'data: {"error": "CUDA out of memory: tried "40 GiB""}\n\n',
                 b'data: {"error": "line one\nline two"}\n\n']


@pytest.mark.parametrize("broken", BROKEN_ERRORS, ids=["quote", "newline"])
def test_an_unreadable_error_event_is_the_engines_failure_not_a_complete_answer(broken):
    status, text = asyncio.run(ask([TOKEN, broken, b"data: [DONE]\n\n"], stream=False))
    assert status == 500, text
    err = json.loads(text)["error"]
    assert err["type"] == "server_error" and "unreadable event" in err["message"]
    status, text = asyncio.run(ask([TOKEN, broken, b"data: [DONE]\n\n"], stream=True))
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"  # streamed: the token went out; the error is the last event
    assert "unreadable event" in json.loads(events[-2])["error"]["message"]


def test_a_well_formed_stream_is_answered_whole():
    status, text = asyncio.run(ask([TOKEN, TOKEN, b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
                                    b"\n\n", b"data: [DONE]\n\n"], stream=False))
    choice = json.loads(text)["choices"][0]
    assert status == 200 and choice["message"]["content"] == "fn fn " and choice["finish_reason"] == "stop"
