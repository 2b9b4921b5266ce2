"""Generation beyond one machine on an existing engine (docs/scaling.md): `--backend served
--data-parallel N` hands the replicas to vLLM (its own --data-parallel-size behind one endpoint, no
rustcoder worker processes), checked at the configuration level: the engine command rustcoder
builds, and vLLM's own argument parser reading it (in the vLLM environment, when there)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import vllm_python_or_skip

from rustcoder.errors import ConfigError, UsageError
from rustcoder.eval import EvalConfig
from rustcoder.eval.served import engine_spec
from rustcoder.serve import engine_command


@pytest.fixture()
def adapter(tmp_path) -> tuple[Path, Path]:
    """A model directory and a LoRA adapter directory, as files only (nothing is loaded)."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2", "torch_dtype": "bfloat16"}))
    (base / "model.safetensors").write_bytes(b"")
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 24,
                                                             "base_model_name_or_path": str(base)}))
    return base, adapter


def _served_argv(base, adapter, **cfg) -> list[str]:
    spec = engine_spec(str(base), str(adapter), EvalConfig(backend="served", engine="vllm", **cfg), port=8123,
                       check_engine=False)
    argv, _ = engine_command(spec)
    return argv


def test_served_data_parallel_is_vllms_own(adapter):
    base, adapter_dir = adapter
    argv = _served_argv(base, adapter_dir, data_parallel=4, engine_args="--max-model-len 4096")
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    i = argv.index("--data-parallel-size")
    assert argv[i + 1] == "4" and argv[i - 2:i] == ["--max-model-len", "4096"]  # the user's engine args, then DP
    assert argv[argv.index("--lora-modules") + 1] == f"run={adapter_dir.resolve()}"  # the adapter, LoRA module
    assert argv[argv.index("--served-model-name") + 1] == "base"  # the base in the same engine
    assert argv[argv.index("--max-lora-rank") + 1] == "32"  # r=24 rounded up to a rank vLLM accepts
    assert "--data-parallel-size" not in _served_argv(base, adapter_dir)  # one replica by default


def test_served_data_parallel_starts_no_worker_processes(adapter):
    from rustcoder.eval.loading import Backends, default_backend_factory
    from rustcoder.eval.generate import data_parallel_workers
    from rustcoder.eval.plan import plan_eval

    _, adapter_dir = adapter
    plan = plan_eval(EvalConfig(model=str(adapter_dir), backend="served", engine="vllm", data_parallel=4,
                                dataset="sample", compare_base=True), log=lambda *_: None)
    assert plan.backend == "served" and [t.tag for t in plan.targets] == ["adapter", "base"]
    assert data_parallel_workers(plan, Backends(plan, default_backend_factory, print), print) == 1


def test_transformers_engine_has_no_data_parallelism(adapter):
    base, adapter_dir = adapter
    with pytest.raises(ConfigError, match="--data-parallel"):
        EvalConfig(backend="served", engine="transformers", data_parallel=2).check()
    spec_cfg = EvalConfig(backend="served", data_parallel=2)  # engine picked later (auto): refused there
    spec_cfg.engine = "transformers"
    with pytest.raises(UsageError, match="needs the vLLM engine"):
        engine_spec(str(base), str(adapter_dir), spec_cfg, port=8123, check_engine=False)


@pytest.mark.vllm
def test_vllm_parses_the_command_rustcoder_builds(adapter):
    python = vllm_python_or_skip()
    base, adapter_dir = adapter
    argv = _served_argv(base, adapter_dir, data_parallel=4, engine_args="--data-parallel-size-local 2")
    code = ("import json, sys\n"
            "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
            "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
            "a = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])\n"
            "print(json.dumps({'dp': a.data_parallel_size, 'dp_local': a.data_parallel_size_local,\n"
            "                  'lora': [m.name for m in a.lora_modules], 'names': a.served_model_name,\n"
            "                  'rank': a.max_lora_rank, 'model': a.model}))\n")
    res = subprocess.run([python, "-c", code, *argv[3:]], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VLLM_NO_USAGE_STATS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    parsed = json.loads(res.stdout.strip().splitlines()[-1])
    assert parsed == {"dp": 4, "dp_local": 2, "lora": ["run"], "names": ["base"], "rank": 32, "model": str(base)}


def test_served_and_batching_options_are_checked():
    assert EvalConfig(backend="served", engine="vllm", vllm_python="/x/python", engine_args="--foo 1").problems() == []
    probs = EvalConfig(engine="vllm", engine_args="--foo 1").problems()
    assert any(p.startswith("--engine:") and "--backend served" in p for p in probs)
    assert any("drop --endpoint" in p for p in EvalConfig(backend="served", endpoint="http://x").problems())
    assert any(p.startswith("--batch-tokens:") for p in EvalConfig(batch_tokens=-1).problems())
    assert any(p.startswith("--kv-cache:") for p in EvalConfig(kv_cache="paged").problems())
    from click.testing import CliRunner

    from rustcoder.cli import main

    out = CliRunner().invoke(main, ["eval", "--help"]).output
    for flag in ("served", "--engine", "--vllm-python", "--engine-args", "--batch-tokens", "--kv-cache"):
        assert flag in out, flag
