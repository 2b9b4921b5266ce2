"""`rustcoder demo` runs the whole loop end to end on CPU (the README's first command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _engine_processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "transformers-engine" in cmd:
                found.append(cmd)
    return found


def test_demo_runs_the_whole_loop(tmp_path):
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    out = subprocess.run([sys.executable, "-m", "rustcoder", "demo", "--output-dir", "runs"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    assert "tiny RANDOM" in text and "mechanics" in text            # says plainly what it shows
    for n in range(1, 7):
        assert f"[{n}/6]" in text and "done in" in text
    run = tmp_path / "runs" / "demo-small-batch"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["preset"] == "small-batch"
    eval_dirs = list((run / "eval").glob("*/metrics.json"))
    assert eval_dirs, "no evaluation written"
    metrics = json.loads(eval_dirs[0].read_text())
    assert set(metrics["models"]) == {"base", "adapter"} and len(metrics["models"]["adapter"]["categories"]) == 15
    report = json.loads((run / "merged" / "merge_report.json").read_text())
    assert report["verification"]["passed"] is True
    assert "transformers engine ready" in text and "engine stopped" in text and "Q: " in text
    assert "trackio show --project rustcoder-demo" in text and "report.md" in text
    assert not _engine_processes()                                   # nothing left running
