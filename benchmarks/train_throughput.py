"""Training throughput: rustcoder's data path vs TRL SFTTrainer's defaults, side by side in one run.

Both train the same small Qwen2 (built from a config) with the same LoRA on the same
Strandset-shaped rows (long-tailed lengths like the real dataset) for the same number of optimizer
steps, and both compute the loss on the answer tokens only. Printed: non-pad tokens per second of
each, their ratio, and the final eval loss of each on the same held-out rows (it must not get
worse). A check that no example attends to another in rustcoder's batches runs first.

    python benchmarks/train_throughput.py            # about 5 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --steps 20 # quicker, noisier
"""

from __future__ import annotations

import argparse
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


def build_model(out: Path, hidden: int, layers: int) -> Path:
    from rustcoder.tiny import build_tiny_model

    return build_tiny_model(out, arch="qwen2", hidden_size=hidden, layers=layers, heads=4, kv_heads=2, seed=0)


def check_no_cross_attention(model_dir: Path, rows_path: Path, data_path: str) -> None:
    """Per-example logits inside a rustcoder batch equal the logits of each example alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from rustcoder.config import resolve_config
    from rustcoder.data.tokenize import tokenize_examples
    from rustcoder.modeling import load_tokenizer
    from rustcoder.train import _Collator, plan_training

    cfg = resolve_config("small-batch", overrides=dict(model=str(model_dir), dataset=str(rows_path),
                                                        num_examples=40, data_path=data_path))
    plan = plan_training(cfg, device="cpu")
    tok, _ = load_tokenizer(str(model_dir), model_type="qwen2")
    feats = tokenize_examples(tok, [e.messages for e in plan.data.train[:4]], cfg.max_length)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = _Collator(tok.pad_token_id, plan.data_path == "padding-free")(feats)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        offset = 0
        for i, f in enumerate(feats):
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            n = len(f["input_ids"])
            got = logits[0, offset:offset + n] if plan.data_path == "padding-free" else logits[i, :n]
            offset += n
            assert torch.allclose(got, alone, atol=1e-4), f"example {i} attends outside itself"
    print(f"isolation check ({plan.data_path}): each example's logits in a batch equal its logits alone")


def run_rustcoder(model_dir: Path, rows_path: Path, work: Path, steps: int, batch: int, n: int,
                  fast_paths: bool | None = None) -> dict:
    from rustcoder import artifacts
    from rustcoder.config import resolve_config
    from rustcoder.train import train

    cfg = resolve_config("baseline", overrides=dict(
        model=str(model_dir), dataset=str(rows_path), num_examples=n, batch_size=batch, grad_accum=1,
        max_steps=steps, lr=2e-4, warmup_ratio=0.1, eval_steps=10**6, save_steps=10**6, report_to="none",
        output_dir=str(work / "runs"), run_name=f"rustcoder-{fast_paths}", logging_steps=1, fast_paths=fast_paths))
    result = train(cfg, progress=False, log=lambda *_: None)
    history = artifacts.read_json(result.run_dir / "log_history.json")
    tokens = max(h.get("num_tokens", 0) for h in history)
    runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
    plan = artifacts.read_json(result.run_dir / "manifest.json")["plan"]
    return {"tokens": tokens, "seconds": runtime, "eval_loss": result.metrics["eval_loss"],
            "data_path": f"rustcoder {plan['data_path']}" + (" + fast paths" if plan.get("fast_paths") else "")}


def run_trl_defaults(model_dir: Path, rows_path: Path, work: Path, steps: int, batch: int, n: int) -> dict:
    """What a user writes with TRL: conversational rows, assistant-only loss, everything else default."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from rustcoder.data.strandset import prepare_data
    from rustcoder.modeling import load_tokenizer

    data = prepare_data(str(rows_path), num_examples=n, seed=42)  # the same split rustcoder trains on
    tok, _ = load_tokenizer(str(model_dir), model_type="qwen2")
    train_ds = Dataset.from_list([{"messages": e.messages} for e in data.train])
    eval_ds = Dataset.from_list([{"messages": e.messages} for e in data.eval])
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=batch,
                     per_device_eval_batch_size=batch, gradient_accumulation_steps=1, max_steps=steps,
                     learning_rate=2e-4, warmup_steps=math.ceil(0.1 * steps), lr_scheduler_type="cosine",
                     assistant_only_loss=True, report_to=[], logging_steps=1, save_strategy="no",
                     eval_strategy="no", bf16=False, seed=42, disable_tqdm=True, dataloader_pin_memory=False)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tok, peft_config=lora)
    out = trainer.train()
    tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
    return {"tokens": tokens, "seconds": out.metrics["train_runtime"],
            "eval_loss": trainer.evaluate()["eval_loss"], "data_path": "TRL defaults (padded, random order)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    ap.add_argument("--batch", type=int, default=4, help="examples per step (TRL's default batch is 8; 4 as the presets)")
    ap.add_argument("--rows", type=int, default=2000, help="rows sampled (10%% held out for eval)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--breakdown", action="store_true", help="also run rustcoder without the CPU fast paths")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rc-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("RUSTCODER_CACHE", str(work / "cache"))
        rows_path = work / "rows.jsonl"
        rows = synthetic_rows(args.rows + 200)
        rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        model_dir = build_model(work / "model", args.hidden, args.layers)

        from rustcoder.data.strandset import prepare_data
        from rustcoder.data.tokenize import tokenize_examples
        from rustcoder.modeling import load_tokenizer

        tok, _ = load_tokenizer(str(model_dir), model_type="qwen2")
        data = prepare_data(str(rows_path), num_examples=args.rows)
        lengths = [r["length"] for r in tokenize_examples(tok, [e.messages for e in data.train], 1024)]
        lengths.sort()
        print(f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {len(tok)}; "
              f"{torch.get_num_threads()} threads")
        print(f"data: {len(lengths)} train rows, tokens per example mean {statistics.mean(lengths):.0f}, "
              f"median {statistics.median(lengths):.0f}, p99 {lengths[int(0.99 * len(lengths))]}")
        from rustcoder.train import resolve_data_path

        check_no_cross_attention(model_dir, rows_path, resolve_data_path("auto", "cpu"))

        results = {}
        runs = [("TRL defaults", run_trl_defaults), ("rustcoder", run_rustcoder)]
        if args.breakdown:
            runs.insert(1, ("grouped only", lambda *a: run_rustcoder(*a, fast_paths=False)))
        for name, fn in runs:
            t0 = time.time()
            results[name] = fn(model_dir, rows_path, work, args.steps, args.batch, args.rows)
            results[name]["wall"] = time.time() - t0
        print(f"\n{'':<14} {'batching':<38} {'non-pad tok/s':>13} {'train s':>8} {'eval loss':>9}")
        for name, r in results.items():
            r["tps"] = r["tokens"] / r["seconds"]
            print(f"{name:<14} {r['data_path']:<38} {r['tps']:>13.0f} {r['seconds']:>8.1f} {r['eval_loss']:>9.4f}")
        ratio = results["rustcoder"]["tps"] / results["TRL defaults"]["tps"]
        print(f"\nthroughput ratio rustcoder / TRL defaults: {ratio:.2f}x "
              f"(same {args.steps} optimizer steps of {args.batch} examples)")
        d = results["rustcoder"]["eval_loss"] - results["TRL defaults"]["eval_loss"]
        print(f"eval loss difference (rustcoder - TRL): {d:+.4f}")


if __name__ == "__main__":
    main()
