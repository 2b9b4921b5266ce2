"""`rustcoder demo` runs the whole loop end to end on CPU (the README's first command), and the
commands it prints next work as printed in a fresh shell."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def _run_watching_descendants(argv, **kw) -> tuple[subprocess.CompletedProcess, set[psutil.Process]]:
    """Run argv; every process it starts (engine, workers) is recorded while it runs. Only this
    process tree is looked at: another user's servers on the machine are none of this test's business."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    seen: set[psutil.Process] = set()
    done = threading.Event()

    def watch():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                seen.update(root.children(recursive=True))
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        done.set()
        watcher.join(timeout=5)
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), seen


def _alive(processes: set[psutil.Process]) -> list[str]:
    left = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return left


def _fresh_shell(command: str, cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """COMMAND in `bash -c` with a bare environment: no activated venv, only the system PATH (+ rustc)."""
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": f"{Path.home() / '.cargo' / 'bin'}:/usr/bin:/bin",
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_demo_runs_the_whole_loop_and_its_next_commands_work_as_printed(tmp_path):
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    out, started = _run_watching_descendants([sys.executable, "-m", "rustcoder", "demo", "--output-dir", "runs"],
                                             cwd=tmp_path, env=env)
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
    assert "report.md" in text
    assert "{'eval_loss'" not in text and "{'loss'" not in text     # no raw Python dicts from the trainer
    assert "\x1b[" not in text                                      # piped: no colour codes (trackio's banner)
    assert "trackio show" not in text and "runs --dashboard --project rustcoder-demo" in text  # a command on PATH
    assert "is_gradient_checkpointing" not in out.stderr             # peft's deprecation noise, filtered
    # the eval stage shows progress, and the sandbox's pass and fail with rustc's diagnostics
    stage3 = text.split("[3/6] evaluate")[1].split("[4/6]")[0]
    assert "generate adapter" in stage3 and "score:" in stage3        # progress while it works
    assert "good answer: PASS (1 test(s) passed" in stage3
    assert "bad answer: COMPILE_ERROR (E0308" in stage3 and "mismatched types" in stage3
    assert started, "the demo started no process (the engine runs in one)"
    assert _alive(started) == []                                     # nothing it started is left running

    _readme_table_names_what_the_run_wrote(run)

    # the next commands, copied as printed, in a fresh shell (no activated venv), from another directory
    printed = text.split("look at them")[1]
    commands = [line.strip() for line in printed.splitlines() if " runs " in line or " eval " in line]
    shell_env = {"TRACKIO_DIR": str(tmp_path / "trackio")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs_cmd = next(c for c in commands if c.endswith(f"runs --output-dir {tmp_path / 'runs'}"))
    r = _fresh_shell(runs_cmd, elsewhere, shell_env)
    assert r.returncode == 0 and "demo-small-batch" in r.stdout and "Trackio project rustcoder-demo" in r.stdout, r
    eval_cmd = next(c for c in commands if " eval " in c)
    r = _fresh_shell(eval_cmd, elsewhere, shell_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"all \d+ sample\(s\) already done", r.stderr)  # same settings: resumed, not refused
    assert "overall" in r.stdout and not (elsewhere / "evals-out").exists()
    # the dashboard opens the project the demo logged to
    dash_cmd = next(c for c in commands if c.endswith("--dashboard"))
    r = _fresh_shell(dash_cmd.replace(" --dashboard", " --json"), elsewhere, shell_env)
    assert json.loads(r.stdout)[0]["project"] == "rustcoder-demo"


def _readme_row(command: str) -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return next(line for line in readme.splitlines() if line.startswith(f"| `{command}` |"))


def _readme_table_names_what_the_run_wrote(run: Path) -> None:
    """README's "What each writes": every file and directory train, eval and merge wrote is in its row, and every
    file a row names (not marked "with --...") was written."""
    rows = {c: _readme_row(c) for c in ("train", "eval", "merge")}
    from_others = {"eval": "eval", "merged": "merge"}  # directories other commands add to the run
    for entry in run.iterdir():
        name = entry.name + ("/" if entry.is_dir() else "")
        assert f"`{name}`" in rows["train"] or entry.name in from_others, f"train wrote {name}: not in the README"
    eval_dir = next(p for p in (run / "eval").iterdir() if p.is_dir())
    for entry in eval_dir.iterdir():
        assert f"`{entry.name}`" in rows["eval"], f"eval wrote {entry.name}: not in the README"
    for entry in (run / "merged").iterdir():
        pattern = "`model*.safetensors`" if entry.name.endswith(".safetensors") else f"`{entry.name}`"
        assert pattern in rows["merge"], f"merge wrote {entry.name}: not in the README"
    for command, where in (("train", run), ("eval", eval_dir), ("merge", run / "merged")):
        listed = re.findall(r"`([\w.*-]+/?)`", rows[command].split("|", 2)[2].split("(with")[0])
        for name in listed:
            if "." in name or name.endswith("/"):
                assert list(where.rglob(name.rstrip("/"))), f"README: {command} writes {name}, but it did not"


def test_second_demo_elsewhere_gets_its_own_trackio_run(tmp_path):
    """Run names are unique within the Trackio project, not only within the output directory."""
    from rustcoder.artifacts import unique_run_name

    trackio = pytest.importorskip("trackio")
    env_dir = tmp_path / "trackio"
    code = (f"import os; os.environ['TRACKIO_DIR'] = {str(env_dir)!r}\n"
            "import trackio\n"
            "trackio.init(project='rustcoder-demo', name='demo-small-batch'); trackio.log({'loss': 1.0}); trackio.finish()\n"
            "from rustcoder.artifacts import unique_run_name\n"
            f"print(unique_run_name({str(tmp_path / 'elsewhere')!r}, 'demo-small-batch', 'rustcoder-demo'))\n"
            f"print(unique_run_name({str(tmp_path / 'elsewhere')!r}, 'demo-small-batch', 'other-project'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRACKIO_DIR": str(env_dir)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["demo-small-batch-2", "demo-small-batch"]
    assert trackio and unique_run_name(tmp_path, "x") == "x"
