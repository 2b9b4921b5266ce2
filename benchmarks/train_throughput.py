"""Training throughput: rustcoder vs TRL SFTTrainer at its defaults and at its best, side by side in one run.

All three train the same Qwen2-shaped model with the same LoRA (r16, all linear layers) on the same
Strandset-shaped rows (long-tailed lengths like the real dataset), with the same examples per
optimizer step and the same number of steps, all with answer-only loss. "TRL best" is the strongest
TRL configuration available here: ``padding_free=True`` (or ``--trl-best bfd``: BFD packing), no
gradient checkpointing, ``use_liger_kernel`` where liger-kernel is installed and a GPU is used (its
kernels are Triton's), and the fastest attention that works from TRL's position ids (flash-attn,
the kernels hub's flash attention, else SDPA, which transformers masks per example). Only optimizer steps are
timed (a callback around each step; model load, evaluation and checkpoint saves excluded), after a
few warm-up steps. Printed: non-pad tokens/s of each, rustcoder's ratio to both TRL sides, peak GPU memory,
an MFU estimate, the eval loss of each on the same held-out rows (token-weighted answer NLL, the
teacher-forced eval's; it must not get worse), and the projected wall time of the research's five-run
study on 10,000 rows. A check that no example attends
to another in rustcoder's forwards runs first.

    python benchmarks/train_throughput.py                       # CPU: tiny Qwen2, ~5 minutes on 2 cores
    python benchmarks/train_throughput.py --steps 20            # quicker, noisier
    python benchmarks/train_throughput.py --device cuda --shape 7b            # Qwen2-7B shape, bf16, baseline
    python benchmarks/train_throughput.py --device cuda --shape 1.5b --presets baseline,small-batch
    python benchmarks/train_throughput.py --device cuda --shape 7b --profile  # + where a step's time goes

On a GPU the model is the real Qwen shape with random weights, built in bf16 on the card (no hub
needed; throughput and memory are shape-bound, not weight-bound); the tokenizer is the tiny one.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUST_LINES = [
    "let mut total: u64 = 0;", "for item in items.iter() {", "    total += item.weight as u64;", "}",
    "if let Some(v) = map.get(&key) {", "    return Ok(v.clone());", "match self.state {",
    "    State::Idle => self.start()?,", "    State::Running(ref mut n) => *n += 1,", "}",
    "let name = format!(\"{}-{}\", prefix, idx);", "buf.extend_from_slice(&bytes[..len]);",
    "impl<T: Ord> Heap<T> {", "    pub fn push(&mut self, value: T) {", "        self.data.push(value);",
    "    }", "}", "fn parse(input: &str) -> Result<Config, Error> {", "    let parts: Vec<&str> = "
    "input.split(',').collect();", "    Ok(Config { parts })", "}",
]
WORDS = ("the function returns the sum of weights and keeps ownership of the vector while borrowing "
         "each element immutably so no clone is needed").split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Strandset-shaped rows over all 15 categories; lengths log-normal (median ~100 tokens, long tail)."""
    from rustcoder.data.categories import CATEGORIES

    rng = random.Random(seed)
    rows = []
    cats = list(CATEGORIES.values())
    for i in range(n):
        cat = cats[i % len(cats)]
        prompt_lines = max(1, int(rng.lognormvariate(-0.2, 1.1)))
        answer_units = max(1, int(rng.lognormvariate(-0.3, 1.5)))
        code = "\n".join(rng.choice(RUST_LINES) for _ in range(prompt_lines))
        inp = {k: code for k in cat.inputs}
        inp["code_context"] = ""
        out = {}
        for k in cat.outputs:
            if k in ("function_name", "variable_name", "next_api_call"):
                out[k] = "compute_total_weight" if answer_units < 4 else "x.iter().map(|v| v.len()).sum()"
            elif cat.answer_kind == "text" or k in ("bug_description", "review_comment", "rationale"):
                out[k] = " ".join(rng.choice(WORDS) for _ in range(answer_units * 4))
            else:
                out[k] = "\n".join(rng.choice(RUST_LINES) for _ in range(answer_units))
        rows.append({"crate_name": f"c{i}", "input_data": json.dumps(inp), "output_data": json.dumps(out),
                     "task_category": cat.name, "test": ""})
    return rows


SHAPES = {  # ../shared/gpu/README.md: hidden, layers, heads, kv heads, intermediate, vocab, tied
    "0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "7b": (3584, 28, 28, 4, 18944, 152064, False),
}
# The research's five runs on 10,000 rows (9,000 train): (preset whose step time applies, optimizer steps).
STUDY = {"baseline": ("baseline", 563), "conservative-lr": ("baseline", 1126), "high-capacity": ("baseline", 563),
         "aggressive-lr": ("baseline", 563), "small-batch": ("small-batch", 2250)}


def build_model(out: Path, hidden: int, layers: int) -> Path:
    from rustcoder.tiny import build_tiny_model

    return build_tiny_model(out, arch="qwen2", hidden_size=hidden, layers=layers, heads=4, kv_heads=2, seed=0)


def write_shape_dir(out: Path, tiny_dir: Path, shape: str) -> Path:
    """A model directory with the real Qwen shape's config.json and the tiny tokenizer; no weights (see
    build_on_gpu)."""
    import shutil

    from transformers import Qwen2Config

    hidden, layers, heads, kv, inter, vocab, tied = SHAPES[shape]
    out.mkdir(parents=True, exist_ok=True)
    for f in tiny_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("vocab.json", "merges.txt", "special_tokens_map.json",
                                                        "chat_template.jinja"):
            shutil.copy(f, out / f.name)
    tiny = json.loads((tiny_dir / "config.json").read_text())
    Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, intermediate_size=inter, tie_word_embeddings=tied,
                max_position_embeddings=32768, eos_token_id=tiny["eos_token_id"],
                pad_token_id=tiny["pad_token_id"], bos_token_id=None).save_pretrained(out)
    return out


def build_on_gpu(model_dir, revision=None, dtype="auto"):
    """The model of model_dir's config with random weights (seed 0), in bf16 on the GPU: same for both sides."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")


def step_clock(cuda: bool):
    """A TrainerCallback timing each optimizer step (on_step_begin -> on_step_end), synchronised on a GPU."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: dict[int, float] = {}
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.times[state.global_step] = time.perf_counter() - self.t0

    return StepClock()


def timed_throughput(history: list[dict], times: dict[int, float], warmup: int) -> tuple[float, float, int]:
    """(non-pad tokens/s, seconds per step, steps timed) over the steps after `warmup`, from the per-step
    cumulative num_tokens each side logs (logging every step) and the clock's step times."""
    cum = {h["step"]: h["num_tokens"] for h in history if "num_tokens" in h and "loss" in h}
    cum[0] = 0
    steps = [s for s in sorted(times) if s > warmup and s in cum and s - 1 in cum]
    tokens = sum(cum[s] - cum[s - 1] for s in steps)
    seconds = sum(times[s] for s in steps)
    return tokens / seconds, seconds / max(len(steps), 1), len(steps)


def check_no_cross_attention(model_dir: Path, rows_path: Path, device: str) -> str:
    """Each example's logits inside one of rustcoder's forwards equal its logits alone; returns the path's name."""
    from transformers import AutoModelForCausalLM

    from rustcoder.attention import choose_attention
    from rustcoder.config import resolve_config
    from rustcoder.data.tokenize import tokenize_examples
    from rustcoder.modeling import load_tokenizer
    from rustcoder.packing import isolation_errors
    from rustcoder.train import plan_training, resolve_forward_layout

    layout = resolve_forward_layout("auto")
    path = choose_attention(device, layout)
    cfg = resolve_config("small-batch", overrides=dict(model=str(model_dir), dataset=str(rows_path), num_examples=40))
    plan = plan_training(cfg, device=device, count_forwards=False)
    tok, _ = load_tokenizer(str(model_dir), model_type="qwen2")
    feats = tokenize_examples(tok, [e.messages for e in plan.data.train[:4]], cfg.max_length)
    if device == "cuda":
        model = build_on_gpu(model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    if path.attn_implementation != "sdpa":
        model.set_attn_implementation(path.attn_implementation)
    model.eval()
    report = isolation_errors(model, feats, layout, tok.pad_token_id, path.varlen_kwargs)
    del model
    worst = max(report, key=lambda r: r["max_diff"] / r["tolerance"])
    numbers = (f"max |packed - alone| {worst['max_diff']:.3g} vs tolerance {worst['tolerance']:.3g} "
               f"(first example's kernel noise x 8, at least 2 ulps of logits up to {worst['scale']:.3g})")
    if all(r["isolated"] for r in report):
        print(f"isolation check ({layout}, {path.name}): each example's logits in a forward equal its logits alone; "
              f"{numbers}")
    else:  # reported, not fatal: the throughput figures below still come, marked
        bad = [i for i, r in enumerate(report) if not r["isolated"]]
        print(f"ISOLATION CHECK FAILED ({layout}, {path.name}): examples {bad} see other examples; {numbers}. "
              f"rustcoder's figures below are not valid for this path.")
    return path.name


def eval_loss(model, tok, conversations: list[list[dict]]) -> float:
    """Token-weighted answer NLL over the held-out rows: the teacher-forced eval stage's function."""
    from rustcoder.eval.teacher_forced import aggregate, teacher_forced_stats

    return aggregate(teacher_forced_stats(model, tok, conversations, batch_size=8, max_length=1024))["loss"]


def trl_best_attention(device: str) -> str:
    """The fastest attention that is exact with TRL's padding-free batches (one row, per-example position ids):
    flash-attn's varlen kernel, the kernels hub's, else SDPA (transformers masks each example from the position
    ids). rustcoder's torch varlen path needs cu_seq_lens its own collator passes, which TRL's does not."""
    from rustcoder.attention import KERNEL_REPO, choose_attention

    best = choose_attention(device, "padding-free", "auto").attn_implementation  # rustcoder's own pick
    return best if best in ("flash_attention_2", KERNEL_REPO) else "sdpa"


def liger_usable(device: str) -> bool:
    """liger-kernel is installed and can run (its kernels are Triton's: a GPU)."""
    import importlib.util

    return device == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def run_rustcoder(model_dir: Path, rows_path: Path, work: Path, a, batch: int, accum: int, preset: str,
                  fast_dropout: bool | None = None) -> dict:
    import torch

    from rustcoder import artifacts
    from rustcoder.config import resolve_config
    from rustcoder.train import train

    clock = step_clock(a.device == "cuda")
    cfg = resolve_config(preset, overrides=dict(
        model=str(model_dir), dataset=str(rows_path), num_examples=a.rows, batch_size=batch, grad_accum=accum,
        max_steps=a.steps, lr=2e-4, warmup_ratio=0.1, eval_steps=10**6, save_steps=10**6, report_to="none",
        output_dir=str(work / "runs"), run_name=f"rustcoder-{preset}-{fast_dropout}", logging_steps=1,
        fast_dropout=fast_dropout, profile_step=max(1, a.warmup_steps) if a.profile else None))
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg, progress=False, callbacks=[clock], log=lambda *_: None)
    history = artifacts.read_json(result.run_dir / "log_history.json")
    tps, s_per_step, timed = timed_throughput(history, clock.times, a.warmup_steps)
    manifest = artifacts.read_json(result.run_dir / "manifest.json")
    plan = manifest["plan"]
    label = (f"rustcoder {plan['forward_layout']}, {plan['forwards']['forwards_per_step_mean']:g} fwd/step"
             + (", ckpt" if plan["gradient_checkpointing"] else "")
             + (" + fast dropout" if plan.get("fast_dropout") else ""))
    return {"tps": tps, "s_per_step": s_per_step, "timed": timed, "eval_loss": result.metrics["eval_loss"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None,
            "setup": label, "attention": plan["attention"], "profile": manifest.get("profile")}


def run_trl(model_dir: Path, rows_path: Path, work: Path, a, batch: int, accum: int, preset: str,
            best: bool = False) -> dict:
    """What a user writes with TRL: conversational rows, assistant-only loss, everything else default; with
    ``best``, TRL's fastest settings (see the module docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from rustcoder.config import load_preset
    from rustcoder.data.strandset import prepare_data
    from rustcoder.modeling import load_tokenizer

    p = load_preset(preset)
    data = prepare_data(str(rows_path), num_examples=a.rows, seed=42)  # the same split rustcoder trains on
    tok, _ = load_tokenizer(str(model_dir), model_type="qwen2")
    if best:  # rustcoder's token sequences (the same truncation to 1024 tokens), the answer as TRL's completion
        from rustcoder.data.tokenize import IGNORE, tokenize_examples

        feats = tokenize_examples(tok, [e.messages for e in data.train], 1024)
        train_ds = Dataset.from_list([{"input_ids": f["input_ids"], "completion_mask": [int(x != IGNORE)
                                                                                         for x in f["labels"]]}
                                      for f in feats])
    else:
        train_ds = Dataset.from_list([{"messages": e.messages} for e in data.train])
    torch.manual_seed(42)
    on_gpu = a.device == "cuda"
    attention = trl_best_attention(a.device) if best else "sdpa"
    model = build_on_gpu(model_dir) if on_gpu else AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if attention != "sdpa":
        model.set_attn_implementation(attention)
    extra = {} if on_gpu else {"bf16": False}  # on a GPU: TRL's own defaults (bf16, gradient checkpointing)
    liger = best and liger_usable(a.device)
    if best:
        extra |= {"activation_checkpointing": False, "use_liger_kernel": liger, "completion_only_loss": True}
        if a.trl_best == "bfd":
            extra |= {"packing": True, "packing_strategy": "bfd", "max_length": 1024}
        else:  # padding-free without packing: max_length must be None (the rows are truncated already)
            extra |= {"padding_free": True, "max_length": None}
    args = SFTConfig(output_dir=str(work / f"trl-{preset}-{'best' if best else 'defaults'}"),
                     per_device_train_batch_size=batch,
                     gradient_accumulation_steps=accum, max_steps=a.steps, learning_rate=2e-4,
                     warmup_steps=math.ceil(0.1 * a.steps), lr_scheduler_type="cosine", assistant_only_loss=not best,
                     report_to=[], logging_steps=1, save_strategy="no", eval_strategy="no", seed=42,
                     disable_tqdm=True, dataloader_pin_memory=on_gpu, **extra)
    lora = LoraConfig(r=p.get("lora_r", 16), lora_alpha=p.get("lora_alpha", 32),
                      lora_dropout=p.get("lora_dropout", 0.05), target_modules="all-linear", task_type="CAUSAL_LM")
    clock = step_clock(on_gpu)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tok, peft_config=lora,
                         callbacks=[clock])
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    tps, s_per_step, timed = timed_throughput(trainer.state.log_history, clock.times, a.warmup_steps)
    loss = eval_loss(trainer.model, tok, [e.messages for e in data.eval])
    ckpt = ", ckpt" if args.activation_checkpointing else ""
    if best:
        layout = "BFD packing" if a.trl_best == "bfd" else "padding-free"
        label = f"TRL {layout}, {attention}{ckpt}" + (", liger" if liger else "")
    else:
        label = f"TRL defaults (padded, random{ckpt})"
    return {"tps": tps, "s_per_step": s_per_step, "timed": timed, "eval_loss": loss, "peak_gib": peak,
            "setup": label}


def project_study(measured: dict[str, dict], mean_len: float) -> list[str]:
    """The research's five runs on 10,000 rows: optimizer steps x measured seconds per step, per side. A run
    whose preset was not measured is priced at the baseline's throughput for the same tokens."""
    lines = []
    for side in ("TRL defaults", "TRL best", "rustcoder"):
        total, parts = 0.0, []
        for run, (basis, steps) in STUDY.items():
            if basis in measured:
                sec = steps * measured[basis][side]["s_per_step"]
            elif "baseline" in measured:  # small-batch not measured: its 4 examples a step at baseline tokens/s
                sec = steps * 4 * mean_len / measured["baseline"][side]["tps"]
            else:
                sec = float("nan")
            total += sec
            parts.append(f"{run} {sec / 60:.0f}")
        lines.append(f"  {side:<14} {total / 60:6.0f} min ({', '.join(parts)} min)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="7b", help="with --device cuda: the Qwen shape")
    ap.add_argument("--presets", default=None,
                    help="comma-separated presets whose examples per step are used (default: baseline on cuda; "
                         "on CPU 4 examples per step, batch 4 x accum 1, as measured before)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60 CPU, 30 cuda)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="first steps left out of the timing "
                    "(default 2 CPU, 3 cuda)")
    ap.add_argument("--batch", type=int, default=4, help="CPU default: examples per step")
    ap.add_argument("--rows", type=int, default=2000, help="rows sampled (10%% held out for eval)")
    ap.add_argument("--hidden", type=int, default=256, help="CPU model width")
    ap.add_argument("--layers", type=int, default=4, help="CPU model depth")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--breakdown", action="store_true", help="also run rustcoder without the CPU fast dropout")
    ap.add_argument("--trl-best", choices=("padding-free", "bfd"), default="padding-free",
                    help="TRL's best layout: padding_free=True (default) or BFD packing")
    ap.add_argument("--profile", action="store_true", help="profile rustcoder's last warm-up step (untimed) and "
                    "print where its time went: GPU busy share, kernel launches, host syncs, matmul/attention split")
    a = ap.parse_args()
    a.steps = a.steps or (30 if a.device == "cuda" else 60)
    a.warmup_steps = a.warmup_steps if a.warmup_steps is not None else (3 if a.device == "cuda" else 2)

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    if a.threads:
        torch.set_num_threads(a.threads)
    from rustcoder.config import load_preset
    from rustcoder.memory import ModelShape, data_answer_share, peak_flops, train_flops_per_token

    with tempfile.TemporaryDirectory(prefix="rc-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("RUSTCODER_CACHE", str(work / "cache"))
        rows_path = work / "rows.jsonl"
        rows = synthetic_rows(a.rows + 200)
        rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tiny_dir = build_model(work / "model", a.hidden, a.layers)
        model_dir = tiny_dir
        if a.device == "cuda":
            import rustcoder.modeling

            model_dir = write_shape_dir(work / f"qwen-{a.shape}", tiny_dir, a.shape)
            rustcoder.modeling.load_model = build_on_gpu  # rustcoder's train() builds the same random model

        from transformers import AutoConfig

        from rustcoder.data.strandset import prepare_data
        from rustcoder.data.tokenize import tokenize_examples
        from rustcoder.modeling import load_tokenizer

        shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir))
        tok, _ = load_tokenizer(str(model_dir), model_type="qwen2")
        data = prepare_data(str(rows_path), num_examples=a.rows)
        tokenized = tokenize_examples(tok, [e.messages for e in data.train], 1024)
        lengths = sorted(r["length"] for r in tokenized)
        mean_len = statistics.mean(lengths)
        answer_share = data_answer_share([r["labels"] for r in tokenized])
        where = (torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads")
        print(f"model: Qwen2 hidden {shape.hidden}, {shape.layers} layers, vocab {shape.vocab} "
              f"({shape.parameters / 1e9:.2f}B parameters, random weights); {where}")
        print(f"data: {len(lengths)} train rows, tokens per example mean {mean_len:.0f}, "
              f"median {statistics.median(lengths):.0f}, p99 {lengths[int(0.99 * len(lengths))]}")
        check_no_cross_attention(model_dir, rows_path, a.device)

        presets = a.presets.split(",") if a.presets else (["baseline"] if a.device == "cuda" else ["cpu"])
        fpt = train_flops_per_token(shape, mean_len, answer_share)
        peak = peak_flops(a.device)
        measured: dict[str, dict] = {}
        for preset in presets:
            if preset == "cpu":  # the CPU figure measured since the start: 4 examples per step
                name, batch, accum = "baseline", a.batch, 1
            else:
                p = load_preset(preset)
                name, batch, accum = preset, p["batch_size"], p["grad_accum"]
            runs = [("TRL defaults", lambda: run_trl(model_dir, rows_path, work, a, batch, accum, name)),
                    ("TRL best", lambda: run_trl(model_dir, rows_path, work, a, batch, accum, name, best=True)),
                    ("rustcoder", lambda: run_rustcoder(model_dir, rows_path, work, a, batch, accum, name))]
            if a.breakdown:
                runs.insert(1, ("no fast dropout", lambda: run_rustcoder(model_dir, rows_path, work, a, batch, accum,
                                                                          name, fast_dropout=False)))
            results = {}
            for label, fn in runs:
                results[label] = fn()
                gc.collect()
                if a.device == "cuda":
                    torch.cuda.empty_cache()
            print(f"\n{preset if preset != 'cpu' else 'CPU'}: {batch} x {accum} = {batch * accum} examples per "
                  f"optimizer step, {a.steps} steps ({a.warmup_steps} warm-up steps not timed)")
            print(f"{'':<16} {'layout':<52} {'non-pad tok/s':>13} {'s/step':>7} {'peak GiB':>8} {'MFU':>6} "
                  f"{'eval loss':>9}")
            for label, r in results.items():
                mfu = f"{r['tps'] * fpt / peak:.1%}" if peak else "n/a"
                gib = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
                print(f"{label:<16} {r['setup']:<52} {r['tps']:>13.0f} {r['s_per_step']:>7.3f} {gib:>8} "
                      f"{mfu:>6} {r['eval_loss']:>9.4f}")
            ours = results["rustcoder"]
            for trl_side in ("TRL defaults", "TRL best"):
                print(f"throughput ratio rustcoder / {trl_side}: {ours['tps'] / results[trl_side]['tps']:.2f}x; "
                      f"eval loss difference (rustcoder - {trl_side}): "
                      f"{ours['eval_loss'] - results[trl_side]['eval_loss']:+.4f}")
            print(f"rustcoder attention: {ours['attention']}")
            if results["rustcoder"].get("profile"):
                from rustcoder.profiling import render

                print(f"rustcoder {render(results['rustcoder']['profile'])}")
            measured[name] = results
        if a.device == "cuda":
            print("\nprojected five-run study on 10,000 rows (optimizer steps x measured seconds per step):")
            for line in project_study(measured, mean_len):
                print(line)


if __name__ == "__main__":
    main()
