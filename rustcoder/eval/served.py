"""The served backend (``--backend served``): start the serving engine exactly as ``rustcoder serve``
does, evaluate through its OpenAI API, stop it however the evaluation ends.

This is the path for a rustcoder environment that cannot import vLLM: the engine runs from its own
environment (``--vllm-python`` / ``$RUSTCODER_VLLM_PYTHON``), started by ``serve.build_spec`` and
``serve.start_server`` on a free loopback port, and the answers come back through the endpoint
backend (the OpenAI SDK, ``--concurrency`` requests in flight). With vLLM the adapter is a LoRA
module and the base is served by the same engine under its own name, so ``--compare-base`` costs
one engine start. The transformers engine serves one model per process (the adapter merged at
load): the base then gets its own engine once the adapter's answers are done.

The engine is stopped by ``close`` (the pipeline calls it in a ``finally``: errors, Ctrl-C), and on
Linux it also gets SIGTERM when this process dies (``serve.EngineProcess``), so no engine outlives
an evaluation.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from .backends import Backend, EndpointBackend, ModelTarget

ENGINE_START_TIMEOUT = 900.0  # seconds; vLLM on CPU starts in about a minute, a 7B on a GPU in a few


def engine_spec(model_path: str, adapter_dir: str | None, cfg: Any, *, port: int | None = None,
                check_engine: bool = True):
    """The ``serve.EngineSpec`` that serves a target (``serve.build_spec``, as ``rustcoder serve`` does).

    ``--data-parallel N`` becomes vLLM's own ``--data-parallel-size N``: N engine replicas behind the
    one endpoint, load-balanced by vLLM (no rustcoder worker processes). The transformers engine has
    no data parallelism: UsageError.
    """
    from ..errors import UsageError
    from ..net import free_port
    from ..serve import build_spec

    extra = shlex.split(cfg.engine_args or "")
    dp = getattr(cfg, "data_parallel", None) or 1
    spec = build_spec(model_path, engine=cfg.engine, port=port or free_port(), adapter=adapter_dir,
                      vllm_python=cfg.vllm_python, dtype=None if cfg.dtype == "auto" else cfg.dtype,
                      tensor_parallel_size=getattr(cfg, "tensor_parallel_size", None),
                      engine_args=extra + (["--data-parallel-size", str(dp)] if dp > 1 else []),
                      check_engine=check_engine)
    if dp > 1 and spec.engine != "vllm":
        raise UsageError(f"--data-parallel {dp} with --backend served needs the vLLM engine (its "
                         "--data-parallel-size); the transformers engine serves one replica: drop --data-parallel, "
                         "or pass --engine vllm.")
    return spec


class ServedBackend(Backend):
    """Starts the serving engine for a local target on first use and generates through it."""

    name = "served"

    def __init__(self, target: ModelTarget, cfg: Any, log=print):
        self.cfg = cfg
        self.log = log
        self.path, self.adapter_dir = target.path, target.adapter_dir
        self.servers: dict[bool, Any] = {}  # with adapter? -> serve.RunningServer

    def _spec(self, with_adapter: bool):
        return engine_spec(self.path, self.adapter_dir if with_adapter else None, self.cfg)

    def _server(self, target: ModelTarget):
        """(running server, served model name) for the target, starting an engine when none serves it."""
        from ..serve import start_server

        wants_adapter = bool(self.adapter_dir and target.adapter_enabled)
        for has_adapter, server in self.servers.items():
            spec = server.spec
            if has_adapter == wants_adapter:
                return server, spec.served_model_name
            if has_adapter and spec.engine == "vllm" and not wants_adapter:  # the base, in the same engine
                return server, spec.base_model_name
        if self.adapter_dir and (self.cfg.engine or self._choose_engine()) == "vllm":
            wants_adapter = True  # one vLLM engine: the adapter as a LoRA module and the base beside it
        for server in list(self.servers.values()):  # transformers: one model per engine, one engine at a time
            server.stop()
        self.servers.clear()
        spec = self._spec(wants_adapter)
        what = spec.model + (f" + LoRA {spec.adapter_dir}" if spec.adapter_dir else "")
        self.log(f"starting the {spec.engine} engine on {spec.host}:{spec.port} for {what}")
        server = start_server(spec, health_timeout=ENGINE_START_TIMEOUT)
        self.servers[wants_adapter] = server
        self.log(f"  {spec.engine} ready in {server.ready_seconds:.1f} s (pid {server.process.pid}), serving "
                 f"{', '.join(spec.model_names)} at {spec.base_url}")
        return self._server(target)

    def _choose_engine(self) -> str:
        import os

        from ..serve import VLLM_PYTHON_ENV, choose_engine

        return choose_engine(None, self.cfg.vllm_python or os.environ.get(VLLM_PYTHON_ENV) or None)

    def prepare(self, target: ModelTarget) -> None:
        """Start the engine that serves ``target`` (if none does yet)."""
        self._server(target)

    def generate(self, requests, params, target):
        """Yield each request with its generations, through the engine serving ``target``."""
        server, name = self._server(target)
        client = EndpointBackend(server.base_url, api_key=server.spec.api_key, concurrency=self.cfg.concurrency)
        try:  # the engine stops on rustcoder's stop ids (serve's gateway adds them for vLLM)
            yield from client.generate(requests, params, dataclasses.replace(target, served_name=name))
        finally:
            client.close()

    def close(self) -> None:
        """Stop every engine this backend started (and everything they started)."""
        for server in self.servers.values():
            self.log(f"stopping the {server.spec.engine} engine (pid {server.process.pid})")
            server.stop()
        self.servers.clear()
