"""The ASGI gateway in front of either engine: the only thing a client talks to.

It serves the documented routes and nothing else (404 in OpenAI's error shape for any other path and
method), checks the API key (one ``Authorization`` header, constant-time comparison), reads bodies up to a
cap with a deadline, validates every chat request (``schema``) before an engine sees it, forces the model
to the one served, admits generations through a bounded queue with a concurrency limit, and streams from
the engine even for non-streamed requests so that a client that leaves, or a generation past the server's
token or time limits, closes the engine's connection and stops its work. ``/health`` tells the truth: the
engine's own health, and "stuck" when generations are in flight but none made progress for a while.

The engine listens on a Unix socket in a private directory (``spec.EngineSpec.uds``), so nothing but this
gateway can reach the engine's own routes. ``GatewayServer`` runs the app with uvicorn in a thread of the
``rustcoder serve`` process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import socket
import threading
import time
import uuid

from .schema import Problem, RequestLimits, parse_chat_request, parse_json_body, wants_usage_in_stream
from .spec import HEALTH_PATH

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
ROUTES = {HEALTH_PATH: ("GET",), MODELS_PATH: ("GET",), CHAT_PATH: ("POST",)}  # plus GET /v1/models/{id}
ERROR_BODY_CAP = 64 * 1024  # bytes of an engine's error answer the gateway reads


@dataclasses.dataclass
class GatewayLimits:
    """The gateway's server-side limits (each is a ``rustcoder serve`` flag; see docs/serve.md)."""

    max_body_bytes: int = 2 * 1024 * 1024
    max_tokens: int = 4096
    max_request_seconds: float = 300.0
    max_concurrent: int | None = None  # None: 32 on vLLM, 8 on transformers --continuous-batching, else 1
    max_queue: int = 256
    queue_timeout: float = 120.0
    stall_seconds: float = 120.0
    body_timeout: float = 30.0
    header_timeout: float = 10.0  # a connection's request headers must be complete within it (F8)


def openai_error(message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> dict:
    """An error body the way OpenAI clients expect it: {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def request_problem(path: str, body: bytes, limits: RequestLimits | None = None
                    ) -> tuple[object, tuple[str, str | None, str] | None]:
    """(the request as the engine gets it, None) or (None, (message, param, code)) for a request to PATH that
    OpenAI would refuse with 400 (the gateway's validation, usable without a server)."""
    payload, problem = parse_json_body(body)
    if problem is None and path == CHAT_PATH:
        payload, problem = parse_chat_request(payload, limits or RequestLimits())
    if problem is not None:
        return None, (problem.message, problem.param, problem.code)
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
        err = payload["error"]
        return status, json.dumps(openai_error(str(err["message"]), str(err.get("type") or "invalid_request_error"),
                                               err.get("code") if isinstance(err.get("code"), str) else None,
                                               err.get("param") if isinstance(err.get("param"), str) else None)
                                  ).encode()
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        if isinstance(detail, list):  # pydantic: [{"loc": [...], "msg": ...}, ...]
            detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []) if x != 'body') or 'body'}: "
                               f"{d.get('msg', d)}" if isinstance(d, dict) else str(d) for d in detail)
        message = str(detail)
    elif isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message = payload["error"]
    elif isinstance(payload, dict) and isinstance(payload.get("message"), str):
        message = payload["message"]
    else:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if status == 422:
        status = 400
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, json.dumps(openai_error(message[:2000], kind)).encode()


class Overloaded(Exception):
    """No generation slot within the queue's limits (503)."""


class ShuttingDown(Exception):
    """The server is stopping: no new generation starts (503 shutting_down)."""


SHUTTING_DOWN = "The server is shutting down; retry against its next start."


class Admission:
    """At most ``slots`` generations at once; up to ``max_queue`` more wait (FIFO) for at most ``timeout`` s."""

    def __init__(self, slots: int, max_queue: int, timeout: float):
        self.slots, self.max_queue, self.timeout = slots, max_queue, timeout
        self.running = 0
        self.waiting = 0
        self._sem: asyncio.Semaphore | None = None
        self._share, self._share_at = 0.0, time.monotonic()

    def share(self) -> float:
        """Seconds of one generation's fair share of the engine so far: a clock that runs at 1/k while k
        generations run (processor sharing's virtual time). A generation's share is the difference of two readings."""
        now = time.monotonic()
        self._share += (now - self._share_at) / max(1, self.running)
        self._share_at = now
        return self._share

    @contextlib.asynccontextmanager
    async def slot(self):
        """Hold a generation slot for the block; raises Overloaded when the queue is full or the wait too long."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        if self.waiting >= self.max_queue:
            raise Overloaded(f"{self.waiting} requests are already queued (--max-queue {self.max_queue})")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                await self._sem.acquire()
        except TimeoutError:
            raise Overloaded(f"no generation slot became free within {self.timeout:g} s (--queue-timeout)") from None
        finally:
            self.waiting -= 1
        self.share()  # the clock's rate changes with the count
        self.running += 1
        try:
            yield
        finally:
            self.share()
            self.running -= 1
            self._sem.release()


class Gateway:
    """The ASGI app in front of an engine (see the module docstring).

    ``upstream_uds``/``upstream_url``: where the engine listens. ``served``: the model names clients may use,
    the default first. ``upstream_models``: the name the engine knows each served name by.
    """

    def __init__(self, *, served: list[str], engine: str, api_key: str | None = None,
                 upstream_uds: str | None = None, upstream_url: str = "http://engine",
                 upstream_models: dict[str, str] | None = None, limits: GatewayLimits | None = None,
                 context_length: int | None = None, vocab_size: int | None = None,
                 allowed_hosts: tuple[str, ...] | None = None, stop_token_ids: tuple[int, ...] = (),
                 prompt_tokens=None, fair_share: bool = False):
        self.served = list(served)
        self.engine = engine
        self.api_key = api_key
        self.upstream_uds = upstream_uds
        self.upstream_url = upstream_url
        self.upstream_models = upstream_models or {name: name for name in served}
        self.limits = limits or GatewayLimits()
        slots = self.limits.max_concurrent or (32 if engine == "vllm" else 1)
        self.admission = Admission(slots, self.limits.max_queue, self.limits.queue_timeout)
        # the engine shares its model among the running generations by turns (rustcoder's transformers engine): each
        # advances at 1/k of its speed alone, so --max-request-seconds counts a generation's share of the engine's
        # time, not the wall clock (which would cut every long answer running beside others)
        self.fair_share = fair_share
        self.jobs: set[Job] = set()  # the chat completions admitted or queued now
        self.closing = False  # the server is stopping: in-flight answers end now, queued and new ones get 503
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop (set at startup)
        self.request_limits = RequestLimits(max_tokens=self.limits.max_tokens, context_length=context_length,
                                            vocab_size=vocab_size, engine=engine,
                                            stop_token_ids=tuple(stop_token_ids), prompt_tokens=prompt_tokens)
        if prompt_tokens is not None:
            self.request_limits.special_tokens = prompt_tokens.special_tokens
        self.allowed_hosts = allowed_hosts
        self.created = int(time.time())
        self.progress: dict[str, float] = {}  # request id -> when its generation last made progress
        self._client = None
        # Bodies are parsed and prompts counted on two threads of their own: a flood of large bodies queues
        # there (a queued one is dropped when its client leaves) instead of filling asyncio's default pool,
        # whose six threads took the GIL from the event loop (/health took over 5 s under 150 such bodies).
        self._validation: concurrent.futures.ThreadPoolExecutor | None = None

    # ---- plumbing -----------------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """In the serving loop, when the server starts to stop: every generation in flight ends now as a cut (its
        answer so far with finish_reason "length", or a 503 if it has no token yet), and queued and new requests
        get a 503 in OpenAI's shape, instead of uvicorn's plain-text 500 when its graceful period ends (red team,
        session 8: 24 plain 500s and 4 streams cut without an end for 8 running and 20 queued)."""
        self.closing = True
        for job in list(self.jobs):
            job.cut_now()

    def client(self):
        """The HTTP client to the engine (created in the serving event loop)."""
        if self._client is None:
            import httpx

            # F25: httpx ignores the client's `limits` when given a transport: the pool's limits go to the transport
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=16)
            transport = httpx.AsyncHTTPTransport(uds=self.upstream_uds, limits=limits) if self.upstream_uds else None
            self._client = httpx.AsyncClient(transport=transport, base_url=self.upstream_url,
                                             timeout=httpx.Timeout(10.0, read=None), limits=limits)
        return self._client

    async def aclose(self) -> None:
        """Close the connections to the engine."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._validation is not None:
            self._validation.shutdown(wait=False, cancel_futures=True)
            self._validation = None

    def validation(self) -> concurrent.futures.ThreadPoolExecutor:
        """The two threads that parse bodies and count prompts (see __init__)."""
        if self._validation is None:
            self._validation = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="rustcoder-parse")
        return self._validation

    @staticmethod
    async def _send_json(send, status: int, payload: dict, headers: list | None = None) -> None:
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send, status: int, message: str, param: str | None = None, code: str | None = None,
                     kind: str | None = None, headers: list | None = None) -> None:
        kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        await self._send_json(send, status, openai_error(message, kind, code, param), headers)

    async def _problem(self, send, problem: Problem) -> None:
        await self._error(send, problem.status, problem.message, problem.param, problem.code)

    def _host_ok(self, headers: list) -> bool:
        if self.allowed_hosts is None:
            return True
        hosts = [v for k, v in headers if k.lower() == b"host"]
        if len(hosts) != 1:
            return False
        host = hosts[0].decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]") in self.allowed_hosts

    def _auth_problem(self, headers: list) -> Problem | None:
        if not self.api_key:
            return None
        given = [v for k, v in headers if k.lower() == b"authorization"]
        if len(given) > 1:
            return Problem("send exactly one Authorization header (got several)", None, "duplicate_header", 400)
        value = given[0].decode("latin-1") if given else ""
        token = value[7:] if value[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self.api_key.encode()):  # constant time
            return Problem("invalid or missing API key (send Authorization: Bearer KEY)", None, "invalid_api_key", 401)
        return None

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "rustcoder"}

    # ---- the app ------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.loop = asyncio.get_running_loop()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # websockets: nothing here speaks them
            return
        path, method = scope["path"], scope["method"]
        headers = scope.get("headers") or []
        allowed = ROUTES.get(path)
        if allowed is None and path.startswith(MODELS_PATH + "/") and path.count("/") == 3 and not path.endswith("/"):
            allowed = ("GET",)
        if allowed is None:
            return await self._error(send, 404, f"Unknown route {method} {path[:200]}: this server serves "
                                     f"{CHAT_PATH}, {MODELS_PATH} and {HEALTH_PATH}", code="unknown_url")
        if not self._host_ok(headers):
            return await self._error(send, 400, "the Host header must name this machine (127.0.0.1, localhost or "
                                     "::1) when the server binds loopback", code="invalid_host")
        if path != HEALTH_PATH:
            problem = self._auth_problem(headers)
            if problem:
                return await self._problem(send, problem)
        allow = [(b"allow", ", ".join((*allowed, "OPTIONS")).encode())]
        if method == "OPTIONS":
            return await send({"type": "http.response.start", "status": 204, "headers": allow}) or await send(
                {"type": "http.response.body", "body": b""})
        if method not in allowed:
            return await self._error(send, 405, f"{method} is not allowed on {path}; use {' or '.join(allowed)}",
                                     code="method_not_allowed", headers=allow)
        if path == HEALTH_PATH:
            return await self._health(send)
        if path == MODELS_PATH:
            return await self._send_json(send, 200, {"object": "list", "data": [self._model_card(n) for n in self.served]})
        if path.startswith(MODELS_PATH + "/"):
            name = path[len(MODELS_PATH) + 1:]
            if name in self.served:
                return await self._send_json(send, 200, self._model_card(name))
            return await self._error(send, 404, f"The model `{name[:100]}` does not exist", "model",
                                     "model_not_found")
        return await self._chat(scope, receive, send, headers)

    async def _health(self, send) -> None:
        now = time.monotonic()
        running, queued = self.admission.running, self.admission.waiting
        stale = [now - t for t in self.progress.values()]
        info = {"running": running, "queued": queued}
        if stale and min(stale) > self.limits.stall_seconds:
            return await self._send_json(send, 503, {"status": "stuck", **info, "detail": (
                f"{len(stale)} generations in flight, none made progress for {min(stale):.0f} s")})
        try:
            r = await self.client().get(HEALTH_PATH, timeout=5.0)
            ok = r.status_code == 200
            detail = f"the engine's /health answered {r.status_code}"
        except Exception as e:  # the engine is down or not listening yet
            ok, detail = False, f"the engine is not reachable ({type(e).__name__})"
        if not ok:
            return await self._send_json(send, 503, {"status": "unavailable", **info, "detail": detail})
        busy = running >= self.admission.slots  # a new request would wait for a slot
        await self._send_json(send, 200, {"status": "busy" if busy else "ok", **info})

    async def _read_body(self, scope, receive) -> bytes | Problem:
        headers = scope.get("headers") or []
        types = [v.decode("latin-1").split(";")[0].strip().lower() for k, v in headers if k.lower() == b"content-type"]
        if types != ["application/json"]:  # also keeps browsers' form posts out (they cannot send this without CORS)
            return Problem("Content-Type must be application/json", None, "unsupported_media_type", 415)
        cap = self.limits.max_body_bytes
        lengths = [v for k, v in headers if k.lower() == b"content-length"]
        if lengths and lengths[0].isdigit() and int(lengths[0]) > cap:
            return Problem(f"the request body is {int(lengths[0])} bytes; this server accepts at most {cap} "
                           "(rustcoder serve --max-body-bytes)", None, "body_too_large", 413)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return Problem("client disconnected", None, "disconnected", 499)
                    part = message.get("body", b"")
                    size += len(part)
                    if size > cap:  # stop reading: never hold more than the cap
                        return Problem(f"the request body exceeds {cap} bytes (rustcoder serve --max-body-bytes)",
                                       None, "body_too_large", 413)
                    chunks.append(part)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            return Problem(f"the request body did not arrive within {self.limits.body_timeout:g} s", None,
                           "body_timeout", 408)

    async def _chat(self, scope, receive, send, headers) -> None:
        body = await self._read_body(scope, receive)
        if isinstance(body, Problem):
            if body.status == 499:
                return
            extra = [(b"connection", b"close")] if body.status in (408, 413) else None
            return await self._error(send, body.status, body.message, body.param, body.code, headers=extra)
        # from here on a client that leaves ends its request: while its body is parsed and its prompt counted
        # (a long prompt's count stops at its next piece) and while it is queued or generating
        cancelled = threading.Event()
        jobs: list[Job] = []
        disconnected = asyncio.create_task(_wait_disconnect(receive))
        work = asyncio.create_task(self._validate_and_run(body, send, cancelled, jobs))
        try:
            await asyncio.wait({disconnected, work}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.set()
            disconnected.cancel()
            while not work.done():  # again until it ends: a cancel can be absorbed by a wait that just completed
                work.cancel()
                await asyncio.wait({work}, timeout=0.1)
                for job in jobs if not work.done() else ():  # a cancel that did not end it in 0.1 s: the
                    job.hang_up()  # engine's connection is closed under it (its read then fails)
            for task in (work, disconnected):
                with contextlib.suppress(BaseException):
                    await task
        if work.done() and not work.cancelled() and work.exception() is not None:
            raise work.exception()

    async def _validate_and_run(self, body: bytes, send, cancelled: threading.Event, jobs: list) -> None:
        """Parse and validate BODY (400s in OpenAI's shape), then run it as a Job (added to JOBS)."""
        # in threads: scanning and parsing a body of up to --max-body-bytes, and counting a long prompt's tokens,
        # must not stall the other requests' streams
        loop = asyncio.get_running_loop()
        payload, problem = await loop.run_in_executor(self.validation(), parse_json_body, body)
        if problem is None:
            requested = payload.get("model")
            if requested is not None and not isinstance(requested, str):
                problem = Problem("model: must be a string (the name /v1/models lists)", "model")
            elif requested not in (None, *self.served):
                return await self._error(send, 404, f"The model `{str(requested)[:100]}` does not exist. This "
                                         f"server serves `{self.served[0]}`.", "model", "model_not_found")
        if problem is None:
            request, problem = await loop.run_in_executor(self.validation(), parse_chat_request, payload,
                                                          self.request_limits, cancelled)
        if problem is not None:
            return await self._problem(send, problem)
        name = payload.get("model") or self.served[0]
        request["model"] = self.upstream_models.get(name, name)
        request["stream"] = True  # always streamed from the engine: a client that leaves stops the generation
        if self.engine == "vllm":
            request["stream_options"] = {"include_usage": True}
        stream = bool(payload.get("stream"))
        job = Job(self, request, name, stream, wants_usage_in_stream(payload) if stream else True, send)
        jobs.append(job)
        await job.run()


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Job:
    """One chat completion through the engine: admission, the streamed upstream call, limits, the answer."""

    def __init__(self, gateway: Gateway, request: dict, name: str, stream: bool, usage: bool, send):
        self.g, self.request, self.name, self.stream, self.usage, self.send = gateway, request, name, stream, usage, send
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.started = False
        self.deadline = float("inf")  # the loop time at which --max-request-seconds cuts it (set when admitted)
        self.expired = False  # the time cap closed the engine's connection (its read error is a cut, not a 503)
        self.abandoned = False  # its client left: nothing more is answered
        self._upstream = None  # the engine's response while it is being read
        self._task: asyncio.Task | None = None  # the task reading it
        self._watchdog: asyncio.TimerHandle | None = None
        self._timer = None  # the asyncio.Timeout of the deadline (rescheduled when a fair share extends it)
        self._keeper: asyncio.TimerHandle | None = None
        self._share0 = 0.0  # the admission's fair-share clock when this generation started

    def hang_up(self, expired: bool = False) -> None:
        """Close the engine's connection now, from any task or a loop callback: the engine stops the generation
        when its connection closes, and a read of it that is pending fails at once, even one whose cancellation
        was absorbed. EXPIRED: the time cap did it (the read error then ends the answer as a cut); otherwise
        the client left (nothing more is answered)."""
        self.expired, self.abandoned = self.expired or expired, self.abandoned or not expired
        r = self._upstream
        stream = r.extensions.get("network_stream") if r is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:  # shutdown, not close: the fd stays httpcore's, which closes it in r.aclose()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _move_deadline(self, when: float) -> None:
        """The deadline is WHEN (loop time) for all three of its enforcers: the timer, the watchdog, the per-line check."""
        self.deadline = when
        self._timer.reschedule(when)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = asyncio.get_running_loop().call_at(when + 0.05, self._expire)

    def cut_now(self) -> None:
        """End this generation now, as its time limit would (timer, then the watchdog), if it is running."""
        if self._timer is None or self._timer.expired():
            return
        if self._keeper is not None:
            self._keeper.cancel()
        self._move_deadline(asyncio.get_running_loop().time())

    def _keep_deadline(self) -> None:
        """Just before the deadline, on an engine that shares its model by turns: while this generation's share of
        the engine (Admission.share) is under --max-request-seconds, move the deadline (timer, watchdog, per-line
        check) to when the share could reach it at the earliest. At most --max-concurrent times the cap in wall time."""
        loop = asyncio.get_running_loop()
        left = self.g.limits.max_request_seconds - (self.g.admission.share() - self._share0)
        if left <= 0.02:
            return
        self._move_deadline(loop.time() + left)
        self._keeper = loop.call_at(self.deadline - 0.01, self._keep_deadline)

    def _expire(self, grace: bool = True) -> None:
        """The watchdog, just after the deadline: closes the engine's connection (hang_up) unless the timer's
        cancellation of the read is still on its way, which gets one more 0.1 s (closing the socket under a read
        being cancelled makes anyio set a cancelled future's result: a logged InvalidStateError)."""
        if grace and self._task is not None and self._task.cancelling():
            self._watchdog = asyncio.get_running_loop().call_later(0.1, self._expire, False)
            return
        self.hang_up(expired=True)

    async def run(self) -> None:
        """Admit, generate, answer; any refusal or engine failure in OpenAI's error shape."""
        g = self.g
        g.jobs.add(self)
        try:
            if g.closing:
                raise ShuttingDown()
            async with g.admission.slot():
                if g.closing:
                    raise ShuttingDown()
                g.progress[self.id] = time.monotonic()
                try:
                    await self._generate()
                finally:
                    g.progress.pop(self.id, None)
        except ShuttingDown:
            await g._error(self.send, 503, SHUTTING_DOWN, code="shutting_down")
        except Overloaded as e:
            await g._error(self.send, 503, f"The server is overloaded: {e}. Retry later.", code="overloaded",
                           headers=[(b"retry-after", b"5")])
        finally:
            g.jobs.discard(self)

    async def _generate(self) -> None:
        import httpx

        g = self.g
        self.text, self.finish, self.usage_seen, self.created = [], None, None, int(time.time())
        cut = False
        # the deadline covers the client's side too: one that stops reading cannot hold a slot past it. Enforced
        # three ways: the timer's cancellation; a watchdog that closes the engine's connection at the deadline
        # (_relay: holds even where a cancellation is absorbed, or an engine neither answers nor ends); a check
        # on every line.
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + g.limits.max_request_seconds
        self._share0 = g.admission.share()
        try:
            async with asyncio.timeout_at(self.deadline) as self._timer:
                if g.fair_share:
                    self._keeper = loop.call_at(self.deadline - 0.01, self._keep_deadline)
                try:
                    if await self._relay():
                        return
                finally:
                    if self._keeper is not None:
                        self._keeper.cancel()
        except TimeoutError:
            cut = True
        except httpx.HTTPError as e:
            if self.abandoned:  # its client left and the connection was closed for it: nobody to answer
                return
            if self.expired:  # the watchdog closed the engine's connection at the deadline
                cut = True
            elif not self.started:
                return await self._answer_error(503, openai_error(
                    f"the engine is not reachable ({type(e).__name__}); check /health", "server_error"))
            else:
                cut = True
        if cut and not self.text and g.closing:
            async with asyncio.timeout(10):
                return await self._answer_error(503, openai_error(SHUTTING_DOWN, "server_error", "shutting_down"))
        if cut and not self.text:  # no token before the time cap: "busy", never a 200 with empty content (F6)
            async with asyncio.timeout(10):
                return await self._answer_error(504, openai_error(
                    f"no token was generated within the server's time limit ({g.limits.max_request_seconds:g} s, "
                    "rustcoder serve --max-request-seconds): the server is busy or the prompt is too long; retry "
                    "later or with a shorter prompt", "server_error", "timeout"))
        finish, usage = (self.finish or "stop", self.usage_seen) if not cut else ("length", None)
        # at the limit: the engine's connection is closed; the answer ends here (rustcoder serve --max-request-seconds)
        async with asyncio.timeout(10):  # the last words to a client that does not read are not waited on
            if self.stream:
                if cut or not self.started:
                    await self._forward({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                return await self.send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            answer = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.name,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(self.text)},
                                   "finish_reason": finish, "logprobs": None}],
                      "usage": usage}
            await g._send_json(self.send, 200, answer)

    async def _relay(self) -> bool:
        """Stream the engine's answer (forwarding chunks to a streaming client); True when it was answered
        with an error already."""
        g = self.g
        client = g.client()
        r = await client.send(client.build_request("POST", CHAT_PATH, json=self.request), stream=True)
        self._upstream, self._task = r, asyncio.current_task()
        self._watchdog = asyncio.get_running_loop().call_at(self.deadline + 0.05, self._expire)
        try:
            return await self._read_upstream(r)
        finally:  # F25: released even when this task is cancelled (a client left): never a pooled connection lost
            self._watchdog.cancel()
            self._upstream = None  # from here on its connection may go back to the pool: never hung up
            await asyncio.shield(r.aclose())

    async def _read_upstream(self, r) -> bool:
        """The engine's response R read to its end (see _relay)."""
        g = self.g
        if r.status_code != 200:
            raw = b""
            async for part in r.aiter_bytes():
                raw += part
                if len(raw) > ERROR_BODY_CAP:
                    break
            status, body = openai_error_response(r.status_code, raw[:ERROR_BODY_CAP])
            await self._answer_error(status, json.loads(body))
            return True
        loop = asyncio.get_running_loop()
        async for line in r.aiter_lines():
            if loop.time() >= self.deadline:
                raise TimeoutError
            g.progress[self.id] = time.monotonic()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                chunk = None
            if not isinstance(chunk, dict):  # transformers serve writes its error event unescaped: a message with a
                # quote or a newline is not JSON, and skipping it answered 200 with the text so far as if complete
                await self._answer_error(500, openai_error(
                    f"the engine failed (an unreadable event: {data[:300]})", "server_error"))
                return True
            if "error" in chunk and "choices" not in chunk:
                err = chunk["error"]
                message = err.get("message") if isinstance(err, dict) else str(err)
                await self._answer_error(500, openai_error(f"the engine failed: {message}", "server_error"))
                return True
            self.created = chunk.get("created", self.created)
            if chunk.get("usage"):
                self.usage_seen = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    self.text.append(delta["content"])
                if choice.get("finish_reason"):
                    self.finish = choice["finish_reason"]
            if self.stream:
                await self._forward(chunk)
        return False

    async def _forward(self, chunk: dict) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200,
                             "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                         (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        if not chunk.get("choices") and chunk.get("usage") and not self.usage:
            return  # vLLM's usage chunk, which the client did not ask for
        out = {"id": self.id, "object": "chat.completion.chunk", "created": chunk.get("created", int(time.time())),
               "model": self.name, "choices": chunk.get("choices") or []}
        if self.usage and chunk.get("usage"):
            out["usage"] = chunk["usage"]
        await self.send({"type": "http.response.body", "body": b"data: " + json.dumps(out).encode() + b"\n\n",
                         "more_body": True})

    async def _answer_error(self, status: int, payload: dict) -> None:
        if not self.started:
            return await self.g._send_json(self.send, status, payload)
        await self.send({"type": "http.response.body", "body": b"data: " + json.dumps(payload).encode()
                         + b"\n\ndata: [DONE]\n\n", "more_body": False})


class GatewayServer:
    """The gateway served by uvicorn on HOST:PORT in a background thread (``start``/``stop``)."""

    def __init__(self, app: Gateway, host: str, port: int):
        import uvicorn

        from .protocol import header_deadline_protocol

        # No uvicorn limit_concurrency (F8): it counts open connections, so idle sockets would make every request
        # 503; the admission queue bounds generations and the header deadline closes idle connections.
        self.config = uvicorn.Config(app, host=host, port=port, http=header_deadline_protocol(app.limits.header_timeout),
                                     ws="none", lifespan="on", log_level="warning", access_log=False,
                                     timeout_graceful_shutdown=3, timeout_keep_alive=5, limit_concurrency=None,
                                     server_header=False)
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None
        self.failed: BaseException | None = None

    def start(self, timeout: float = 30.0) -> "GatewayServer":
        """Start serving; raises RuntimeError when the address cannot be bound."""
        def run():
            try:
                self.server.run()
            except BaseException as e:  # uvicorn exits the thread with SystemExit when it cannot bind
                self.failed = e

        self.thread = threading.Thread(target=run, name="rustcoder-gateway", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway could not listen on {self.config.host}:{self.config.port}"
                                   + (f" ({self.failed})" if self.failed else ""))
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, cancel what is in flight (closing the engine's connections), and return."""
        if self.thread is None:
            return
        app = self.config.app
        if getattr(app, "loop", None) is not None and self.thread.is_alive():
            app.loop.call_soon_threadsafe(app.begin_shutdown)
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        self.thread = None


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
