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

from . import artifacts, compat
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
    data_path: str
    device: str
    fast_paths: bool = False
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
            "data_path": self.data_path,
            "device": self.device,
            "fast_paths": self.fast_paths,
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
        lines.append(f"batching: {self.data_path} on {self.device}, answer-only LM head"
                     + (" + fast LoRA dropout" if self.fast_paths else ""))
        lines.append(f"effective batch {c.effective_batch} = {c.batch_size} per device x {accum} accumulation"
                     + f" x {c.num_processes} process{'es' if c.num_processes > 1 else ''}"
                     + (f" (preset: {c.batch_size} x {c.grad_accum})" if accum != c.grad_accum else ""))
        if c.num_processes > 1 and c.batch_size * c.grad_accum != c.effective_batch and c.keep_effective_batch:
            lines.append(f"  note: {c.grad_accum} accumulation steps do not divide over {c.num_processes} "
                         "processes; the effective batch differs from the preset's")
        per_process = c.batch_size * accum
        lines.append(f"step packing: the {per_process} examples of a step{' per process' if c.num_processes > 1 else ''}"
                     f" in forwards of up to {self.tokens_per_forward} tokens ({self.data_path}); "
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


def resolve_data_path(requested: str, device: str) -> str:
    """The forward layout for a device: padding-free everywhere unless asked otherwise.

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


def _model_shape(cfg: TrainConfig):
    """The model's shape from its config (no weights); None when the config cannot be read here."""
    from .memory import ModelShape
    from .modeling import load_config

    try:
        return ModelShape.from_config(load_config(cfg.model, cfg.model_revision))
    except Exception:  # offline hub id, unreadable config: no estimate
        return None


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


def _token_lengths(cfg: TrainConfig, data: PreparedData):
    """Token counts of the train and eval rows (what the trainer will see) and each split's TokenizeStats, or a
    reason they are unknown."""
    from .data.tokenize import TokenizeStats
    from .modeling import load_tokenizer

    try:
        tokenizer, _ = load_tokenizer(cfg.model, cfg.model_revision, _model_type(cfg))
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


def _model_type(cfg: TrainConfig) -> str | None:
    from .modeling import check_architecture, load_config

    try:
        config = load_config(cfg.model, cfg.model_revision)
        check_architecture(config, cfg.model)  # the dry run says what training says
        return config.model_type
    except Exception:
        return None


def plan_training(cfg: TrainConfig, device: str | None = None, *, data: PreparedData | None = None,
                  lengths: list[int] | None = None, eval_lengths: list[int] | None = None, shape=None,
                  free_bytes: int | None = None, count_forwards: bool = True, token_stats: dict | None = None
                  ) -> TrainPlan:
    """Load and split the data, count the steps and lay out every step's forwards; never loads the weights.

    The forwards per step come from the same sampler and grouping the trainer uses, on the token
    lengths of the rows (tokenized here unless given; unknown when the tokenizer cannot be loaded).
    ``token_stats`` ({"train": TokenizeStats, "eval": TokenizeStats}) go with given lengths.
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
    fast = cfg.fast_paths if cfg.fast_paths is not None else device == "cpu"
    layout = resolve_data_path(cfg.data_path, device)
    note = ""
    if lengths is None and count_forwards:
        lengths, eval_lengths, token_stats, note = _token_lengths(cfg, data)
    if shape is None:
        shape = _model_shape(cfg)
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


def one_gpu_per_process(args, world: int, log=print) -> None:
    """A single process (no launcher) on a machine with several GPUs trains on one: Trainer would wrap the model
    in nn.DataParallel, which TRL's SFTTrainer refuses. transformers does the same for a model split over
    devices (``compat.train_on_one_device``)."""
    if world == 1 and args.n_gpu > 1:
        log(f"note: {args.n_gpu} GPUs are visible to this one process: training on {args.device}; "
            f"`--num-processes {args.n_gpu}` trains on all of them (data parallel)")
        compat.train_on_one_device(args)


def sft_args(plan: TrainPlan, run_dir: Path, progress: bool):
    import torch
    from trl import SFTConfig

    from .modeling import pick_dtype

    c = plan.config
    dtype = pick_dtype(c.dtype)
    on_gpu = plan.device == "cuda"
    per_process = c.batch_size * grad_accum_per_process(c)
    return SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        run_name=run_dir.name,
        project=c.project,
        report_to=["trackio"] if c.report_to == "trackio" else [],
        trackio_static_space_id=False,
        num_train_epochs=c.epochs,
        max_steps=c.max_steps,
        learning_rate=c.lr,
        # One dataloader batch is a process's whole share of an optimizer step; the trainer splits it into
        # packed forwards itself (RustcoderSFTTrainer.training_step), so the Trainer accumulates nothing.
        per_device_train_batch_size=per_process,
        per_device_eval_batch_size=c.batch_size,
        gradient_accumulation_steps=1,
        use_cpu=plan.device == "cpu",
        ddp_find_unused_parameters=False if c.num_processes > 1 else None,
        warmup_steps=plan.warmup_steps,
        lr_scheduler_type=c.lr_scheduler,
        weight_decay=c.weight_decay,
        max_grad_norm=c.max_grad_norm,  # 0 disables clipping
        seed=c.seed,
        data_seed=c.seed,
        logging_steps=c.logging_steps,
        eval_strategy="steps",
        eval_steps=plan.eval_steps,
        save_strategy="steps",
        save_steps=c.save_steps,
        save_total_limit=c.save_total_limit,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        activation_checkpointing=plan.gradient_checkpointing,
        max_length=None,  # examples are truncated by rustcoder's tokenizer step
        padding_free=False,  # rustcoder's step collator lays out forwards itself (rustcoder.packing)
        train_sampling_strategy="random",  # replaced by rustcoder's step sampler (same order in the dry run)
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        push_to_hub=False,
        save_only_model=False,
    )


def _trainer_class():
    """SFTTrainer that runs each optimizer step as packed forwards with the answer-only LM head."""
    import contextlib

    import torch
    from transformers import TrainerCallback
    from transformers.trainer_utils import EvalLoopOutput
    from trl import SFTTrainer

    from .packing import StepSampler, collate_forward, process_forwards

    class StepTimer(TrainerCallback):
        """Wall time and non-pad tokens of optimizer steps only (no evaluation, no checkpoint saves, not the
        profiled step), for tokens/s and MFU."""

        def __init__(self, trainer):
            self.trainer = trainer
            self.started = None

        def on_step_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            t = self.trainer
            if self.started is not None and state.global_step != t.rc_profile_step:
                if torch.cuda.is_available() and t.args.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - self.started
                t.rc_window_seconds += dt
                t.rc_step_seconds += dt
                t.rc_window_tokens += t.rc_last_tokens
                t.rc_tokens += t.rc_last_tokens
                t.rc_timed_steps += 1
            self.started = None

    class RustcoderSFTTrainer(SFTTrainer):
        rc_plan: TrainPlan | None = None
        rc_pad_id = 0
        rc_flops_per_token: float | None = None
        rc_peak_flops: float | None = None
        rc_trl_head = False  # FSDP/DeepSpeed shard the LM head: use TRL's fused head there
        rc_profile_step: int | None = None  # profiled (slower) step, left out of tokens/s

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.rc_forwards: list[int] = []
            self.rc_window_tokens = self.rc_window_seconds = 0.0
            self.rc_tokens = self.rc_step_seconds = self.rc_last_tokens = 0.0
            self.rc_timed_steps = self.rc_padding_forwards = 0
            self.add_callback(StepTimer(self))

        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            c = self.rc_plan.config
            return StepSampler(list(ds["length"]), c.batch_size * grad_accum_per_process(c) * c.num_processes,
                               c.seed, self.rc_plan.data_path == "grouped")

        def _answer_forward(self, model, batch):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with self.compute_loss_context_manager():
                if self.rc_trl_head:
                    out = model(**inputs, labels=batch["labels"], fused_lm_head=True)
                    return -out.log_probs.float().sum(), out.label_mask.sum(), out.is_top1.sum()
                out = model(**inputs, labels=batch["labels"], answer_loss=True)
            return out["nll"], out["n_valid"], out["n_correct"]

        def training_step(self, model, inputs, num_items_in_batch=None):
            """One optimizer step's forwards and backwards; the loss is normalised over the answer tokens of the
            whole step (every process), exactly as transformers does with gradient accumulation."""
            model.train()
            if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
                self.optimizer.train()
            forwards = self._prepare_inputs(inputs)["forwards"]
            acc = self.accelerator
            device = forwards[0]["input_ids"].device
            world = acc.num_processes
            items = torch.stack([(f["labels"][:, 1:] != IGNORE).sum() for f in forwards]).sum()
            runs = len(forwards)
            if world > 1:  # answer tokens of the whole step, and the most forwards any process packed it into
                both = acc.gather(torch.stack([items, torch.tensor(runs, device=device)]).reshape(1, 2))
                items, runs = both[:, 0].sum(), int(both[:, 1].max())
            denom = items.clamp(min=1).float()
            step_loss = torch.zeros((), device=device)
            stats = torch.zeros(3, device=device, dtype=torch.float64)  # correct, valid, non-pad tokens
            # Every process runs as many forwards as the one with most: FSDP gathers weights in each forward and
            # ZeRO-2/3 reduce in each backward, so unequal counts would hang; a padding forward repeats this
            # process's last one with its loss times zero (no gradient, no metric).
            for i in range(runs):
                padding = i >= len(forwards)
                batch = forwards[-1] if padding else forwards[i]
                last = i == runs - 1
                # DeepSpeed steps its optimizer inside backward when gradients sync: only after the last forward
                acc.sync_gradients = last
                with contextlib.nullcontext() if last else acc.no_sync(model):
                    nll, n_valid, n_correct = self._answer_forward(model, batch)
                    loss = nll / denom * world  # DDP averages gradients over processes
                    acc.backward(loss * 0.0 if padding else loss)
                if padding:
                    self.rc_padding_forwards += 1
                    continue
                step_loss += loss.detach()
                tokens = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
                stats += torch.stack([torch.as_tensor(n_correct, device=device).double(),
                                      torch.as_tensor(n_valid, device=device).double(),
                                      torch.as_tensor(tokens, device=device).double()])
            if world > 1:
                stats = acc.gather(stats.unsqueeze(0)).sum(0)
            correct, valid, tokens = stats.tolist()
            compat.record_train_metrics(self, correct / valid if valid else 0.0, tokens)
            self.rc_forwards.append(len(forwards))
            self.rc_last_tokens = tokens  # counted by the StepTimer with the step's time
            return step_loss

        def floating_point_ops(self, inputs):
            return sum(super(RustcoderSFTTrainer, self).floating_point_ops(f) for f in inputs["forwards"])

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            """Token-weighted loss and token accuracy over every answer token of the eval set, in forwards
            packed by the same token budget as training (no gradients kept)."""
            ds = dataloader.dataset
            plan = self.rc_plan
            layout = "grouped" if plan.data_path == "padded" else plan.data_path
            acc = self.accelerator
            groups = process_forwards(list(ds["length"]), acc.process_index, acc.num_processes, layout,
                                      plan.tokens_per_forward, plan.config.batch_size)
            model = self.model
            model.eval()
            sums = torch.zeros(3, device=self.args.device, dtype=torch.float64)
            runs = len(groups)
            if acc.num_processes > 1:  # equal forward counts on every process, as in training (sharded weights)
                runs = int(acc.gather(torch.tensor([runs], device=self.args.device)).max())
            with torch.no_grad():
                for i in range(runs):
                    g = groups[i] if i < len(groups) else (groups[-1] if groups else [0])  # padding: discarded
                    rows = ds[g]
                    feats = [{"input_ids": ids, "labels": lab} for ids, lab in zip(rows["input_ids"], rows["labels"])]
                    batch = self._prepare_input(collate_forward(feats, layout, self.rc_pad_id, plan.varlen_kwargs))
                    nll, n_valid, n_correct = self._answer_forward(model, batch)
                    if i >= len(groups):
                        continue
                    sums += torch.stack([nll.double(), torch.as_tensor(n_valid).double().to(sums.device),
                                         torch.as_tensor(n_correct).double().to(sums.device)])
            if acc.num_processes > 1:
                sums = acc.gather(sums.unsqueeze(0)).sum(0)
            nll, valid, correct = sums.tolist()
            metrics = {f"{metric_key_prefix}_loss": nll / valid if valid else 0.0,
                       f"{metric_key_prefix}_mean_token_accuracy": correct / valid if valid else 0.0}
            return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(ds))

        def log(self, logs, start_time=None):
            if "loss" in logs and self.rc_window_seconds > 0:
                tps = self.rc_window_tokens / self.rc_window_seconds
                logs["tokens_per_second"] = round(tps, 1)
                if self.rc_flops_per_token and self.rc_peak_flops:
                    logs["mfu"] = round(tps * self.rc_flops_per_token / self.rc_peak_flops, 4)
                self.rc_window_tokens = self.rc_window_seconds = 0.0
            super().log(logs, start_time)

    return RustcoderSFTTrainer


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


def train(cfg: TrainConfig, *, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
          callbacks: list | None = None, log=print) -> TrainResult:
    """Train a LoRA adapter as cfg says; with resume=True continue run_dir from its last checkpoint."""
    import torch
    from peft import LoraConfig

    from .answer_loss import add_answer_head
    from .lora_dropout import use_fast_dropout
    from .ranks import RUN_DIR_ENV, process_rank
    from .memory import ModelShape, dense_mask_tokens, peak_flops, train_flops_per_token
    from .modeling import check_architecture, load_config, load_model, load_tokenizer, resolve_model
    from .packing import StepCollator

    rank, world = process_rank()
    main_process = rank == 0
    if not main_process:
        log = lambda *_: None  # noqa: E731 - one console report, from rank 0
    # Everything that can fail on bad input fails before a run directory exists.
    base_path = resolve_model(cfg.model)
    model_config = load_config(cfg.model, cfg.model_revision)
    check_architecture(model_config, cfg.model, log)
    tokenizer, template = load_tokenizer(cfg.model, cfg.model_revision, model_config.model_type)
    data = prepare_data(cfg.dataset, revision=cfg.dataset_revision, num_examples=cfg.num_examples,
                        eval_fraction=cfg.eval_fraction, seed=cfg.seed, categories=cfg.categories,
                        max_bad_fraction=cfg.max_bad_fraction, keep_fields=False)
    train_table, eval_table, stats = _datasets(tokenizer, cfg, data)
    check_loss_mask(train_table["labels"])
    train_lengths = train_table["length"].to_pylist()
    plan = plan_training(cfg, data=data, lengths=train_lengths, eval_lengths=eval_table["length"].to_pylist(),
                         shape=ModelShape.from_config(model_config), token_stats=stats)
    from datasets import Dataset

    train_ds, eval_ds = Dataset(train_table), Dataset(eval_table)
    log(plan.render())

    if run_dir is None and os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])  # chosen once by the launcher, shared by every rank
    if run_dir is None and world > 1:
        run_dir = Path(cfg.output_dir) / (cfg.run_name or default_run_name(cfg))
    run_dir = Path(run_dir) if run_dir else prepare_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = last_complete_checkpoint(run_dir / CHECKPOINTS_DIR) if resume else None
    log(f"run directory: {run_dir}" + (f" (resuming from {checkpoint.name})" if checkpoint else ""))

    summary = plan.data.summary() | {"tokens": plan.tokens}  # train and eval counted apart
    manifest_path = run_dir / artifacts.MANIFEST
    if main_process:
        atomic_write_json(run_dir / DATA_SUMMARY, summary)
        atomic_write_yaml(run_dir / CONFIG, cfg.to_dict())
        atomic_write_text(run_dir / TRAIN_IDS, "".join(e.id + "\n" for e in plan.data.train))
        atomic_write_text(run_dir / EVAL_SPLIT, "".join(json.dumps(e.to_record()) + "\n" for e in plan.data.eval))
        if not (resume and manifest_path.exists()):
            manifest = artifacts.new_manifest(cfg, run_dir, summary, template, base_path)
            manifest["plan"] = {k: v for k, v in plan.to_dict().items() if k not in ("config", "data")}
            atomic_write_json(manifest_path, manifest)
        artifacts.update_manifest(run_dir, status="running", updated_at=time.time())

    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model, cfg.model_revision, train_dtype(cfg.dtype))
    model.config.use_cache = False
    if plan.attn_implementation != "sdpa":
        try:
            model.set_attn_implementation(plan.attn_implementation)
        except Exception as e:  # a kernel that cannot load here: SDPA's block mask is exact too
            log(f"note: attention {plan.attention} unavailable ({str(e).splitlines()[0]}); using SDPA block mask")
            plan.attention, plan.attn_implementation, plan.varlen_kwargs = "SDPA block-diagonal mask", "sdpa", False
            cap = max(dense_mask_tokens(ModelShape.from_config(model_config)), cfg.max_length)
            if plan.data_path == "padding-free" and cfg.tokens_per_forward is None and plan.tokens_per_forward > cap:
                log(f"  tokens per forward {plan.tokens_per_forward} -> {cap}: a block mask attends over the whole "
                    "forward")
                plan.tokens_per_forward = cap
            if main_process:
                artifacts.update_manifest(run_dir, attention=plan.attention)
    targets = "all-linear" if cfg.lora_target_modules == "all-linear" else \
        [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    args = sft_args(plan, run_dir, progress)
    one_gpu_per_process(args, world, log)
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    collator = StepCollator(pad_id, plan.data_path, plan.tokens_per_forward, cfg.batch_size, plan.varlen_kwargs)
    from .progress import use_compact_progress
    from .terminal import quiet_known_warnings

    quiet_known_warnings()  # peft's deprecated-property FutureWarning, on every run
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=tokenizer, peft_config=lora, data_collator=collator,
                               callbacks=callbacks or [])
    use_compact_progress(trainer)  # log events as one line beside the progress bar
    trainer.rc_plan, trainer.rc_pad_id = plan, pad_id
    if getattr(trainer, "is_fsdp_enabled", False) and not trainer.accelerator.is_fsdp2:
        raise RustcoderError("FSDP version 1 is not supported: set `fsdp_version: 2` in the launch config "
                             "(rustcoder's fsdp2 config does); the adapter is gathered from FSDP2's shards.")
    if world > 1 and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled:
        log("note: Accelerate shards with FSDP only on GPUs: these CPU processes run plain data parallel (DDP)")
    # sharded engines (whatever the launch config file is called) shard the LM head: TRL's fused head there
    trainer.rc_trl_head = bool(getattr(trainer, "is_fsdp_enabled", False)
                               or getattr(trainer, "is_deepspeed_enabled", False))
    add_answer_head(trainer.model.get_base_model())
    shape = ModelShape.from_config(model_config)
    mean_len = (sum(train_lengths) / len(train_lengths)) if train_lengths else 0
    trained = stats["train"]  # labels are -100 on exactly the prompt tokens: the answer share without reading them
    answer_share = (trained.answer_tokens / (trained.prompt_tokens + trained.answer_tokens)
                    if trained.prompt_tokens + trained.answer_tokens else 1.0)
    trainer.rc_flops_per_token = train_flops_per_token(shape, mean_len, answer_share)
    peak = peak_flops(plan.device)
    trainer.rc_peak_flops = peak * world if peak else None  # tokens/s is summed over every process's device
    if plan.fast_paths:
        use_fast_dropout(trainer.model)
    profiler = None
    if cfg.profile_step:
        from .profiling import PROFILE_DIR, step_profiler

        profiler = step_profiler(cfg.profile_step, run_dir / PROFILE_DIR, plan.device, log)
        trainer.add_callback(profiler)
        trainer.rc_profile_step = cfg.profile_step
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
        "wall_time_s": time.time() - started,
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
    }
    metrics["flops_per_token"] = trainer.rc_flops_per_token
    if metrics["tokens_per_second"] and trainer.rc_peak_flops:
        metrics["mfu"] = metrics["tokens_per_second"] * trainer.rc_flops_per_token / trainer.rc_peak_flops
    adapter_dir = run_dir / ADAPTER_DIR
    # every process takes part in gathering sharded (FSDP2) adapter weights; only rank 0 writes them
    adapter_state = adapter_state_dict(trainer.model) if world > 1 else None
    if main_process:
        atomic_write_json(run_dir / METRICS, metrics)
        atomic_write_json(run_dir / "log_history.json", trainer.state.log_history)
        manifest = artifacts.read_json(manifest_path)
        card = _model_card(manifest, metrics, cfg)
        adapter_dir = save_adapter(trainer.model, tokenizer, run_dir, card, adapter_state)
        extra = {"profile": profiler.summary} if profiler is not None and profiler.summary else {}
        artifacts.update_manifest(run_dir, status="finished", finished_at=time.time(), metrics=metrics, **extra)
        if cfg.push_to_hub:
            url = push_adapter(adapter_dir, cfg.push_to_hub)
            artifacts.update_manifest(run_dir, pushed_to=url)
            log(f"pushed adapter to {url}")
    trainer.accelerator.wait_for_everyone()
    return TrainResult(run_dir=run_dir, adapter_dir=adapter_dir, metrics=metrics)
