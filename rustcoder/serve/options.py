"""Every option of ``rustcoder serve``, described once: a typed dataclass whose field help is the CLI help (the
command's flags are generated from it, as train's and eval's are). A field marked ``positive=True`` is a limit
that must be above zero; ``check_limits`` is the one check of them all."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..config import config_field as _f
from ..errors import UsageError
from .spec import API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT, ENGINES, VLLM_PYTHON_ENV

PASSWORD_ENV = "RUSTCODER_PLAYGROUND_PASSWORD"


@dataclass
class ServeOptions:
    """The options of ``rustcoder serve`` (MODEL_DIR is its argument). Field names are the flags."""

    engine: str | None = _f(None, "Inference engine. Default: vllm when installed (here or at --vllm-python), else "
                            "transformers.", choices=ENGINES)
    host: str = _f(DEFAULT_HOST, "Address to bind. Anything but loopback requires --api-key.", show_default=True)
    port: int = _f(DEFAULT_PORT, "Port of the OpenAI-compatible API.", show_default=True)
    adapter: str | None = _f(None, "Serve a LoRA adapter (run dir or its adapter/) on its base model instead of a "
                             "merged model.", metavar="DIR")
    api_key: str | None = _f(None, "Require 'Authorization: Bearer KEY' on every API call (prefer the env var: flags "
                             "show in ps).", metavar="KEY", envvar=API_KEY_ENV)
    served_model_name: str | None = _f(None, "Model name clients use. Default: the run name (or the directory name).",
                                       metavar="NAME")
    tensor_parallel_size: int | None = _f(None, "vLLM: GPUs to shard the model over.", metavar="N")
    max_model_len: int | None = _f(None, "vLLM: context length (prompt + answer).", metavar="TOKENS")
    gpu_memory_utilization: float | None = _f(None, "vLLM: share of GPU memory to use (CPU build: share of RAM for the "
                                              "KV cache; default 0.2 there).", metavar="FRACTION")
    chat_template: str | None = _f(None, "Chat template. Default: the adapter's or model directory's "
                                   "chat_template.jinja.", metavar="FILE")
    vllm_python: str | None = _f(None, "Python of the environment vLLM is installed in (it pins its own torch and "
                                 "transformers).", metavar="PATH", envvar=VLLM_PYTHON_ENV)
    dtype: str | None = _f(None, "Weights dtype for the engine (default: what the model was saved in; vLLM gets "
                           "float32 explicitly for a float32 merge).", choices=("auto", "bfloat16", "float16", "float32"))
    device: str | None = _f(None, "transformers engine: auto, cpu, cuda, cuda:1 ...")
    engine_args: str | None = _f(None, "More options passed to the engine as is, e.g. --engine-args "
                                 "'--enforce-eager --max-num-seqs 8'.", metavar="'ARGS'")
    playground: bool = _f(False, "Also open the playground on the served model.")
    playground_port: int = _f(7860, "Port of the playground.", show_default=True)
    username: str | None = _f(None, "Playground login (with --password).")
    password: str | None = _f(None, "Playground password.", envvar=PASSWORD_ENV)
    runs_dir: str = _f("runs", "Where to find the newest merged model when MODEL_DIR is omitted.", show_default=True)
    health_timeout: float = _f(600.0, "How long to wait for the engine to become ready.", metavar="SECONDS",
                               show_default=True)
    max_tokens: int = _f(4096, "Most new tokens one request may ask for (more is a 400); also the default when a "
                         "request gives none (capped at half the context).", metavar="TOKENS", show_default=True,
                         positive=True)
    max_request_seconds: float = _f(300.0, "Time limit of one generation (wall time; on the transformers "
                                    "engine its share of the engine's time); at it the answer ends with "
                                    "finish_reason 'length'.", metavar="SECONDS", show_default=True, positive=True)
    max_concurrent: int | None = _f(None, "Generations run at once (default 32: vLLM batches them, transformers "
                                    "shares the model among them token by token; 8 with its --continuous-batching, "
                                    "1 with its --compile); others queue. Each holds its KV cache.", metavar="N", positive=True)
    max_queue: int = _f(256, "Requests that may wait for a slot; beyond, 503 overloaded.", metavar="N",
                        show_default=True, positive=True)
    queue_timeout: float = _f(120.0, "Longest wait for a slot before a 503.", metavar="SECONDS", show_default=True,
                              positive=True)
    max_body_bytes: int = _f(2 * 1024 * 1024, "Largest request body (bigger: 413).", metavar="BYTES",
                             show_default=True, positive=True)
    body_timeout: float = _f(30.0, "Longest time a request body may take to arrive (slower: 408).", metavar="SECONDS",
                             show_default=True, positive=True)
    header_timeout: float = _f(10.0, "Longest time a connection may take to send its request headers (slower or "
                               "idle: closed with 408).", metavar="SECONDS", show_default=True, positive=True)
    stall_seconds: float = _f(120.0, "/health answers 503 'stuck' when generations are in flight and none made "
                              "progress for this long.", metavar="SECONDS", show_default=True, positive=True)
    engine_log: str | None = _f(None, "Also write the engine's output to FILE.", metavar="FILE")
    quiet_engine: bool = _f(False, "Do not echo the engine's output.")

    def playground_auth(self) -> tuple[str, str] | None:
        """(username, password) for the playground, or None; both or neither."""
        if bool(self.username) != bool(self.password):
            raise UsageError(f"--username and --password go together (the password may come from {PASSWORD_ENV}).")
        return (self.username, self.password) if self.username else None

    def serve_kwargs(self) -> dict:
        """The keyword arguments of ``rustcoder.serve.serve`` these options stand for."""
        kw = asdict(self)
        for name in ("username", "password"):
            kw.pop(name)
        kw["engine_args"] = kw["engine_args"] or ()
        kw["playground_auth"] = self.playground_auth()
        self.check_limits()
        return kw

    def check_limits(self) -> None:
        """UsageError naming every limit (a field marked ``positive``) that is set to zero or less."""
        problems = [f"--{f.name.replace('_', '-')} must be positive" for f in fields(self)
                    if f.metadata.get("positive") and getattr(self, f.name) is not None and getattr(self, f.name) <= 0]
        if problems:
            raise UsageError(" ".join(problems))


def option_fields():
    """The dataclass fields, in flag order."""
    return list(fields(ServeOptions))
