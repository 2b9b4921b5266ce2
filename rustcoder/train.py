"""LoRA SFT of a Qwen model on Strandset-Rust-v1 with TRL and PEFT.

``plan_training`` reads and splits the data and counts the optimizer steps without touching the
model (the dry run); ``train`` runs the plan and leaves a self-describing run directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts
from .artifacts import (ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG, DATA_SUMMARY, EVAL_SPLIT, METRICS, TRAIN_IDS,
                        atomic_write_json, atomic_write_text, atomic_write_yaml)
from .config import TrainConfig, default_run_name, grad_accum_per_process, steps_for
from .data.strandset import PreparedData, prepare_data
from .data.tokenize import IGNORE
from .errors import RustcoderError


EVAL_SHARE = 0.2  # evaluation may cost at most this share of a run's training compute (forward = 1/3 of a step)


@dataclass
class TrainPlan:
    """What a run will do: its config, data, step packing and exact optimizer step counts."""

    config: TrainConfig
    data: PreparedData
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_steps: int
    forward_layout: str  # how a step's examples are laid out in forwards: grouped, padding-free or padded
    device: str
    fast_dropout: bool = False
    tokens_per_forward: int = 0
    gradient_checkpointing: bool = False
    checkpointing_reason: str = ""
    attention: str = ""
    attn_implementation: str = "sdpa"
    varlen_kwargs: bool = False
    forwards: dict | None = None
    forwards_note: str = ""
    eval_note: str = ""
    memory: dict = field(default_factory=dict)
    tokens: dict | None = None  # token_counts(): each split's examples, truncated, prompt/answer tokens

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "config": c.to_dict(),
            "data": self.data.summary(),
            "tokens": self.tokens,
            "effective_batch": c.effective_batch,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "eval_steps": self.eval_steps,
            "forward_layout": self.forward_layout,
            "device": self.device,
            "fast_dropout": self.fast_dropout,
            "tokens_per_forward": self.tokens_per_forward,
            "gradient_checkpointing": self.gradient_checkpointing,
            "checkpointing_reason": self.checkpointing_reason,
            "attention": self.attention,
            "attn_implementation": self.attn_implementation,
            "forwards": self.forwards,
            "memory": self.memory,
        }

    def render(self) -> str:
        """Human-readable summary printed by --dry-run and at the start of training."""
        c, d = self.config, self.data
        lines = [f"preset: {c.preset}", "resolved config:"]
        width = max(len(k) for k in c.to_dict())
        for k, v in c.to_dict().items():
            if k != "preset":
                lines.append(f"  {k:<{width}}  {v}")
        lines.append(f"data: {d.source} ({d.rows_read} rows examined, {d.bad_total} skipped"
                     + (f": {', '.join(f'{k}={v}' for k, v in sorted(d.bad_counts.items()))}" if d.bad_counts else "")
                     + ")")
        if c.num_examples is not None and len(d.train) + len(d.eval) < c.num_examples:
            lines.append(f"  note: asked for -n {c.num_examples}, the source has only "
                         f"{len(d.train) + len(d.eval)} usable rows")
        lines.append(f"  {'category':<22} {'train':>7} {'eval':>6}")
        for cat, n in d.category_counts().items():
            lines.append(f"  {cat:<22} {n['train']:>7} {n['eval']:>6}")
        lines.append(f"  {'total':<22} {len(d.train):>7} {len(d.eval):>6}")
        if self.tokens:
            lines.append("tokens: " + "; ".join(
                f"{split} {t['tokens']:,} ({t['prompt_tokens']:,} prompt + {t['answer_tokens']:,} answer, "
                f"{t['truncated']:,} examples truncated to {c.max_length})" for split, t in self.tokens.items()))
        accum = grad_accum_per_process(c)
        lines.append(f"batching: {self.forward_layout} on {self.device}, answer-only LM head"
                     + (" + fast LoRA dropout" if self.fast_dropout else ""))
        lines.append(f"effective batch {c.effective_batch} = {c.batch_size} per device x {accum} accumulation"
                     + f" x {c.num_processes} process{'es' if c.num_processes > 1 else ''}"
                     + (f" (preset: {c.batch_size} x {c.grad_accum})" if accum != c.grad_accum else ""))
        if c.num_processes > 1 and c.batch_size * c.grad_accum != c.effective_batch and c.keep_effective_batch:
            lines.append(f"  note: {c.grad_accum} accumulation steps do not divide over {c.num_processes} "
                         "processes; the effective batch differs from the preset's")
        per_process = c.batch_size * accum
        lines.append(f"step packing: the {per_process} examples of a step{' per process' if c.num_processes > 1 else ''}"
                     f" in forwards of up to {self.tokens_per_forward} tokens ({self.forward_layout}); "
                     f"attention: {self.attention}")
        if self.forwards:
            f = self.forwards
            lines.append(f"  forwards per step: mean {f['forwards_per_step_mean']:g}, max {f['forwards_per_step_max']} "
                         f"({f['forwards']} in all); tokens per forward: mean {f['tokens_per_forward_mean']:g}, "
                         f"max {f['tokens_per_forward_max']}; padding {f['padding_share']:.1%}")
        elif self.forwards_note:
            lines.append(f"  forwards per step: unknown ({self.forwards_note})")
        lines.append(f"  {self.checkpointing_reason}")
        lines.append(f"optimizer steps: {self.steps_per_epoch} per epoch, {self.total_steps} total "
                     f"({self.warmup_steps} warmup, eval every {self.eval_steps}{self.eval_note})")
        return "\n".join(lines)


def detect_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu' (imports torch)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_forward_layout(requested: str) -> str:
    """The forward layout a run uses (the ``forward_layout`` setting): padding-free on every device unless asked.

    Padding-free forwards keep the preset's random step order (TRL's) and compute on no padding; on
    a GPU they keep the card busy. On CPU, `grouped` (length-grouped steps in padded forwards) is
    about 10% faster here, but grouping by length changes which examples share a step, and short
    runs evaluated worse with it, so it is opt-in.
    """
    if requested != "auto":
        return requested
    return "padding-free"


def auto_eval_steps(total_steps: int, train_tokens: float | None, eval_tokens: float | None) -> tuple[int, str]:
    """Evaluate about 10 times a run, fewer when that would cost more than EVAL_SHARE of the training compute."""
    evals = 10
    if train_tokens and eval_tokens:
        # a training token costs a forward and a backward (~3 forwards); an evaluation token one forward
        evals = max(1, min(10, int(EVAL_SHARE * 3 * train_tokens / eval_tokens)))
    every = max(1, total_steps // evals)
    note = (f", {total_steps // every} evaluations so evaluation stays under {EVAL_SHARE:.0%} of the compute"
            if evals < 10 else "")
    return every, note


def _base_config(cfg: TrainConfig):
    """The base model's transformers config (read once; no weights), its architecture note said as training says
    it; None when the config cannot be read here (an offline hub id: the dry run still reports data and steps)."""
    from .modeling import check_architecture, load_config

    try:
        config = load_config(cfg.model, cfg.model_revision)
    except Exception:
        return None
    check_architecture(config, cfg.model)
    return config


TOKENIZE_CHUNK = 512  # rows tokenized at once: their token-id lists are the only per-token memory, then freed


def token_lengths(tokenizer, examples, max_length: int, stats=None) -> list[int]:
    """Each example's token count as the trainer will see it (truncation included), tokenized a chunk at a time.

    Only the lengths are kept: a Python list of token ids costs about 36 bytes a token, and 191,008 Strandset
    rows are tens of millions of tokens. ``stats`` (a TokenizeStats) receives the prompt/answer token counts.
    """
    from .data.tokenize import tokenize_examples

    lengths: list[int] = []
    for start in range(0, len(examples), TOKENIZE_CHUNK):
        rows = tokenize_examples(tokenizer, [e.messages for e in examples[start:start + TOKENIZE_CHUNK]],
                                 max_length, stats)
        lengths.extend(r["length"] for r in rows)
    return lengths


def _token_lengths(cfg: TrainConfig, data: PreparedData, model_type: str | None):
    """Token counts of the train and eval rows (what the trainer will see) and each split's TokenizeStats, or a
    reason they are unknown."""
    from .data.tokenize import TokenizeStats
    from .modeling import load_tokenizer

    try:
        tokenizer, _ = load_tokenizer(cfg.model, cfg.model_revision, model_type)
    except Exception as e:  # offline hub model: the dry run still reports the data and steps
        return None, None, None, str(e).splitlines()[0] or f"no tokenizer for {cfg.model!r} here"
    stats = {"train": TokenizeStats(), "eval": TokenizeStats()}
    train = token_lengths(tokenizer, data.train, cfg.max_length, stats["train"])
    evals = token_lengths(tokenizer, data.eval, cfg.max_length, stats["eval"])
    return train, evals, stats, ""


def token_counts(stats: dict) -> dict:
    """{"train": {...}, "eval": {...}}: examples, truncated, prompt/answer/total tokens of each split."""
    return {split: {"examples": st.examples, "truncated": st.truncated, "prompt_tokens": st.prompt_tokens,
                    "answer_tokens": st.answer_tokens, "tokens": st.prompt_tokens + st.answer_tokens}
            for split, st in stats.items()}


def plan_training(cfg: TrainConfig, device: str | None = None, *, data: PreparedData | None = None,
                  lengths: list[int] | None = None, eval_lengths: list[int] | None = None, shape=None,
                  free_bytes: int | None = None, count_forwards: bool = True, token_stats: dict | None = None,
                  base_config=None) -> TrainPlan:
    """Load and split the data, count the steps and lay out every step's forwards; never loads the weights.

    The forwards per step come from the same sampler and grouping the trainer uses, on the token
    lengths of the rows (tokenized here unless given; unknown when the tokenizer cannot be loaded).
    ``token_stats`` ({"train": TokenizeStats, "eval": TokenizeStats}) go with given lengths. The base model's
    config (``base_config``, read here once when not given) gives its shape and tokenizer family.
    """
    from .launch import check_engine
    from .memory import device_free_bytes, plan_memory
    from .packing import schedule

    check_engine(cfg)
    if data is None:
        data = prepare_data(cfg.dataset, revision=cfg.dataset_revision, num_examples=cfg.num_examples,
                            eval_fraction=cfg.eval_fraction, seed=cfg.seed, categories=cfg.categories,
                            max_bad_fraction=cfg.max_bad_fraction, keep_fields=False)
    per_epoch, total = steps_for(len(data.train), cfg)
    warmup = math.ceil(cfg.warmup_ratio * total)
    device = device or detect_device()
    fast = cfg.fast_dropout if cfg.fast_dropout is not None else device == "cpu"
    layout = resolve_forward_layout(cfg.forward_layout)
    note = ""
    counting = lengths is None and count_forwards
    if base_config is None and (counting or shape is None):
        base_config = _base_config(cfg)
    if counting:
        lengths, eval_lengths, token_stats, note = _token_lengths(cfg, data, getattr(base_config, "model_type", None))
    if shape is None and base_config is not None:
        from .memory import ModelShape

        shape = ModelShape.from_config(base_config)
    if free_bytes is None:
        free_bytes = device_free_bytes(device)
    dtype_bytes = 2 if cfg.dtype in ("bfloat16", "float16") or (cfg.dtype == "auto" and device == "cuda") else 4
    from .attention import choose_attention

    # flash-attn and torch's varlen kernel take bf16/fp16 only: float32 training on a GPU packs with SDPA's mask
    attention = choose_attention(device, layout, "sdpa" if device == "cuda" and dtype_bytes == 4 else "auto")
    mem = plan_memory(device=device, shape=shape, free_bytes=free_bytes, dtype_bytes=dtype_bytes,
                      lora_r=cfg.lora_r, max_length=cfg.max_length, tokens_per_forward=cfg.tokens_per_forward,
                      gradient_checkpointing=cfg.gradient_checkpointing,
                      dense_mask=layout == "padding-free" and attention.attn_implementation == "sdpa")
    if cfg.eval_steps:
        eval_steps, eval_note = cfg.eval_steps, ""
    else:
        train_tokens = sum(lengths) * total / per_epoch if lengths else len(data.train) * total / per_epoch
        eval_tokens = sum(eval_lengths) if eval_lengths else len(data.eval)
        eval_steps, eval_note = auto_eval_steps(total, train_tokens, eval_tokens)
    forwards = None
    if lengths:
        forwards = schedule(lengths, batch_size=cfg.batch_size, accum_per_process=grad_accum_per_process(cfg),
                            num_processes=cfg.num_processes, total_steps=total, layout=layout,
                            budget=mem.tokens_per_forward, seed=cfg.seed, grouped=layout == "grouped").summary()
    return TrainPlan(cfg, data, per_epoch, total, warmup, eval_steps, layout, device, fast,
                     tokens_per_forward=mem.tokens_per_forward, gradient_checkpointing=mem.gradient_checkpointing,
                     checkpointing_reason=mem.reason, attention=attention.name,
                     attn_implementation=attention.attn_implementation, varlen_kwargs=attention.varlen_kwargs,
                     forwards=forwards, forwards_note=note, eval_note=eval_note,
                     tokens=token_counts(token_stats) if token_stats else None,
                     memory={"free_gib": mem.free_gib, "activation_gib_per_forward": mem.activation_gib_per_forward,
                             "model_parameters": shape.parameters if shape else None})


@dataclass
class TrainResult:
    """Where a finished run is and what it measured."""

    run_dir: Path
    adapter_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json (written last) exists: a kill mid-save is skipped."""
    if not checkpoints_dir.is_dir():
        return None
    done = [p for p in checkpoints_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def check_loss_mask(labels) -> None:
    """Fail fast when any example has no trained (answer) token: it would train on nothing.

    ``labels``: a list of label lists, or an Arrow list column, read a record batch at a time with Arrow
    kernels (no Python list per token).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = labels.chunks if isinstance(labels, pa.ChunkedArray) else [pa.array(labels, type=pa.list_(pa.int32()))]
    empty = total = 0
    for chunk in chunks:
        answer = pc.not_equal(pc.list_flatten(chunk), IGNORE).cast(pa.int8()).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(chunk).to_numpy(zero_copy_only=False)
        per_row = np.bincount(parents, weights=answer, minlength=len(chunk))
        empty += int((per_row == 0).sum())
        total += len(chunk)
    if empty:
        raise RustcoderError(f"{empty} of {total} training examples have no answer tokens in the loss mask: "
                             "the chat template or --max-length leaves nothing to learn. Raise --max-length.")


def _datasets(tokenizer, cfg: TrainConfig, data: PreparedData):
    """The train and eval splits tokenized into Arrow tables (train memory-mapped), and each split's TokenizeStats."""
    from .data.tokenize import TokenizeStats, tokenize_to_table

    stats = {"train": TokenizeStats(), "eval": TokenizeStats()}
    train = tokenize_to_table(tokenizer, [e.messages for e in data.train], cfg.max_length, stats["train"],
                              memory_map=True)
    evals = tokenize_to_table(tokenizer, [e.messages for e in data.eval], cfg.max_length, stats["eval"])
    return train, evals, stats


def train_dtype(requested: str) -> str:
    """The dtype the base is trained in, whatever dtype its checkpoint was saved in: the one ``sft_args``' mixed
    precision and the memory plan assume ('auto': bf16 on a GPU that has it, fp16 on one without, float32 on CPU).
    A float32 base under bf16 autocast would give attention float32 queries and keys but bf16 values, which the
    flash and varlen kernels refuse."""
    from .modeling import pick_dtype

    return str(pick_dtype(requested)).removeprefix("torch.")


def _model_card(manifest: dict, metrics: dict, cfg: TrainConfig) -> str:
    m = metrics
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in m.items() if k.startswith(("eval_", "train_")))
    return f"""---
base_model: {manifest['base_model']}
library_name: peft
datasets:
- {cfg.dataset if '/' in cfg.dataset and not Path(cfg.dataset).exists() else 'local'}
tags:
- rust
- lora
- sft
- rustcoder
---
# {manifest['run_name']}

A LoRA adapter for `{manifest['base_model']}` trained with
[rustcoder](https://github.com/) on Rust tasks (Strandset-Rust-v1 format).

- Preset: `{cfg.preset}` (lr {cfg.lr:g}, batch {cfg.batch_size} x {cfg.grad_accum}, warmup {cfg.warmup_ratio:g},
  {cfg.lr_scheduler} schedule, LoRA r {cfg.lora_r} / alpha {cfg.lora_alpha} / dropout {cfg.lora_dropout:g})
- Data: `{cfg.dataset}` (fingerprint {manifest['dataset']['fingerprint']}, {manifest['dataset']['train_rows']} train /
  {manifest['dataset']['eval_rows']} eval rows)
- Chat template: ChatML (`chat_template.jinja`), answers end with `<|im_end|>`.

| metric | value |
| --- | --- |
{rows}
"""


def adapter_state_dict(model) -> dict:
    """The adapter's (trainable) weights, whole, on the CPU. Every process must call it: under FSDP2 each
    parameter is a DTensor shard, and ``full_tensor()`` is a collective (all ranks gather, in the same order);
    unsharded parameters (one process, DDP) are taken as they are. Only the adapter is gathered, never the base."""
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            whole = param.full_tensor() if hasattr(param, "full_tensor") else param
            state[name] = whole.detach().cpu().clone()
    return state


def save_adapter(model, tokenizer, run_dir: Path, card: str, state_dict: dict | None = None) -> Path:
    """Save adapter + tokenizer + chat template into run_dir/adapter atomically (one process: the one that writes).

    ``state_dict``: the gathered ``adapter_state_dict`` where the weights are sharded over processes."""
    final = run_dir / ADAPTER_DIR
    tmp = run_dir / f".{ADAPTER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "README.md").write_text(card)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def push_adapter(adapter_dir: Path, repo: str) -> str:
    """Upload an adapter directory (with its model card) to a hub model repo; returns its URL."""
    return artifacts.push_folder(adapter_dir, repo, "adapter")


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """A new, unique run directory for cfg (rustcoder.rundir.new_run_dir)."""
    from .rundir import new_run_dir

    return new_run_dir(cfg)


@dataclass
class TrainingInputs:
    """What a run is built from, loaded and checked before its run directory exists: the base's config (read
    once), its shape, the tokenizer and chat template, the tokenized splits and the plan."""

    base_path: str
    model_config: Any
    shape: Any  # memory.ModelShape
    tokenizer: Any
    template: str
    train_table: Any  # pyarrow Tables: input_ids, labels, length
    eval_table: Any
    stats: dict  # {"train": TokenizeStats, "eval": TokenizeStats}
    plan: TrainPlan

    @property
    def mean_length(self) -> float:
        """Mean tokens of a training example (truncation included)."""
        s = self.stats["train"]
        return (s.prompt_tokens + s.answer_tokens) / s.examples if s.examples else 0.0

    @property
    def answer_share(self) -> float:
        """Share of the training tokens that are trained (labels are -100 on exactly the prompt tokens)."""
        s = self.stats["train"]
        total = s.prompt_tokens + s.answer_tokens
        return s.answer_tokens / total if total else 1.0


def load_training_inputs(cfg: TrainConfig, log=print) -> TrainingInputs:
    """Read the base's config once, load the tokenizer, read, split and tokenize the data, and plan the run:
    everything that can fail on bad input fails here, before a run directory exists."""
    from .memory import ModelShape
    from .modeling import check_architecture, load_config, load_tokenizer, resolve_model

    base_path = resolve_model(cfg.model)
    model_config = load_config(cfg.model, cfg.model_revision)
    check_architecture(model_config, cfg.model, log)
    tokenizer, template = load_tokenizer(cfg.model, cfg.model_revision, model_config.model_type)
    data = prepare_data(cfg.dataset, revision=cfg.dataset_revision, num_examples=cfg.num_examples,
                        eval_fraction=cfg.eval_fraction, seed=cfg.seed, categories=cfg.categories,
                        max_bad_fraction=cfg.max_bad_fraction, keep_fields=False)
    train_table, eval_table, stats = _datasets(tokenizer, cfg, data)
    check_loss_mask(train_table["labels"])
    shape = ModelShape.from_config(model_config)
    plan = plan_training(cfg, data=data, lengths=train_table["length"].to_pylist(),
                         eval_lengths=eval_table["length"].to_pylist(), shape=shape, token_stats=stats,
                         base_config=model_config)
    return TrainingInputs(base_path, model_config, shape, tokenizer, template, train_table, eval_table, stats, plan)


def _run_directory(cfg: TrainConfig, run_dir: Path | None, world: int) -> Path:
    """The run directory: the one given, the launcher's (shared by every rank), OUTPUT_DIR/RUN_NAME under several
    processes, else a new unique one."""
    from .ranks import RUN_DIR_ENV

    if run_dir is None and os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])  # chosen once by the launcher, shared by every rank
    if run_dir is None and world > 1:
        run_dir = Path(cfg.output_dir) / (cfg.run_name or default_run_name(cfg))
    run_dir = Path(run_dir) if run_dir else prepare_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _write_run_files(cfg: TrainConfig, run_dir: Path, inputs: TrainingInputs, resume: bool) -> None:
    """The run directory's description before training: data summary, config, split ids, eval split, manifest."""
    plan = inputs.plan
    summary = plan.data.summary() | {"tokens": plan.tokens}  # train and eval counted apart
    manifest_path = run_dir / artifacts.MANIFEST
    atomic_write_json(run_dir / DATA_SUMMARY, summary)
    atomic_write_yaml(run_dir / CONFIG, cfg.to_dict())
    atomic_write_text(run_dir / TRAIN_IDS, "".join(e.id + "\n" for e in plan.data.train))
    atomic_write_text(run_dir / EVAL_SPLIT, "".join(json.dumps(e.to_record()) + "\n" for e in plan.data.eval))
    if not (resume and manifest_path.exists()):
        manifest = artifacts.new_manifest(cfg, run_dir, summary, inputs.template, inputs.base_path)
        manifest["plan"] = {k: v for k, v in plan.to_dict().items() if k not in ("config", "data")}
        atomic_write_json(manifest_path, manifest)
    artifacts.update_manifest(run_dir, status="running", updated_at=time.time())


def _load_base(cfg: TrainConfig, inputs: TrainingInputs, run_dir: Path, main_process: bool, log=print):
    """The base model in its training dtype with the plan's attention; a kernel that cannot load here falls back
    to SDPA's block mask (the plan, its token budget and the manifest say so)."""
    import torch

    from .memory import dense_mask_tokens
    from .modeling import load_model

    plan = inputs.plan
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, cfg.model_revision, train_dtype(cfg.dtype))
    model.config.use_cache = False
    if plan.attn_implementation != "sdpa":
        try:
            model.set_attn_implementation(plan.attn_implementation)
        except Exception as e:  # a kernel that cannot load here: SDPA's block mask is exact too
            log(f"note: attention {plan.attention} unavailable ({str(e).splitlines()[0]}); using SDPA block mask")
            plan.attention, plan.attn_implementation, plan.varlen_kwargs = "SDPA block-diagonal mask", "sdpa", False
            cap = max(dense_mask_tokens(inputs.shape), cfg.max_length)
            if plan.forward_layout == "padding-free" and cfg.tokens_per_forward is None and plan.tokens_per_forward > cap:
                log(f"  tokens per forward {plan.tokens_per_forward} -> {cap}: a block mask attends over the whole "
                    "forward")
                plan.tokens_per_forward = cap
            if main_process:
                artifacts.update_manifest(run_dir, attention=plan.attention)
    return model


def build_trainer(cfg: TrainConfig, inputs: TrainingInputs, model, run_dir: Path, *, progress: bool = True,
                  callbacks: list | None = None, world: int = 1, log=print):
    """rustcoder's SFTTrainer (``rustcoder.trainer``) for a loaded base: LoRA as cfg says, the plan's step packing,
    the answer-only LM head, fast LoRA dropout where the plan says."""
    from datasets import Dataset
    from peft import LoraConfig

    from . import trainer as trainer_module
    from .answer_loss import add_answer_head
    from .lora_dropout import use_fast_dropout
    from .memory import peak_flops, train_flops_per_token
    from .packing import StepCollator
    from .progress import use_compact_progress
    from .terminal import quiet_known_warnings

    plan, tokenizer = inputs.plan, inputs.tokenizer
    targets = "all-linear" if cfg.lora_target_modules == "all-linear" else \
        [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    args = trainer_module.sft_args(plan, run_dir, progress)
    trainer_module.one_gpu_per_process(args, world, log)
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    collator = StepCollator(pad_id, plan.forward_layout, plan.tokens_per_forward, cfg.batch_size, plan.varlen_kwargs)
    peak = peak_flops(plan.device)
    quiet_known_warnings()  # peft's deprecated-property FutureWarning, on every run
    trainer = trainer_module.RustcoderSFTTrainer(
        model=model, args=args, train_dataset=Dataset(inputs.train_table), eval_dataset=Dataset(inputs.eval_table),
        processing_class=tokenizer, peft_config=lora, data_collator=collator, callbacks=callbacks or [],
        plan=plan, pad_id=pad_id, profile_step=cfg.profile_step,
        flops_per_token=train_flops_per_token(inputs.shape, inputs.mean_length, inputs.answer_share),
        peak_flops=peak * world if peak else None)  # tokens/s is summed over every process's device
    use_compact_progress(trainer)  # log events as one line beside the progress bar
    if world > 1 and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled:
        log("note: Accelerate shards with FSDP only on GPUs: these CPU processes run plain data parallel (DDP)")
    add_answer_head(trainer.model.get_base_model())
    if plan.fast_dropout:
        use_fast_dropout(trainer.model)
    return trainer


def run_metrics(trainer, out, plan: TrainPlan, wall_time_s: float) -> dict[str, Any]:
    """metrics.json of a finished run: losses, steps, forwards, throughput (tokens/s, MFU where known)."""
    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        eval_metrics = last_eval
    else:
        eval_metrics = trainer.evaluate()
    metrics = {
        "train_loss": out.training_loss,
        "eval_loss": eval_metrics.get("eval_loss"),
        "eval_mean_token_accuracy": eval_metrics.get("eval_mean_token_accuracy"),
        "steps": trainer.state.global_step,
        "planned_steps": plan.total_steps,
        "epochs": trainer.state.epoch,
        "train_runtime_s": out.metrics.get("train_runtime"),
        "wall_time_s": wall_time_s,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "train_tokens": plan.tokens["train"]["tokens"],  # one epoch of the train split (eval apart)
        "eval_tokens": plan.tokens["eval"]["tokens"],
        "forwards": sum(trainer.rc_forwards),
        "forwards_per_step_max": max(trainer.rc_forwards, default=0),
        "padding_forwards": trainer.rc_padding_forwards,  # run to match another process's count (zero loss)
        "planned_forwards": (plan.forwards or {}).get("forwards"),
        "tokens_per_forward": plan.tokens_per_forward,
        "attention": plan.attention,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "tokens_per_second": trainer.rc_tokens / trainer.rc_step_seconds if trainer.rc_step_seconds else None,
        "timed_steps": trainer.rc_timed_steps,  # the steps tokens/s is over (not a profiled step)
        "timed_tokens": trainer.rc_tokens,
        "flops_per_token": trainer.rc_flops_per_token,
    }
    if metrics["tokens_per_second"] and trainer.rc_peak_flops:
        metrics["mfu"] = metrics["tokens_per_second"] * trainer.rc_flops_per_token / trainer.rc_peak_flops
    return metrics


def _save_outputs(cfg: TrainConfig, trainer, tokenizer, run_dir: Path, metrics: dict, profile: dict | None,
                  world: int, main_process: bool, log=print) -> Path:
    """Metrics, log history, adapter and model card, the finished manifest (and the hub push) of a run."""
    adapter_dir = run_dir / ADAPTER_DIR
    # every process takes part in gathering sharded (FSDP2) adapter weights; only rank 0 writes them
    adapter_state = adapter_state_dict(trainer.model) if world > 1 else None
    if main_process:
        atomic_write_json(run_dir / METRICS, metrics)
        atomic_write_json(run_dir / "log_history.json", trainer.state.log_history)
        card = _model_card(artifacts.read_json(run_dir / artifacts.MANIFEST), metrics, cfg)
        adapter_dir = save_adapter(trainer.model, tokenizer, run_dir, card, adapter_state)
        extra = {"profile": profile} if profile else {}
        artifacts.update_manifest(run_dir, status="finished", finished_at=time.time(), metrics=metrics, **extra)
        if cfg.push_to_hub:
            url = push_adapter(adapter_dir, cfg.push_to_hub)
            artifacts.update_manifest(run_dir, pushed_to=url)
            log(f"pushed adapter to {url}")
    return adapter_dir


def train(cfg: TrainConfig, *, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
          callbacks: list | None = None, log=print) -> TrainResult:
    """Train a LoRA adapter as cfg says; with resume=True continue run_dir from its last checkpoint."""
    from .ranks import process_rank

    rank, world = process_rank()
    main_process = rank == 0
    if not main_process:
        log = lambda *_: None  # noqa: E731 - one console report, from rank 0
    inputs = load_training_inputs(cfg, log)
    plan = inputs.plan
    log(plan.render())
    run_dir = _run_directory(cfg, run_dir, world)
    checkpoint = last_complete_checkpoint(run_dir / CHECKPOINTS_DIR) if resume else None
    log(f"run directory: {run_dir}" + (f" (resuming from {checkpoint.name})" if checkpoint else ""))
    if main_process:
        _write_run_files(cfg, run_dir, inputs, resume)
    model = _load_base(cfg, inputs, run_dir, main_process, log)
    trainer = build_trainer(cfg, inputs, model, run_dir, progress=progress, callbacks=callbacks, world=world, log=log)
    profiler = None
    if cfg.profile_step:
        from .profiling import PROFILE_DIR, step_profiler

        profiler = step_profiler(cfg.profile_step, run_dir / PROFILE_DIR, plan.device, log)
        trainer.add_callback(profiler)
    started = time.time()
    try:
        out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        if main_process:
            artifacts.update_manifest(run_dir, status="interrupted", updated_at=time.time())
        raise RustcoderError(f"training interrupted; continue it with `rustcoder train --resume --run-name "
                             f"{run_dir.name} --output-dir {run_dir.parent}`.") from None
    except Exception:
        if main_process:
            artifacts.update_manifest(run_dir, status="failed", updated_at=time.time())
        raise
    if profiler is not None and profiler.summary is None and profiler.error is None:
        log(f"note: step {cfg.profile_step} was not profiled: this run's steps were "
            f"{(checkpoint and int(checkpoint.name.rsplit('-', 1)[1])) or 0} + 1 to {trainer.state.global_step}")
    if trainer.state.max_steps != plan.total_steps:  # the dry run promised this number
        log(f"warning: trainer ran {trainer.state.max_steps} steps, the plan said {plan.total_steps}")
    metrics = run_metrics(trainer, out, plan, time.time() - started)
    adapter_dir = _save_outputs(cfg, trainer, inputs.tokenizer, run_dir, metrics,
                                profiler.summary if profiler is not None else None, world, main_process, log)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(run_dir=run_dir, adapter_dir=adapter_dir, metrics=metrics)
