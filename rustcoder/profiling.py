"""Where one optimizer step's time goes: the step under torch.profiler, a Chrome trace and a summary.

``rustcoder train --profile-step K`` profiles step K and writes ``profile/trace.json`` (open it in
Perfetto or chrome://tracing) and ``profile/summary.json`` into the run directory. On a GPU the summary
says how busy the card was (kernel time over the step's wall time), how many kernels were launched
and how often the host waited on the device, and how the kernel time splits between matmuls,
attention, the optimizer, memory copies and the rest: the numbers that tell a step bound by Python
and kernel launches from one bound by the card. On CPU the same split is over the ops' own CPU time.
The step runs with Python stacks recorded, so the summary also says which code the time comes from:
each op's kernel time (CPU: its own time) grouped by the first caller outside torch (a line of
transformers, PEFT, TRL or rustcoder), or by the autograd node for the backward.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

PROFILE_DIR = "profile"

# Kernel and op names by kind. cuBLAS/cuBLASLt kernels carry gemm/xmma/cutlass/nvjet in their names.
CATEGORIES = (
    ("attention", re.compile(r"flash|fmha|attention|attn|sdpa|varlen", re.I)),
    ("matmul", re.compile(r"gemm|gemv|xmma|cutlass|nvjet|cublas|aten::(mm|addmm|bmm|matmul|linear)$", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.I)),
    ("memory", re.compile(r"memcpy|memset|aten::copy_$|aten::to$|aten::_to_copy$", re.I)),
)
LAUNCHES = re.compile(r"^(cudaLaunchKernel(ExC)?|cuLaunchKernel(Ex)?|hipLaunchKernel)$")
PY_FRAME = re.compile(r"^(?P<file>.+\.py)\((?P<line>\d+)\): (?P<func>.+)$")  # a with_stack Python event
BACKWARD = "autograd::engine::evaluate_function: "
HOST_SYNCS = re.compile(r"^(cudaDeviceSynchronize|cudaStreamSynchronize|cudaEventSynchronize|cudaMemcpy|"
                        r"hipDeviceSynchronize|hipStreamSynchronize)$")


@dataclass
class OpTime:
    """One profiled name, summed over the step: how often it ran and its own time (microseconds)."""

    name: str
    on_device: bool  # a GPU kernel or copy (device time), or a host-side op / runtime call (CPU time)
    count: int
    self_us: float


def self_device_us(event) -> float:
    """An event's own device time in microseconds (the attribute's name before torch 2.4: self_cuda_time_total)."""
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def caller(event) -> str:
    """Where a profiled op was called from: the first Python frame outside torch's own files above it
    ("transformers/models/qwen2/modeling_qwen2.py(63): forward"), or the autograd node that ran it in the
    backward ("ToCopyBackward0"), or "?"."""
    q = event.cpu_parent
    while q is not None:
        m = PY_FRAME.match(q.name)
        if m and not re.search(r"(^|/)torch/", m["file"]):
            f = m["file"]
            for anchor in ("site-packages/", "dist-packages/"):
                f = f.rsplit(anchor, 1)[-1]
            if "/rustcoder/" in f:
                f = "rustcoder/" + f.rsplit("/rustcoder/", 1)[-1]
            return f"{f}({m['line']}): {m['func']}"
        if q.name.startswith(BACKWARD):
            return q.name[len(BACKWARD):]
        q = q.cpu_parent
    return "?"


def sources(events, device: str, limit: int = 8) -> list[dict]:
    """The step's time by (op, caller): kernel time charged to the host op that launched it on a GPU, aten ops'
    self time on CPU; largest first, with its share of that total."""
    from torch.autograd import DeviceType

    totals: dict[tuple[str, str], list] = {}
    for e in events:
        if e.device_type != DeviceType.CPU:
            continue  # kernels: counted through the op that launched them
        if device == "cuda":
            us = self_device_us(e)
        else:
            us = e.self_cpu_time_total if e.name.startswith("aten::") else 0.0
        if us > 0:
            t = totals.setdefault((e.name, caller(e)), [0, 0.0])
            t[0] += 1
            t[1] += us
    total = sum(us for _, us in totals.values())
    top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:limit]
    return [{"op": op, "from": where, "count": n, "ms": round(us / 1e3, 3), "share": round(us / total, 4)}
            for (op, where), (n, us) in top]


def category(name: str) -> str:
    return next((kind for kind, pattern in CATEGORIES if pattern.search(name)), "other")


def summarize(ops: list[OpTime], wall_s: float, step: int, device: str) -> dict:
    """The step's profile in numbers: device busy share, launches, host syncs and where the time went.

    On a GPU the split is over kernel (device) time; on CPU over the ops' self CPU time, leaving out the
    profiler's own records and the autograd engine's wrappers (their self time is bookkeeping).
    """
    kernels = [o for o in ops if o.on_device]
    if device == "cuda":
        timed = kernels
    else:
        timed = [o for o in ops if not o.on_device and not o.name.startswith(("ProfilerStep", "autograd::engine"))]
    total_us = sum(o.self_us for o in timed)
    shares: dict[str, float] = {}
    for o in timed:
        shares[category(o.name)] = shares.get(category(o.name), 0.0) + o.self_us
    top = sorted(timed, key=lambda o: o.self_us, reverse=True)[:8]
    wall_ms = wall_s * 1e3
    out = {
        "step": step,
        "device": device,
        "wall_ms": round(wall_ms, 3),
        "timed_ms": round(total_us / 1e3, 3),  # kernel time on a GPU, op self time on CPU
        "kernels": sum(o.count for o in kernels),
        "launches": sum(o.count for o in ops if not o.on_device and LAUNCHES.match(o.name)),
        "host_syncs": sum(o.count for o in ops if not o.on_device and HOST_SYNCS.match(o.name)),
        "shares": {k: round(v / total_us, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
        if total_us else {},
        "top": [{"name": o.name[:120], "count": o.count, "ms": round(o.self_us / 1e3, 3),
                 "share": round(o.self_us / total_us, 4) if total_us else 0.0} for o in top],
    }
    if device == "cuda":
        # Kernels on one stream do not overlap; with several streams this can pass 100% (overlap).
        out["device_busy"] = round(total_us / 1e3 / wall_ms, 4) if wall_ms else 0.0
    return out


def render(summary: dict) -> str:
    """One paragraph for the console."""
    s = summary
    split = ", ".join(f"{k} {v:.0%}" for k, v in s["shares"].items())
    if s["device"] == "cuda":
        head = (f"profile of step {s['step']}: {s['wall_ms']:.0f} ms wall, GPU kernels {s['timed_ms']:.0f} ms "
                f"({s['device_busy']:.0%} busy), {s['kernels']:,} kernels, {s['launches']:,} launches, "
                f"{s['host_syncs']} host syncs; kernel time: {split}")
    else:
        head = f"profile of step {s['step']}: {s['wall_ms']:.0f} ms wall; op time ({s['timed_ms']:.0f} ms): {split}"
    tops = "; ".join(f"{t['name'][:60]} {t['ms']:.1f} ms" for t in s["top"][:4])
    lines = [head, f"  largest: {tops}"]
    if s.get("sources"):
        lines.append("  from: " + "; ".join(f"{x['op']} at {x['from']} {x['ms']:.1f} ms ({x['share']:.0%})"
                                            for x in s["sources"][:5]))
    return "\n".join(lines)


def op_times(prof) -> list[OpTime]:
    """The profiler's per-name averages as OpTimes (device time for kernels, self CPU time for host ops)."""
    from torch.autograd import DeviceType

    ops = []
    for e in prof.key_averages():
        if PY_FRAME.match(e.key) or e.key.startswith("<built-in"):
            continue  # a Python call recorded for the stacks (with_stack), not an op: its time is its ops'
        on_device = e.device_type != DeviceType.CPU
        if on_device and getattr(e, "is_user_annotation", False):
            continue  # a record_function range mirrored on the GPU timeline (Optimizer.step...): its kernels count
        self_us = self_device_us(e) if on_device else e.self_cpu_time_total
        ops.append(OpTime(e.key, on_device, e.count, float(self_us)))
    return ops


def step_profiler(step: int, out_dir: Path, device: str, log=print):
    """A TrainerCallback that profiles optimizer step ``step`` (1-based) and writes its trace and summary to
    out_dir; ``.summary`` holds the summary once the step has run."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from .artifacts import atomic_write_json

    class StepProfiler(TrainerCallback):
        """A diagnosis, never a cause of failure: a profiler that cannot start or finish is reported and the
        run goes on."""

        def __init__(self):
            self.step = step
            self.summary: dict | None = None
            self.error: str | None = None
            self._prof = None
            self._t0 = 0.0

        def _failed(self, what: str, e: Exception) -> None:
            self.error = f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log(f"note: step {self.step} was not profiled ({self.error}); training goes on")
            self._prof = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step + 1 != self.step or self._prof is not None or self.error:
                return
            cuda = device == "cuda"
            try:
                if cuda:
                    torch.cuda.synchronize()  # the step starts with the card idle: its time is its own
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                self._prof = profile(activities=activities, with_stack=True)
                self._prof.__enter__()
            except Exception as e:  # noqa: BLE001 (no profiler here, e.g. CUPTI missing: say so, keep training)
                return self._failed("the profiler did not start", e)
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self._prof is None or self.summary is not None:
                return
            try:
                if device == "cuda":
                    torch.cuda.synchronize()
                wall = time.perf_counter() - self._t0
                self._prof.__exit__(None, None, None)
                summary = summarize(op_times(self._prof), wall, self.step, device)
                try:
                    summary["sources"] = sources(self._prof.events(), device)
                except Exception as e:  # noqa: BLE001 (the attribution is extra: the summary stands without it)
                    summary["sources_error"] = f"{type(e).__name__}: {e}"
                if args.process_index == 0:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    tmp = out_dir / ".trace.json.tmp"
                    self._prof.export_chrome_trace(str(tmp))
                    tmp.replace(out_dir / "trace.json")
                    atomic_write_json(out_dir / "summary.json", summary)
                    log(render(summary) + f"\n  trace: {out_dir / 'trace.json'} (open in https://ui.perfetto.dev)")
            except Exception as e:  # noqa: BLE001 (a diagnosis must not end the run it diagnoses)
                return self._failed("its profile could not be read or written", e)
            self.summary = summary
            self._prof = None

    return StepProfiler()
