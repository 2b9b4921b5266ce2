"""Generation backends: transformers (+PEFT) on CPU or one GPU, vLLM in-process, and any
OpenAI-compatible endpoint through the OpenAI SDK; plus the reference ("oracle") backend. (The
served backend, which starts an engine and evaluates through it, is in ``served``.)

Every backend takes ``GenRequest``s (an item's prompt messages and how many samples it still
needs) and yields ``(request, [Generation, ...])`` as results arrive, so the generate stage can
append them to samples.jsonl immediately (a kill loses at most the batch in flight). Heavy stacks
are imported inside the backend that needs them.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import MissingExtraError, RustcoderError, UsageError
from ..modeling import END_OF_TURN, vllm_lora_rank



@dataclass
class GenParams:
    """Decoding settings shared by every backend (greedy when temperature is 0)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 0


@dataclass
class GenRequest:
    """Generate ``n`` samples for one item; their indices start at ``start``."""

    item: Any  # suites.EvalItem
    n: int = 1
    start: int = 0
    indices: list[int] | None = None  # the sample indices being made (default start..start+n-1)

    @property
    def messages(self) -> list[dict]:
        """The prompt: system and user messages."""
        return self.item.messages

    @property
    def sample_indices(self) -> list[int]:
        """Which sample indices the n generations fill, in order."""
        return list(self.indices) if self.indices is not None else list(range(self.start, self.start + self.n))


@dataclass
class Generation:
    """One sampled answer; finish_reason is "stop" (end of turn), "length" (hit max_new_tokens) or "error"."""

    text: str
    finish_reason: str = "stop"
    tokens: int | None = None
    error: str | None = None


@dataclass
class ModelTarget:
    """One model an evaluation scores, and how to reach it.

    kind: "local" (transformers/vLLM weights, with an optional PEFT adapter), "endpoint" (a served
    model name at an OpenAI-compatible URL) or "reference" (the reference answers: --oracle).
    """

    tag: str  # adapter, base, merged, model, reference
    kind: str
    display: str
    path: str | None = None  # loadable path or hub id of the weights (the base when there is an adapter)
    revision: str | None = None
    adapter_dir: str | None = None
    adapter_enabled: bool = True
    chat_template: str | None = None  # template text; None: rustcoder's ChatML for this model type
    endpoint: str | None = None
    served_name: str | None = None
    identity: dict = field(default_factory=dict)  # what the generation fingerprint records
    stop_token_ids: list[int] | None = None  # endpoint: sent as stop_token_ids (else asked of a raw vLLM server)

    def describe(self) -> str:
        """One line: what this target is."""
        if self.kind == "endpoint":
            return f"{self.tag}: {self.served_name or '(server default)'} at {self.endpoint}"
        if self.kind == "reference":
            return f"{self.tag}: the reference answers (oracle)"
        adapter = f" + adapter {self.adapter_dir}" if self.adapter_dir and self.adapter_enabled else ""
        return f"{self.tag}: {self.display}{adapter}"


class Backend:
    """Base class: ``generate`` yields (request, generations); ``close`` frees the model."""

    name = "backend"
    supports_teacher_forcing = False

    def generate(self, requests: list[GenRequest], params: GenParams, target: ModelTarget
                 ) -> Iterator[tuple[GenRequest, list[Generation]]]:
        """Yield each request with its ``request.n`` generations, in any order."""
        raise NotImplementedError

    def generate_shard(self, requests: list[GenRequest], params: GenParams, target: ModelTarget, shard: int,
                       shards: int) -> Iterator[tuple[GenRequest, list[Generation]]]:
        """Generate part ``shard`` of ``shards`` disjoint parts of ``requests`` (data-parallel workers).

        Every worker gets the same full list and its index; the parts together are the whole list.
        Default: every ``shards``-th request; batching backends override it to keep the batches a
        single process would make.
        """
        return self.generate(requests[shard::shards], params, target)

    def prepare(self, target: ModelTarget) -> None:
        """Get ready to generate for ``target`` (e.g. start an engine); called before generation is timed."""

    def close(self) -> None:
        """Release the model (called when no later target shares it)."""


def _truncate_at_end_of_turn(text: str) -> tuple[str, bool]:
    if END_OF_TURN in text:
        return text.split(END_OF_TURN, 1)[0], True
    return text, False


# ---- reference answers (--oracle) ---------------------------------------------------------------

class ReferenceBackend(Backend):
    """Answers every item with its reference: the harness's own correctness check."""

    name = "reference"

    def generate(self, requests, params, target):
        """Yield each request with its generations (see Backend.generate)."""
        for r in requests:
            yield r, [Generation(r.item.reference, "stop") for _ in range(r.n)]


# ---- transformers (+PEFT) -----------------------------------------------------------------------

GEN_MAX_ROWS = 256  # rows per generation batch under a token budget, however short the prompts
KV_CACHES = ("dynamic", "static")
STATIC_WIDTH_BUCKET = 128  # static cache: prompt widths padded to a multiple of this (one compile per bucket)


def plan_batches(requests: list[GenRequest], lengths: list[int], params: GenParams, batch_size: int,
                 batch_tokens: int | None = None, kv_cache: str = "dynamic") -> list[tuple[int, int, list[int]]]:
    """The transformers backend's batches: ``(n, offset, request indices)`` in the order they run.

    Longest prompts first (stable sort, so the order is a function of the list); one batch holds
    requests with the same ``n`` (num_return_sequences is per call). With ``batch_tokens`` a batch
    takes the next prompts while its rows (prompts x n) times (its longest prompt + max_new_tokens),
    the KV cache it can reach, stay within the budget (at least one prompt, at most GEN_MAX_ROWS
    rows): short prompts share big batches, long ones small. Without it (None or 0): ``batch_size``
    prompts per batch, ``batch_size // n`` when sampling. ``offset`` (the batch's start within its
    group) seeds sampling. ``lengths`` are prompt lengths in tokens.

    With ``kv_cache="static"`` every batch under a budget has the same number of prompts, a power of two:
    transformers keeps a static cache as long as the longest it has made (``_prepare_static_cache``), and the
    first batch holds the longest prompts, so each batch's KV cache is rows x (the longest prompt's width
    bucket + max_new_tokens) whatever its own prompts; one row count also means one compiled shape.
    """
    order = sorted(range(len(requests)), key=lambda i: -lengths[i])
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(requests[i].n, []).append(i)
    out = []
    for n, idxs in groups.items():
        if batch_tokens and kv_cache == "static":
            cache_len = -(-max(lengths[i] for i in idxs) // STATIC_WIDTH_BUCKET) * STATIC_WIDTH_BUCKET \
                + params.max_new_tokens
            fit = max(1, min(batch_tokens // (n * cache_len), GEN_MAX_ROWS // n))
            per_batch = 1 << (fit.bit_length() - 1)  # a power of two: _generate_static pads no full batch
            out.extend((n, b, idxs[b:b + per_batch]) for b in range(0, len(idxs), per_batch))
            continue
        if batch_tokens:
            b = 0
            while b < len(idxs):
                longest = lengths[idxs[b]]  # sorted: the first prompt of a batch is its longest
                fit = batch_tokens // max(1, n * (longest + params.max_new_tokens))
                take = max(1, min(fit, GEN_MAX_ROWS // n))
                out.append((n, b, idxs[b:b + take]))
                b += take
            continue
        per_batch = max(1, batch_size // n) if params.temperature > 0 else batch_size
        out.extend((n, b, idxs[b:b + per_batch]) for b in range(0, len(idxs), per_batch))
    return out


def _no_padding(tok) -> None:
    """Switch the fast tokenizer's Rust backend back to no padding (``compat.reset_backend_padding``).

    ``tok(texts, padding=True)`` leaves padding enabled on ``tok.backend_tokenizer``; the
    teacher-forced stage encodes with that backend directly (``data.tokenize.encode_batch``), which
    would then pad every prompt of a batch to the longest (with this backend's last padding side)
    and change the loss of whatever is scored after a generation in the same process.
    """
    from ..compat import reset_backend_padding

    reset_backend_padding(tok)


def shard_units(backend: str, requests: list[GenRequest], params: GenParams, batch_size: int,
                batch_tokens: int | None = None, kv_cache: str = "dynamic") -> int:
    """How many parts ``generate_shard`` can split ``requests`` into (batches for transformers,
    requests otherwise): more workers than this would have nothing to do. Under a token budget the
    prompt lengths are estimated at 4 characters a token (no tokenizer is loaded here): an estimate
    only decides how many workers start."""
    if backend == "transformers":
        lengths = [sum(len(str(m.get("content", ""))) for m in (r.messages or [])) // 4 if batch_tokens else 0
                   for r in requests]
        return len(plan_batches(requests, lengths, params, batch_size, batch_tokens, kv_cache))
    return len(requests)


def auto_batch_tokens(model, device: str) -> int:
    """The generation token budget for a loaded model: on CUDA what the free memory holds (KV cache of every
    layer plus one layer's prefill per token, ``memory.generation_batch_tokens``), on CPU a fixed 16384."""
    from ..memory import GEN_CPU_BATCH_TOKENS, ModelShape, generation_batch_tokens

    if device != "cuda":
        return GEN_CPU_BATCH_TOKENS
    import torch

    free, _ = torch.cuda.mem_get_info(next(model.parameters()).device)
    itemsize = next(model.parameters()).element_size()
    return generation_batch_tokens(ModelShape.from_config(model.config), itemsize, free)


class TransformersBackend(Backend):
    """Batched generation with transformers: left padding, greedy by default, stops on ``stop_token_ids``.

    One loaded model serves both the adapter and, with the adapter disabled, its base. Batches are
    planned by ``plan_batches`` (a token budget with ``batch_tokens``; "auto": ``auto_batch_tokens``).
    ``kv_cache``: "dynamic" (``decoding.decode``: a finished answer leaves the batch at once) or "static"
    (``generate`` with transformers' static cache, which it compiles on CUDA; finished rows stay in the batch).
    """

    name = "transformers"
    supports_teacher_forcing = True
    batch_tokens_auto = False  # True once batch_tokens was measured from free memory ("auto")

    def __init__(self, path: str, *, revision: str | None = None, adapter_dir: str | None = None,
                 chat_template: str | None = None, dtype: str = "auto", batch_size: int = 8,
                 batch_tokens: int | str | None = None, kv_cache: str = "dynamic", log=print):
        import torch
        from transformers import GenerationConfig

        from ..modeling import (check_architecture, load_config, load_model, load_tokenizer, model_eos_ids,
                                resolve_model, stop_token_ids)

        import warnings

        from transformers.utils import logging as hf_logging

        if kv_cache not in KV_CACHES:
            raise UsageError(f"kv_cache must be one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.kv_cache = kv_cache
        self.log = log
        self.decode_stats = None  # decoding.DecodeStats of the dynamic path, for tests and benchmarks
        self.static_shapes: set[tuple[int, int]] = set()  # (rows, width) the static path generated with
        started = time.time()
        hf_logging.disable_progress_bar()  # "Loading weights" bars would drown the eval's own progress
        config = load_config(path, revision)
        check_architecture(config, path, log)
        self.tokenizer, _ = load_tokenizer(path, revision, config.model_type)
        if chat_template:
            self.tokenizer.chat_template = chat_template
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = load_model(path, revision, dtype)
            self.peft = False
            if adapter_dir:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter_dir)
                self.peft = True
        self.model = model.eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        if self.batch_tokens == "auto":
            self.batch_tokens = auto_batch_tokens(self.model, self.device)
            self.batch_tokens_auto = True  # measured here: data-parallel workers agree on one (parallel.py)
            if self.device == "cuda":
                log(f"generation batches: up to {self.batch_tokens:,} tokens (rows x (longest prompt + new tokens)), "
                    f"what the GPU's free memory holds (--batch-tokens sets it)")
        tok = self.tokenizer
        self.end_id = tok.convert_tokens_to_ids(END_OF_TURN)
        self.pad_id = tok.convert_tokens_to_ids(tok.pad_token)
        stop = stop_token_ids(tok, model_eos_ids(path, revision))  # the one stop rule of every backend
        self.stop_ids = stop
        # The model's own generation_config (Qwen ships temperature 0.7, top_k 20, repetition_penalty
        # 1.05) would fill every setting left unset: the evaluation decides decoding, nothing else.
        inner = self.model.get_base_model() if self.peft else self.model
        inner.generation_config = GenerationConfig(eos_token_id=stop, pad_token_id=self.pad_id)
        log(f"loaded {resolve_model(path)}" + (f" + adapter {adapter_dir}" if adapter_dir else "")
            + f" on {self.device} in {time.time() - started:.1f} s")

    def _adapter_context(self, enabled: bool):
        return self.model.disable_adapter() if self.peft and not enabled else nullcontext()

    def prompt_text(self, messages: list[dict]) -> str:
        """The rendered prompt (chat template, generation header, thinking off for Qwen3)."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _left_padded(self, prompts: list[list[int]]):
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(self, requests, params, target):
        """Yield each request with its generations (see Backend.generate)."""
        return self.generate_shard(requests, params, target, 0, 1)

    def generate_shard(self, requests, params, target, shard, shards):
        """Run the batches numbered ``shard``, ``shard + shards``, ... of the batches ``generate`` makes
        of the whole list: every batch (and its sampling seed) is the one a single process would run,
        so the answers do not depend on the number of workers."""
        import torch

        from .decoding import DecodeStats, decode

        tok = self.tokenizer
        encoded = tok([self.prompt_text(r.messages) for r in requests], add_special_tokens=False)["input_ids"]
        _no_padding(tok)
        sampling = params.temperature > 0
        self.decode_stats = DecodeStats()
        for number, (n, b, batch) in enumerate(plan_batches(requests, [len(e) for e in encoded], params,
                                                            self.batch_size, self.batch_tokens, self.kv_cache)):
            if number % shards != shard:
                continue
            ids, mask = self._left_padded([encoded[i] for i in batch for _ in range(n)])
            if sampling:
                torch.manual_seed(params.seed + requests[batch[0]].start + b)
            with torch.inference_mode(), self._adapter_context(target.adapter_enabled):
                if self.kv_cache == "static":
                    new = self._generate_static(ids, mask, params)
                else:
                    new = decode(self.model, ids, mask, max_new_tokens=params.max_new_tokens,
                                 stop_ids=self.stop_ids, temperature=params.temperature,
                                 top_p=params.top_p if sampling else 1.0, stats=self.decode_stats)
            for j, i in enumerate(batch):
                gens = []
                for row in new[j * n:(j + 1) * n]:
                    stopped = next((p for p, t in enumerate(row) if t in self.stop_ids), None)
                    kept = row[:stopped] if stopped is not None else [t for t in row if t != self.pad_id]
                    text = tok.decode(kept, skip_special_tokens=True)
                    gens.append(Generation(text, "stop" if stopped is not None else "length", len(kept)))
                yield requests[i], gens

    def _generate_static(self, ids, mask, params) -> list[list[int]]:
        """``model.generate`` with a static KV cache (compiled decode on CUDA); every row runs to the end.

        transformers compiles one graph per cache shape, so the batch is padded to a few shapes: rows to the
        next power of two (copies of the first row, dropped after) and the prompt width to a multiple of
        STATIC_WIDTH_BUCKET (masked left padding). Without that every batch of a length-sorted eval would
        compile anew.
        """
        import torch
        from transformers import GenerationConfig

        rows, width = ids.shape
        rows_to = 1 << (rows - 1).bit_length()
        width_to = -(-width // STATIC_WIDTH_BUCKET) * STATIC_WIDTH_BUCKET
        ids = torch.cat([ids, ids[:1].expand(rows_to - rows, -1)])
        mask = torch.cat([mask, mask[:1].expand(rows_to - rows, -1)])
        ids = torch.nn.functional.pad(ids, (width_to - width, 0), value=self.pad_id)
        mask = torch.nn.functional.pad(mask, (width_to - width, 0), value=0)
        sampling = params.temperature > 0
        gc = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=sampling, eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id, use_cache=True, cache_implementation="static",
            temperature=params.temperature if sampling else None, top_p=params.top_p if sampling else None,
            top_k=None, repetition_penalty=1.0)
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
        self.static_shapes.add((rows_to, width_to))
        return out[:rows, width_to:].tolist()

    def token_stats(self, conversations: list[list[dict]], *, batch_size: int, max_length: int,
                    adapter_enabled: bool = True) -> list:
        """Teacher-forced per-example (nll_sum, tokens, correct) on reference answers; see teacher_forced."""
        from .teacher_forced import teacher_forced_stats

        with self._adapter_context(adapter_enabled):
            return teacher_forced_stats(self.model, self.tokenizer, conversations, batch_size=batch_size,
                                        max_length=max_length)

    def close(self) -> None:
        """Free the model."""
        import gc

        self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


# ---- vLLM ---------------------------------------------------------------------------------------

def import_vllm():
    """Import vLLM or raise MissingExtraError with the install command."""
    try:
        import vllm  # noqa: F401
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise MissingExtraError(
            "vLLM (the vllm generation backend)",
            "pip install vllm        # CUDA GPU, best in its own environment (it pins its own torch)\n"
            "  then run the evaluation there (python -m rustcoder eval ... --backend vllm), or from here with\n"
            "  --backend served --vllm-python ENV/bin/python (vLLM started as `rustcoder serve` starts it).\n"
            "  CPU: bash serve/setup_vllm_cpu.sh builds .venv-vllm with rustcoder in it") from None
    return LLM, SamplingParams, LoRARequest


def vllm_on_cpu() -> bool:
    """Whether the vLLM imported here is a CPU build (vllm-cpu)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # pragma: no cover - an older vLLM
        return False
    return bool(current_platform.is_cpu())


class VLLMBackend(Backend):
    """vLLM offline engine; an adapter is loaded as a LoRA module (no merge), its base served as is."""

    name = "vllm"

    def __init__(self, path: str, *, revision: str | None = None, adapter_dir: str | None = None,
                 chat_template: str | None = None, dtype: str = "auto", seed: int = 0,
                 tensor_parallel_size: int | None = None, log=print):
        LLM, SamplingParams, LoRARequest = import_vllm()
        from ..modeling import (check_architecture, load_config, load_tokenizer, model_eos_ids, resolve_model,
                                saved_dtype, stop_token_ids)

        self._SamplingParams = SamplingParams
        model = resolve_model(path)
        if dtype == "auto" and saved_dtype(model) == "float32":  # vLLM's auto would run a float32 merge in fp16
            dtype = "float32"
        kwargs: dict[str, Any] = dict(model=model, revision=revision, seed=seed, dtype=dtype)
        if tensor_parallel_size:
            kwargs["tensor_parallel_size"] = tensor_parallel_size
        if vllm_on_cpu():  # the CPU build reads it as the share of RAM for the KV cache; its default is refused
            from ..serve import CPU_MEMORY_UTILIZATION

            kwargs["gpu_memory_utilization"] = CPU_MEMORY_UTILIZATION
        self.lora = None
        if adapter_dir:
            from ..serve import read_adapter

            # max_lora_rank from the adapter (its largest rank, rank_pattern included), one LoRA slot
            kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(read_adapter(adapter_dir).rank), max_loras=1)
            self.lora = LoRARequest("adapter", 1, str(adapter_dir))
        # The prompt and the stop rule of the transformers backend: rustcoder's template (vLLM would render a
        # hub model's stock one) and stop token ids (vLLM checks stop strings on text without <|im_end|>).
        config = load_config(path, revision)
        check_architecture(config, path, log)
        tok, _ = load_tokenizer(path, revision, config.model_type)
        self.chat_template = chat_template or tok.chat_template
        self.stop_ids = stop_token_ids(tok, model_eos_ids(path, revision))
        started = time.time()
        self.llm = LLM(**kwargs)
        log(f"vLLM loaded {kwargs['model']}" + (f" with LoRA {adapter_dir}" if adapter_dir else "")
            + f" in {time.time() - started:.1f} s")

    def generate(self, requests, params, target):
        """Yield each request with its generations (see Backend.generate)."""
        by_n: dict[int, list[GenRequest]] = {}
        for r in requests:
            by_n.setdefault(r.n, []).append(r)
        for n, reqs in by_n.items():
            sp = self._SamplingParams(n=n, temperature=params.temperature, top_p=params.top_p if params.temperature > 0
                                      else 1.0, max_tokens=params.max_new_tokens, stop_token_ids=self.stop_ids,
                                      seed=params.seed)
            outs = self.llm.chat([r.messages for r in reqs], sp, use_tqdm=False, chat_template=self.chat_template,
                                 add_generation_prompt=True,
                                 lora_request=self.lora if target.adapter_enabled else None)
            for r, out in zip(reqs, outs):
                yield r, [Generation(o.text, "length" if o.finish_reason == "length" else "stop",
                                     len(o.token_ids)) for o in out.outputs]

    def close(self) -> None:
        """Stop the engine and hand its memory back: on a GPU the next target's engine (other weights) needs the
        share of the card this one reserved (gpu_memory_utilization), which dropping the reference alone does
        not free while the engine's process and references live on."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()  # vLLM v1: the engine-core process (and its workers) end here
        del llm, core
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        except ImportError:  # pragma: no cover - another vLLM layout
            import gc

            gc.collect()
        else:
            cleanup_dist_env_and_memory()  # process groups, gc, and the CUDA cache off CPU


# ---- OpenAI-compatible endpoint -----------------------------------------------------------------

# The one OpenAI client and URL normaliser are rustcoder.openai_client's (served_models: re-exported for callers).
from ..openai_client import chat_url, openai_client, served_models  # noqa: E402,F401


class EndpointBackend(Backend):
    """/v1/chat/completions through the OpenAI SDK, ``concurrency`` requests in flight, one per sample."""

    name = "endpoint"

    def __init__(self, endpoint: str, *, api_key: str | None = None, concurrency: int = 4, timeout: float = 300,
                 retries: int = 3):
        self.endpoint = endpoint
        self.url = chat_url(endpoint)
        self.api_key = api_key
        self.concurrency = max(1, concurrency)
        self.client = openai_client(endpoint, api_key=api_key, timeout=timeout, retries=retries)
        self._stop_ids: dict[str | None, list[int] | None] = {}

    def end_of_turn_ids(self, model: str | None) -> list[int] | None:
        """rustcoder's stop rule for a raw vLLM server: the end-of-turn token's id, from the server's own
        ``/tokenize``. vLLM drops ``<|im_end|>`` from the text (a special token), so the string stop never fires
        there, and a base model's eos is ``<|endoftext|>``: without the id its answers run past the turn. None
        for a server without ``/tokenize`` (rustcoder's own adds the ids itself; hosted APIs stop at the turn)."""
        if model not in self._stop_ids:
            import httpx

            root = self.url.rsplit("/v1/", 1)[0]
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            ids = None
            try:
                r = httpx.post(f"{root}/tokenize", json={"model": model, "prompt": END_OF_TURN,
                                                         "add_special_tokens": False}, headers=headers, timeout=10)
                tokens = r.json().get("tokens") if r.status_code == 200 else None
                if isinstance(tokens, list) and len(tokens) == 1 and isinstance(tokens[0], int):
                    ids = tokens  # one token: the model has <|im_end|> as a token of its own
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
            self._stop_ids[model] = ids
        return self._stop_ids[model]

    def complete(self, messages: list[dict], params: GenParams, model: str | None, seed: int | None = None,
                 stop_ids: list[int] | None = None) -> Generation:
        """One chat completion; failures after the SDK's retries come back as finish_reason "error".

        ``stop_ids``: sent as vLLM's ``stop_token_ids`` (rustcoder's stop rule) to a raw vLLM server whose model is
        known; a rustcoder server adds them itself and refuses unknown fields. The string stop stays for servers
        that keep <|im_end|> in the text."""
        import openai

        kwargs: dict[str, Any] = {"messages": messages, "max_tokens": params.max_new_tokens,
                                  "temperature": params.temperature, "stop": [END_OF_TURN],
                                  "model": model or openai.omit}  # no name: the server's default model
        if stop_ids:
            kwargs["extra_body"] = {"stop_token_ids": list(stop_ids)}
        if params.temperature > 0:
            kwargs["top_p"] = params.top_p
        if seed is not None:
            kwargs["seed"] = seed
        try:
            data = self.client.chat.completions.create(**kwargs)
            choice = data.choices[0]
            text = (choice.message.content if choice.message is not None else None) or ""
            text, _ = _truncate_at_end_of_turn(text)
            tokens = data.usage.completion_tokens if data.usage is not None else None
            return Generation(text, "length" if choice.finish_reason == "length" else "stop", tokens)
        except (openai.OpenAIError, KeyError, IndexError, TypeError, AttributeError) as e:
            return Generation("", "error", error=f"{type(e).__name__}: {e}"[:500])

    def default_model(self) -> str | None:
        """The first model the server lists (None when it lists none or has no /v1/models)."""
        try:
            names = served_models(self.endpoint, self.api_key)
        except RustcoderError:
            return None
        return names[0] if names else None

    def generate(self, requests, params, target):
        """Yield each request with its generations (see Backend.generate)."""
        jobs = [(r, j) for r in requests for j in range(r.n)]
        results: dict[int, dict[int, Generation]] = {}
        model = target.served_name or self.default_model()
        stop_ids = target.stop_token_ids or self.end_of_turn_ids(model)
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="rustcoder-endpoint") as pool:
            futures = {pool.submit(self.complete, r.messages, params, model,
                                   params.seed + r.start + j if params.temperature > 0 else None,
                                   stop_ids): (r, j)
                       for r, j in jobs}
            for fut in concurrent.futures.as_completed(futures):
                r, j = futures[fut]
                got = results.setdefault(id(r), {})
                got[j] = fut.result()
                if len(got) == r.n:
                    yield r, [got[k] for k in range(r.n)]

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


def api_key_from_env(name: str | None) -> str | None:
    """The API key in environment variable ``name`` (None when unset)."""
    return os.environ.get(name) if name else None
