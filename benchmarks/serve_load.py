"""Load on a served model: N concurrent chat requests through the OpenAI client, latency percentiles.

By default it starts the transformers engine (``rustcoder serve --engine transformers``) on a tiny
Qwen2 built locally (offline, CPU), sends 32 concurrent chat completions (half of them streamed),
and prints p50/p95 latency (and time to first token for the streamed ones). Exits 1 on any error.
Point it at any running server with --endpoint instead (e.g. vLLM).

    python benchmarks/serve_load.py                          # about 30 s on 2 CPU cores
    python benchmarks/serve_load.py --requests 64 --max-tokens 64
    python benchmarks/serve_load.py --engine-args=--continuous-batching
    python benchmarks/serve_load.py --endpoint http://127.0.0.1:8000/v1 --model exp-small
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "Write a function that reverses the words of a &str.",
    "Fix the bug: fn last(v: &Vec<i32>) -> i32 { v[v.len()] }",
    "Write unit tests for fn gcd(a: u64, b: u64) -> u64.",
    "Explain what Rc<RefCell<T>> is for, with an example.",
]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def one_request(client, model: str, i: int, max_tokens: int, stream: bool, start_gate: threading.Event) -> dict:
    """Send one chat request; return its latency, time to first token (streamed) and token count."""
    from rustcoder.data.categories import CATEGORIES

    messages = [{"role": "system", "content": CATEGORIES["code_generation"].system},
                {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    start_gate.wait()
    t0 = time.perf_counter()
    first = None
    tokens = None
    if stream:
        text = []
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    temperature=0.7, seed=i, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.perf_counter() - t0
                text.append(chunk.choices[0].delta.content)
        content = "".join(text)
        tokens = len(text)  # content chunks: about one per generated token
    else:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                               temperature=0.7, seed=i)
        content = reply.choices[0].message.content or ""
        tokens = reply.usage.completion_tokens if reply.usage else None
    return {"latency": time.perf_counter() - t0, "ttft": first, "chars": len(content), "tokens": tokens,
            "stream": stream}


def run_load(base_url: str, model: str, requests: int, concurrency: int, max_tokens: int,
             api_key: str | None = None) -> dict:
    """Fire ``requests`` chat requests, ``concurrency`` at a time, released together; collect results."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=0, timeout=600)
    gate = threading.Event()
    results, errors = [], []
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one_request, client, model, i, max_tokens, i % 2 == 1, gate) for i in range(requests)]
        gate.set()
        for f in concurrent.futures.as_completed(futures):
            try:
                results.append(f.result())
            except Exception as e:  # counted and printed: the benchmark fails on any error
                errors.append(f"{type(e).__name__}: {e}")
    wall = time.perf_counter() - t0
    return {"results": results, "errors": errors, "wall": wall}


def report(load: dict, requests: int, concurrency: int) -> str:
    """The printed summary: counts, p50/p95 latency, time to first token, throughput."""
    lat = [r["latency"] for r in load["results"]]
    ttft = [r["ttft"] for r in load["results"] if r["ttft"] is not None]
    lines = [f"{requests} requests, {concurrency} concurrent: {len(lat)} ok, {len(load['errors'])} errors, "
             f"wall {load['wall']:.1f} s, {len(lat) / load['wall']:.2f} req/s"]
    if lat:
        lines.append(f"latency  p50 {percentile(lat, 50):.2f} s   p95 {percentile(lat, 95):.2f} s   "
                     f"max {max(lat):.2f} s   mean {statistics.mean(lat):.2f} s")
    tokens = [r["tokens"] for r in load["results"] if r["tokens"] is not None]
    if tokens:
        lines.append(f"answers: mean {statistics.mean(tokens):.1f} tokens ({sum(tokens)} in all, "
                     f"{sum(tokens) / load['wall']:.0f} tokens/s)")
    if ttft:
        lines.append(f"first token (streamed) p50 {percentile(ttft, 50):.2f} s   p95 {percentile(ttft, 95):.2f} s")
    for e in load["errors"][:5]:
        lines.append(f"  error: {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code (1 on any failed request)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--endpoint", help="an already running OpenAI-compatible base URL (skips starting an engine)")
    ap.add_argument("--model", help="model name on --endpoint (default: the first it lists)")
    ap.add_argument("--api-key", default=os.environ.get("RUSTCODER_API_KEY"))
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--engine-args", default="", help="passed to the engine; write --engine-args=--continuous-batching")
    args = ap.parse_args(argv)

    server = None
    work = None
    if args.endpoint:
        base_url = args.endpoint
        from rustcoder.serve import list_models

        from rustcoder.errors import RustcoderError

        try:
            model = args.model or list_models(base_url, args.api_key)[0]
        except RustcoderError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    else:
        from rustcoder.serve import build_spec, start_server
        from rustcoder.tiny import build_tiny_model

        work = tempfile.TemporaryDirectory(prefix="serve-load-")
        model_dir = build_tiny_model(Path(work.name) / "tiny-rust", hidden_size=128, heads=4, kv_heads=2)
        spec = build_spec(model_dir, engine=args.engine, port=_free_port(), engine_args=args.engine_args)
        t = time.perf_counter()
        server = start_server(spec, health_timeout=600)
        print(f"{spec.engine} engine ready in {time.perf_counter() - t:.1f} s at {spec.base_url} "
              f"(tiny Qwen2, hidden 128, 2 layers)")
        base_url, model = spec.base_url, spec.served_model_name
    try:
        one_request(__import__("openai").OpenAI(base_url=base_url, api_key=args.api_key or "unused"), model, 0, 4,
                    False, _set_event())  # warm-up, not counted
        load = run_load(base_url, model, args.requests, args.concurrency, args.max_tokens, args.api_key)
    finally:
        if server is not None:
            server.stop()
        if work is not None:
            work.cleanup()
    print(report(load, args.requests, args.concurrency))
    return 1 if load["errors"] or len(load["results"]) != args.requests else 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_event() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


if __name__ == "__main__":
    sys.exit(main())
