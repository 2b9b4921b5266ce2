"""--max-request-seconds on an engine that shares its model by turns (rustcoder's transformers engine): a generation
is timed by its share of the engine (``Admission.share``: a clock at 1/k while k run), so long answers running
beside others are not all cut at the wall-clock cap; on a batching engine (vLLM) the cap stays wall time.

The engine here streams one token every 10 ms until the gateway closes its connection (an answer without end);
the gateway is driven as an ASGI app in the same event loop.
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

from rustcoder.serve.gateway import Admission, Gateway, GatewayLimits  # noqa: E402

CAP = 1.0
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}).encode()
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'


async def endless_engine(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(re.search(rb"content-length: *(\d+)", head, re.I).group(1)))
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    with contextlib.suppress(OSError):
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(TOKEN), TOKEN))
            await writer.drain()
            await asyncio.sleep(0.01)
    writer.close()


async def _post(app, body: bytes, timeout: float) -> tuple[int | None, bytes]:
    """One chat request through the gateway APP as an ASGI call whose client stays: (status, body)."""
    sent, given = [], [False]

    async def receive():
        if not given[0]:
            given[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST",
             "headers": [(b"content-type", b"application/json")]}
    await asyncio.wait_for(app(scope, receive, send), timeout)
    return _answer(sent)


def _answer(sent: list) -> tuple[int | None, bytes]:
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def long_answers(n: int, fair_share: bool) -> list[tuple[float, str]]:
    """N concurrent non-streamed requests to a gateway in front of endless_engine: (seconds, finish_reason) each."""
    uds = os.path.join(tempfile.mkdtemp(prefix="endless-engine-"), "engine.sock")
    server = await asyncio.start_unix_server(endless_engine, path=uds)
    app = Gateway(served=["m"], engine="transformers", upstream_uds=uds, fair_share=fair_share,
                  limits=GatewayLimits(max_request_seconds=CAP, max_concurrent=8))
    loop = asyncio.get_running_loop()

    async def one():
        t = loop.time()
        _, text = await _post(app, BODY, 20)
        return loop.time() - t, json.loads(text)["choices"][0]["finish_reason"]

    try:
        return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await app.aclose()
        server.close()


def test_a_generation_alone_is_cut_at_the_cap_either_way():
    for fair in (False, True):
        [(took, finish)] = asyncio.run(long_answers(1, fair))
        assert finish == "length" and CAP - 0.05 < took < CAP + 0.5, (fair, took)


def test_generations_sharing_the_engine_by_turns_are_timed_by_their_share():
    """Three at once share the engine: each is cut when its third of the engine's time reaches the cap (about 3x the
    cap in wall time), not all at the wall-clock cap with a third of the answer they would get alone."""
    for took, finish in asyncio.run(long_answers(3, fair_share=True)):
        assert finish == "length" and 3 * CAP - 0.2 < took < 3 * CAP + 0.8, took


def test_on_a_batching_engine_the_cap_stays_wall_time():
    for took, finish in asyncio.run(long_answers(3, fair_share=False)):
        assert finish == "length" and CAP - 0.05 < took < CAP + 0.5, took


def test_the_share_clock_runs_at_one_over_the_number_running(monkeypatch):
    import rustcoder.serve.gateway as gateway

    now = [100.0]
    monkeypatch.setattr(gateway.time, "monotonic", lambda: now[0])
    admission = Admission(4, 8, 1.0)
    start = admission.share()
    now[0] += 2.0  # nothing running: full rate
    assert admission.share() - start == pytest.approx(2.0)
    admission.share()
    admission.running = 4
    now[0] += 2.0  # four running: a quarter each
    assert admission.share() - start == pytest.approx(2.5)


# ---- stopping the server with generations in flight and queued ----------------------------------------------

async def _stop_with_work(running: int, queued: int, stream: bool):
    uds = os.path.join(tempfile.mkdtemp(prefix="endless-engine-"), "engine.sock")
    server = await asyncio.start_unix_server(endless_engine, path=uds)
    app = Gateway(served=["m"], engine="transformers", upstream_uds=uds,
                  limits=GatewayLimits(max_request_seconds=30, max_concurrent=running, queue_timeout=30))
    loop = asyncio.get_running_loop()
    body = BODY[:-1] + b', "stream": true}' if stream else BODY

    async def one():
        return await _post(app, body, 10)

    try:
        tasks = [asyncio.create_task(one()) for _ in range(running + queued)]
        while app.admission.running < running or app.admission.waiting < queued:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # tokens flow
        t = loop.time()
        app.begin_shutdown()
        answers = await asyncio.gather(*tasks)
        return answers, loop.time() - t
    finally:
        await app.aclose()
        server.close()


@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "streamed"])
def test_stopping_ends_running_answers_as_cuts_and_refuses_the_queued_in_openais_shape(stream):
    """Red team (session 8): SIGTERM with 8 generations running and 20 queued gave 24 plain-text 500s (uvicorn's, when
    its graceful period ended) and 4 streams cut without an end. Now the running answers end at once with what they
    have and finish_reason "length", and the queued ones get 503 shutting_down."""
    answers, took = asyncio.run(_stop_with_work(2, 3, stream))
    assert took < 1.0
    cuts = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(cuts) == 2 and len(refused) == 3, answers
    for status, body in cuts:
        assert status == 200
        if stream:
            events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        else:
            choice = json.loads(body)["choices"][0]
            assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("x")
    for status, body in refused:
        assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down", body


def test_health_says_busy_as_soon_as_every_slot_is_taken():
    """Red team (session 8): with 8 of 8 slots running and nobody queued yet, /health said "ok" and the next request
    then waited for a slot. "busy" now means a new request would wait."""
    class Engine:
        async def get(self, *args, **kwargs):
            return type("R", (), {"status_code": 200})()

    app = Gateway(served=["m"], engine="transformers", upstream_uds="/nonexistent",
                  limits=GatewayLimits(max_concurrent=2))
    app._client = Engine()

    async def health():
        sent = []

        async def send(message):
            sent.append(message)

        await app._health(send)
        return json.loads(_answer(sent)[1])

    for running, status in ((0, "ok"), (1, "ok"), (2, "busy")):
        app.admission.running = running
        assert asyncio.run(health()) == {"status": status, "running": running, "queued": 0}
