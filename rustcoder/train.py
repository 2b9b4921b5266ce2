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
from .config import TrainConfig, config_from_dict, default_run_name, grad_accum_per_process, steps_for
from .data.strandset import PreparedData, prepare_data
from .errors import RustcoderError, UsageError


@dataclass
class TrainPlan:
    """What a run will do: its config, data, batching and exact optimizer step counts."""

    config: TrainConfig
    data: PreparedData
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_steps: int
    data_path: str
    device: str
    fast_paths: bool = False

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "config": c.to_dict(),
            "data": self.data.summary(),
            "effective_batch": c.effective_batch,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "eval_steps": self.eval_steps,
            "data_path": self.data_path,
            "device": self.device,
            "fast_paths": self.fast_paths,
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
        accum = grad_accum_per_process(c)
        lines.append(f"batching: {self.data_path} on {self.device}"
                     + (" + CPU fast paths (answer-only LM head, fast LoRA dropout)" if self.fast_paths else ""))
        lines.append(f"effective batch {c.effective_batch} = {c.batch_size} per device x {accum} accumulation"
                     + f" x {c.num_processes} process{'es' if c.num_processes > 1 else ''}"
                     + (f" (preset: {c.batch_size} x {c.grad_accum})" if accum != c.grad_accum else ""))
        if c.num_processes > 1 and c.batch_size * c.grad_accum != c.effective_batch and c.keep_effective_batch:
            lines.append(f"  note: {c.grad_accum} accumulation steps do not divide over {c.num_processes} "
                         "processes; the effective batch differs from the preset's")
        lines.append(f"optimizer steps: {self.steps_per_epoch} per epoch, {self.total_steps} total "
                     f"({self.warmup_steps} warmup, eval every {self.eval_steps})")
        return "\n".join(lines)


def detect_device() -> str:
    """'cuda' when a GPU is usable, else 'cpu' (imports torch)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_data_path(requested: str, device: str) -> str:
    """The batching strategy for a device.

    On CPU, length-grouped padded batches are fastest: a flattened (padding-free) batch makes SDPA
    attend over the whole concatenation with a block mask. On a GPU with FlashAttention the
    varlen kernels make padding-free both exact and fastest; without it, grouped.
    """
    if requested != "auto":
        return requested
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "padding-free"
        except ImportError:
            return "grouped"
    return "grouped"


def plan_training(cfg: TrainConfig, device: str | None = None) -> TrainPlan:
    """Load and split the data and count the steps the trainer will run; never loads the model."""
    data = prepare_data(cfg.dataset, revision=cfg.dataset_revision, num_examples=cfg.num_examples,
                        eval_fraction=cfg.eval_fraction, seed=cfg.seed, categories=cfg.categories,
                        max_bad_fraction=cfg.max_bad_fraction, keep_fields=False)
    per_epoch, total = steps_for(len(data.train), cfg)
    warmup = math.ceil(cfg.warmup_ratio * total)
    eval_steps = cfg.eval_steps or max(1, total // 10)
    device = device or detect_device()
    fast = cfg.fast_paths if cfg.fast_paths is not None else device == "cpu"
    return TrainPlan(cfg, data, per_epoch, total, warmup, eval_steps, resolve_data_path(cfg.data_path, device),
                     device, fast)


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


def check_loss_mask(labels: list[list[int]]) -> None:
    """Fail fast when any example has no trained (answer) token: it would train on nothing."""
    empty = sum(1 for row in labels if all(l == -100 for l in row))
    if empty:
        raise RustcoderError(f"{empty} of {len(labels)} training examples have no answer tokens in the loss mask: "
                             "the chat template or --max-length leaves nothing to learn. Raise --max-length.")


def _datasets(tokenizer, plan: TrainPlan):
    from datasets import Dataset

    from .data.tokenize import TokenizeStats, tokenize_to_table

    stats = TokenizeStats()
    train = tokenize_to_table(tokenizer, [e.messages for e in plan.data.train], plan.config.max_length, stats,
                              memory_map=True)
    evals = tokenize_to_table(tokenizer, [e.messages for e in plan.data.eval], plan.config.max_length, stats)
    return Dataset(train), Dataset(evals), stats


def _sft_args(plan: TrainPlan, run_dir: Path, progress: bool):
    import torch
    from trl import SFTConfig

    from .modeling import pick_dtype

    c = plan.config
    dtype = pick_dtype(c.dtype)
    on_gpu = plan.device == "cuda"
    grad_ckpt = c.gradient_checkpointing if c.gradient_checkpointing is not None else on_gpu
    return SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        run_name=run_dir.name,
        project=c.project,
        report_to=["trackio"] if c.report_to == "trackio" else [],
        trackio_static_space_id=False,
        num_train_epochs=c.epochs,
        max_steps=c.max_steps,
        learning_rate=c.lr,
        per_device_train_batch_size=c.batch_size,
        per_device_eval_batch_size=c.batch_size,
        gradient_accumulation_steps=grad_accum_per_process(c),
        use_cpu=plan.device == "cpu",
        ddp_find_unused_parameters=False if c.num_processes > 1 else None,
        warmup_steps=plan.warmup_steps,
        lr_scheduler_type=c.lr_scheduler,
        weight_decay=c.weight_decay,
        max_grad_norm=c.max_grad_norm if c.max_grad_norm > 0 else None,
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
        activation_checkpointing=grad_ckpt,
        max_length=None,  # examples are truncated by rustcoder's tokenizer step
        padding_free=False,  # rustcoder's collator flattens batches itself (see _Collator)
        train_sampling_strategy="group_by_length" if plan.data_path == "grouped" else "random",
        length_column_name="length",
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        push_to_hub=False,
        save_only_model=False,
    )


class _Collator:
    """Pads input_ids/labels per batch (right side) or flattens them (padding-free, with position_ids)."""

    def __init__(self, pad_id: int, padding_free: bool):
        self.pad_id = pad_id
        self.padding_free = padding_free

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if self.padding_free:
            ids = [t for f in features for t in f["input_ids"]]
            labels = []
            for f in features:  # the first token of each example has no predecessor in its own sequence
                labels.extend([-100] + list(f["labels"][1:]))
            pos = [i for f in features for i in range(len(f["input_ids"]))]
            return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                    "position_ids": torch.tensor([pos])}
        from .data.tokenize import pad_batch

        return pad_batch(features, self.pad_id)


def _trainer_class():
    """SFTTrainer whose loss can use the answer-only LM head (rustcoder.fast_paths)."""
    import torch
    from trl import SFTTrainer

    from .fast_paths import compact_lm_loss

    class RustcoderSFTTrainer(SFTTrainer):
        compact_head = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.compact_head or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            loss, n_valid, n_correct = compact_lm_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            n_valid = self.accelerator.gather_for_metrics(n_valid).sum()
            n_correct = self.accelerator.gather_for_metrics(n_correct).sum()
            self._metrics[mode]["mean_token_accuracy"].append((n_correct / n_valid).item() if n_valid > 0 else 0.0)
            if mode == "train":
                tokens = (inputs["attention_mask"].sum() if "attention_mask" in inputs
                          else torch.tensor(inputs["position_ids"].size(1)))
                self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

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


def _save_adapter(trainer, tokenizer, run_dir: Path, card: str) -> Path:
    """Save adapter + tokenizer + chat template into run_dir/adapter atomically."""
    final = run_dir / ADAPTER_DIR
    tmp = run_dir / f".{ADAPTER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp))
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
    """A new, unique run directory for cfg (exp-PRESET-SIZE style by default)."""
    return artifacts.unique_run_dir(cfg.output_dir, cfg.run_name or default_run_name(cfg))


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config a run was started with."""
    import yaml

    path = run_dir / CONFIG
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a rustcoder run directory (no {CONFIG}).")
    return config_from_dict(yaml.safe_load(path.read_text()))


def train(cfg: TrainConfig, *, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
          callbacks: list | None = None, log=print) -> TrainResult:
    """Train a LoRA adapter as cfg says; with resume=True continue run_dir from its last checkpoint."""
    import torch
    from peft import LoraConfig

    from .modeling import check_architecture, load_config, load_model, load_tokenizer, resolve_model

    from .launch import RUN_DIR_ENV, process_rank

    rank, world = process_rank()
    main_process = rank == 0
    if not main_process:
        log = lambda *_: None  # noqa: E731 - one console report, from rank 0
    plan = plan_training(cfg)
    log(plan.render())
    # Everything that can fail on bad input fails before a run directory exists.
    base_path = resolve_model(cfg.model)
    model_config = load_config(cfg.model, cfg.model_revision)
    check_architecture(model_config, cfg.model)
    tokenizer, template = load_tokenizer(cfg.model, cfg.model_revision, model_config.model_type)
    train_ds, eval_ds, stats = _datasets(tokenizer, plan)
    check_loss_mask(train_ds["labels"])

    if run_dir is None and os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])  # chosen once by the launcher, shared by every rank
    if run_dir is None and world > 1:
        run_dir = Path(cfg.output_dir) / (cfg.run_name or default_run_name(cfg))
    run_dir = Path(run_dir) if run_dir else prepare_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = last_complete_checkpoint(run_dir / CHECKPOINTS_DIR) if resume else None
    log(f"run directory: {run_dir}" + (f" (resuming from {checkpoint.name})" if checkpoint else ""))

    summary = plan.data.summary() | {"truncated_examples": stats.truncated,
                                     "prompt_tokens": stats.prompt_tokens, "answer_tokens": stats.answer_tokens}
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
    model = load_model(cfg.model, cfg.model_revision, cfg.dtype)
    model.config.use_cache = False
    targets = "all-linear" if cfg.lora_target_modules == "all-linear" else \
        [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    args = _sft_args(plan, run_dir, progress)
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=tokenizer, peft_config=lora,
                               data_collator=_Collator(pad_id, plan.data_path == "padding-free"),
                               callbacks=callbacks or [])
    if plan.fast_paths:
        from .fast_paths import use_fast_dropout

        # The answer-only head calls the decoder directly, which would bypass DDP's gradient hooks.
        trainer.compact_head = world == 1
        use_fast_dropout(trainer.model)
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
        "train_tokens": stats.prompt_tokens + stats.answer_tokens,
    }
    adapter_dir = run_dir / ADAPTER_DIR
    if main_process:
        atomic_write_json(run_dir / METRICS, metrics)
        atomic_write_json(run_dir / "log_history.json", trainer.state.log_history)
        manifest = artifacts.read_json(manifest_path)
        adapter_dir = _save_adapter(trainer, tokenizer, run_dir, _model_card(manifest, metrics, cfg))
        artifacts.update_manifest(run_dir, status="finished", finished_at=time.time(), metrics=metrics)
        if cfg.push_to_hub:
            url = push_adapter(adapter_dir, cfg.push_to_hub)
            artifacts.update_manifest(run_dir, pushed_to=url)
            log(f"pushed adapter to {url}")
    trainer.accelerator.wait_for_everyone()
    return TrainResult(run_dir=run_dir, adapter_dir=adapter_dir, metrics=metrics)
