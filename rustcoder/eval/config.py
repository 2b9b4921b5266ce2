"""The evaluation settings: one typed schema whose field help is the CLI help.

Precedence: these defaults < the suite's defaults (``evals/*.yaml``: max_new_tokens, temperature,
samples) < flags the user typed. The resolved settings are written to the eval directory
(``eval_config.yaml``). Importing this module is cheap (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..config import ConfigSchema
from ..config import config_field as _f
from ..errors import did_you_mean

BACKENDS = ("auto", "transformers", "vllm", "endpoint", "served")
ENGINES = ("vllm", "transformers")  # --backend served: the engines `rustcoder serve` starts
STAGES = ("generate", "execute", "score", "report")




@dataclass
class EvalConfig(ConfigSchema):
    """Every setting of ``rustcoder eval``. Field names are the flags (``--field-name``)."""

    model: str | None = _f(None, "Run directory, merged model directory, adapter directory, hub id or tiny-qwen2; "
                           "default: the newest finished run under --runs-dir.")
    dataset: str | None = _f(None, "Held-out tasks: 'sample', a suite name (strandset-test), a hub id (its test "
                             "split), or a local Strandset-format file. Default: from the run (see docs/eval.md).")
    dataset_revision: str | None = _f(None, "Hub revision of --dataset (default: the suite's pinned one).")
    benchmark: str | None = _f(None, "A benchmark in the HumanEval-Rust format: suite name (humaneval-rust) or "
                               ".jsonl file; scored with pass@k.")
    oracle: bool = _f(False, "Score the reference answers instead of a model (benchmark: prompt + "
                      "canonical_solution + test): checks the harness and the data. Default suite: humaneval-rust.")
    compare_base: bool = _f(False, "Evaluate the base model too and report per-category deltas.")
    base_model: str | None = _f(None, "Base to compare with (default: the run's base; for --endpoint, the name the "
                                "server gives the base).")
    predictions: str | None = _f(None, "Score existing answers from a JSONL file (id, answer[, model, "
                                 "sample_index]) instead of generating.")
    endpoint: str | None = _f(None, "OpenAI-compatible server URL (e.g. what `rustcoder serve` starts); MODEL is "
                              "then the served model name.")
    backend: str = _f("auto", "Generation backend: auto (endpoint with --endpoint, else transformers), "
                      "transformers, vllm (vLLM in this environment), endpoint, or served (start the serving "
                      "engine as `rustcoder serve` does, evaluate through it, stop it).", choices=BACKENDS)
    engine: str | None = _f(None, "--backend served: vllm or transformers (default: vllm when installed here or "
                            "at --vllm-python / $RUSTCODER_VLLM_PYTHON).", choices=ENGINES)
    vllm_python: str | None = _f(None, "--backend served: the Python of the environment that has vLLM (default: "
                                 "$RUSTCODER_VLLM_PYTHON).")
    engine_args: str | None = _f(None, "--backend served: extra engine flags, e.g. '--config serve/vllm-cpu.yaml'.")
    tensor_parallel_size: int | None = _f(None, "vllm and served backends: shard the model over this many GPUs.")
    data_parallel: int | None = _f(None, "Generation processes, one per GPU (CUDA_VISIBLE_DEVICES=i each); CPU: "
                                   "processes share the cores. Local backends (transformers, vllm); "
                                   "teacher-forced scoring stays in this process. With --backend served: vLLM's "
                                   "own --data-parallel-size (replicas behind one endpoint).")
    no_exec: bool = _f(False, "Do not compile or run generated code (code tasks get status not_executed).")
    output_dir: str | None = _f(None, "Eval directory (default: RUN_DIR/eval/NAME, or ./evals-out/MODEL/NAME).")
    runs_dir: str = _f("runs", "Where to find the newest run when MODEL is omitted.")
    limit: int | None = _f(None, "At most N items per category (benchmarks: per benchmark category).")
    categories: list[str] | None = _f(None, "Only these categories (comma-separated).")
    max_new_tokens: int | None = _f(None, "Generation length cap (default: the suite's, 512).")
    batch_size: int = _f(8, "Examples per teacher-forced batch; prompts per generation batch only with "
                         "--batch-tokens 0.")
    batch_tokens: int | None = _f(None, "transformers backend: token budget of a generation batch, rows x (longest "
                                  "prompt + --max-new-tokens), over length-sorted prompts (short prompts share big "
                                  "batches). Default: on a GPU what its free memory holds once the model is loaded "
                                  "(KV cache plus prefill), 16384 on CPU; 0: a fixed --batch-size prompts per batch.")
    kv_cache: str = _f("dynamic", "transformers backend: dynamic (a finished answer leaves the batch at once) or "
                       "static (transformers' static cache, its decode step compiled on CUDA).",
                       choices=("dynamic", "static"))
    samples: int | None = _f(None, "Samples per item (pass@k needs k <= samples; > 1 needs --temperature > 0).")
    temperature: float | None = _f(None, "Sampling temperature (default: the suite's, 0 = greedy).")
    top_p: float = _f(0.95, "Nucleus sampling when temperature > 0.")
    seed: int = _f(0, "Seed for sampling.")
    dtype: str = _f("auto", "Weights dtype for local models: auto, bfloat16, float16, float32.",
                    choices=("auto", "bfloat16", "float16", "float32"))
    teacher_forced: bool | None = _f(None, "Teacher-forced loss and token accuracy on the reference answers "
                                     "(default: on for local transformers models).")
    max_length: int | None = _f(None, "Teacher-forced truncation in tokens (default: the run's max_length, else 2048).")
    workers: int | None = _f(None, "Parallel sandboxed compiles (default: CPU count).")
    compile_timeout: float = _f(30.0, "Seconds per compile.")
    run_timeout: float = _f(10.0, "Seconds per test run.")
    concurrency: int = _f(4, "Requests in flight to --endpoint / --judge-endpoint.")
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable holding the endpoints' API key (if any).")
    judge_endpoint: str | None = _f(None, "OpenAI-compatible URL of an LLM judge for prose answers (optional).")
    judge_model: str | None = _f(None, "Model name at --judge-endpoint (default: the first it lists).")
    train_ids: str | None = _f(None, "File of training row ids to exclude (default: the run's train_ids.txt).")
    overwrite: bool = _f(False, "Discard the eval directory's earlier results and start over.")
    redo: str | None = _f(None, "Discard this stage's results (and the later stages') and redo them: "
                          "generate, execute, score or report.", choices=STAGES)

    def check_values(self, bad) -> None:
        """The eval settings' rules (see ConfigSchema: choices are checked there, validate() raises)."""
        if self.tensor_parallel_size and self.backend not in ("vllm", "served"):
            bad("tensor_parallel_size", "shards a model over GPUs with vLLM: add --backend vllm (or --backend served "
                "--engine vllm); the transformers backend runs a model on one device")
        if self.batch_tokens is not None and self.batch_tokens < 0:
            bad("batch_tokens", f"must be >= 0 (0: fixed --batch-size batches), got {self.batch_tokens}")
        if self.backend != "served" and (self.engine or self.vllm_python or self.engine_args):
            given = next(n for n in ("engine", "vllm_python", "engine_args") if getattr(self, n))
            bad(given, "chooses how --backend served starts its engine; add --backend served")
        if self.backend == "served" and self.endpoint:
            bad("backend", "'served' starts its own engine; drop --endpoint (or use --backend endpoint)")
        for name in ("limit", "batch_size", "samples", "max_new_tokens", "concurrency", "workers", "max_length",
                     "tensor_parallel_size", "data_parallel"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(name, f"must be >= 1, got {v}")
        if self.temperature is not None and not (self.temperature >= 0 and math.isfinite(self.temperature)):
            bad("temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if (self.samples or 1) > 1 and self.temperature is not None and self.temperature == 0:
            bad("samples", f"{self.samples} greedy samples would be identical; add --temperature (e.g. 0.8)")
        if self.compile_timeout <= 0 or self.run_timeout <= 0:
            bad("compile_timeout", "timeouts must be > 0")
        if self.oracle and self.model:
            bad("oracle", f"scores the reference answers; drop MODEL ({self.model!r})")
        if self.oracle and (self.predictions or self.endpoint):
            bad("oracle", "cannot be combined with --predictions or --endpoint")
        if self.compare_base and (self.oracle or self.predictions):
            bad("compare_base", "not with --oracle or --predictions (in a predictions file, answers whose model "
                                "is 'base' are compared with the others)")
        if self.predictions and self.endpoint:
            bad("predictions", "scores a file of answers; drop --endpoint")
        if self.benchmark and self.dataset:
            bad("benchmark", "evaluate one suite at a time: drop --dataset (or run twice)")
        if self.backend == "endpoint" and not self.endpoint:
            bad("backend", "'endpoint' needs --endpoint URL")
        if self.endpoint and self.backend in ("transformers", "vllm"):
            bad("backend", f"{self.backend!r} generates locally; drop it with --endpoint")
        if (self.data_parallel or 1) > 1 and self.backend == "served" and self.engine == "transformers":
            bad("data_parallel", "with --backend served it is vLLM's --data-parallel-size; the transformers engine "
                                 "serves one replica (drop --data-parallel, or use --engine vllm)")
        if (self.data_parallel or 1) > 1 and (self.oracle or self.predictions or self.endpoint
                                              or self.backend == "endpoint"):
            bad("data_parallel", "splits generation with local models over processes; not with --oracle, "
                                 "--predictions or --endpoint (use --concurrency for an endpoint)")
        if self.no_exec and self.oracle:
            bad("no_exec", "the oracle is an execution check; drop --no-exec")
        if self.categories is not None:
            from ..data.categories import CATEGORY_NAMES

            if not self.benchmark and not (self.oracle and not self.dataset):
                for c in self.categories:
                    if c not in CATEGORY_NAMES:
                        bad("categories", f"unknown category {c!r}{did_you_mean(c, CATEGORY_NAMES)}")


TINY_MAX_NEW_TOKENS = 48  # the demo's: a random tiny model's answers show the mechanics in a few dozen tokens


def tiny_model_defaults(cfg: EvalConfig) -> str | None:
    """For a built-in tiny model (or a run or merge of one) a generation cap that fits the demo's time instead of
    the suite's 512 tokens; returns the note to print, None when nothing changed (a typed --max-new-tokens,
    a benchmark, the oracle, predictions and endpoints keep theirs)."""
    from ..rundir import built_on_tiny

    if (cfg.max_new_tokens is not None or cfg.oracle or cfg.predictions or cfg.endpoint or cfg.benchmark
            or not built_on_tiny(cfg.model, cfg.runs_dir)):
        return None
    cfg.max_new_tokens = TINY_MAX_NEW_TOKENS
    return (f"note: a built-in tiny (random) model: answers capped at {TINY_MAX_NEW_TOKENS} new tokens "
            "(--max-new-tokens sets it)")


def config_fields():
    """The EvalConfig fields in declaration order (the CLI builds one flag per field)."""
    return list(fields(EvalConfig))
