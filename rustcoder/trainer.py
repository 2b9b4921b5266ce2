"""The trainer: TRL's SFTTrainer running each optimizer step as the packed forwards the plan laid out, through the
answer-only LM head (``rustcoder.answer_loss``), and its arguments (``sft_args``).

Built on public APIs of TRL, transformers and accelerate; the internals it still needs (TRL's train metrics, one
device per process) go through ``rustcoder.compat``. Importing this module imports torch, transformers and TRL:
``rustcoder.train`` imports it when it builds a trainer, never the CLI's help.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_utils import EvalLoopOutput
from trl import SFTConfig, SFTTrainer

from . import compat
from .answer_loss import answer_forward
from .artifacts import CHECKPOINTS_DIR
from .config import grad_accum_per_process
from .data.tokenize import IGNORE
from .errors import RustcoderError
from .packing import StepSampler, collate_forward, process_forwards

if TYPE_CHECKING:
    from .train import TrainPlan


def sft_args(plan: TrainPlan, run_dir: Path, progress: bool) -> SFTConfig:
    """TRL's SFTConfig for a plan: one dataloader batch is a process's share of an optimizer step (the trainer packs
    it into forwards itself), checkpoints under run_dir/checkpoints, no TRL data preparation."""
    from .modeling import pick_dtype

    c = plan.config
    dtype = pick_dtype(c.dtype)
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
        dataloader_pin_memory=plan.device == "cuda",
        push_to_hub=False,
        save_only_model=False,
    )


def one_gpu_per_process(args, world: int, log=print) -> None:
    """A single process (no launcher) on a machine with several GPUs trains on one: Trainer would wrap the model
    in nn.DataParallel, which TRL's SFTTrainer refuses. transformers does the same for a model split over
    devices (``compat.train_on_one_device``)."""
    if world == 1 and args.n_gpu > 1:
        log(f"note: {args.n_gpu} GPUs are visible to this one process: training on {args.device}; "
            f"`--num-processes {args.n_gpu}` trains on all of them (data parallel)")
        compat.train_on_one_device(args)


class StepTimer(TrainerCallback):
    """Wall time and non-pad tokens of optimizer steps only (no evaluation, no checkpoint saves, not the profiled
    step), for tokens/s and MFU."""

    def __init__(self, trainer: RustcoderSFTTrainer):
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
    """SFTTrainer that runs each optimizer step as packed forwards with the answer-only LM head.

    Beyond SFTTrainer's arguments: ``plan`` (the TrainPlan: layout, token budget, attention), ``pad_id``,
    ``flops_per_token`` and ``peak_flops`` (for MFU; None: not logged), ``profile_step`` (left out of tokens/s).
    The model must carry the answer head (``answer_loss.add_answer_head``). After training, ``rc_forwards`` (per
    step), ``rc_padding_forwards``, ``rc_tokens`` / ``rc_step_seconds`` / ``rc_timed_steps`` say what ran.
    """

    def __init__(self, *args, plan: TrainPlan, pad_id: int, flops_per_token: float | None = None,
                 peak_flops: float | None = None, profile_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rc_plan, self.rc_pad_id, self.rc_profile_step = plan, pad_id, profile_step
        self.rc_flops_per_token, self.rc_peak_flops = flops_per_token, peak_flops
        if self.is_fsdp_enabled and not self.accelerator.is_fsdp2:
            raise RustcoderError("FSDP version 1 is not supported: set `fsdp_version: 2` in the launch config "
                                 "(rustcoder's fsdp2 config does); the adapter is gathered from FSDP2's shards.")
        # sharded engines (whatever the launch config file is called) shard the LM head: TRL's fused head there
        self.rc_trl_head = bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)
        self.rc_forwards: list[int] = []
        self.rc_window_tokens = self.rc_window_seconds = 0.0
        self.rc_tokens = self.rc_step_seconds = self.rc_last_tokens = 0.0
        self.rc_timed_steps = self.rc_padding_forwards = 0
        self.add_callback(StepTimer(self))

    def get_train_dataloader(self) -> DataLoader:
        """The training batches in the step sampler's order (``packing.StepSampler``, the order the dry run
        replays), each batch a process's share of one optimizer step, prepared by accelerate (device placement,
        sharding over processes)."""
        ds = self.train_dataset
        c = self.rc_plan.config
        sampler = StepSampler(list(ds["length"]), c.batch_size * grad_accum_per_process(c) * c.num_processes,
                              c.seed, self.rc_plan.forward_layout == "grouped")
        loader = DataLoader(ds, batch_size=self.args.per_device_train_batch_size, sampler=sampler,
                            collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory, drop_last=self.args.dataloader_drop_last)
        return self.accelerator.prepare(loader)

    def _answer_forward(self, model, batch):
        with self.compute_loss_context_manager():
            return answer_forward(model, batch, fused_trl_head=self.rc_trl_head)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One optimizer step's forwards and backwards; the loss is normalised over the answer tokens of the
        whole step (every process), exactly as transformers does with gradient accumulation."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        forwards = send_to_device(inputs, self.args.device)["forwards"]
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
        """Trainer's estimate summed over the step's forwards."""
        return sum(super(RustcoderSFTTrainer, self).floating_point_ops(f) for f in inputs["forwards"])

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """Token-weighted loss and token accuracy over every answer token of the eval set, in forwards
        packed by the same token budget as training (no gradients kept)."""
        ds = dataloader.dataset
        plan = self.rc_plan
        layout = "grouped" if plan.forward_layout == "padded" else plan.forward_layout
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
                batch = send_to_device(collate_forward(feats, layout, self.rc_pad_id, plan.varlen_kwargs),
                                       self.args.device)
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
        """TRL's log, with tokens/s (and MFU where the device's peak is known) of the window's timed steps."""
        if "loss" in logs and self.rc_window_seconds > 0:
            tps = self.rc_window_tokens / self.rc_window_seconds
            logs["tokens_per_second"] = round(tps, 1)
            if self.rc_flops_per_token and self.rc_peak_flops:
                logs["mfu"] = round(tps * self.rc_flops_per_token / self.rc_peak_flops, 4)
            self.rc_window_tokens = self.rc_window_seconds = 0.0
        super().log(logs, start_time)
