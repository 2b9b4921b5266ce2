"""scripts/gpu_checks.py, the one-command GPU visit: its plan, its budget, its time limits and its summary.

The real steps need a GPU (or minutes of CPU in --rehearse); here fake steps stand in for them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import pid_gone

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def gpu_checks(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "scripts" / "gpu_checks.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_checks", mod)  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_plan_covers_the_open_gpu_checks_and_every_script_exists(gpu_checks, tmp_path):
    for rehearse in (False, True):
        steps = gpu_checks.plan(sys.executable, tmp_path, rehearse)
        assert [s.name for s in steps] == ["env", "gpu-tests", "train-7b", "eval-7b", "train-1.5b", "merge-7b"]
        for s in steps:
            files = [a for a in s.argv if a.endswith(".py")]
            assert all(Path(f).is_file() for f in files), files
        cuda = {s.name: "--device cuda" in " ".join(s.argv) for s in steps}
        assert cuda["train-7b"] and cuda["eval-7b"] and cuda["train-1.5b"] if not rehearse else not any(cuda.values())
    assert [s.name for s in steps if not s.default] == ["merge-7b"]  # off unless asked for
    assert steps[1].env == {"RUSTCODER_GPU_REHEARSAL": "1"}  # rehearsed: tests/test_gpu.py runs on CPU
    assert gpu_checks.plan(sys.executable, tmp_path, False)[1].env == {}


def test_unknown_step_names_the_steps_and_exits_2(gpu_checks, tmp_path, capsys):
    assert gpu_checks.main(["--only", "env,bogus", "--out", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_only_runs_the_named_steps_in_the_order_named(gpu_checks, tmp_path, capsys):
    assert gpu_checks.main(["--only", "train-1.5b,env,train-7b", "--skip", "train-7b", "--list",
                            "--out", str(tmp_path)]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["train-1.5b", "env"]


def _fake(gpu_checks, monkeypatch, steps):
    monkeypatch.setattr(gpu_checks, "plan", lambda py, out, rehearse: steps)


def test_budget_skips_what_it_cannot_finish_and_a_step_past_its_limit_is_stopped(gpu_checks, monkeypatch, tmp_path):
    Step = gpu_checks.Step
    py = sys.executable
    _fake(gpu_checks, monkeypatch, [
        Step("quick", [py, "-c", "print('figure: 42 tok/s'); print('noise')"], 30, 1, [r"figure"]),
        Step("hangs", [py, "-c", "import time, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                                 "'import time; time.sleep(600)']); print('started', p.pid, flush=True); time.sleep(600)"],
             2, 1, [r"started"]),
        Step("big", [py, "-c", "print('never')"], 30, 10_000),
        Step("fails", [py, "-c", "import sys; print('boom'); sys.exit(3)"], 30, 1),
    ])
    rc = gpu_checks.main(["--out", str(tmp_path), "--budget-s", "120", "--only", "quick,hangs,big,fails"])
    assert rc == 1  # a step failed
    summary = json.loads((tmp_path / "summary.json").read_text())
    by = {s["step"]: s for s in summary["steps"]}
    assert by["quick"]["status"] == "passed" and by["quick"]["lines"] == ["figure: 42 tok/s"]
    assert by["hangs"]["status"] == "timeout" and by["hangs"]["wall_s"] < 30
    assert pid_gone(int(by["hangs"]["lines"][0].split()[1]))  # its whole process group was stopped
    assert by["big"]["status"] == "skipped" and "needs 10000 s" in by["big"]["why"]
    assert by["fails"]["status"] == "failed" and by["fails"]["rc"] == 3 and "boom" in by["fails"]["lines"]
    assert (tmp_path / "quick.log").read_text().splitlines()[1:] == ["figure: 42 tok/s", "noise"]
    assert "## big: skipped" in (tmp_path / "summary.md").read_text()


def test_a_step_whose_required_line_is_missing_fails(gpu_checks, monkeypatch, tmp_path):
    """On the box, pytest exiting 0 with every test skipped means CUDA was not seen: not a pass."""
    Step = gpu_checks.Step
    _fake(gpu_checks, monkeypatch, [Step("tests", [sys.executable, "-c", "print('4 skipped in 1.0s')"], 30, 1,
                                         require=r"\b\d+ passed")])
    assert gpu_checks.main(["--out", str(tmp_path), "--only", "tests"]) == 1
    assert json.loads((tmp_path / "summary.json").read_text())["steps"][0]["status"].startswith("failed")


def test_extra_packages_are_spelled_as_constraints_pins_them(gpu_checks):
    """prepare.sh pins each carried wheel by its name in constraints.txt; a name spelled otherwise downloads the
    newest release (pydantic_core then no longer matches pydantic)."""
    pinned = {line.split("==")[0] for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert set(gpu_checks.EXTRA_PKGS.split()) <= pinned


def test_a_stopped_visit_stops_its_step_and_still_writes_the_summary(gpu_checks, monkeypatch, tmp_path):
    """SIGTERM (a device call's limit, Ctrl-C's cousin): the running step's process group is stopped, the summary
    says which step was interrupted, and the exit code is 130."""
    import os

    Step = gpu_checks.Step
    py = sys.executable
    _fake(gpu_checks, monkeypatch, [
        Step("first", [py, "-c", "print('ok')"], 30, 1),
        Step("stopped", [py, "-c", f"import os, signal, subprocess, sys, time; p = subprocess.Popen([sys.executable, "
                                   f"'-c', 'import time; time.sleep(600)']); print('child', p.pid, flush=True); "
                                   f"os.kill({os.getpid()}, signal.SIGTERM); time.sleep(600)"], 60, 1, [r"child"]),
        Step("after", [py, "-c", "print('never')"], 30, 1),
    ])
    assert gpu_checks.main(["--out", str(tmp_path), "--only", "first,stopped,after"]) == 130
    by = {s["step"]: s for s in json.loads((tmp_path / "summary.json").read_text())["steps"]}
    assert by["first"]["status"] == "passed" and by["stopped"]["status"] == "interrupted"
    assert by["after"]["status"] == "skipped"
    child = int(next(ln for ln in (tmp_path / "stopped.log").read_text().splitlines()[1:]
                     if ln.startswith("child")).split()[1])
    assert pid_gone(child)
