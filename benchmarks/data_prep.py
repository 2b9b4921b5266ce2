"""Data preparation at Strandset scale: rows per second and peak memory, rustcoder vs the TRL way.

Scales the built-in sample up to 191,008 Strandset-shaped rows (parquet, the real dataset's format,
a third in the Python-literal quirk), then in separate processes:

- rustcoder: read + parse + validate + stratified split + tokenize (prompt / answer, loss mask);
- TRL way: what a user writes with TRL: read with `datasets`, parse the dict strings, build chat
  messages, then `datasets.map` with `apply_chat_template(..., return_assistant_tokens_mask=True)`
  (what SFTTrainer does with assistant_only_loss=True).

Both use the same tokenizer and chat template and produce the same loss mask. Prints rows/s and
peak RSS of each and the ratios. A third process measures `rustcoder train --dry-run` on the same
rows (``plan_training``: read, split, token lengths, the forwards of every step): its time and peak
RSS, and the peak against the budget docs/scaling.md states (``dry_run_rss_budget``).

    python benchmarks/data_prep.py                         # 191,008 rows
    python benchmarks/data_prep.py --rows 20000            # quicker
    python benchmarks/data_prep.py --only dry-run          # the dry run alone
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def scale_sample(n: int, out: Path) -> Path:
    """Write n rows made from the built-in sample, each one distinct (crate name and a comment differ)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rustcoder.data.strandset import parse_field, read_rows

    base = list(read_rows("sample", split="train"))
    rows = []
    for i in range(n):
        r = dict(base[i % len(base)])
        inp = parse_field(r["input_data"])
        key = next(k for k in inp if k != "code_context")
        inp[key] = f"// variant {i}\n{inp[key]}"
        r["input_data"] = repr(inp) if i % 3 == 0 else json.dumps(inp)
        r["crate_name"] = f"{r['crate_name']}_{i}"
        rows.append(r)
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=8192)
    return out


def run_rustcoder(path: str, model: str) -> dict:
    from rustcoder.data.strandset import prepare_data
    from rustcoder.data.tokenize import tokenize_to_table
    from rustcoder.modeling import load_tokenizer

    tok, _ = load_tokenizer(model, model_type="qwen2")
    t0 = time.perf_counter()
    data = prepare_data(path, eval_fraction=0.1, keep_fields=False)  # as `rustcoder train` does
    parsed = time.perf_counter()
    examples = data.train + data.eval
    table = tokenize_to_table(tok, [e.messages for e in examples], 1024, memory_map=True)
    done = time.perf_counter()
    import pyarrow.compute as pc

    labels = pc.list_flatten(table["labels"])
    return {"rows": len(examples), "seconds": done - t0, "parse_seconds": parsed - t0,
            "tokens": pc.sum(table["length"]).as_py(),
            "trained_tokens": pc.sum(pc.not_equal(labels, -100).cast("int64")).as_py()}


def run_trl_way(path: str, model: str) -> dict:
    import datasets

    from rustcoder.data.categories import build_messages
    from rustcoder.data.strandset import parse_field
    from rustcoder.modeling import load_tokenizer

    datasets.disable_progress_bars()
    tok, _ = load_tokenizer(model, model_type="qwen2")
    t0 = time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files=path, split="train")
    ds = ds.map(lambda r: {"messages": build_messages(r["task_category"], parse_field(r["input_data"]),
                                                      parse_field(r["output_data"]))},
                remove_columns=ds.column_names)
    parsed = time.perf_counter()

    def tokenize(ex):
        out = tok.apply_chat_template(ex["messages"], return_dict=True, return_assistant_tokens_mask=True)
        return {"input_ids": out["input_ids"], "assistant_masks": out["assistant_masks"]}

    ds = ds.map(tokenize, remove_columns=["messages"])
    done = time.perf_counter()
    return {"rows": len(ds), "seconds": done - t0, "parse_seconds": parsed - t0,
            "tokens": sum(len(x) for x in ds["input_ids"]),
            "trained_tokens": sum(sum(m) for m in ds["assistant_masks"])}


def run_dry_run(path: str, model: str) -> dict:
    from rustcoder.config import resolve_config
    from rustcoder.train import plan_training

    t0 = time.perf_counter()
    plan = plan_training(resolve_config("small-batch", overrides={"model": model, "dataset": path}), device="cpu")
    t = plan.tokens
    return {"rows": len(plan.data.train) + len(plan.data.eval), "seconds": time.perf_counter() - t0,
            "parse_seconds": float("nan"), "tokens": t["train"]["tokens"] + t["eval"]["tokens"],
            "trained_tokens": t["train"]["answer_tokens"] + t["eval"]["answer_tokens"],
            "text_bytes": sum(len(m["content"].encode()) for e in plan.data.train + plan.data.eval
                              for m in e.messages)}


def _child(which: str, path: str, model: str) -> None:
    result = {"rustcoder": run_rustcoder, "trl": run_trl_way, "dry-run": run_dry_run}[which](path, model)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=191_008)
    ap.add_argument("--only", choices=("trl", "rustcoder", "dry-run"), action="append",
                    help="run only these (repeatable); default: all three")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="rc-prep-") as tmp:
        os.environ.setdefault("RUSTCODER_CACHE", str(Path(tmp) / "cache"))
        from rustcoder.tiny import tiny_model_dir

        model = str(tiny_model_dir("tiny-qwen2"))
        t = time.perf_counter()
        path = scale_sample(args.rows, Path(tmp) / "train-00000-of-00001.parquet")
        print(f"wrote {args.rows} Strandset-shaped rows ({path.stat().st_size / 1e6:.0f} MB parquet) "
              f"in {time.perf_counter() - t:.0f} s")
        results = {}
        for which in args.only or ("trl", "rustcoder", "dry-run"):
            out = subprocess.run([sys.executable, __file__, "--child", which, str(path), model],
                                 capture_output=True, text=True, env=os.environ)
            if out.returncode:
                sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
            results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    names = {"trl": "TRL way", "rustcoder": "rustcoder", "dry-run": "dry run"}
    print(f"\n{'':<11} {'rows':>8} {'rows/s':>8} {'parse s':>8} {'total s':>8} {'peak RSS MB':>12} {'trained tokens':>15}")
    for which, r in results.items():
        print(f"{names[which]:<11} {r['rows']:>8} {r['rows'] / r['seconds']:>8.0f} {r['parse_seconds']:>8.1f} "
              f"{r['seconds']:>8.1f} {r['peak_rss_mb']:>12.0f} {r['trained_tokens']:>15}")
    if "rustcoder" in results and "trl" in results:
        a, b = results["rustcoder"], results["trl"]
        speed = (a["rows"] / a["seconds"]) / (b["rows"] / b["seconds"])
        print(f"\nspeed ratio rustcoder / TRL way: {speed:.2f}x; "
              f"peak memory ratio: {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x")
        if a["trained_tokens"] != b["trained_tokens"]:
            print(f"note: trained-token counts differ ({a['trained_tokens']} vs {b['trained_tokens']}): "
                  "rustcoder truncates examples over --max-length 1024")
    if "dry-run" in results:
        from rustcoder.memory import DRY_RUN_BASE_BYTES, dry_run_rss_budget
        from rustcoder.train import TOKENIZE_CHUNK

        r = results["dry-run"]
        added = dry_run_rss_budget(r["rows"], r["text_bytes"], r["tokens"], TOKENIZE_CHUNK)
        budget = (DRY_RUN_BASE_BYTES + added) / 2**20
        print(f"\ndry run: {r['tokens']:,} tokens, {r['text_bytes'] / 1e6:.0f} MB of text; peak RSS "
              f"{r['peak_rss_mb']:.0f} MB, budget {budget:.0f} MB "
              f"({'within' if r['peak_rss_mb'] <= budget else 'OVER'})")


if __name__ == "__main__":
    main()
