"""Generated tokens per second of each evaluation backend, side by side, on the same prompts and limits.

Every backend answers the same Strandset-shaped prompts (the built-in test sample, repeated to
--prompts) greedily with the same --max-new-tokens; only generation is timed (model load and engine
start are shown apart), --repeat times per loaded backend, the fastest kept (a shared machine
disturbs some runs; vLLM's prefix cache may serve the prompts of a repeat). Backends:

* ``hf-generate``: the transformers backend as it was before issue 16 (``model.generate`` on fixed
  batches of --batch-size, finished rows still computed): the baseline of the ratio column;
* ``transformers``: the transformers backend now (token-budget batches, finished answers leave);
* ``transformers-static``: the same with transformers' static KV cache (compiled decode on CUDA);
* ``vllm``: rustcoder's vLLM backend, run inside the vLLM environment (``--vllm-python``, default
  ``$RUSTCODER_VLLM_PYTHON``; on CPU the one serve/setup_vllm_cpu.sh builds);
* ``served``: ``--backend served`` with the vLLM engine (OpenAI API, --concurrency in flight).

    python benchmarks/eval_throughput.py                        # CPU, tiny Qwen2 (head_dim 32), ~3 min
    python benchmarks/eval_throughput.py --backends hf-generate,transformers,vllm --prompts 60
    python3 benchmarks/eval_throughput.py --device cuda --shape 7b --prompts 225 --max-new-tokens 512

On a GPU box (../shared/gpu/README.md) the model is a random-weight Qwen shape built on the GPU
(``rustcoder.tiny.build_shaped_model``); vLLM is used only where it is installed. Random weights
rarely emit <|im_end|>: most answers run to --max-new-tokens, so the table says how many stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BACKENDS = ("hf-generate", "transformers", "transformers-static", "vllm", "served")


def prompts(n: int) -> list:
    """n eval items: the built-in Strandset test sample (30 rows, all 15 categories), repeated."""
    from rustcoder.eval.suites import dataset_suite, load_items

    items = load_items(dataset_suite("sample")).items
    out = []
    for i in range(n):
        base = items[i % len(items)]
        out.append(dataclasses.replace(base, id=f"{base.id}-{i}"))
    return out


def build_model(shape: str, device: str, root: Path) -> Path:
    """The model every backend loads: a tiny Qwen2 with head_dim 32, or a real Qwen shape."""
    from rustcoder.tiny import build_shaped_model, build_tiny_model

    if shape == "tiny":
        return build_tiny_model(root / "tiny", hidden_size=128, heads=4, kv_heads=2)
    return build_shaped_model(root / shape, shape, device=device, dtype="bfloat16" if device == "cuda" else "float32")


def _summary(name: str, gens: list, seconds: float, load_seconds: float) -> dict:
    tokens = sum(g.tokens or 0 for g in gens)
    return {"backend": name, "answers": len(gens), "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "stopped": sum(g.finish_reason == "stop" for g in gens), "load_seconds": round(load_seconds, 1)}


def run_local(name: str, model_dir: Path, items: list, max_new_tokens: int, batch_size: int, batch_tokens,
              dtype: str, concurrency: int, vllm_python: str | None, repeat: int = 1) -> dict:
    """Load one backend, answer every item ``repeat`` times (greedy), return the fastest timing."""
    from types import SimpleNamespace

    from rustcoder.eval.backends import GenParams, GenRequest, ModelTarget

    params = GenParams(max_new_tokens=max_new_tokens)
    requests = [GenRequest(i) for i in items]
    target = ModelTarget("model", "local", str(model_dir), path=str(model_dir))
    started = time.perf_counter()
    if name == "vllm":
        from rustcoder.eval.backends import VLLMBackend

        backend = VLLMBackend(str(model_dir), dtype=dtype, log=lambda *_: None)
    elif name == "served":
        from rustcoder.eval.served import ServedBackend

        cfg = SimpleNamespace(engine="vllm", vllm_python=vllm_python, dtype=dtype, concurrency=concurrency,
                              engine_args="--max-model-len 4096")
        backend = ServedBackend(target, cfg, log=lambda *_: None)
        backend.prepare(target)  # start the engine before the clock
    else:
        from rustcoder.eval.backends import TransformersBackend

        backend = TransformersBackend(str(model_dir), dtype=dtype, batch_size=batch_size,
                                      batch_tokens=None if name == "hf-generate" else batch_tokens,
                                      kv_cache="static" if name == "transformers-static" else "dynamic",
                                      log=lambda *_: None)
        if name == "hf-generate":
            backend.generate_shard = _hf_generate(backend)
    load = time.perf_counter() - started
    try:
        import torch

        cuda = torch.cuda.is_available() and name != "served"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        best = None
        for _ in range(max(1, repeat)):  # the fastest of the repeats: the one a shared machine disturbed least
            started = time.perf_counter()
            gens = [g for _, gs in backend.generate(requests, params, target) for g in gs]
            seconds = time.perf_counter() - started
            best = seconds if best is None else min(best, seconds)
        out = _summary(name, gens, best, load)
        if name in ("transformers", "transformers-static"):
            out["batch_tokens"] = backend.batch_tokens
        if cuda:  # the auto budget's estimate against what generation really took
            out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            out["total_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        return out
    finally:
        backend.close()


def _hf_generate(backend):
    """The transformers backend's generation before issue 16: model.generate on fixed batches of
    batch_size prompts sorted by characters, every row computed until the batch's longest answer ends."""
    def generate_shard(requests, params, target, shard, shards):
        import torch
        from transformers import GenerationConfig

        from rustcoder.eval.backends import Generation, plan_batches

        tok = backend.tokenizer
        texts = [backend.prompt_text(r.messages) for r in requests]
        for n, _, batch in plan_batches(requests, [len(t) for t in texts], params, backend.batch_size):
            ids, mask = backend._left_padded([tok(texts[i], add_special_tokens=False)["input_ids"] for i in batch])
            gc = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False,
                                  eos_token_id=backend.stop_ids, pad_token_id=backend.pad_id)
            with torch.inference_mode():
                out = backend.model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
            for j, i in enumerate(batch):
                row = out[j, ids.shape[1]:].tolist()
                stopped = next((p for p, t in enumerate(row) if t in backend.stop_ids), None)
                kept = row[:stopped] if stopped is not None else row
                yield requests[i], [Generation(tok.decode(kept, skip_special_tokens=True),
                                               "stop" if stopped is not None else "length", len(kept))]
    return generate_shard


def run_in_vllm_env(python: str, model_dir: Path, args) -> dict:
    """The vllm backend, timed inside the vLLM environment (this script, --worker)."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", "vllm", "--model-dir", str(model_dir),
           "--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype,
           "--repeat", str(args.repeat)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        return {"backend": "vllm", "error": f"exit {res.returncode}:\n{tail}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="hf-generate,transformers,vllm",
                    help=f"comma-separated, from {', '.join(BACKENDS)}")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--shape", default="tiny", choices=("tiny", "0.5b", "1.5b", "7b"))
    ap.add_argument("--model-dir", default=None, help="use this model instead of building one")
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="hf-generate's fixed batch (the old default)")
    ap.add_argument("--batch-tokens", default="auto",
                    help="the transformers backend's token budget (default: auto, as rustcoder eval: from the GPU's "
                         "free memory, 16384 on CPU)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--concurrency", type=int, default=16, help="served: requests in flight")
    ap.add_argument("--vllm-python", default=os.environ.get("RUSTCODER_VLLM_PYTHON"),
                    help="the Python of the vLLM environment (default: $RUSTCODER_VLLM_PYTHON; else this one)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="generate this many times per backend (model loaded once) and keep the fastest")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch_tokens != "auto":
        args.batch_tokens = int(args.batch_tokens)

    if args.worker == "vllm":  # inside the vLLM environment
        print(json.dumps(run_local("vllm", Path(args.model_dir), prompts(args.prompts), args.max_new_tokens,
                                   args.batch_size, args.batch_tokens, args.dtype, args.concurrency, None,
                                   args.repeat)))
        return 0

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU visible")
    tmp = tempfile.TemporaryDirectory(prefix="eval-throughput-")
    model_dir = Path(args.model_dir) if args.model_dir else build_model(args.shape, args.device, Path(tmp.name))
    items = prompts(args.prompts)
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"model {args.shape} ({model_dir}); {len(items)} prompts, greedy, max_new_tokens {args.max_new_tokens}; "
          f"{where}")
    results = []
    for name in names:
        print(f"  running {name} ...", flush=True)
        if name == "vllm" and args.vllm_python and importlib.util.find_spec("vllm") is None:
            r = run_in_vllm_env(args.vllm_python, model_dir, args)
        elif name == "served" and not args.vllm_python:
            r = {"backend": name, "error": "needs --vllm-python (or $RUSTCODER_VLLM_PYTHON)"}
        else:
            try:
                r = run_local(name, model_dir, items, args.max_new_tokens, args.batch_size, args.batch_tokens,
                              args.dtype, args.concurrency, args.vllm_python, args.repeat)
            except Exception as e:  # one backend missing (e.g. no vLLM here) must not hide the others
                r = {"backend": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        results.append(r)
    base = next((r for r in results if r["backend"] == names[0] and r.get("tokens_per_s")), None)
    print(f"\n| backend | answers | stopped early | generated tokens | seconds | tokens/s | vs {names[0]} | load s "
          f"| batch tokens | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['backend']} | error: {r['error'].splitlines()[-1][:120]} | | | | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(f"| {r['backend']} | {r['answers']} | {r['stopped']} | {r['tokens']:,} | {r['seconds']:.1f} | "
              f"{r['tokens_per_s']:,.1f} | {ratio} | {r['load_seconds']:.1f} | {r.get('batch_tokens') or '-'} | "
              f"{r.get('peak_gib', '-')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": where, "shape": args.shape, "prompts": len(items),
                                               "max_new_tokens": args.max_new_tokens, "results": results}, indent=2))
    tmp.cleanup()
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
