"""`--profile-step`: where one optimizer step's time goes, without changing the run or its tokens/s."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rustcoder import artifacts
from rustcoder.config import resolve_config
from rustcoder.profiling import OpTime, caller, category, render, sources, summarize

# What a LoRA step's profile looks like on a Hopper card: cuBLASLt (nvjet) and xmma GEMMs, a flash varlen
# kernel, elementwise kernels, the fused Adam, a device-to-host copy, and the host's runtime calls.
CUDA_STEP = [
    OpTime("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", True, 400, 120_000.0),
    OpTime("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", True, 200, 60_000.0),
    OpTime("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", True, 28, 20_000.0),
    OpTime("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", True,
           3000, 30_000.0),
    OpTime("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", True, 4, 5_000.0),
    OpTime("Memcpy DtoH (Device -> Pageable)", True, 2, 100.0),
    OpTime("aten::mm", False, 600, 9_000.0),
    OpTime("cudaLaunchKernel", False, 3400, 17_000.0),
    OpTime("cudaLaunchKernelExC", False, 234, 1_000.0),
    OpTime("cudaStreamSynchronize", False, 3, 400.0),
    OpTime("cudaMemcpyAsync", False, 2, 50.0),
]


def test_a_gpu_step_is_summarised_from_its_kernels():
    s = summarize(CUDA_STEP, wall_s=0.5, step=3, device="cuda")
    assert s["kernels"] == 400 + 200 + 28 + 3000 + 4 + 2
    assert s["launches"] == 3400 + 234  # runtime calls, not CPU ops
    assert s["host_syncs"] == 3
    assert s["timed_ms"] == pytest.approx(235.1)  # device time only: host ops are not kernel time
    assert s["device_busy"] == pytest.approx(235.1 / 500)
    assert s["shares"]["matmul"] == pytest.approx(180_000 / 235_100, abs=1e-4)
    assert s["shares"]["attention"] == pytest.approx(20_000 / 235_100, abs=1e-4)
    assert s["shares"]["optimizer"] == pytest.approx(5_000 / 235_100, abs=1e-4)
    assert sum(s["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert s["top"][0]["name"].startswith("nvjet") and s["top"][0]["ms"] == pytest.approx(120.0)
    line = render(s)
    assert "47% busy" in line and "3,634 launches" in line and "3 host syncs" in line and "matmul 77%" in line


class _Event:
    """A stand-in for torch.autograd.profiler_util.FunctionEvent: name, device type, parent and times."""

    def __init__(self, name, parent=None, cpu_us=0.0, device_us=0.0, kernel=False):
        from torch.autograd import DeviceType

        self.name, self.cpu_parent = name, parent
        self.device_type = DeviceType.CUDA if kernel else DeviceType.CPU
        self.self_cpu_time_total, self.self_device_time_total = cpu_us, device_us


def test_time_is_charged_to_the_first_caller_outside_torch_or_to_the_autograd_node():
    sp = "/usr/lib/python3.12/site-packages/"
    lora = _Event(sp + "peft/tuners/lora/layer.py(712): forward")
    call = _Event(sp + "torch/nn/modules/module.py(1750): _call_impl", lora)
    to = _Event("aten::_to_copy", _Event("<built-in method to of Tensor object at 0x7f>", call))
    ours = _Event("/work/x/rustcoder/packing.py(88): pack")
    backward = _Event("autograd::engine::evaluate_function: ToCopyBackward0")
    events = [_Event("aten::copy_", to, cpu_us=5.0, device_us=3_000.0),
              _Event("aten::copy_", to, cpu_us=5.0, device_us=1_000.0),
              _Event("aten::mul", ours, cpu_us=2_000.0, device_us=500.0),
              _Event("aten::copy_", backward, cpu_us=1.0, device_us=500.0),
              _Event("void at::native::direct_copy_kernel", kernel=True, device_us=4_000.0),  # counted via its op
              _Event("cudaLaunchKernel", to, cpu_us=50.0)]
    assert caller(events[0]) == "peft/tuners/lora/layer.py(712): forward"
    assert caller(events[2]) == "rustcoder/packing.py(88): pack"
    assert caller(events[3]) == "ToCopyBackward0" and caller(_Event("aten::mm")) == "?"
    on_gpu = sources(events, "cuda")
    assert [(x["op"], x["from"], x["count"], x["ms"]) for x in on_gpu] == [
        ("aten::copy_", "peft/tuners/lora/layer.py(712): forward", 2, 4.0),
        ("aten::mul", "rustcoder/packing.py(88): pack", 1, 0.5),
        ("aten::copy_", "ToCopyBackward0", 1, 0.5)]
    assert on_gpu[0]["share"] == pytest.approx(0.8)
    on_cpu = sources(events, "cpu")  # aten ops' own CPU time; runtime calls are not ops
    assert [(x["op"], x["ms"]) for x in on_cpu] == [("aten::mul", 2.0), ("aten::copy_", 0.01), ("aten::copy_", 0.001)]
    s = summarize(CUDA_STEP, wall_s=0.5, step=3, device="cuda")
    s["sources"] = on_gpu
    assert "from: aten::copy_ at peft/tuners/lora/layer.py(712): forward 4.0 ms (80%)" in render(s)


def test_a_cpu_step_is_summarised_from_op_self_time():
    ops = [OpTime("aten::mm", False, 10, 600.0), OpTime("aten::_scaled_dot_product_flash_attention_for_cpu", False,
                                                        2, 300.0),
           OpTime("aten::mul", False, 50, 100.0),
           OpTime("ProfilerStep#3", False, 1, 5_000.0), OpTime("autograd::engine::evaluate_function: MmBackward0",
                                                               False, 10, 2_000.0)]
    s = summarize(ops, wall_s=0.002, step=1, device="cpu")
    assert s["timed_ms"] == pytest.approx(1.0)  # profiler and autograd-engine records left out
    assert s["shares"] == {"matmul": 0.6, "attention": 0.3, "other": 0.1}
    assert s["kernels"] == 0 and "device_busy" not in s
    assert "op time" in render(s)


def test_gpu_copies_of_annotated_ranges_are_not_counted_as_kernels():
    """record_function ranges (Optimizer.step, DDP's forward) appear on the GPU timeline too; their time is their
    kernels' time, counted once."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from rustcoder.profiling import op_times

    def ev(key, device, us, annotation=False):
        return SimpleNamespace(key=key, device_type=device, count=1, self_device_time_total=us,
                               self_cpu_time_total=0.0 if device != DeviceType.CPU else us,
                               is_user_annotation=annotation)

    prof = SimpleNamespace(key_averages=lambda: [
        ev("Optimizer.step#AdamW.step", DeviceType.CUDA, 5_000.0, annotation=True),
        ev("multi_tensor_apply_kernel<FusedAdamMathFunctor>", DeviceType.CUDA, 5_000.0),
        ev("Optimizer.step#AdamW.step", DeviceType.CPU, 300.0, annotation=True),  # host side: its own overhead
    ])
    ops = op_times(prof)
    assert [(o.name, o.on_device) for o in ops] == [("multi_tensor_apply_kernel<FusedAdamMathFunctor>", True),
                                                    ("Optimizer.step#AdamW.step", False)]
    s = summarize(ops, wall_s=0.01, step=1, device="cuda")
    assert s["kernels"] == 1 and s["device_busy"] == pytest.approx(0.5)


@pytest.mark.parametrize("name, kind", [
    ("aten::addmm", "matmul"), ("aten::matmul", "matmul"), ("ampere_bf16_s16816gemm_bf16_128x64", "matmul"),
    ("cutlass::Kernel2<cutlass_80_wmma>", "matmul"), ("aten::_flash_attention_backward", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128", "attention"), ("aten::_fused_adamw_", "optimizer"),
    ("Memset (Device)", "memory"), ("aten::copy_", "memory"), ("aten::mul", "other"),
    ("triton_red_fused_rms_norm", "other"),
])
def test_kernels_and_ops_fall_into_their_kind(name, kind):
    assert category(name) == kind


@pytest.mark.slow
def test_a_profiled_run_writes_its_trace_and_trains_the_same_adapter(rows_file, tiny_qwen2, tmp_path):
    from rustcoder.train import train

    def cfg(name, **kw):
        return resolve_config("small-batch", overrides=dict(
            model="tiny-qwen2", dataset=str(rows_file), num_examples=60, output_dir=str(tmp_path / "runs"),
            report_to="none", max_steps=4, logging_steps=1, save_steps=1000, eval_steps=1000, run_name=name, **kw))

    lines = []
    profiled = train(cfg("profiled", profile_step=2), progress=False, log=lines.append)
    plain = train(cfg("plain"), progress=False, log=lambda *_: None)

    out = profiled.run_dir / "profile"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 2 and summary["device"] == "cpu" and summary["wall_ms"] > 0
    assert summary["shares"]["matmul"] > 0 and summary["top"]
    # the time is traced back to the code that spent it: model code in the forward, autograd nodes in the backward
    where = [x["from"] for x in summary["sources"]]
    assert sum(x["share"] for x in summary["sources"]) <= 1.0 and summary["sources"][0]["op"].startswith("aten::")
    assert any(".py(" in w and "torch/" not in w for w in where), where
    assert not any(".py(" in t["name"] or t["name"].startswith("<built-in") for t in summary["top"])  # not ops
    assert "traceEvents" in json.loads((out / "trace.json").read_text())
    assert artifacts.read_json(profiled.run_dir / "manifest.json")["profile"] == summary
    assert any(line.startswith("profile of step 2:") for line in lines)
    assert not (plain.run_dir / "profile").exists()

    # tokens/s leaves the (slower) profiled step out: its tokens and its time
    cum = {h["step"]: h["num_tokens"] for h in artifacts.read_json(profiled.run_dir / "log_history.json")
           if "num_tokens" in h}
    assert profiled.metrics["timed_steps"] == 3 and plain.metrics["timed_steps"] == 4
    assert profiled.metrics["timed_tokens"] == cum[4] - (cum[2] - cum[1])

    a = load_file(str(profiled.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(plain.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # profiling changes nothing


@pytest.mark.slow
def test_a_profile_step_the_run_never_reaches_is_said(rows_file, tiny_qwen2, tmp_path):
    from rustcoder.train import train

    lines = []
    cfg = resolve_config("small-batch", overrides=dict(
        model="tiny-qwen2", dataset=str(rows_file), num_examples=30, output_dir=str(tmp_path / "runs"),
        report_to="none", max_steps=2, save_steps=1000, profile_step=5))
    result = train(cfg, progress=False, log=lines.append)
    assert any("step 5 was not profiled: this run's steps were 0 + 1 to 2" in line for line in lines)
    assert not (result.run_dir / "profile").exists()


@pytest.mark.slow
def test_a_profiler_that_fails_is_reported_and_the_run_goes_on(rows_file, tiny_qwen2, tmp_path, monkeypatch):
    import torch.profiler

    from rustcoder.train import train

    def no_profiler(*a, **k):
        raise RuntimeError("CUPTI could not be loaded")

    monkeypatch.setattr(torch.profiler, "profile", no_profiler)
    lines = []
    cfg = resolve_config("small-batch", overrides=dict(
        model="tiny-qwen2", dataset=str(rows_file), num_examples=30, output_dir=str(tmp_path / "runs"),
        report_to="none", max_steps=3, save_steps=1000, profile_step=2))
    result = train(cfg, progress=False, log=lines.append)
    assert result.metrics["steps"] == 3 and (result.adapter_dir / "adapter_model.safetensors").exists()
    assert any("step 2 was not profiled (the profiler did not start: RuntimeError: CUPTI could not be loaded)" in line
               for line in lines)
    assert result.metrics["timed_steps"] == 2  # the step that was to be profiled still left out of tokens/s
