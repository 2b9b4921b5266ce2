"""Load on a served model: N concurrent chat requests through the OpenAI client, latency percentiles.

By default it starts the transformers engine (``rustcoder serve --engine transformers``) on a tiny
Qwen2 built locally (offline, CPU), sends 32 concurrent chat completions (half of them streamed),
and prints p50/p95 latency (and time to first token for the streamed ones). Exits 1 on any error.
Point it at any running server with --endpoint instead (e.g. vLLM).

    python benchmarks/serve_load.py                          # about 30 s on 2 CPU cores
    python benchmarks/serve_load.py --requests 64 --max-tokens 64
    python benchmarks/serve_load.py --engine-args=--continuous-batching
    python benchmarks/serve_load.py --endpoint http://127.0.0.1:8000/v1 --model exp-small

Hostile mix (``--clients``): N concurrent clients for ``--duration`` seconds, each cycling through a
normal request, a streamed one, one it abandons (mid-stream, or before a non-streamed answer) and a
malformed one (bad JSON, out-of-range fields, unknown routes, an oversized body ...). The server is
started as ``rustcoder serve`` in its own process so its memory (the serve process, gateway included,
and the engine's processes) is measured before, at peak and after. Exits 1 unless every well-formed
request succeeded, every malformed one got a 4xx in OpenAI's error shape, and the server then answers
a normal request with nothing left running.

    python benchmarks/serve_load.py --clients 128 --duration 60
    python benchmarks/serve_load.py --clients 128 --duration 60 --engine vllm --vllm-python .venv-vllm/bin/python
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
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


MALFORMED = [  # (method, path, body bytes, content type): each must get a 4xx in OpenAI's error shape
    ("POST", "/v1/chat/completions", b"{not json", "application/json"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
     "application/json"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     "application/json"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": 12345}]}', "application/json"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "n": 1000}',
     "application/json"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{}]}',
     "application/json"),
    ("POST", "/v1/chat/completions", b"[" * 10000 + b"]" * 10000, "application/json"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000000000}',
     "application/json"),
    ("POST", "/v1/chat/completions", b" " * (3 << 20), "application/json"),  # 3 MiB: over the 2 MiB cap
    ("POST", "/v1/chat/completions", b'{"messages": []}', "text/plain"),
    ("POST", "/v1/audio/transcriptions", b'{"model": "/etc"}', "application/json"),
    ("GET", "/docs", b"", "application/json"),
    ("POST", "/load_model", b'{"model": "../../../../etc"}', "application/json"),
    ("DELETE", "/v1/models", b"", "application/json"),
]
KINDS = ("normal", "streamed", "aborted", "malformed")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of PID and all its descendants, in MB (/proc: the benchmark is Linux-only)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        p = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(p)
        rss[p] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1e6


async def _client(i: int, base: str, model: str, key: str | None, deadline: float, max_tokens: int, out: dict):
    import asyncio

    import httpx

    from rustcoder.data.categories import CATEGORIES

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as c:
        k, raw = i, b""
        while time.monotonic() < deadline:
            kind = KINDS[k % len(KINDS)]
            k += 1
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": k,
                    "messages": [{"role": "system", "content": CATEGORIES["code_generation"].system},
                                 {"role": "user", "content": PROMPTS[k % len(PROMPTS)]}]}
            t0 = time.perf_counter()
            try:
                if kind == "normal":
                    r = await c.post("/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and isinstance(r.json()["choices"][0]["message"]["content"], str)
                    out["latency"].append(time.perf_counter() - t0)
                    if not ok:
                        out["errors"].append(f"normal: HTTP {r.status_code} {r.text[:200]}")
                elif kind == "streamed":
                    first, done, finish = None, False, None
                    async with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                        if r.status_code != 200:
                            out["errors"].append(f"streamed: HTTP {r.status_code} {(await r.aread())[:200]!r}")
                            continue
                        async for line in r.aiter_lines():
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: "):
                                chunk = json.loads(line[6:])
                                if "error" in chunk:
                                    out["errors"].append(f"streamed: {line[:200]}")
                                for ch in chunk.get("choices") or []:
                                    if first is None and (ch.get("delta") or {}).get("content"):
                                        first = time.perf_counter() - t0
                                    finish = ch.get("finish_reason") or finish
                    out["latency"].append(time.perf_counter() - t0)
                    if first is not None:
                        out["ttft"].append(first)
                    if not (done and finish):
                        out["errors"].append(f"streamed: ended without [DONE] or finish_reason ({finish})")
                elif kind == "aborted":  # leave mid-stream, or before a long non-streamed answer
                    long = {**body, "max_tokens": max(max_tokens * 8, 256)}
                    if k % 2:
                        async with c.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as r:
                            async for line in r.aiter_lines():
                                if line.startswith("data: "):
                                    break
                    else:
                        try:
                            await asyncio.wait_for(c.post("/v1/chat/completions", json=long), 0.5)
                        except asyncio.TimeoutError:
                            pass
                    out["aborted"] += 1
                else:
                    method, path, raw, ctype = MALFORMED[k % len(MALFORMED)]
                    r = await c.request(method, path, content=raw, headers={"Content-Type": ctype})
                    try:
                        err = r.json()["error"]
                        shaped = {"message", "type", "param", "code"} <= set(err)
                    except (ValueError, KeyError, TypeError):
                        shaped = False
                    if 400 <= r.status_code < 500 and shaped:
                        out["refused"] += 1
                    else:
                        out["malformed_wrong"].append(f"{method} {path} {raw[:40]!r}: HTTP {r.status_code} "
                                                      f"{r.text[:120]}")
            except httpx.HTTPError as e:
                if kind in ("normal", "streamed"):
                    out["errors"].append(f"{kind}: {type(e).__name__}: {e}")
                elif kind == "malformed" and not (len(raw) > 1 << 20 and isinstance(
                        e, (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError))):
                    # an oversized upload is answered 413 and the connection closed before the client is done
                    out["malformed_wrong"].append(f"malformed: {type(e).__name__}: {e}")


def run_mixed(base: str, model: str, clients: int, duration: float, max_tokens: int, key: str | None) -> dict:
    """CLIENTS concurrent clients cycling through KINDS for DURATION seconds; what they saw."""
    import asyncio

    out = {"latency": [], "ttft": [], "errors": [], "aborted": 0, "refused": 0, "malformed_wrong": []}
    deadline = time.monotonic() + duration
    t0 = time.perf_counter()

    async def all_clients():
        await asyncio.gather(*(_client(i, base, model, key, deadline, max_tokens, out) for i in range(clients)))

    asyncio.run(all_clients())
    out["wall"] = time.perf_counter() - t0
    return out


def start_cli_server(model_dir: Path, engine: str, port: int, extra: list[str], env: dict):
    """`rustcoder serve` in its own process; returns (process, seconds to ready)."""
    import subprocess

    argv = [sys.executable, "-m", "rustcoder.cli", "serve", str(model_dir), "--engine", engine, "--port", str(port),
            "--quiet-engine", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env})
    t = time.perf_counter()
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C stops the server" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return proc, time.perf_counter() - t
    raise SystemExit("the server did not start:\n" + "".join(seen[-30:]))


def mixed_main(args) -> int:
    """--clients: the hostile mix against a `rustcoder serve` process; prints the figures."""
    import signal

    import httpx

    key = "bench-key-0123456789"
    work = tempfile.TemporaryDirectory(prefix="serve-load-")
    from rustcoder.modeling import template_text
    from rustcoder.tiny import build_tiny_model

    model_dir = build_tiny_model(Path(work.name) / "tiny-rust" / "merged", hidden_size=128, heads=4, kv_heads=2)
    (model_dir / "chat_template.jinja").write_text(template_text("chatml"))
    extra = list(args.serve_args.split()) if args.serve_args else []
    env = {"RUSTCODER_API_KEY": key}
    if args.engine == "vllm":
        extra += ["--max-model-len", "2048", "--engine-args",
                  f"--config {Path(__file__).resolve().parent.parent / 'serve' / 'vllm-cpu.yaml'}"]
        if args.vllm_python:
            extra += ["--vllm-python", args.vllm_python]
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.engine_args and args.engine != "vllm":
        extra += [f"--engine-args={args.engine_args}"]
    port = _free_port()
    proc, ready = start_cli_server(model_dir, args.engine, port, extra, env)
    base = f"http://127.0.0.1:{port}"
    peak = {"mb": 0.0}
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            peak["mb"] = max(peak["mb"], tree_rss_mb(proc.pid))
            time.sleep(0.2)

    try:
        c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        c.post("/v1/chat/completions", json={"model": "tiny-rust", "max_tokens": 4,
                                             "messages": [{"role": "user", "content": "hi"}]})  # warm-up
        before = tree_rss_mb(proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out = run_mixed(base, "tiny-rust", args.clients, args.duration, args.max_tokens, key)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c.get("/health").json().get("running", 1):
            time.sleep(0.1)
        health = c.get("/health").json()
        t = time.perf_counter()
        after_reply = c.post("/v1/chat/completions", json={"model": "tiny-rust", "max_tokens": 4,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        after_latency = time.perf_counter() - t
        stop_sampling.set()
        sampler.join()
        after = tree_rss_mb(proc.pid)
    finally:
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except Exception:
            proc.kill()
        stopped = time.perf_counter() - t
        work.cleanup()
    lat, ttft = out["latency"], out["ttft"]
    well = len(lat)
    print(f"{args.engine} server ready in {ready:.1f} s; {args.clients} clients for {args.duration:g} s "
          f"(wall {out['wall']:.1f} s), max_tokens {args.max_tokens}")
    print(f"well-formed: {well} ({len(out['errors'])} errors)   aborted: {out['aborted']}   "
          f"malformed: {out['refused']} refused with 4xx ({len(out['malformed_wrong'])} wrong)")
    if lat:
        print(f"latency  p50 {percentile(lat, 50):.2f} s   p95 {percentile(lat, 95):.2f} s   max {max(lat):.2f} s")
    if ttft:
        print(f"first token (streamed) p50 {percentile(ttft, 50):.2f} s   p95 {percentile(ttft, 95):.2f} s")
    print(f"server memory (serve + engine processes): before {before:.0f} MB   peak {peak['mb']:.0f} MB   "
          f"after {after:.0f} MB")
    print(f"after the run: /health {health.get('status')} (running {health.get('running')}), a normal request "
          f"HTTP {after_reply.status_code} in {after_latency:.2f} s; SIGTERM to exit {stopped:.1f} s "
          f"(code {proc.returncode})")
    for e in out["errors"][:4] + out["malformed_wrong"][:4]:
        print(f"  error: {e}")
    good = (not out["errors"] and not out["malformed_wrong"] and after_reply.status_code == 200
            and health.get("running") == 0 and well > 0)
    return 0 if good else 1


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
    ap.add_argument("--clients", type=int, help="hostile mix: this many concurrent clients (see above)")
    ap.add_argument("--duration", type=float, default=60.0, help="hostile mix: seconds of load")
    ap.add_argument("--vllm-python", default=os.environ.get("RUSTCODER_VLLM_PYTHON"), help="--engine vllm: its python")
    ap.add_argument("--serve-args", default="", help="hostile mix: more `rustcoder serve` flags, e.g. "
                    "'--max-concurrent 8'")
    args = ap.parse_args(argv)
    if args.clients:
        return mixed_main(args)

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
