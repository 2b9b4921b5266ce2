"""The GPU layer: the real path on a real dtype. train -> merge -> eval -> serve -> chat on a bf16
Qwen2.5-0.5B-shaped model built on the GPU, and eval generation on CUDA.

Run with `pytest -m gpu` on a CUDA machine (on an offline GPU box: docs/gpu.md); every test here skips
cleanly without CUDA. CI has no GPU. RUSTCODER_GPU_REHEARSAL=1 runs the same steps on CPU with a small
bf16 shape ("mini", the 0.5B's vocabulary), to check the layer's logic and environment before a GPU visit
(`scripts/gpu_checks.py --rehearse`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_until_ready

torch = pytest.importorskip("torch")

REHEARSAL = os.environ.get("RUSTCODER_GPU_REHEARSAL") == "1" and not torch.cuda.is_available()
DEVICE = "cpu" if REHEARSAL else "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() and not REHEARSAL,
                                                  reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m rustcoder ARGS` in a fresh process (as a user runs it), output captured."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "rustcoder", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def base_0p5b(tmp_path_factory) -> Path:
    """Qwen2.5-0.5B's shape (hidden 896, 24 layers, vocab 151936, tied) with random bf16 weights, built on the GPU."""
    from rustcoder.tiny import build_shaped_model

    shape = "mini" if REHEARSAL else "0.5b"
    return build_shaped_model(tmp_path_factory.mktemp("gpu") / f"qwen2.5-{shape}-shape", shape, device=DEVICE)


def _report(merged: Path) -> dict:
    return json.loads((merged / "merge_report.json").read_text())


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _assert_trained(run: Path, steps: int) -> None:
    """The run trained what it says: every LoRA B moved from its zero init (finite), the planned steps ran, and
    the losses and token accuracy it reports are finite numbers."""
    from safetensors.torch import load_file

    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    lora_b = {k: t for k, t in tensors.items() if "lora_B" in k}
    assert lora_b, sorted(tensors)[:5]
    for name, t in lora_b.items():
        assert torch.isfinite(t.float()).all() and t.float().abs().sum() > 0, f"{name} did not train"
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == steps
    assert _finite(m["train_loss"]) and _finite(m["eval_loss"]) and m["eval_loss"] > 0, m
    assert 0 <= m["eval_mean_token_accuracy"] <= 1 and _finite(m["tokens_per_second"]), m


def _assert_evaluated(eval_dir: Path, samples: int) -> None:
    """The eval scored every sample: overall score, teacher-forced loss and each category's primary metric are
    finite numbers in range (None only where a category has no primary score)."""
    m = json.loads((eval_dir / "metrics.json").read_text())
    (target,) = m["models"].values()
    overall = target["overall"]
    assert overall["samples"] == samples and sum(overall["statuses"].values()) == samples, overall
    assert _finite(overall["score"]) and 0 <= overall["score"] <= 100, overall
    assert _finite(overall["tf_loss"]) and overall["tf_loss"] > 0, overall
    assert target["categories"]
    for cat, c in target["categories"].items():
        assert c["primary"] is None or (_finite(c["primary"]) and 0 <= c["primary"] <= 100), (cat, c)


def test_train_merge_eval_serve_chat_on_a_bf16_model(base_0p5b, tmp_path):
    runs = tmp_path / "runs"
    r = cli("train", "--preset", "small-batch", "--model", str(base_0p5b), "--dataset", "sample", "--max-steps", "30",
            "--report-to", "none", "--output-dir", str(runs), "--run-name", "gpu-run")
    assert r.returncode == 0, r.stdout + r.stderr
    run = runs / "gpu-run"
    _assert_trained(run, steps=30)

    # the plain merge (bf16, the base's dtype): verified, or refused for its dtype; never called a bug
    r = cli("merge", str(run))
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    if r.returncode == 0:
        assert _report(run / "merged")["verification"]["exact"] is True
    else:
        assert r.returncode == 1 and "This is not a bug" in out and "--dtype float32" in out, out

    # both layers on both merge paths: bf16 with the limit lifted is exact, float32 keeps the whole effect
    for flags, name in (([], "m16"), (["--streaming"], "m16s")):
        r = cli("merge", str(run), "--output-dir", str(tmp_path / name), "--max-effect-lost", "1", *flags)
        assert r.returncode == 0, r.stdout + r.stderr
        v = _report(tmp_path / name)["verification"]
        assert v["exact"] is True and v["dtype"] == "bfloat16" and v["cause"] is None
        if not REHEARSAL:  # verified layer by layer on the GPU (in memory too), not handed to the CPU
            assert v["mode"] == "layerwise" and v["device"] == "cuda:0" and "device_fallback" not in v, v
        assert v["checks"]["logits"]["passed"] and v["max_logit_diff"] == pytest.approx(v["dtype_floor"], rel=1e-2)
    r = cli("merge", str(run), "--output-dir", str(tmp_path / "m32"), "--dtype", "float32")
    assert r.returncode == 0, r.stdout + r.stderr
    v = _report(tmp_path / "m32")["verification"]
    assert v["passed"] and v["exact"] is True and v["effect_kept"] > 0.99

    # eval of the bf16 merge on CUDA (rustc where installed)
    no_exec = [] if shutil.which("rustc") else ["--no-exec"]
    r = cli("eval", str(tmp_path / "m16"), "--dataset", "sample", "--limit", "1", "--max-new-tokens", "32",
            "--output-dir", str(tmp_path / "eval"), *no_exec)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_evaluated(tmp_path / "eval", samples=15)  # --limit 1 in each of the sample's 15 categories

    # serve it with the transformers engine and ask one question through the OpenAI client
    missing = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"serving needs {', '.join(missing)}: pip install 'rustcoder[serve]'")
    from openai import OpenAI

    port = 8400 + os.getpid() % 500
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "rustcoder", "serve", str(tmp_path / "m16"), "--engine",
                             "transformers", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)
    try:
        read_until_ready(proc, 300)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        name = client.models.list().data[0].id
        reply = client.chat.completions.create(model=name, max_tokens=16, temperature=0, messages=[
            {"role": "user", "content": "Write a Rust function that adds two i32."}])
        assert isinstance(reply.choices[0].message.content, str) and reply.usage.completion_tokens > 0
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_eval_generation_on_cuda_is_batched_left_padded_and_stops_at_the_end_of_turn(base_0p5b):
    """Batched generation with left padding gives each prompt what it gets alone (float32, so kernels of
    other batch shapes cannot flip a near-tie), and generation stops at a stop token."""
    from rustcoder.eval.backends import GenParams, GenRequest, ModelTarget, TransformersBackend
    from rustcoder.eval.suites import dataset_suite, load_items

    items = load_items(dataset_suite("sample"), limit=1).items[:6]
    backend = TransformersBackend(str(base_0p5b), dtype="float32", batch_size=6, log=lambda *_: None)
    assert backend.device == DEVICE and next(backend.model.parameters()).device.type == DEVICE
    target = ModelTarget("model", "local", "0.5b", path=str(base_0p5b))
    params = GenParams(max_new_tokens=12)
    reqs = [GenRequest(i) for i in items]
    assert len({len(backend.prompt_text(r.messages)) for r in reqs}) > 1  # different lengths: padding happens

    def answers():
        return {r.item.id: [(g.text, g.finish_reason, g.tokens) for g in gens]
                for r, gens in backend.generate(reqs, params, target)}
    batched = answers()
    backend.batch_size = 1
    assert answers() == batched

    # stops at the first stop token: make the model's own third greedy token a stop token
    tok = backend.tokenizer
    ids = tok(backend.prompt_text(reqs[0].messages), return_tensors="pt", add_special_tokens=False).to(DEVICE)
    with torch.inference_mode():
        raw = backend.model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    stop = raw[2]
    backend.stop_ids = [stop]
    backend.batch_size = 6
    gens = dict((r.item.id, g) for r, g in backend.generate(reqs, params, target))[reqs[0].item.id]
    assert gens[0].finish_reason == "stop" and gens[0].tokens == raw.index(stop)
    backend.close()


def _random_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    """A PEFT LoRA (r 16, every linear layer) with random non-zero B and rustcoder's tokenizer beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rustcoder.modeling import load_tokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.save_pretrained(out)
    load_tokenizer(str(base), model_type="qwen2")[0].save_pretrained(out)
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares the CUDA verification with the CPU's")
def test_merge_verification_on_cuda_agrees_with_the_cpu_and_stays_within_its_memory_estimate(base_0p5b, tmp_path):
    import time

    from rustcoder.merge import merge, verify_merge
    from rustcoder.merge.device import choose_verify_device, layerwise_device_bytes

    adapter = _random_adapter(base_0p5b, tmp_path / "adapter")
    merged = tmp_path / "merged"
    merge(adapter, output_dir=merged, streaming=True, verify=False, log=lambda *_: None)
    assert choose_verify_device("auto", base_0p5b)[0].startswith("cuda")
    results, times = {}, {}
    for device in ("cuda", "cpu"):
        t0 = time.perf_counter()
        results[device] = verify_merge(merged, base_0p5b, adapter, mode="layerwise", max_effect_lost=1.0,
                                       device=device, log=lambda *_: None)
        times[device] = time.perf_counter() - t0
    gpu, cpu = results["cuda"], results["cpu"]
    print(f"layerwise verification of the 0.5B shape: cuda {times['cuda']:.1f} s, cpu {times['cpu']:.1f} s; "
          f"GPU peak {gpu['memory']['device_peak_bytes'] / 2**30:.2f} GiB of "
          f"{layerwise_device_bytes(base_0p5b) / 2**30:.2f} estimated")
    assert gpu["device"] == "cuda" and cpu["device"] == "cpu"
    assert gpu["passed"] and cpu["passed"] and gpu["exact"] is True
    assert {k: c["passed"] for k, c in gpu["checks"].items()} == {k: c["passed"] for k, c in cpu["checks"].items()}
    # the same distances up to float32 noise (the dtype floor is orders of magnitude above it)
    assert gpu["max_logit_diff"] == pytest.approx(cpu["max_logit_diff"], rel=0.05)
    assert gpu["dtype_floor"] == pytest.approx(cpu["dtype_floor"], rel=0.05)
    assert gpu["effect_kept"] == pytest.approx(cpu["effect_kept"], abs=0.01)
    assert gpu["checks"]["logits"]["rounded_diff"] <= gpu["checks"]["logits"]["tolerance"]
    assert 0 < gpu["memory"]["device_peak_bytes"] <= layerwise_device_bytes(base_0p5b)
