"""What a newcomer and a daily user trip over: clear errors for paths and the hub, ecosystem habits."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from rustcoder.cli import main


def _run(args, cwd, env=None):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, env={"HF_HUB_OFFLINE": "1", **(env or {})})
    finally:
        os.chdir(old)


@pytest.mark.parametrize("command", [["serve", "--engine", "transformers"], ["eval"], ["merge"]])
def test_a_path_that_does_not_exist_is_named_not_treated_as_a_hub_id(tmp_path, command):
    (tmp_path / "runs" / "exp-a").mkdir(parents=True)
    r = _run(command[:1] + ["runs/nope"] + command[1:], tmp_path)
    assert r.exit_code == 2, r.output
    assert f"no run named 'nope' in {tmp_path / 'runs'}" in r.output and "exp-a" in r.output  # what is there
    assert "Strandset" not in r.output and "Traceback" not in r.output
    (tmp_path / "bare").mkdir()
    r = _run(command[:1] + ["runs/nope"] + command[1:], tmp_path / "bare")  # no runs/ here: still not a hub id
    assert r.exit_code == 2 and f"there is no {tmp_path / 'bare' / 'runs'}" in r.output, r.output
    assert not any((tmp_path / "bare").iterdir())


@pytest.mark.parametrize("command", [["eval", "--by-task"], ["eval", "--dataset", "sample"], ["serve"], ["merge"]])
def test_a_bare_run_name_resolves_to_the_run_or_says_plainly_there_is_none(tmp_path, command):
    """`eval exp-small-batch-all` means runs/exp-small-batch-all: without it, one plain message naming the runs
    that are there, before the hub or the dataset is touched and before any directory is written; from a
    directory without runs/ too. eval, serve and merge say the same."""
    _fake_run(tmp_path / "runs", "exp-small-batch-10k", 2e-5)
    for cwd in (tmp_path, tmp_path / "elsewhere"):
        cwd.mkdir(exist_ok=True)
        before = sorted(p for p in tmp_path.rglob("*"))
        r = _run(command[:1] + ["exp-small-batch-all"] + command[1:], cwd,
                 env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"})  # no hub, even if asked
        assert r.exit_code == 2, r.output
        assert f"no run named 'exp-small-batch-all' in {cwd / 'runs'}" in r.output, r.output
        assert ("exp-small-batch-10k" in r.output) == (cwd == tmp_path)  # the runs that are there
        if command[0] != "merge":
            assert "a hub id has the form org/name" in r.output
        assert "Retry" not in r.output and "Strandset" not in r.output and "Traceback" not in r.output
        assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written (no evals-out/)


def test_a_bare_name_that_is_a_run_is_that_run(tmp_path):
    from rustcoder.rundir import resolve_name

    run = _fake_run(tmp_path / "runs", "exp-a", 1e-5)
    assert resolve_name("exp-a", tmp_path / "runs") == str(run)
    assert resolve_name("tiny-qwen2", tmp_path / "runs") == "tiny-qwen2"  # built-in names stay names
    assert resolve_name(str(run), "elsewhere") == str(run)  # paths stay paths


def test_eval_json_stdout_is_json_alone_when_a_model_is_loaded(tmp_path, tiny_qwen2):
    """`eval --json`: the model loading line and every progress line go to stderr, in a real process (library
    prints and child processes included); the tiny model's answers are capped to fit the demo's time, said on
    stderr."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    out = tmp_path / "ev"
    args = [sys.executable, "-m", "rustcoder", "eval", str(tiny_qwen2), "--dataset", "sample", "--limit", "1",
            "--categories", "code_generation", "--no-exec", "--no-teacher-forced", "--json", "--output-dir", str(out)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout)  # nothing else on stdout
    assert metrics["eval_dir"] == str(out)
    assert "loaded " in r.stderr and "score:" in r.stderr  # progress, a line per stage, on stderr
    assert "capped at 48 new tokens" in r.stderr
    assert yaml.safe_load((out / "eval_config.yaml").read_text())["generation"]["max_new_tokens"] == 48


def test_a_hub_id_the_hub_does_not_know_fails_before_anything_is_written(tmp_path, monkeypatch):
    from rustcoder import hub

    monkeypatch.setattr(hub, "settle_offline", lambda log=None: False)  # the hub answers ...
    monkeypatch.setattr(hub, "in_hub_cache", lambda repo_id: False)
    monkeypatch.setattr(hub, "repo_missing", lambda repo_id: repo_id == "nobody/nothing")  # ... and knows these
    r = _run(["eval", "nobody/nothing", "--dataset", "sample"], tmp_path)
    assert r.exit_code == 2 and "no model 'nobody/nothing' on the hub" in r.output, r.output
    assert not any(tmp_path.iterdir())  # no evals-out/
    from rustcoder.rundir import resolve_name

    assert resolve_name("Qwen/Qwen2-7B-Instruct") == "Qwen/Qwen2-7B-Instruct"


def test_tiny_model_eval_defaults_fit_the_demo_and_typed_values_win(tmp_path):
    from rustcoder.eval.config import EvalConfig, tiny_model_defaults

    run = _fake_run(tmp_path / "runs", "tiny-run", 1e-5)
    (run / "manifest.json").write_text('{"status": "finished", "base_model": "tiny-qwen2", "created_at": 1}')
    big = _fake_run(tmp_path / "runs", "big-run", 1e-5)
    (big / "manifest.json").write_text('{"status": "finished", "base_model": "Qwen/Qwen2-7B-Instruct"}')
    cfg = EvalConfig(model=str(run))
    assert tiny_model_defaults(cfg) and cfg.max_new_tokens == 48
    cfg = EvalConfig(model=str(run), max_new_tokens=300)
    assert tiny_model_defaults(cfg) is None and cfg.max_new_tokens == 300
    cfg = EvalConfig(model=str(big))
    assert tiny_model_defaults(cfg) is None and cfg.max_new_tokens is None  # the suite's 512


def test_an_unreachable_hub_is_said_once_without_retry_loops(tmp_path):
    """No network and no HF_HUB_OFFLINE: one reachability check, one note, then the hub cache only; the
    dry run's own error follows at once (huggingface_hub alone would retry each file five times)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))  # a port nothing listens on
    r = subprocess.run([sys.executable, "-m", "rustcoder", "train", "--preset", "high-capacity", "--dry-run"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    text = r.stdout + r.stderr
    assert r.returncode == 1, text[-3000:]
    assert text.count("cannot be reached") >= 1 and text.count("note: 127.0.0.1 cannot be reached") == 1, text
    assert "Retry" not in text and "Traceback" not in text


def test_a_dry_run_with_a_mistyped_model_fails_like_the_real_run(tmp_path):
    for extra in (["--dry-run"], ["--dry-run", "--json"], []):
        r = _run(["train", "--model", "tiny-qwen", "--dataset", "sample", "--report-to", "none",
                  "--output-dir", str(tmp_path / "runs"), *extra], tmp_path)
        assert r.exit_code == 1, (extra, r.output)
        assert "could not load the config of 'tiny-qwen'" in r.output and "--model tiny-qwen2" in r.output
        assert "dry run: nothing trained" not in r.output and not (tmp_path / "runs").exists()


def test_hub_id_with_hf_hub_offline_says_so_not_check_your_network(monkeypatch):
    from rustcoder import modeling
    from rustcoder.errors import RustcoderError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RustcoderError) as e:
        modeling.load_config("nobody-here/not-a-model")
    text = str(e.value)
    assert "HF_HUB_OFFLINE=1 is set" in text and "unset hf_hub_offline" in text.lower()
    assert "network" not in text and "huggingface-cli" not in text


def test_unreachable_hub_fails_at_once_without_retries(monkeypatch):
    from rustcoder import hub, modeling
    from rustcoder.errors import RustcoderError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    t = time.monotonic()
    with pytest.raises(RustcoderError, match="cannot be reached from here"):
        modeling.load_config("nobody-here/not-a-model")
    assert time.monotonic() - t < 10  # huggingface_hub alone retries 5 times (about 30 s) first


def test_train_takes_a_config_file_as_its_argument_with_hugging_face_names(tmp_path):
    import json

    import yaml

    (tmp_path / "my.yaml").write_text(yaml.safe_dump({
        "preset": "aggressive-lr", "model_name_or_path": "tiny-qwen2", "dataset": "sample",
        "learning_rate": 3e-5, "gradient_accumulation_steps": 8, "lora_rank": 8, "num_train_epochs": 2}))
    r = _run(["train", "my.yaml", "--per-device-train-batch-size", "3", "--dry-run", "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output[r.output.index("{"):])
    cfg = plan["config"]
    assert (cfg["preset"], cfg["model"], cfg["lr"], cfg["grad_accum"], cfg["lora_r"], cfg["epochs"], cfg["batch_size"]) \
        == ("aggressive-lr", "tiny-qwen2", 3e-5, 8, 8, 2, 3)


def test_train_argument_errors_and_suggestions(tmp_path):
    r = _run(["train", "nope.yaml", "--dry-run"], tmp_path)
    assert r.exit_code == 2 and "config file 'nope.yaml' does not exist" in r.output and "presets show" in r.output
    (tmp_path / "bad.yaml").write_text("learning_rat: 1.0e-5\nlr: 1.0e-5\nlearning_rate: 2.0e-5\nbf16: true\n")
    r = _run(["train", "bad.yaml", "--dry-run"], tmp_path)
    assert r.exit_code == 2, r.output
    assert "'learning_rat' in bad.yaml (did you mean 'learning_rate', which sets 'lr'?)" in r.output
    assert "'lr' and 'learning_rate' in bad.yaml both set 'lr'" in r.output and "dtype: bfloat16" in r.output
    assert "logging_steps" not in r.output
    r = _run(["train", "--gradient-accumulation-step", "2", "--dry-run"], tmp_path)
    assert r.exit_code == 2 and "--gradient-accumulation-steps" in r.output


def test_train_argument_may_name_a_preset(tmp_path):
    r = _run(["train", "high-capacity", "--model", "tiny-qwen2", "--dataset", "sample", "--dry-run", "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    assert '"preset": "high-capacity"' in r.output


def _fake_run(root, name, lr, project="rustcoder-demo", created=1.0):
    import json

    import yaml

    run = root / name
    (run / "eval" / "sample-test").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "finished", "preset": "small-batch", "created_at": created,
                                                   "metrics": {"eval_loss": 1.5}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"project": project, "lr": lr, "batch_size": 2, "grad_accum": 4,
                                                     "lora_r": 16, "lora_alpha": 32, "epochs": 1}))
    (run / "metrics.json").write_text(json.dumps({"eval_loss": 1.5 + lr, "eval_mean_token_accuracy": 0.5, "steps": 3}))
    (run / "eval" / "sample-test" / "metrics.json").write_text(json.dumps({"models": {"adapter": {"categories": {
        "code_generation": {"primary": 50.0}, "a_very_long_category_name_for_the_axis": {"primary": 10.0}}}}}))
    return run


def test_runs_json_and_the_dashboard_project_is_the_runs_own(tmp_path):
    import json

    _fake_run(tmp_path / "runs", "old", 1e-5, project="rustcoder", created=1.0)
    _fake_run(tmp_path / "runs", "demo-small-batch", 2e-5, project="rustcoder-demo", created=2.0)
    r = _run(["runs", "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["name"] for row in rows] == ["demo-small-batch", "old"] and rows[0]["project"] == "rustcoder-demo"
    r = _run(["runs"], tmp_path)
    assert "--dashboard   (Trackio project rustcoder-demo; others here: rustcoder" in r.output


def test_compare_prints_a_table_that_fits_100_columns_and_writes_the_full_one(tmp_path):
    import json

    cats = {f"category_number_{i}": {"primary": float(i)} for i in range(15)}
    runs = []
    for name, lr in (("exp-small-batch-a-rather-long-experiment-name-10k", 1e-5), ("b", 5e-5)):
        run = _fake_run(tmp_path / "runs", name, lr)
        (run / "eval" / "sample-test" / "metrics.json").write_text(json.dumps({"models": {"adapter": {
            "categories": cats}}}))
        runs.append(run)
    r = _run(["compare", *map(str, runs), "--output-dir", str(tmp_path / "cmp")], tmp_path)
    assert r.exit_code == 0, r.output
    table = r.output.split("\nthe full table")[0].splitlines()
    assert table[0].split()[:3] == ["run", "status", "lr"] and len(table) >= 3
    assert max(map(len, table)) <= 100, "\n".join(table)
    assert "7.0" in table[1] and "category_number_3" not in r.output.split("the full table")[0]  # the mean
    full = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "category_number_14" in full and "exp-small-batch-a-rather-long-experiment-name-10k" in full


def test_compare_json_and_a_table_that_shows_what_differs(tmp_path):
    import json

    runs = [_fake_run(tmp_path / "runs", "a", 1e-5), _fake_run(tmp_path / "runs", "b", 5e-5)]
    r = _run(["compare", *map(str, runs), "--output-dir", str(tmp_path / "cmp"), "--json"], tmp_path)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["name"] for row in rows] == ["a", "b"] and rows[1]["hyperparameters"]["lr"] == 5e-5
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| lr | batch x accum | LoRA r / alpha | epochs |" in table
    assert "| a | finished | 1e-05 | 2 x 4 | 16 / 32 | 1 |" in table and "| b | finished | 5e-05 |" in table


def test_categories_plot_keeps_its_labels_inside_the_image(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from rustcoder.compare import collect_runs, plot_categories

    saved = []
    original = Figure.savefig

    def record(fig, path, **kw):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.get_tightbbox(renderer) if kw.get("bbox_inches") == "tight" else fig.bbox_inches
        label = fig.axes[0].yaxis.label.get_window_extent(renderer).transformed(fig.dpi_scale_trans.inverted())
        ticks = [t.get_window_extent(renderer).transformed(fig.dpi_scale_trans.inverted())
                 for t in fig.axes[0].get_xticklabels()]
        saved.append(all(box.x0 - 1e-6 <= b.x0 and b.x1 <= box.x1 + 1e-6 and box.y0 - 1e-6 <= b.y0
                         and b.y1 <= box.y1 + 1e-6 for b in [label, *ticks]))
        return original(fig, path, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    rows = collect_runs([_fake_run(tmp_path / "runs", "a", 1e-5)])
    assert plot_categories(rows, tmp_path / "categories.png") and saved == [True]


def test_piped_output_has_no_colour_codes():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import click
        from rustcoder import cli

        @cli.main.command("colour-probe")
        def probe():
            print('\\033[1m\\033[38;5;208mtrackio show --project "x"\\033[0m')  # as trackio prints its banner
            click.secho("warned", fg="red", err=True)

        cli.main(["colour-probe"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout + out.stderr and "warned" in out.stderr
    # Trackio's banner names `trackio show`, not on PATH in a fresh shell: the command that works instead
    assert "trackio show" not in out.stdout and "runs --dashboard --project x" in out.stdout


def test_training_logs_are_one_line_each_not_raw_dicts():
    from types import SimpleNamespace

    from rustcoder.progress import CompactProgress

    written = []
    cb = CompactProgress()
    cb.training_bar = SimpleNamespace(write=lambda text, file=None: written.append(text))
    state = SimpleNamespace(is_world_process_zero=True, global_step=4, max_steps=24)
    cb.on_log(None, state, None, logs={"eval_loss": "6.918", "eval_mean_token_accuracy": 0.0196, "epoch": 0.17})
    assert written == ["step 4/24: eval loss 6.918, eval token acc 0.0196"]


def test_the_trainer_shows_compact_progress_through_the_public_callback_api():
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler, ProgressCallback

    from rustcoder.progress import CompactProgress, use_compact_progress

    class Trainer:  # the two public Trainer methods use_compact_progress calls
        def __init__(self):
            self.handler = CallbackHandler([TrainerCallback(), ProgressCallback()], None, None, None, None)

        def pop_callback(self, cls):
            return self.handler.pop_callback(cls)

        def add_callback(self, cb):
            self.handler.add_callback(cb)

    t = Trainer()
    use_compact_progress(t)
    assert [type(c) for c in t.handler.callbacks] == [TrainerCallback, CompactProgress]


def test_peft_deprecation_warning_is_filtered_by_its_message_only(tiny_qwen2):
    """peft asks the model for `is_gradient_checkpointing` (deprecated in transformers 5) on every wrap."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rustcoder.terminal import quiet_known_warnings

    def wrap():
        model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet and quiet_known_warnings()
            get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
            warnings.warn("another FutureWarning", FutureWarning)
        return [str(w.message) for w in seen]

    import peft
    from packaging.version import Version

    quiet = False
    source = any("is_gradient_checkpointing" in m for m in wrap())
    assert source or Version(peft.__version__) >= Version("0.22"), "the pinned peft warns on every wrap"
    quiet = True  # the filter hides that warning (where it still comes) and nothing else
    assert [m for m in wrap() if "FutureWarning" in m or "gradient_checkpointing" in m] == ["another FutureWarning"]


def test_scores_plot_has_95_percent_intervals_and_n_per_category(tmp_path, monkeypatch):
    import json

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from rustcoder.eval.report import plot_scores, score_interval

    lo, hi = score_interval("pass", {"items": 2, "primary": 0.0})
    assert lo == 0.0 and 60 < hi < 70                                # 0 of 2 passing: Wilson, not a zero-width bar
    lo, hi = score_interval("pass", {"items": 400, "primary": 50.0})
    assert 44 < lo < 46 and 54 < hi < 56
    lo, hi = score_interval("chrf", {"items": 3, "primary": 40.0}, [30.0, 40.0, 50.0])
    assert abs((hi - lo) / 2 - 1.96 * 10 / 3 ** 0.5) < 1e-9
    assert score_interval("chrf", {"items": 1, "primary": 40.0}, [40.0]) == (None, None)

    m = {"primary_metric": {"code_generation": "pass", "code_summarization": "chrf"},
         "models": {"base": {"categories": {"code_generation": {"items": 5, "primary": 40.0},
                                            "code_summarization": {"items": 3, "primary": 40.0}}}},
         "suite": {"name": "s"}, "model": {"label": "m"}}
    (tmp_path / "scores.jsonl").write_text("\n".join(json.dumps(
        {"key": f"base:{i}:0", "model": "base", "category": "code_summarization", "id": str(i), "primary": v})
        for i, v in enumerate([30.0, 40.0, 50.0])))
    drawn = {}
    original_barh, original_labels = Axes.barh, Axes.set_yticklabels
    monkeypatch.setattr(Axes, "barh", lambda ax, *a, **kw: drawn.setdefault("xerr", kw.get("xerr"))
                        and original_barh(ax, *a, **kw))
    monkeypatch.setattr(Axes, "set_yticklabels", lambda ax, labels, **kw: drawn.setdefault("labels", labels)
                        and original_labels(ax, labels, **kw))
    assert plot_scores(m, tmp_path / "scores.png").is_file()
    low_err, high_err = drawn["xerr"]
    assert all(e > 0 for e in low_err + high_err)
    assert drawn["labels"] == ["code_generation (pass rate %, n=5)", "code_summarization (chrF, n=3)"]


def test_train_picks_a_run_name_new_to_the_trackio_project(tmp_path, monkeypatch):
    """A run name already in the Trackio project (from another output directory) is not reused."""
    from types import SimpleNamespace

    import rustcoder.artifacts as artifacts
    import rustcoder.train as train_module

    seen = {}

    def fake_train(cfg, **kw):
        seen["cfg"] = cfg
        return SimpleNamespace(run_dir=tmp_path / "runs" / cfg.run_name, adapter_dir=tmp_path / "a",
                               metrics={"eval_loss": 1.0, "eval_mean_token_accuracy": 0.5, "steps": 1,
                                        "wall_time_s": 1.0})

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(artifacts, "trackio_run_names",
                        lambda project: {"exp-small-batch-all"} if project == "team" else set())
    r = _run(["train", "--model", "tiny-qwen2", "--dataset", "sample", "--project", "team"], tmp_path)
    assert r.exit_code == 0, r.output
    assert seen["cfg"].run_name == "exp-small-batch-all-2"
    r = _run(["train", "--model", "tiny-qwen2", "--dataset", "sample", "--project", "other"], tmp_path)
    assert seen["cfg"].run_name == "exp-small-batch-all"


def test_hub_failures_of_datasets_and_merge_bases_name_the_real_cause_and_the_current_login(tmp_path, monkeypatch):
    """The dataset loader and the merge's base download say why the hub failed (here: HF_HUB_OFFLINE), like
    model loading does, not "check your network and huggingface-cli login"."""
    from rustcoder.errors import RustcoderError
    from rustcoder.merge.sources import local_base_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _run(["train", "--model", "tiny-qwen2", "--dataset", "nobody-here/no-data", "--dry-run"], tmp_path)
    assert r.exit_code == 1 and "HF_HUB_OFFLINE=1 is set" in r.output and "--dataset" in r.output, r.output
    assert "huggingface-cli" not in r.output and "network" not in r.output and "Traceback" not in r.output
    with pytest.raises(RustcoderError) as e:
        local_base_dir("nobody-here/no-model", None)
    assert "HF_HUB_OFFLINE=1 is set" in str(e.value) and "--base" in str(e.value)
    assert "huggingface-cli" not in str(e.value)


def test_train_without_trackio_names_the_install_or_report_to_none(tmp_path, tiny_qwen2, monkeypatch):
    """trackio missing (a broken install, or a GPU box with only the carried wheels): one message, exit 1, no
    traceback from inside the trainer; --report-to none trains."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    args = ["train", "--preset", "small-batch", "--model", str(tiny_qwen2), "--dataset", "sample", "--max-steps", "1",
            "--output-dir", str(tmp_path / "runs")]
    r = _run(args, tmp_path)
    assert r.exit_code == 1, r.output
    assert "Trackio" in r.output and "pip install trackio" in r.output and "--report-to none" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "runs").exists()


def test_every_package_and_data_directory_is_listed_for_the_wheel():
    """pyproject lists its packages (the suites live in top-level evals/, mapped to rustcoder.evals, which a
    find would not see): a new package under rustcoder/ must be listed, or the wheel would lack it."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "rustcoder").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert setuptools["package-dir"] == {"rustcoder.evals": "evals"} and (root / "evals" / "humaneval-rust.yaml").is_file()
    assert not (root / "rustcoder" / "evals").exists()


@pytest.mark.slow
def test_a_built_wheel_ships_the_suites_from_the_top_level_evals_directory(tmp_path):
    """`pip install .` (not editable): the wheel carries evals/ as rustcoder/evals/ and the loader finds it there,
    from any directory, away from the checkout."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for name in ("rustcoder", "evals"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("rustcoder-*.whl"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import rustcoder; from rustcoder.eval import suites\n"
            "print(rustcoder.__file__); print(suites.evals_dir()); print(sorted(suites.suite_files()))\n"
            "print(len(suites.load_items(suites.benchmark_suite('humaneval-rust')).items))\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=elsewhere,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    module, evals, names, items = out.stdout.split("\n")[:4]
    assert module.startswith(str(site)) and evals == str(site / "rustcoder" / "evals")
    assert {"humaneval-rust", "sample-test", "strandset-test"} <= set(eval(names)) and int(items) > 140


def test_printed_next_commands_work_from_any_directory_and_do_not_share_a_port(tmp_path, monkeypatch):
    """The demo's next commands name absolute paths, and the dashboard and the playground it suggests in a row
    listen on different ports (both used to be 7860)."""
    import re
    import shlex
    from pathlib import Path

    from rustcoder import dashboard
    from rustcoder.demo import DemoResult, next_commands
    from rustcoder.serve.options import ServeOptions

    monkeypatch.chdir(tmp_path)
    result = DemoResult(run_dir=Path("runs/demo-small-batch"), merged_dir=Path("runs/demo-small-batch/merged"))
    cmds = next_commands(result)
    for cmd, _ in cmds:
        words = shlex.split(cmd)
        assert Path(words[0]).is_absolute() or words[0] == "rustcoder"
        paths = [w for before, w in zip(words, words[1:]) if "runs/" in w or before == "--output-dir"]
        assert paths and all(Path(w).is_absolute() for w in paths), cmd  # paths work from anywhere
    ports = {int(p) for _, what in cmds for p in re.findall(r"127\.0\.0\.1:(\d+)", what)}
    assert ports == {dashboard.DEFAULT_PORT, ServeOptions.playground_port} and len(ports) == 2
    runs_port = next(p for p in main.commands["runs"].params if p.name == "port")
    assert runs_port.default == dashboard.DEFAULT_PORT != ServeOptions.playground_port


def test_serve_shows_an_engine_line_with_one_prefix():
    from rustcoder.serve.engine import engine_line

    assert engine_line("transformers", "[transformers] loading model") == "  [transformers] loading model"
    assert engine_line("vllm", "INFO started") == "  [vllm] INFO started"


@pytest.mark.slow
def test_dashboard_piped_has_no_colour_codes_and_ctrl_c_stops_it_cleanly(tmp_path):
    """`runs --dashboard | cat`: Trackio's own output without colour codes; Ctrl-C (SIGINT to the terminal's
    process group) stops it with exit 0 and no click "Aborted!"."""
    import os
    import signal
    import subprocess
    import sys

    from rustcoder.net import free_port

    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "rustcoder", "runs", "--dashboard", "--project", "p",
                             "--port", str(free_port())], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:  # until Trackio says where it listens
            lines.append(line)
            if "launched at" in line:
                break
        assert any("launched at" in line for line in lines), "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "".join(lines) + out + err
    assert proc.returncode == 0, text[-3000:]
    assert "\x1b" not in text and "Aborted!" not in text and "Traceback" not in text, text
    assert "dashboard stopped" in err
