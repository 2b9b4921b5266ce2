"""One GPU visit: every GPU check of the open issues, most valuable first, within a device-time budget.

A lent GPU box has no network and a few minutes of device time (docs/gpu.md), so the
checks run as one prepared command: each step in its own process group under its own timeout, its
output in OUT/<step>.log (streamed to the console as it comes), a step skipped when the budget left
is below what it needs, and OUT/summary.md + OUT/summary.json written after every step, so a call
killed at its limit still returns what finished.

    # here, where the package index is reachable (once per checkout): the pinned wheels into .whl/
    bash scripts/gpu_wheelhouse.sh
    # on the box, from the project root:
    source .whl/setup.sh && python3 scripts/gpu_checks.py --out "$OUT" --budget-s 540
    # the same plan on this CPU machine, small settings, to check the script and the environment:
    .venv/bin/python scripts/gpu_checks.py --rehearse --out /tmp/gpu-rehearsal

Steps (``--only`` / ``--skip`` take their names):

- ``env``: card, driver and the versions imported (torch, transformers, peft, trl).
- ``gpu-tests``: ``pytest -m gpu`` (issue 12's train -> merge -> eval -> serve -> chat on a bf16
  0.5B shape, CUDA batched generation, the merge verification on CUDA against the CPU's; issue 11's
  packed-attention isolation and planned forwards).
- ``train-7b``: benchmarks/train_throughput.py, Qwen2-7B shape, presets baseline and small-batch,
  rustcoder vs TRL SFTTrainer at its defaults and at its best (padding-free, no checkpointing, liger where
  installed, flash attention where present), side by side in one run (issues 11 and 25).
- ``eval-7b``: benchmarks/eval_throughput.py, Qwen2-7B shape, the transformers backend vs the old
  generate path (issue 16; vLLM is not on the box and its wheel exceeds what a call can carry).
- ``train-1.5b``: the train benchmark on the 1.5B shape (issue 11 asks for 1.5b and 7b).
- ``merge-7b``: benchmarks/merge_memory.py --shape 7b, the streaming merge with its verification on the
  GPU (--verify-device auto) vs PEFT's bf16 merge, time and peak RSS (off unless named in --only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rustcoder.procs import exit_status, start_group, stop_group  # noqa: E402

# Wheels the box lacks beyond the training stack scripts/gpu_wheelhouse.sh always carries: the serve step of
# the GPU tests (transformers serve behind FastAPI/uvicorn, asked through the openai client) and their needs,
# each spelled as in constraints.txt (the wheelhouse pins by that name: pydantic_core must match pydantic).
EXTRA_PKGS = ("fastapi starlette pydantic pydantic_core typing-inspection annotated-types opentelemetry-api "
              "python-multipart uvicorn openai jiter sniffio")

ENV_PROBE = """
import platform, torch, transformers, peft, trl
print('python', platform.python_version(), '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| peft', peft.__version__, '| trl', trl.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu:', torch.cuda.get_device_name(0), f'| {p.total_memory / 2**30:.0f} GiB | {p.multi_processor_count} SMs',
          '| bf16', torch.cuda.is_bf16_supported(), '| devices', torch.cuda.device_count())
else:
    print('gpu: none visible (CUDA not available)')
import importlib
for what, mods in (('torch varlen_attn (training attention)', ['torch.nn.attention.varlen']),
                   ('training', ['datasets', 'trl', 'rustcoder.train']),
                   ('transformers serve (gpu-tests serve step)', ['fastapi', 'uvicorn', 'openai',
                    'transformers.cli.serving.server', 'transformers.cli.serving.chat_completion'])):
    missing = []
    for m in mods:
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 (report any import failure, keep probing)
            missing.append(f'{m} ({type(e).__name__}: {e})')
    print(f'{what}: ' + ('ok' if not missing else 'MISSING ' + '; '.join(missing)))
"""


@dataclass
class Step:
    """One check: its command, its own time limit, the least time worth starting it with, the lines to keep."""

    name: str
    argv: list[str]
    timeout_s: int
    need_s: int
    keep: list[str] = field(default_factory=list)  # regexes of the log lines that go into the summary
    require: str | None = None  # a regex the log must hold for the step to count as passed
    env: dict = field(default_factory=dict)  # extra environment variables
    default: bool = True


def plan(py: str, out: Path, rehearse: bool) -> list[Step]:
    """The visit's steps in order of value; rehearse: the same scripts with CPU-sized settings."""
    bench = lambda name: str(ROOT / "benchmarks" / name)  # noqa: E731
    tests = [str(ROOT / "tests" / "test_gpu_training.py"), str(ROOT / "tests" / "test_gpu.py")]
    if rehearse:
        train = lambda shape: ["--device", "cpu", "--steps", "4", "--warmup-steps", "1", "--rows", "200",  # noqa: E731
                               "--hidden", "64", "--layers", "2", "--profile"]
        evals = ["--device", "cpu", "--shape", "tiny", "--backends", "hf-generate,transformers", "--prompts", "4",
                 "--max-new-tokens", "8", "--repeat", "1"]
        merge = ["--size-gb", "0.05", "--skip", "peft-fp32", "--skip", "streaming-fullverify"]
    else:
        train = lambda shape: ["--device", "cuda", "--shape", shape, "--presets", "baseline,small-batch",  # noqa: E731
                               "--steps", "12", "--warmup-steps", "2", "--profile"]
        evals = ["--device", "cuda", "--shape", "7b", "--backends", "hf-generate,transformers", "--prompts", "32",
                 "--max-new-tokens", "256", "--repeat", "1"]
        # PEFT's float32 merge was measured on an H200 (44,300 MB, 33 s): the streaming merge verified on the GPU
        merge = ["--shape", "7b", "--skip", "peft-fp32", "--skip", "streaming-noverify", "--skip", "streaming-fullverify"]
    train_keep = [r"^model:", r"^data:", r"(?i)^isolation check", r"examples per optimizer step", r"^(TRL defaults|TRL best|rustcoder) ",
                  r"throughput ratio", r"eval loss difference", r"projected", r"^  (TRL|rustcoder)",
                  r"^  largest:", r"^  from:"]  # (the profile line itself starts with "rustcoder ")
    return [
        Step("env", [py, "-c", ENV_PROBE], 60, 10, [r".*"]),
        Step("gpu-tests", [py, "-m", "pytest", "-m", "gpu", "-q", "-rsP", "-p", "no:cacheprovider", "--junitxml",
                           str(out / "gpu-tests.xml"), *tests], 900 if rehearse else 420, 120,  # CPU: ~4 min; H200: 247 s before
                                                                                     # the CUDA-vs-CPU merge test
             [r"passed|failed|skipped|error", r"^(FAILED|ERROR|SKIPPED)", r"^layerwise verification of"],
             require=r"\b\d+ passed",  # all skipped on the box: CUDA not seen
             env={"RUSTCODER_GPU_REHEARSAL": "1"} if rehearse else {}),  # tests/test_gpu.py on CPU, mini shape
        Step("train-7b", [py, bench("train_throughput.py"), *train("7b")], 240, 150, train_keep),
        Step("eval-7b", [py, bench("eval_throughput.py"), *evals, "--json", str(out / "eval-7b.json")], 150, 90,
             [r"^model|^\| "]),
        Step("train-1.5b", [py, bench("train_throughput.py"), *train("1.5b")], 150, 100, train_keep),
        Step("merge-7b", [py, bench("merge_memory.py"), *merge, "--json", str(out / "merge-7b.json")], 420, 200,
             [r"^base:", r"peak RSS", r"summary", r"equal|identical", r"verification"], default=False),
    ]


def run_step(step: Step, out: Path, limit_s: float, env: dict) -> dict:
    """Run one step in its own process group with its output in OUT/<name>.log, echoed as it comes."""
    log_path = out / f"{step.name}.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {json.dumps(step.argv)}\n")
        log.flush()
        proc = start_group(step.argv, die_with_parent=True, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    shown = len(log_path.read_text())
    timed_out = False
    try:
        while True:
            rc = exit_status(proc)
            text = log_path.read_text(errors="replace")
            sys.stdout.write("".join(f"[{step.name}] {line}\n" for line in text[shown:].splitlines()))
            sys.stdout.flush()
            shown = len(text)
            if rc is not None:
                break
            if time.monotonic() - t0 > limit_s:
                timed_out = True
                rc = stop_group(proc, timeout=10)
                break
            time.sleep(1.0)
    finally:  # also when this script is interrupted: nothing of the step may outlive it (a warm GPU box is reused)
        stop_group(proc, timeout=5)  # reap the leader and anything its group left behind
    wall = time.monotonic() - t0
    lines = log_path.read_text(errors="replace").splitlines()[1:]
    kept = [ln for ln in lines if any(re.search(k, ln) for k in step.keep)][-40:]
    status = "timeout" if timed_out else ("passed" if rc == 0 else "failed")
    if status == "passed" and step.require and not any(re.search(step.require, ln) for ln in lines):
        status = f"failed (no line matches {step.require!r})"
    return {"step": step.name, "status": status, "rc": rc, "wall_s": round(wall, 1), "limit_s": round(limit_s),
            "log": log_path.name, "lines": kept if status == "passed" else (kept + lines[-15:])[-40:]}


def write_summary(out: Path, results: list[dict], header: str) -> None:
    """summary.json and summary.md, rewritten (atomically) after every step."""
    data = {"header": header, "steps": results}
    md = [f"# GPU checks: {header}", ""]
    for r in results:
        md.append(f"## {r['step']}: {r['status']}" + (f" ({r['wall_s']:.0f} s of {r['limit_s']} s)"
                                                       if "wall_s" in r else f" ({r.get('why', '')})"))
        md += ["```", *r.get("lines", []), "```", ""] if r.get("lines") else [""]
    for name, text in (("summary.json", json.dumps(data, indent=1)), ("summary.md", "\n".join(md))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-checks"), help="logs and summary (default: $OUT)")
    ap.add_argument("--budget-s", type=float, default=540, help="device seconds this call may use (default 540)")
    ap.add_argument("--only", default=None,
                    help="comma-separated steps to run, in that order (default: all but merge-7b, in plan order)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out")
    ap.add_argument("--rehearse", action="store_true", help="CPU-sized settings: check the plan here, no GPU needed")
    ap.add_argument("--list", action="store_true", help="print the steps and their commands, run nothing")
    ap.add_argument("--extra-pkgs", action="store_true", help="print the serve step's wheels (scripts/gpu_wheelhouse.sh adds them) and exit")
    a = ap.parse_args(argv)
    if a.extra_pkgs:
        print(EXTRA_PKGS)
        return 0
    out = Path(a.out).resolve()
    steps = plan(sys.executable, out, a.rehearse)
    names = [s.name for s in steps]
    chosen = a.only.split(",") if a.only else [s.name for s in steps if s.default]
    unknown = sorted(set(chosen + [n for n in a.skip.split(",") if n]) - set(names))
    if unknown:
        print(f"error: unknown step(s) {', '.join(unknown)}; the steps are: {', '.join(names)}", file=sys.stderr)
        return 2
    by_name = {s.name: s for s in steps}  # --only runs its steps in the order it names them
    steps = [by_name[n] for n in dict.fromkeys(chosen) if n not in a.skip.split(",")]
    if a.list:
        for s in steps:
            cmd = "python -c ENV_PROBE" if s.name == "env" else shlex.join(s.argv)
            print(f"{s.name:<11} limit {s.timeout_s:>3} s, needs {s.need_s:>3} s: {cmd}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    header = f"{'rehearsal on CPU' if a.rehearse else 'GPU visit'}, budget {a.budget_s:.0f} s, started " \
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    deadline = time.monotonic() + a.budget_s
    results: list[dict] = []
    previous = signal.signal(signal.SIGTERM, _interrupted)  # a stopped visit still writes its summary
    try:
        run_steps(steps, out, env, deadline, results, header)
    except KeyboardInterrupt:
        left = [s.name for s in steps if s.name not in {r["step"] for r in results}]
        results += [{"step": name, "status": "interrupted" if i == 0 else "skipped", "why": "interrupted"}
                    for i, name in enumerate(left)]
        write_summary(out, results, header + ", interrupted")
        print("interrupted: summary written", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((out / "summary.md").read_text())
    return 0 if all(r["status"] in ("passed", "skipped") for r in results) else 1


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def run_steps(steps: list[Step], out: Path, env: dict, deadline: float, results: list[dict], header: str) -> None:
    """Run the steps in order within the deadline, appending to results and rewriting the summary after each."""
    for step in steps:
        left = deadline - time.monotonic()
        if left < step.need_s:
            results.append({"step": step.name, "status": "skipped",
                            "why": f"{left:.0f} s of budget left, it needs {step.need_s} s"})
            print(f"== {step.name}: skipped ({results[-1]['why']})", flush=True)
        else:
            print(f"== {step.name} (limit {min(step.timeout_s, left):.0f} s)", flush=True)
            results.append(run_step(step, out, min(step.timeout_s, left), {**env, **step.env}))
            print(f"== {step.name}: {results[-1]['status']} in {results[-1]['wall_s']:.0f} s", flush=True)
        write_summary(out, results, header)


if __name__ == "__main__":
    sys.exit(main())
