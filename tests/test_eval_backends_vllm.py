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


# ---- one stop rule, one prompt: the real model's base-like twin, its adapter and merge, every Qwen family -----------

ANSWERS_SCRIPT = """
import json, sys
from types import SimpleNamespace
from rustcoder.eval.backends import GenParams, GenRequest, ModelTarget, VLLMBackend

if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    out = {}
    for name, job in spec["models"].items():
        backend = VLLMBackend(job["path"], adapter_dir=job.get("adapter"), chat_template=job.get("template"),
                              log=lambda *a: None)
        reqs = [GenRequest(SimpleNamespace(messages=m, reference="")) for m in spec["messages"]]
        for adapter in ([True, False] if job.get("adapter") else [False]):
            target = ModelTarget("m", "local", "m", adapter_enabled=adapter)
            got = {id(r): [g[0].text, g[0].finish_reason, g[0].tokens]
                   for r, g in backend.generate(reqs, GenParams(max_new_tokens=spec["max_new"]), target)}
            out[name + (":adapter" if adapter else "")] = [got[id(r)] for r in reqs]
        out[name + ":stop_ids"] = backend.stop_ids
        sp = backend._SamplingParams(max_tokens=1, temperature=0)  # the prompt ids the engine itself tokenized
        out[name + ":prompt_ids"] = [list(o.prompt_token_ids) for o in backend.llm.chat(
            spec["messages"], sp, use_tqdm=False, chat_template=backend.chat_template, add_generation_prompt=True)]
        backend.close()
    print("RESULT " + json.dumps(out))
"""


def vllm_answers(python: str, tmp_path: Path, models: dict, messages: list, max_new: int,
                 compile_: bool = True) -> dict:
    """Greedy answers of VLLMBackend in the vLLM environment: {name[:adapter]: [[text, finish, tokens], ...]}.

    ``compile_=False``: the CPU build runs the model traced but without inductor's compilation (VLLM_CPU_CI_ENV, the
    switch vLLM's own CPU CI uses because compiling costs more than tiny models run), as a LoRA engine always does."""
    (tmp_path / "answers.py").write_text(ANSWERS_SCRIPT)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"models": models, "messages": messages, "max_new": max_new}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", **({} if compile_ else {"VLLM_CPU_CI_ENV": "1"})}
    res = subprocess.run([python, str(tmp_path / "answers.py"), str(spec)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def local_answers(path, messages, max_new, adapter=None, template=None, adapter_enabled=True):
    from types import SimpleNamespace

    from rustcoder.eval.backends import GenParams, GenRequest, ModelTarget, TransformersBackend

    backend = TransformersBackend(str(path), adapter_dir=adapter, chat_template=template, log=lambda *_: None)
    try:
        reqs = [GenRequest(SimpleNamespace(messages=m, reference="")) for m in messages]
        target = ModelTarget("m", "local", "m", adapter_enabled=adapter_enabled)
        got = {id(r): [g[0].text, g[0].finish_reason, g[0].tokens]
               for r, g in backend.generate(reqs, GenParams(max_new_tokens=max_new), target)}
        return [got[id(r)] for r in reqs]  # in message order
    finally:
        backend.close()


def texts(answers: list) -> list:
    """(text, finish_reason) of each answer: vLLM counts the stop token in an answer's tokens, transformers not."""
    return [(a[0], a[1]) for a in answers]


REAL_MESSAGES = [[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": q}]
                 for q in ("What is the capital of France? Answer in one sentence.",
                           "Name one keyword Rust uses to declare a variable. Answer in a few words.",
                           "Write a Rust function that adds two i32 numbers.")]


def test_vllm_stops_at_the_end_of_turn_when_the_models_eos_is_another_token(vllm_python, smollm2, tmp_path):
    """The regression: with eos <|endoftext|> (Qwen base models) vLLM ran past <|im_end|> into an invented next
    user turn, because it stopped on the *string* <|im_end|>, which it removes before checking stop strings. Now
    every backend stops on stop_token_ids: the base-like real model answers in vLLM as in transformers, byte for
    byte, ending where it ends."""
    max_new = 96
    got = vllm_answers(vllm_python, tmp_path, {"base": {"path": str(smollm2["base_like"])}}, REAL_MESSAGES, max_new)
    want = local_answers(smollm2["base_like"], REAL_MESSAGES, max_new)
    assert got["base:stop_ids"] == [2, 0]
    same = sum(a == b for a, b in zip(texts(got["base"]), texts(want)))
    print(f"\nbase-like real model: vLLM vs transformers identical {same}/{len(want)}")
    assert texts(got["base"]) == texts(want)
    stopped = [a for a in want if a[1] == "stop"]
    assert stopped and all(a[2] < max_new for a in stopped)  # answers that end on their own: the case that broke


def test_vllm_adapter_and_merge_of_a_real_model_answer_as_transformers(vllm_python, smollm2, smollm2_run, tmp_path):
    """The 3-step adapter on the base-like real model as a vLLM LoRA request, and its merge, answer as the
    transformers backend's adapter does (and as each other)."""
    run_dir, merged = smollm2_run
    adapter = run_dir / "adapter"
    template = (adapter / "chat_template.jinja").read_text()
    max_new = 96
    got = vllm_answers(vllm_python, tmp_path, {
        "run": {"path": str(smollm2["base_like"]), "adapter": str(adapter), "template": template},
        "merged": {"path": str(merged.merged_dir)}}, REAL_MESSAGES, max_new)
    want = {"run:adapter": local_answers(smollm2["base_like"], REAL_MESSAGES, max_new, str(adapter), template),
            "merged": local_answers(merged.merged_dir, REAL_MESSAGES, max_new)}
    for name, answers in want.items():
        same = sum(a == b for a, b in zip(texts(got[name]), texts(answers)))
        print(f"\n{name}: vLLM vs transformers identical {same}/{len(answers)}")
        assert texts(got[name]) == texts(answers), name
    assert texts(got["run:adapter"]) == texts(got["merged"])


# ---- every Qwen family: one prompt and one stop rule (no engine), one answer per architecture (engines) ---------------
#
# What can differ between the transformers and vLLM backends per family: (a) the prompt (template, thinking off for
# hybrids, special and added tokens), (b) the stop rule, (c) the architecture's numerics. (a) and (b) are checked for
# every family without an engine: VLLMBackend runs with vLLM's LLM replaced by one that builds the engine config and
# renderer as LLM does and captures what LLM.chat would hand the engine (prompt token ids, SamplingParams). (c) needs
# an engine once per architecture; the engine runs also report their prompt ids, tying the capture to the real path.
# RUSTCODER_FAMILY_PARITY=1 starts an engine for every family instead (about 15 minutes on 2 cores).

FAMILY_MESSAGES = [[{"role": "system", "content": "You write Rust."}, {"role": "user", "content": q}]
                   for q in ("Sum a Vec<i32>.", "fn main() { let x = 1; } What does it print?",
                             "Explain <think> and <tool_call> in `fn f() {}`.")]  # added, non-special tokens
ARCHITECTURES = {"qwen2": "qwen2.5-coder-base",  # untied, vocabulary 152064, eos <|endoftext|>
                 "qwen3": "qwen3-instruct-2507",  # tied embeddings
                 "qwen3_moe": "qwen3-moe-hybrid"}  # experts; thinking off

RENDER_SCRIPT = """
import json, sys
from types import SimpleNamespace

import vllm
from vllm.engine.arg_utils import EngineArgs
from vllm.renderers import renderer_from_config

CAPTURED = []


class RenderOnlyLLM(vllm.LLM):
    # vLLM's LLM without its engine: the config and renderer LLM builds, and what LLM.chat adds to the engine
    def __init__(self, **kwargs):
        config = EngineArgs(**kwargs).create_engine_config()
        self.model_config, self.renderer, self.chat_template = config.model_config, renderer_from_config(config), None

    def _render_and_add_requests(self, prompts, params, *, lora_requests=None, priorities=None):
        CAPTURED.extend((p, params[i]) for i, p in enumerate(prompts))
        return []

    def _run_engine(self, *, output_type, use_tqdm=True):
        return [SimpleNamespace(outputs=[SimpleNamespace(text="", finish_reason="length", token_ids=[])])
                for _ in CAPTURED]


if __name__ == "__main__":
    vllm.LLM = RenderOnlyLLM
    from rustcoder.eval.backends import GenParams, GenRequest, ModelTarget, VLLMBackend

    spec = json.loads(open(sys.argv[1]).read())
    out = {}
    for name, path in spec["models"].items():
        CAPTURED.clear()
        backend = VLLMBackend(path, log=lambda *a: None)
        reqs = [GenRequest(SimpleNamespace(messages=m, reference="")) for m in spec["messages"]]
        list(backend.generate(reqs, GenParams(max_new_tokens=spec["max_new"]), ModelTarget("m", "local", "m")))
        out[name] = [{"prompt": p["prompt"], "ids": list(p["prompt_token_ids"]), "stop_token_ids": sp.stop_token_ids,
                      "stop": sp.stop, "temperature": sp.temperature, "max_tokens": sp.max_tokens}
                     for p, sp in CAPTURED]
    print("RESULT " + json.dumps(out))
"""


def run_script(python: str, script: Path, spec: dict, timeout: float = 900) -> dict:
    """Run a script in the vLLM environment with a JSON spec; its RESULT line, parsed."""
    path = script.with_suffix(".json")
    path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    res = subprocess.run([python, str(script), str(path)], capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def transformers_prompts(path: Path, messages: list) -> tuple[list[str], list[list[int]], list[int]]:
    """(prompt texts, prompt token ids, stop ids) exactly as the transformers backend feeds generate."""
    from rustcoder.eval.backends import TransformersBackend

    backend = TransformersBackend(str(path), log=lambda *_: None)
    try:
        texts_ = [backend.prompt_text(m) for m in messages]
        return texts_, backend.tokenizer(texts_, add_special_tokens=False)["input_ids"], backend.stop_ids
    finally:
        backend.close()


def test_every_qwen_family_renders_one_prompt_and_one_stop_rule_in_transformers_and_vllm(vllm_python, family_dir,
                                                                                        tmp_path):
    """(a) + (b) for every family, no engine: vLLM's own renderer and tokenizer give the transformers backend's prompt
    byte for byte and token for token (rustcoder's template, thinking off for hybrids, added tokens such as <think> and
    <tool_call> as the tokenizer splits them), and the SamplingParams stop on token ids (end of turn, then the eos)."""
    from conftest import families

    names = [n for n, f in families().items() if f["thinking"] != "always"]
    (tmp_path / "render.py").write_text(RENDER_SCRIPT)
    got = run_script(vllm_python, tmp_path / "render.py",
                     {"models": {n: str(family_dir(n)) for n in names}, "messages": FAMILY_MESSAGES, "max_new": 16})
    for n in names:
        prompts, ids, stop = transformers_prompts(family_dir(n), FAMILY_MESSAGES)
        vllm = got[n]
        same = sum(v["prompt"] == p and v["ids"] == i for v, p, i in zip(vllm, prompts, ids))
        print(f"\n{n}: vLLM-rendered prompts identical to the transformers backend's {same}/{len(prompts)}")
        assert [v["prompt"] for v in vllm] == prompts, n
        assert [v["ids"] for v in vllm] == ids, n
        assert prompts[0].endswith("<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n"
                                                                if families()[n]["thinking"] == "hybrid" else ""))
        assert all(v["stop_token_ids"] == stop == [151645, 151643] for v in vllm), n  # no string stop either
        assert all(not v["stop"] and v["temperature"] == 0 and v["max_tokens"] == 16 for v in vllm), n


def test_each_qwen_architecture_answers_alike_in_transformers_and_vllm(vllm_python, family_dir, tmp_path):
    """(c): one engine per architecture (qwen2, qwen3, qwen3_moe; every family with RUSTCODER_FAMILY_PARITY=1), in one
    process: greedy answers identical to the transformers backend's, from the prompt ids the render check captured."""
    from conftest import families

    if os.environ.get("RUSTCODER_FAMILY_PARITY") == "1":
        names = [n for n, f in families().items() if f["thinking"] != "always"]
    else:
        names = list(ARCHITECTURES.values())
    assert {families()[n]["model_type"] for n in names} == set(ARCHITECTURES)
    # not compiled: three inductor compilations cost more than the tiny models run (the real model's test compiles)
    got = vllm_answers(vllm_python, tmp_path, {n: {"path": str(family_dir(n))} for n in names}, FAMILY_MESSAGES, 16,
                       compile_=False)
    for n in names:
        _, ids, _ = transformers_prompts(family_dir(n), FAMILY_MESSAGES)
        assert got[n + ":prompt_ids"] == ids, n  # the engine's prompt is the one the render check compares
        want = local_answers(family_dir(n), FAMILY_MESSAGES, 16)
        same = sum(a == b for a, b in zip(texts(got[n]), texts(want)))
        print(f"\n{n} ({families()[n]['model_type']}): transformers vs vLLM identical {same}/{len(want)}")
        assert texts(got[n]) == texts(want), n
        assert got[n + ":stop_ids"] == [151645, 151643]
