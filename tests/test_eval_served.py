"""`rustcoder eval --backend served`: the serving engine started as `rustcoder serve` starts it, the
evaluation through its OpenAI API, the engine stopped however the evaluation ends.

* transformers engine: always (CPU). Its answers are the transformers backend's (greedy).
* vLLM engine: opt-in (``-m vllm``), from the environment serve/setup_vllm_cpu.sh builds
  (``RUSTCODER_VLLM_PYTHON``): the adapter as a LoRA module and the base in the same engine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import build_lora_run, pid_gone, vllm_python_or_skip

pytestmark = pytest.mark.slow
pytest.importorskip("openai", reason="the OpenAI client is not installed: pip install 'rustcoder[serve]'")

SERVE_DIR = Path(__file__).resolve().parent.parent / "serve"
CATEGORIES = ["code_generation", "function_naming", "code_explanation", "api_usage_prediction"]


def _engine_pids(logs: list[str]) -> list[int]:
    return [int(m.group(1)) for line in logs for m in [re.search(r"ready in .* \(pid (\d+)\)", line)] if m]


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, _isolated_cache):
    """A tiny Qwen2 (head_dim 32, as vLLM's CPU attention needs) and a random rank-16 LoRA adapter."""
    return build_lora_run(tmp_path_factory.mktemp("served-eval"), "adapter-run")


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
    assert all(pid_gone(pid, 30.0) for pid in pids)


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
    assert len(pids) == 1 and pid_gone(pids[0], 30.0)


@pytest.mark.vllm
def test_served_vllm_engine_serves_adapter_and_base_from_one_engine(adapter_run, local_answers, tmp_path):
    python = vllm_python_or_skip()
    _, adapter_dir = adapter_run
    logs: list[str] = []
    result = _eval(adapter_dir, tmp_path / "ev", logs.append, backend="served", engine="vllm", vllm_python=python,
                   dtype="float32", engine_args=f"--config {SERVE_DIR / 'vllm-cpu.yaml'} --max-model-len 2048")
    served = _answers(tmp_path / "ev")
    pids = _engine_pids(logs)
    assert len(pids) == 1 and pid_gone(pids[0], 30.0)  # one engine for the adapter and the base, stopped
    assert set(served) == set(local_answers)
    adapter_keys = [k for k in served if k.startswith("adapter:")]
    assert any(served[k] != served[k.replace("adapter:", "base:")] for k in adapter_keys)  # the LoRA applies
    same = sum(served[k] == local_answers[k] for k in served)
    print(f"\nvLLM served vs transformers: {same}/{len(served)} greedy answers identical")
    assert same >= len(served) // 2  # float32 on both sides: most answers agree (kernels differ, see docs)
    assert set(result.metrics["generation_speed"]) == {"adapter", "base"}
