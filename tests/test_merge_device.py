"""Where the merge's verification runs (rustcoder/merge/device.py) and how a merge uses it, on CPU with
CUDA mocked; the real CUDA runs are in tests/test_gpu.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import rustcoder.merge.api as api
from rustcoder.cli import main
from rustcoder.errors import UsageError
from rustcoder.merge import merge, verify_merge
from rustcoder.merge.device import choose_verify_device, layerwise_device_bytes, plan_bytes, verification_mode
from rustcoder.merge.layerwise import full_float32
from rustcoder.merge.plan import MergePlan, Update

GIB = 2**30


def _fake_cuda(monkeypatch, free_bytes: int, count: int = 1) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (free_bytes, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake H100")


def test_auto_verifies_on_a_gpu_where_a_layer_and_the_embeddings_fit_else_on_the_cpu_saying_why(tiny_qwen2,
                                                                                                  monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_verify_device("auto", tiny_qwen2) == ("cpu", "no CUDA GPU")
    with pytest.raises(UsageError, match="no CUDA GPU is visible.*--verify-device cpu"):
        choose_verify_device("cuda", tiny_qwen2)

    need = layerwise_device_bytes(tiny_qwen2)
    _fake_cuda(monkeypatch, free_bytes=80 * GIB)
    device, why = choose_verify_device("auto", tiny_qwen2)
    assert device == "cuda:0" and "Fake H100" in why
    assert choose_verify_device("CUDA:0", tiny_qwen2)[0] == "cuda:0"
    assert choose_verify_device("cpu", tiny_qwen2)[0] == "cpu"

    _fake_cuda(monkeypatch, free_bytes=need)  # fits, but not with 10% to spare
    device, why = choose_verify_device("auto", tiny_qwen2)
    assert device == "cpu" and "GiB of GPU memory" in why and "free" in why
    with pytest.raises(UsageError, match="--verify-device cpu"):
        choose_verify_device("cuda", tiny_qwen2)
    with pytest.raises(UsageError, match="only 1 CUDA device"):
        choose_verify_device("cuda:1", tiny_qwen2)
    with pytest.raises(UsageError, match="not one of auto, cpu, cuda"):
        choose_verify_device("gpu", tiny_qwen2)

    # the adapter lives on the device for the whole pass: a big one tips the same free memory to the CPU
    big = MergePlan({}, {"lm_head.weight": torch.zeros(1, GIB // 4)})  # a float32 modules_to_save of 1 GiB
    assert plan_bytes(big) == 3 * GIB and layerwise_device_bytes(tiny_qwen2, big) == need + 3 * GIB
    _fake_cuda(monkeypatch, free_bytes=need + GIB)
    assert choose_verify_device("auto", tiny_qwen2)[0] == "cuda:0"
    assert choose_verify_device("auto", tiny_qwen2, big)[0] == "cpu"


def test_streaming_verifies_layer_by_layer_anywhere_and_in_memory_merges_only_on_a_gpu():
    assert verification_mode(streaming=True, device="cpu", layerwise_why=None) == "layerwise"
    assert verification_mode(streaming=True, device="cuda:0", layerwise_why=None) == "layerwise"
    assert verification_mode(streaming=False, device="cpu", layerwise_why=None) == "full"
    assert verification_mode(streaming=False, device="cuda:0", layerwise_why=None) == "layerwise"
    assert verification_mode(streaming=False, device="cuda:0", layerwise_why="model_type 'llama'") == "full"


def test_a_plan_moved_to_a_device_has_every_tensor_there_and_the_original_is_untouched():
    plan = MergePlan({"a.weight": Update("linear", torch.ones(2, 4), torch.ones(3, 2), 0.5),
                      "d.weight": Update("linear", torch.ones(2, 4), torch.ones(3, 2), 2.0, torch.ones(3)),
                      "e.weight": Update("embedding", torch.ones(2, 5), torch.ones(4, 2), 1.0)},
                     {"lm_head.weight": torch.zeros(5, 4)}, ["why"], 7)
    moved = plan.to("meta")
    tensors = [t for u in moved.updates.values() for t in (u.A, u.B, u.magnitude) if t is not None]
    assert len(tensors) == 7 and all(t.is_meta for t in tensors + list(moved.replacements.values()))
    assert [(u.kind, u.scale) for u in moved.updates.values()] == [("linear", 0.5), ("linear", 2.0), ("embedding", 1.0)]
    assert moved.unsupported == ["why"] and moved.adapter_keys == 7
    originals = [t for u in plan.updates.values() for t in (u.A, u.B, u.magnitude) if t is not None]
    assert not any(t.is_meta for t in originals + list(plan.replacements.values()))


def test_an_in_memory_merge_verified_on_a_gpu_skips_the_cpu_reference_and_verifies_layer_by_layer(
        trained_run, tmp_path, monkeypatch):
    """With a GPU chosen, the in-memory merge computes no float32 reference on the CPU and its saved files
    are verified layer by layer on that device. The device is mocked (CUDA is absent here): verify_merge is
    asked for cuda:0 and runs on the CPU, the rest is the real merge."""
    run = tmp_path / "runs" / trained_run[1].name
    shutil.copytree(trained_run[1], run, ignore=shutil.ignore_patterns("checkpoints", "merged", "eval"))
    monkeypatch.setattr(api, "choose_verify_device", lambda requested, base_dir, plan=None: ("cuda:0", "Fake H100"))
    asked = []

    def verify_on_cpu(*args, device, **kw):
        asked.append((device, kw["mode"], kw["reference"]))
        return verify_merge(*args, device="cpu", **kw)

    monkeypatch.setattr(api, "verify_merge", verify_on_cpu)
    lines: list[str] = []
    result = merge(run, log=lambda m, *_: lines.append(m))
    assert asked == [("cuda:0", "layerwise", None)]
    v = result.report["verification"]
    assert result.report["mode"] == "in-memory" and v["mode"] == "layerwise" and v["passed"] and v["exact"] is True
    assert any("verification: layer by layer on cuda:0 (Fake H100)" in m for m in lines)
    assert not any("computing reference outputs" in m for m in lines)  # the CPU float32 reference was skipped


def test_the_verification_pass_is_in_ieee_float32_whatever_tf32_setting_the_process_made():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"  # what transformers' tf32=True sets (torch >= 2.9's API)
        with full_float32("cpu"):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"  # the process's own setting is back
    finally:
        matmul.fp32_precision = before


@pytest.mark.parametrize("requested,error", [("auto", "oom"), ("cuda", "oom"), ("auto", "bug")])
def test_a_gpu_that_fails_the_pass_falls_back_to_the_cpu_under_auto_and_names_the_fix_otherwise(
        trained_run, tmp_path, monkeypatch, requested, error):
    run = tmp_path / "runs" / trained_run[1].name
    shutil.copytree(trained_run[1], run, ignore=shutil.ignore_patterns("checkpoints", "merged", "eval"))
    monkeypatch.setattr(api, "choose_verify_device", lambda req, base_dir, plan=None: ("cuda:0", "Fake H100"))

    def gpu_too_small(*args, device, **kw):
        if device != "cpu" and error == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if device != "cpu":
            raise RuntimeError("Expected all tensors to be on the same device")
        return verify_merge(*args, device=device, **kw)

    monkeypatch.setattr(api, "verify_merge", gpu_too_small)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    lines: list[str] = []
    if requested == "cuda":
        with pytest.raises(api.RustcoderError, match="out of memory on cuda:0.*--verify-device cpu"):
            merge(run, verify_device=requested, log=lines.append)
        assert not (run / "merged").exists()
        return
    v = merge(run, verify_device=requested, log=lines.append).report["verification"]
    assert v["passed"] and v["device"] == "cpu" and v["mode"] == "layerwise"
    assert ("out of memory on cuda:0" if error == "oom" else "failed on cuda:0 (RuntimeError") in v["device_fallback"]
    assert any("verifying on the CPU instead" in m for m in lines)


def test_an_explicit_gpu_for_a_model_only_the_full_verification_can_run_is_a_usage_error(trained_run, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(api, "choose_verify_device", lambda req, base_dir, plan=None: ("cuda:0", "Fake H100"))
    monkeypatch.setattr(api, "layerwise_unsupported", lambda *a: "model_type 'llama'")
    with pytest.raises(UsageError, match="not possible here .model_type 'llama'.*--verify-device cpu"):
        merge(trained_run[1], output_dir=tmp_path / "m", verify_device="cuda", log=lambda *_: None)
    lines: list[str] = []  # auto: the CPU, saying why
    v = merge(trained_run[1], output_dir=tmp_path / "m", log=lines.append).report["verification"]
    assert v["passed"] and v["mode"] == "full" and v["device"] == "cpu"
    assert any("on the CPU, not the GPU: layer-by-layer verification is not possible" in m for m in lines)


def test_verify_device_cuda_without_a_gpu_is_a_usage_error_before_anything_is_written(trained_run, tmp_path):
    assert not torch.cuda.is_available()
    out = tmp_path / "merged"
    r = CliRunner().invoke(main, ["merge", str(trained_run[1]), "--output-dir", str(out), "--verify-device", "cuda"])
    assert r.exit_code == 2 and "no CUDA GPU is visible" in r.output and "--verify-device cpu" in r.output
    assert "Traceback" not in r.output and not out.exists() and not any(Path(tmp_path).glob(".merged.merging-*"))
    r = CliRunner().invoke(main, ["merge", str(trained_run[1]), "--output-dir", str(out), "--no-verify",
                                  "--verify-device", "gpu"])  # a wrong value is wrong with --no-verify too
    assert r.exit_code == 2 and "not one of auto, cpu, cuda" in r.output and not out.exists()
