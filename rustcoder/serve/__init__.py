"""Serve a fine-tuned model behind a real inference engine with an OpenAI-compatible API.

``serve`` resolves what to serve (a merged model directory, or a base model plus a LoRA adapter),
builds the engine's command line, starts the engine in its own process group, waits for its health
endpoint, prints the base URL and a ready-to-paste curl line, and stops every process it started on
Ctrl-C, SIGTERM or an engine crash. Two engines:

* ``vllm``: ``PY -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script fails with
  the CPU build). vLLM pins its own torch and transformers, so it usually lives in its own
  environment: ``--vllm-python PATH`` (or ``$RUSTCODER_VLLM_PYTHON``) names that interpreter.
* ``transformers``: transformers' own ``transformers serve`` (needs ``transformers[serving]``), adapted
  for LoRA adapters, an explicit chat template and one fixed model.

Clients never reach an engine directly: the engine listens on a Unix socket in a private directory and
rustcoder's gateway (``gateway``) serves HOST:PORT in front of it, with only the documented routes, the
API key, request validation (``schema``), body/token/time limits, admission and cancellation.

Both speak the same OpenAI API (``/v1/models``, ``/v1/chat/completions`` with streaming,
``/health``) with the model directory's own chat template. The argument building
(``engine_command``) is a pure function so every option is unit-tested without an engine.

Security defaults: binds 127.0.0.1; binding any other address requires an API key, which only the
gateway holds (never a command line, which ``ps`` shows).

The package, by job: ``spec`` (what to serve and the engine's command line), ``engine`` (the engine's
process: start, health, banner, stop), ``gateway`` (the ASGI gateway in front of either engine), ``schema``
(what a valid request is),
``transformers_engine`` (the transformers engine process; the one module that adapts transformers
serve's internals).
"""

from ..modeling import VLLM_LORA_RANKS, vllm_lora_rank
from ..net import connect_host, is_loopback
from .engine import (port_problem, EngineProcess, wait_until_healthy, list_models, RunningServer, start_server,
                     curl_example, banner, ServeResult, stop_on_signals, serve)
from .gateway import (openai_error, request_problem, openai_error_response, Gateway, GatewayLimits, GatewayServer,
                      stream_delta)
from .spec import (ENGINES, DEFAULT_HOST, DEFAULT_PORT, HEALTH_PATH, API_KEY_ENV, VLLM_PYTHON_ENV,
                   CPU_MEMORY_UTILIZATION, SERVE_INSTALL, VLLM_INSTALL, EngineSpec, AdapterInfo, has_weights,
                   check_model_dir, read_adapter, default_model_name, probe_vllm, transformers_serving_missing,
                   choose_engine, build_spec, engine_command)

__all__ = ["API_KEY_ENV", "AdapterInfo", "CPU_MEMORY_UTILIZATION", "DEFAULT_HOST", "DEFAULT_PORT", "ENGINES", "EngineProcess", "EngineSpec", "Gateway", "GatewayLimits", "GatewayServer", "HEALTH_PATH", "RunningServer", "SERVE_INSTALL", "ServeResult", "VLLM_INSTALL", "VLLM_LORA_RANKS", "VLLM_PYTHON_ENV", "banner", "build_spec", "check_model_dir", "choose_engine", "connect_host", "curl_example", "default_model_name", "engine_command", "has_weights", "is_loopback", "list_models", "openai_error", "openai_error_response", "port_problem", "probe_vllm", "read_adapter", "request_problem", "serve", "start_server", "stop_on_signals", "stream_delta", "transformers_serving_missing", "vllm_lora_rank", "wait_until_healthy"]
