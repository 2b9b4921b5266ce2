"""The engine's life: started in its own process group, waited on until healthy, banner and curl line,
stopped as a whole on Ctrl-C, SIGTERM or a crash (``serve``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable

from ..errors import RustcoderError
from .. import procs
from ..net import connect_host, is_loopback, url_host
from .spec import (API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT, EngineSpec, HEALTH_PATH, VLLM_INSTALL, build_spec,
                   default_slots, engine_command, model_limits)

def port_problem(host: str, port: int) -> str | None:
    """None when HOST:PORT can be bound now, else why not (in use, no such address, ...)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot resolve --host {host!r}: {e.strerror}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            s.bind(addr)
        except OSError as e:
            import errno

            if e.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot bind {host}:{port}: {e.strerror}"
    return None


class EngineProcess:
    """One engine started in its own process group: output captured, stopped as a whole group.

    The group holds the engine and every worker it forks (vLLM's engine core and workers), so
    ``stop`` leaves nothing behind. On Linux the engine also gets SIGTERM if this process dies.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, echo: Callable[[str], None] | None = None,
                 log_path: str | Path | None = None, tail_lines: int = 200):
        self.argv = list(argv)
        self.env = dict(env or {})
        self.echo = echo
        self.log_path = Path(log_path) if log_path else None
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The engine's process id (also its process group id), once started."""
        return self.proc.pid if self.proc else None

    def start(self) -> "EngineProcess":
        """Start the engine; its output goes to the tail buffer, echo and log file."""
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.proc = procs.start_group(self.argv, die_with_parent=True, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, name=f"engine-{self.proc.pid}-output", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        fh = self.log_path.open("a", encoding="utf-8") if self.log_path else None
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.tail.append(line)
                if fh:
                    fh.write(line + "\n")
                    fh.flush()
                if self.echo:
                    self.echo(line)
        finally:
            if fh:
                fh.close()

    def running(self) -> bool:
        """True while the engine's main process has not exited."""
        return self.proc is not None and procs.exit_status(self.proc) is None  # never reaps: see procs

    @property
    def exit_code(self) -> int | None:
        """The engine's exit code once it ended (its group stays signalable until stop())."""
        return None if self.proc is None else procs.exit_status(self.proc)

    def tail_text(self, n: int = 25) -> str:
        """The engine's last n output lines."""
        return "\n".join(list(self.tail)[-n:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL what is left after ``timeout``; return the exit code."""
        if self.proc is None:
            return None
        procs.stop_group(self.proc, timeout=timeout)
        if self._reader:
            self._reader.join(timeout=2)
        return self.proc.returncode


def http_get(url: str, api_key: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def engine_failure(spec: EngineSpec, process: EngineProcess, what: str) -> RustcoderError:
    if process._reader is not None and not process.running():
        process._reader.join(timeout=2)  # an exited engine's last lines are still being read
    tail = process.tail_text()
    low = tail.lower()
    hint = ""
    if "address already in use" in low:
        if re.search(rf"\b{spec.port}\b", tail):
            return RustcoderError(f"port {spec.port} on {spec.host} is already in use (taken while the engine "
                                  "started). Pick another with --port, or stop the server that holds it.")
        hint = ("\nAn address the engine uses besides --port is taken (vLLM's own ports for its engine processes, "
                "data or tensor parallelism): stop the other engine on this machine, or give this one other ports "
                "(VLLM_PORT, --data-parallel-rpc-port).")
    elif "head_dim" in low or "head size" in low:
        hint = "\nvLLM's CPU attention needs head_dim >= 32 (hidden_size / num_attention_heads)."
    elif "no module named 'vllm" in low:
        hint = f"\nInstall vLLM:\n  {VLLM_INSTALL}"
    elif any(k in low for k in ("not a valid model identifier", "repository not found", "401 client error",
                                "gated repo", "couldn't connect to", "offlinemodeisenabled")):
        hint = (f"\n{spec.model!r} could not be fetched from the hub: check the id; for a gated or private model "
                "log in with `hf auth login`; offline, pass a local model directory.")
    if process.echo is not None:  # its output was shown as it came: do not print the traceback twice
        errors = [line.strip() for line in process.tail if re.match(r"^\s*[\w.]*(Error|Exception)\b", line)]
        last = errors[-1] if errors else next((line for line in reversed(process.tail) if line.strip()), "")
        return RustcoderError(f"the {spec.engine} engine {what}: {last.strip()}\n(its full output is above){hint}")
    return RustcoderError(f"the {spec.engine} engine {what}. Its last output:\n{tail}{hint}")


def wait_until_healthy(spec: EngineSpec, process: EngineProcess, timeout: float = 600.0) -> float:
    """Poll the engine's /health until it answers 200; return the seconds it took.

    Raises RustcoderError (with the engine's last output) if the engine exits or times out.
    """
    url = f"http://{url_host(connect_host(spec.host))}:{spec.port}{HEALTH_PATH}"
    start = time.monotonic()
    while True:
        if not process.running():
            raise engine_failure(spec, process, f"exited with code {process.exit_code} before it was ready")
        try:
            status, _ = http_get(url, timeout=2.0)
            if status == 200 and process.running():
                return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() - start > timeout:
            raise engine_failure(spec, process, f"did not become healthy within {timeout:.0f} s")
        time.sleep(0.25)


def list_models(base_url: str, api_key: str | None = None) -> list[str]:
    """The model ids an OpenAI-compatible server lists at BASE_URL/models."""
    try:
        status, body = http_get(base_url.rstrip("/") + "/models", api_key)
    except (OSError, urllib.error.URLError) as e:
        raise RustcoderError(f"cannot reach {base_url} ({e}). Is the server running?") from None
    if status != 200:
        raise RustcoderError(f"{base_url}/models answered HTTP {status}: {body[:200]!r}")
    return [m["id"] for m in json.loads(body).get("data", [])]


@dataclasses.dataclass
class RunningServer:
    """A started, healthy engine behind its gateway. Use as a context manager, or call ``stop()``."""

    spec: EngineSpec
    process: EngineProcess
    ready_seconds: float
    gateway: object | None = None  # gateway.GatewayServer: what clients talk to
    private_dir: str | None = None  # holds the engine's Unix socket
    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://HOST:PORT/v1``)."""
        return self.spec.base_url

    @property
    def model_name(self) -> str:
        """The served name of the model (the fine-tuned one when serving an adapter)."""
        return self.spec.served_model_name

    def stop(self) -> int | None:
        """Stop the gateway (in-flight generations are cancelled), then the engine and everything it started."""
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        code = self.process.stop()
        if self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None
        return code

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def served_stop_ids(spec: EngineSpec) -> tuple[int, ...]:
    """``modeling.stop_token_ids`` of the served model (the adapter's tokenizer when there is one): the gateway adds
    them to vLLM requests, so answers end at <|im_end|> even where the model's eos is <|endoftext|> (Qwen bases).
    Empty when the tokenizer cannot be read here (a hub model not in the cache)."""
    from ..errors import RustcoderError
    from ..modeling import load_tokenizer, model_eos_ids, stop_token_ids

    try:
        tok, _ = load_tokenizer(spec.adapter_dir or spec.model, spec.revision)
        return tuple(stop_token_ids(tok, model_eos_ids(spec.model, spec.revision)))
    except (RustcoderError, OSError, ValueError):
        return ()


def resolved_limits(spec: EngineSpec, limits):
    """LIMITS with its generation slots decided (``spec.default_slots`` unless --max-concurrent was given)."""
    if limits.max_concurrent is None:
        limits = dataclasses.replace(limits, max_concurrent=default_slots(spec.engine, spec.engine_args))
    return limits


def shares_by_turns(spec: EngineSpec, limits) -> bool:
    """Whether spec's engine shares its model among the running generations by turns (rustcoder's transformers
    engine, not its --continuous-batching or --compile): the gateway then times a generation by its share."""
    return (spec.engine == "transformers" and "--continuous-batching" not in spec.engine_args
            and limits.max_concurrent > 1 and "--compile" not in spec.engine_args)


def start_gateway(spec: EngineSpec, limits=None):
    """The gateway for spec's engine (listening on spec's socket), serving spec's host:port once started."""
    from .gateway import Gateway, GatewayServer

    from .gateway import GatewayLimits

    limits = resolved_limits(spec, limits or GatewayLimits())
    context, vocab = model_limits(spec.model, spec.max_model_len)
    hosts = ("127.0.0.1", "localhost", "::1") if is_loopback(spec.host) else None
    stop = served_stop_ids(spec) if spec.engine == "vllm" else ()
    from .tokens import PromptTokens

    counter = PromptTokens.from_dir(spec.adapter_dir, spec.model)
    app = Gateway(served=spec.model_names, engine=spec.engine, api_key=spec.api_key, upstream_uds=spec.uds,
                  limits=limits, context_length=context, vocab_size=vocab, allowed_hosts=hosts, stop_token_ids=stop,
                  prompt_tokens=counter, fair_share=shares_by_turns(spec, limits))
    return GatewayServer(app, spec.host, spec.port)


def engine_line(engine: str, line: str) -> str:
    """An engine's output line as serve shows it: ``  [engine] line``, once (transformers' own logging already
    starts its lines with ``[transformers]``)."""
    return f"  [{engine}] {line.removeprefix(f'[{engine}] ')}"


def start_server(spec: EngineSpec, *, echo: Callable[[str], None] | None = None, log_path: str | Path | None = None,
                 health_timeout: float = 600.0, limits=None) -> RunningServer:
    """Start spec's engine on a private Unix socket and the gateway on spec's host:port in front of it, and
    wait until it is healthy. Fails fast (nothing started) on a used port. ``limits``: gateway.GatewayLimits.

    On any failure, including Ctrl-C while waiting, everything is stopped before the error propagates.
    """
    problem = port_problem(spec.host, spec.port)
    if problem:
        raise RustcoderError(f"{problem}. Pick another with --port, or stop the server that holds it "
                             f"(`ss -ltnp 'sport = :{spec.port}'` shows it).")
    private = tempfile.mkdtemp(prefix="rustcoder-serve-")  # mode 0700: only this user reaches the engine
    spec.uds = os.path.join(private, "engine.sock")
    from .gateway import GatewayLimits

    limits = resolved_limits(spec, limits or GatewayLimits())
    if spec.engine == "transformers" and spec.slots is None:
        spec.slots = limits.max_concurrent  # the engine runs as many generations as the gateway admits
    argv, env = engine_command(spec)
    process = EngineProcess(argv, env, echo=echo, log_path=log_path).start()
    server = RunningServer(spec=spec, process=process, ready_seconds=0.0, private_dir=private)
    try:
        try:
            server.gateway = start_gateway(spec, limits).start()
        except RuntimeError as e:
            raise RustcoderError(f"{e}. Pick another --port.") from None
        server.ready_seconds = wait_until_healthy(spec, process, timeout=health_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def curl_example(spec: EngineSpec) -> str:
    """A ready-to-paste curl line for one Rust chat completion against the server."""
    from ..data.categories import CATEGORIES

    body = {"model": spec.served_model_name,
            "messages": [{"role": "system", "content": CATEGORIES["code_generation"].system},
                         {"role": "user", "content": "Write a function that reverses the words of a &str."}],
            "max_tokens": 256, "temperature": 0.2}
    auth = f' -H "Authorization: Bearer ${API_KEY_ENV}"' if spec.api_key else ""
    return (f"curl {spec.base_url}/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d {shlex.quote(json.dumps(body))}")


def banner(server: RunningServer, playground_url: str | None = None, login: bool = False) -> str:
    """What `rustcoder serve` prints once the engine is ready."""
    spec = server.spec
    model = spec.served_model_name
    if spec.adapter_dir:
        via = "LoRA module" if spec.engine == "vllm" else "LoRA merged at load"
        model += f"   ({via} {spec.adapter_dir} on {spec.model})"
        if spec.engine == "vllm":
            model += f"\n  base model {spec.base_model_name}   (same server: compare the two in the playground)"
    else:
        model += f"   ({spec.model})"
    lines = [f"{spec.engine} is ready in {server.ready_seconds:.1f} s (pid {server.process.pid})",
             f"  base URL   {spec.base_url}",
             f"  model      {model}"]
    if spec.api_key:
        lines.append(f"  API key    required (Authorization: Bearer ...); the curl line reads it from ${API_KEY_ENV}")
    lines += ["  try it:", "    " + curl_example(spec)]
    if playground_url:
        lines.append(f"  playground {playground_url}" + ("   (login: user api, password the API key)"
                                                          if spec.api_key and not login else ""))
    else:
        key = f" --api-key \"${API_KEY_ENV}\"" if spec.api_key else ""
        lines.append(f"  playground: rustcoder playground --endpoint {spec.base_url}{key}")
    lines.append("  Ctrl-C stops the server.")
    return "\n".join(lines)


@dataclasses.dataclass
class ServeResult:
    """How a serve session ended (with ``block=False``: the running server and playground, to stop)."""

    spec: EngineSpec
    stopped_by: str  # "signal" (Ctrl-C / SIGTERM) or "return" (block=False: still running)
    ready_seconds: float = 0.0
    exit_code: int | None = None
    server: RunningServer | None = None
    playground: object | None = None  # the gradio Blocks, when --playground

    def stop(self) -> None:
        """Stop what a ``block=False`` call left running."""
        if self.playground is not None:
            self.playground.close()
            self.playground = None
        if self.server is not None:
            self.exit_code = self.server.stop()
            self.server = None


class Stop(BaseException):
    """Raised in the main thread by the SIGTERM handler so cleanup runs as for Ctrl-C."""


def stop_on_signals() -> dict:
    """Make SIGINT and SIGTERM stop a blocking server; returns the previous handlers to restore.

    SIGINT gets Python's default handler back even when the process started with it ignored
    (`nohup CMD &` and shells' background jobs do that): Ctrl-C and `kill -INT` must always stop it.
    """
    def _on_term(signum, frame):
        raise Stop()

    return {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_term),
            signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}


def serve(model_dir: str | Path | None = None, *, engine: str | None = None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, adapter: str | Path | None = None, api_key: str | None = None,
          served_model_name: str | None = None, tensor_parallel_size: int | None = None,
          max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
          chat_template: str | Path | None = None, vllm_python: str | None = None, dtype: str | None = None,
          device: str | None = None, engine_args: str | list[str] | tuple[str, ...] = (),
          playground: bool = False, playground_host: str = DEFAULT_HOST, playground_port: int = 7860,
          playground_auth: tuple[str, str] | None = None, runs_dir: str | Path = "runs",
          health_timeout: float = 600.0, log: Callable[[str], None] = print, engine_log: str | Path | None = None,
          quiet_engine: bool = False, block: bool = True, max_body_bytes: int = 2 * 1024 * 1024,
          max_tokens: int = 4096, max_request_seconds: float = 300.0, max_concurrent: int | None = None,
          max_queue: int = 256, queue_timeout: float = 120.0, stall_seconds: float = 120.0,
          body_timeout: float = 30.0, header_timeout: float = 10.0) -> ServeResult:
    """Serve a model with vLLM or transformers behind an OpenAI-compatible API until Ctrl-C or SIGTERM.

    Resolves the model (see ``build_spec``), refuses a used port before starting anything, starts
    the engine, waits for its health endpoint, prints the base URL, model name and a curl line, and
    optionally opens the playground on it. The gateway in front of the engine enforces the limits
    (``max_*``, ``queue_timeout``, ``stall_seconds``: see ``gateway.GatewayLimits``). Every process it started is stopped when it returns or
    raises. With ``block=False`` it returns once ready, leaving the server running
    (``ServeResult.stop()`` stops it).
    """
    spec = build_spec(model_dir, engine=engine, host=host, port=port, adapter=adapter, api_key=api_key,
                      served_model_name=served_model_name, tensor_parallel_size=tensor_parallel_size,
                      max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                      chat_template=chat_template, vllm_python=vllm_python, dtype=dtype, device=device,
                      engine_args=engine_args, runs_dir=runs_dir)
    if playground:
        from ..playground import check_bind, login_for, require_gradio

        require_gradio()
        check_bind(playground_host, login_for(playground_auth, spec.api_key))
        problem = port_problem(playground_host, playground_port)
        if problem:
            raise RustcoderError(f"playground: {problem}. Pick another with --playground-port.")
    log(f"starting {spec.engine} on {spec.host}:{spec.port} for {spec.model}"
        + (f" + adapter {spec.adapter_dir}" if spec.adapter_dir else ""))
    from ..modeling import architecture_note, saved_model_type

    if architecture_note(saved_model_type(spec.model), spec.model):
        log(architecture_note(saved_model_type(spec.model), spec.model))
    echo = None if quiet_engine else (lambda line: log(engine_line(spec.engine, line)))

    previous = {}
    if block and threading.current_thread() is threading.main_thread():
        previous = stop_on_signals()
    result = ServeResult(spec=spec, stopped_by="signal")
    try:
        from .gateway import GatewayLimits

        limits = GatewayLimits(max_body_bytes=max_body_bytes, max_tokens=max_tokens,
                               max_request_seconds=max_request_seconds, max_concurrent=max_concurrent,
                               max_queue=max_queue, queue_timeout=queue_timeout, stall_seconds=stall_seconds,
                               body_timeout=body_timeout, header_timeout=header_timeout)
        result.server = start_server(spec, echo=echo, log_path=engine_log, health_timeout=health_timeout,
                                     limits=limits)
        result.ready_seconds = result.server.ready_seconds
        playground_url = None
        if playground:
            from ..playground import launch_playground

            result.playground, playground_url = launch_playground(
                spec.base_url, api_key=spec.api_key, models=spec.model_names, host=playground_host,
                port=playground_port, auth=playground_auth, block=False)
        log(banner(result.server, playground_url, login=bool(playground_auth)))
        if not block:
            result.stopped_by = "return"
            return result
        while result.server.process.running():
            time.sleep(0.25)
        code = result.server.process.exit_code
        raise engine_failure(spec, result.server.process, f"stopped unexpectedly (exit code {code})")
    except (KeyboardInterrupt, Stop):
        log("\nstopping the engine" + (" and the playground" if result.playground is not None else "") + " ...")
        result.stop()
        log("stopped.")
        return result
    finally:
        if result.stopped_by != "return":
            result.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
