"""Real engines serving a tiny Qwen2 on loopback, queried through the OpenAI client.

* transformers (``transformers serve`` behind rustcoder's gateway): always, on CPU.
* vLLM: opt-in (``@pytest.mark.vllm``), in the separate environment ``serve/setup_vllm_cpu.sh`` builds;
  point ``RUSTCODER_VLLM_PYTHON`` at its python. The model has head_dim 32 (hidden 128, 4 heads):
  vLLM's CPU attention needs at least that.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import pid_gone, read_until_ready, vllm_python_or_skip

pytestmark = pytest.mark.slow
pytest.importorskip("openai", reason="the OpenAI client is not installed: pip install 'rustcoder[serve]'")


def needs_transformers_serving():
    from rustcoder.serve import transformers_serving_missing

    missing = transformers_serving_missing()
    if missing:
        pytest.skip(f"transformers serving is not installed ({', '.join(missing)}): pip install 'rustcoder[serve]'")

API_KEY = "test-key-0123456789"
SERVE_DIR = Path(__file__).resolve().parent.parent / "serve"
PROMPT = [{"role": "system", "content": "You are an expert Rust programmer. Answer with the code."},
          {"role": "user", "content": "Write a function that adds two i32 values."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_pids(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """A tiny Qwen2 (head_dim 32) with rustcoder's chat template, and a random rank-32 LoRA adapter for it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rustcoder.modeling import template_text
    from rustcoder.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("served")
    model_dir = build_tiny_model(root / "tiny-rust" / "merged", hidden_size=128, heads=4, kv_heads=2)
    (model_dir / "chat_template.jinja").write_text(template_text("chatml"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=32, lora_alpha=64, init_lora_weights=False, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    adapter_dir = root / "runs" / "exp-high-capacity" / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(adapter_dir)
    (adapter_dir / "chat_template.jinja").write_text(template_text("chatml"))
    return model_dir, adapter_dir


def local_greedy(model_dir: Path, adapter_dir: Path | None, messages, max_new_tokens: int) -> str:
    """The answer transformers gives locally (the reference for what the server must return)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter_dir or model_dir)
    tok.chat_template = (Path(adapter_dir or model_dir) / "chat_template.jinja").read_text()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>")])
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def _ignore_sigint():  # what `nohup CMD &` does: the child starts with SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_cli(*args, env=None, sigint_ignored=False):
    proc = subprocess.Popen([sys.executable, "-m", "rustcoder.cli", "serve", *args, "--quiet-engine"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=_ignore_sigint if sigint_ignored else None)
    return proc, read_until_ready(proc, 180)


def test_transformers_engine_serves_the_openai_api(served_model):
    """/v1/models, a chat completion and a streamed one through the OpenAI client; key, names; Ctrl-C."""
    needs_transformers_serving()
    from openai import AuthenticationError, NotFoundError, OpenAI

    model_dir, _ = served_model
    port = free_port()
    proc, banner = start_cli(str(model_dir), "--engine", "transformers", "--port", str(port),
                             env={"RUSTCODER_API_KEY": API_KEY})
    try:
        assert f"base URL   http://127.0.0.1:{port}/v1" in banner and "model      tiny-rust" in banner
        engine_pid = int(re.search(r"\(pid (\d+)\)", banner).group(1))
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-rust"]

        reply = client.chat.completions.create(model="tiny-rust", messages=PROMPT, max_tokens=12, temperature=0)
        assert reply.model == "tiny-rust" and reply.choices[0].finish_reason in ("stop", "length")
        assert isinstance(reply.choices[0].message.content, str)
        assert 0 < reply.usage.completion_tokens <= 12

        stream = client.chat.completions.create(model="tiny-rust", messages=PROMPT, max_tokens=16, temperature=1.0,
                                                seed=1, stream=True)
        chunks = list(stream)
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(pieces) >= 2, pieces  # streamed, not one blob
        assert {c.model for c in chunks} == {"tiny-rust"}

        with pytest.raises(AuthenticationError):
            OpenAI(base_url=client.base_url, api_key="wrong-key-123", max_retries=0).models.list()
        with pytest.raises(NotFoundError, match="serves `tiny-rust`"):
            client.chat.completions.create(model="Qwen/Qwen2.5-7B", messages=PROMPT, max_tokens=2)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/load_model", data=b'{"model": "gpt2"}',
                                     headers={"Authorization": f"Bearer {API_KEY}"})
        with pytest.raises(urllib.error.HTTPError) as e:  # clients cannot make the server load other models
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:  # open, as in vLLM
            assert r.status == 200

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped." in rest
        assert pid_gone(engine_pid)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_transformers_engine_keeps_the_openai_api_contract(served_model):
    """What OpenAI clients rely on, through the official client: streams end with `data: [DONE]`; bad
    requests get 400 with {"error": {message, type, ...}}; a streamed answer is the same text as the
    non-streamed one (greedy, and seeded sampling over the whole byte-level vocabulary, whose deltas
    must not split a UTF-8 character). Started with SIGINT ignored (as `nohup ... &` does), serve still
    stops on SIGINT."""
    needs_transformers_serving()
    import httpx
    from openai import BadRequestError, OpenAI

    model_dir, _ = served_model
    port = free_port()
    proc, banner = start_cli(str(model_dir), "--engine", "transformers", "--port", str(port), sigint_ignored=True)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        client = OpenAI(base_url=base, api_key="unused", max_retries=0)

        body = {"model": "tiny-rust", "messages": PROMPT, "max_tokens": 6, "temperature": 0, "stream": True}
        with httpx.stream("POST", base + "/chat/completions", json=body, timeout=60) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1

        for raw, param in ((b"{not json", None), (b"[1, 2]", None), (b'{"model": "tiny-rust"}', "messages")):
            r = httpx.post(base + "/chat/completions", content=raw, headers={"Content-Type": "application/json"},
                           timeout=60)
            assert r.status_code == 400, (raw, r.status_code, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param
        with pytest.raises(BadRequestError, match="messages"):
            client.chat.completions.create(model="tiny-rust", messages=[], max_tokens=2)
        with pytest.raises(BadRequestError) as e:  # FastAPI's 422 {"detail": ...} in OpenAI's shape
            client.chat.completions.create(model="tiny-rust", messages=PROMPT, max_tokens=2,
                                           extra_body={"not_an_option": 1})
        assert e.value.status_code == 400 and "not_an_option" in e.value.message

        for sampling in ({"temperature": 0}, {"temperature": 1.0, "top_p": 1.0, "seed": 7}):
            kw = {"model": "tiny-rust", "messages": PROMPT, "max_tokens": 40, **sampling}
            whole = client.chat.completions.create(**kw).choices[0].message.content
            deltas = [c.choices[0].delta.content for c in client.chat.completions.create(**kw, stream=True)
                      if c.choices and c.choices[0].delta.content]
            assert "".join(deltas) == whole, (sampling, whole, deltas)
        assert len(deltas) >= 2 and any(ord(ch) > 127 for ch in whole), whole  # sampling reached multibyte text

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stream_deltas_never_split_a_character():
    """Token by token, the stream sends only whole characters, and all of them."""
    from transformers import AutoTokenizer

    from rustcoder.serve import stream_delta
    from rustcoder.tiny import tiny_model_dir

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("tiny-qwen2"))
    text = 'fn 日本語() { println!("🦀 ünï"); }'
    ids = tok(text)["input_ids"]
    sent, deltas = [], []
    for n in range(1, len(ids) + 1):
        deltas.append(stream_delta(tok.decode(ids[:n], skip_special_tokens=True), sent))
    deltas.append(stream_delta(tok.decode(ids, skip_special_tokens=True), sent, final=True))
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert any(d == "" for d in deltas)  # some tokens are a character's first bytes only: nothing sent yet


def test_transformers_engine_serves_an_adapter_like_peft_does(served_model):
    """--adapter on the transformers engine answers exactly what base + adapter answer locally."""
    needs_transformers_serving()
    from openai import OpenAI

    from rustcoder.serve import serve

    model_dir, adapter_dir = served_model
    result = serve(adapter=adapter_dir.parent, engine="transformers", port=free_port(), block=False,
                   log=lambda *_: None, quiet_engine=True, health_timeout=120)
    try:
        assert result.spec.model == str(model_dir.resolve()) and result.spec.served_model_name == "exp-high-capacity"
        client = OpenAI(base_url=result.spec.base_url, api_key="unused", max_retries=0)
        served = []
        for _ in range(2):  # the adapter is merged once, at load; later requests get the same model
            stream = client.chat.completions.create(model="exp-high-capacity", messages=PROMPT, max_tokens=10,
                                                    temperature=0, stream=True)
            served.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    finally:
        result.stop()
    with_adapter = local_greedy(model_dir, adapter_dir, PROMPT, 10)
    assert with_adapter != local_greedy(model_dir, None, PROMPT, 10)  # the adapter changes the answer
    assert served == [with_adapter, with_adapter]


@pytest.mark.vllm
def test_vllm_cpu_serves_a_merged_model_and_an_adapter(served_model):
    """vLLM (CPU build, own environment) serving the base and a rank-32 LoRA module, via the OpenAI client."""
    python = vllm_python_or_skip()
    from openai import OpenAI

    from rustcoder.serve import serve

    model_dir, adapter_dir = served_model
    t = time.monotonic()
    result = serve(model_dir, adapter=adapter_dir, engine="vllm", vllm_python=python, port=free_port(),
                   api_key=API_KEY, max_model_len=1024, engine_args=["--config", str(SERVE_DIR / "vllm-cpu.yaml")],
                   block=False,
                   log=lambda *_: None, quiet_engine=True, health_timeout=300)
    pgid = result.server.process.pid
    try:
        ready = time.monotonic() - t
        client = OpenAI(base_url=result.spec.base_url, api_key=API_KEY, max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["exp-high-capacity", "tiny-rust"]
        answers = {}
        for name in ("exp-high-capacity", "tiny-rust"):
            r = client.chat.completions.create(model=name, messages=PROMPT, max_tokens=8, temperature=0)
            answers[name] = r.choices[0].message.content
        assert answers["exp-high-capacity"] != answers["tiny-rust"]  # the LoRA module is applied
        stream = client.chat.completions.create(model="exp-high-capacity", messages=PROMPT, max_tokens=8, temperature=0,
                                                stream=True)
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert len(pieces) >= 2 and "".join(pieces) == answers["exp-high-capacity"]
        print(f"\nvLLM CPU ready in {ready:.1f} s")
    finally:
        result.stop()
    deadline = time.monotonic() + 30
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_pids(pgid) == []


def test_load_benchmark_runs_without_errors(capsys):
    """benchmarks/serve_load.py (smaller): concurrent requests against the transformers engine, no errors."""
    needs_transformers_serving()
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    assert serve_load.main(["--requests", "8", "--concurrency", "8", "--max-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "8 requests, 8 concurrent: 8 ok, 0 errors" in out and "latency  p50" in out
    assert serve_load.percentile([1, 2, 3, 4], 50) == 2.5


def test_hostile_load_mix_runs_clean(capsys):
    """benchmarks/serve_load.py --clients (smaller): normal, streamed, abandoned and malformed requests at once
    against a `rustcoder serve` process: no error for a well-formed request, every malformed one a 4xx."""
    needs_transformers_serving()
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    assert serve_load.main(["--clients", "16", "--duration", "4", "--max-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "(0 errors)" in out and "(0 wrong)" in out and "server memory" in out, out
    assert "/health ok (running 0)" in out, out
