"""`rustcoder eval --backend vllm` run for real, inside the vLLM CPU environment that
serve/setup_vllm_cpu.sh builds (rustcoder installed there, editable, with that environment's
torch and transformers): base and adapter from one engine (the adapter as a LoRA request), the
same greedy answers as the transformers backend, and --data-parallel 2 giving the single engine's
answers. Opt-in (``-m vllm``): needs RUSTCODER_VLLM_PYTHON; skipped cleanly without it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import build_lora_run, vllm_python_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

CATEGORIES = "code_generation,function_naming,code_explanation,api_usage_prediction,bug_detection,code_review"


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = vllm_python_or_skip()
    found = subprocess.run([python, "-c", "import rustcoder.eval.backends, vllm"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"rustcoder or vLLM is not importable by {python} (rerun serve/setup_vllm_cpu.sh): "
                    f"{found.stderr.strip().splitlines()[-1:]}")
    return python


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, _isolated_cache) -> Path:
    """A tiny Qwen2 with head_dim 32 (vLLM's CPU attention needs >= 32) and a random rank-16 LoRA adapter."""
    return build_lora_run(tmp_path_factory.mktemp("vllm-eval"))[1]


def _args(adapter: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", str(adapter), "--compare-base", "--dataset", "sample", "--limit", "1", "--categories",
            CATEGORIES, "--max-new-tokens", "12", "--no-exec", "--output-dir", str(out), *extra]


def _answers(out: Path) -> dict[str, str]:
    return {json.loads(line)["key"]: json.loads(line)["answer"]
            for line in (out / "samples.jsonl").read_text().splitlines()}


def _run_in_vllm_env(python: str, args: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    res = subprocess.run([python, "-m", "rustcoder", *args], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def transformers_answers(adapter_dir, tmp_path_factory) -> dict[str, str]:
    from rustcoder.eval import EvalConfig, evaluate

    out = tmp_path_factory.mktemp("tf") / "ev"
    evaluate(EvalConfig(model=str(adapter_dir), compare_base=True, dataset="sample", limit=1,
                        categories=CATEGORIES.split(","), max_new_tokens=12, no_exec=True, teacher_forced=False,
                        output_dir=str(out)), log=lambda *_: None)
    return _answers(out)


@pytest.fixture(scope="module")
def single_engine(vllm_python, adapter_dir, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("vllm1") / "ev"
    return out, _run_in_vllm_env(vllm_python, _args(adapter_dir, out, "--backend", "vllm"))


def test_vllm_backend_base_and_adapter_from_one_engine_answer_as_transformers(single_engine, transformers_answers):
    out, log = single_engine
    assert log.count("vLLM loaded") == 1 and "with LoRA" in log  # one engine: adapter as a LoRA request, base too
    vllm = _answers(out)
    assert set(vllm) == set(transformers_answers) and len(vllm) == 2 * len(CATEGORIES.split(","))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["backend"] for s in samples} == {"vllm"} and all(s["tokens"] for s in samples)
    adapter_keys = [k for k in vllm if k.startswith("adapter:")]
    assert any(vllm[k] != vllm[k.replace("adapter:", "base:")] for k in adapter_keys)  # the LoRA request applies
    same = [k for k in vllm if vllm[k] == transformers_answers[k]]
    print(f"\nvLLM backend vs transformers backend (float32, greedy): {len(same)}/{len(vllm)} answers identical")
    assert len(same) >= len(vllm) // 2  # kernels differ (see docs/eval.md); on this CPU all agree
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["backend"] for r in metrics["generation_speed"].values()} == {"vllm"}


def test_vllm_backend_data_parallel_gives_the_single_engines_answers(vllm_python, adapter_dir, single_engine,
                                                                     tmp_path):
    out = tmp_path / "ev"
    log = _run_in_vllm_env(vllm_python, _args(adapter_dir, out, "--backend", "vllm", "--data-parallel", "2"))
    assert "with 2 worker process(es) (CPU" in log
    assert _answers(out) == _answers(single_engine[0])
    assert list(json.loads((out / "metrics.json").read_text())["generation_speed"]) == ["adapter+base"]


CLOSE_SCRIPT = """
import sys, time, psutil
from rustcoder.eval.backends import VLLMBackend
me = psutil.Process()
backend = VLLMBackend(sys.argv[1], adapter_dir=sys.argv[2], log=lambda *a: None)
engine = [p.pid for p in me.children(recursive=True)  # EngineCore and its workers (not Python's resource tracker)
          if "VLLM" in " ".join(p.cmdline()) or p.name().startswith("VLLM")]
lingering = backend.llm  # a reference close() does not own (a traceback, a caller): the engine must stop anyway
backend.close()
deadline = time.time() + 30
while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                     for p in engine):
    time.sleep(0.2)
alive = [p for p in engine if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
print("engine processes", len(engine), "alive after close", len(alive))
"""


def test_closing_the_vllm_backend_stops_its_engine(vllm_python, adapter_dir):
    """A closed backend's engine process is gone, even while something else still holds the LLM object, so on a
    GPU the next target's engine gets the card's memory back (vLLM reserves gpu_memory_utilization of it at
    start) instead of failing for lack of it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    base = adapter_dir.parent.parent / "tiny-rust"  # build_lora_run's model beside the run
    res = subprocess.run([vllm_python, "-c", CLOSE_SCRIPT, str(base), str(adapter_dir)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("engine processes"))
    started, alive = int(line.split()[2]), int(line.split()[-1])
    assert started >= 1 and alive == 0, line
