"""Presets, precedence, validation and the CLI's handling of bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml
from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.config import (TrainConfig, load_preset, preset_names, resolve_config, steps_for)
from rustcoder.errors import ConfigError, UsageError

RESEARCH_RUNS = ("aggressive-lr", "baseline", "conservative-lr", "high-capacity", "small-batch")


def test_shipped_presets_are_the_research_five():
    assert preset_names() == sorted(RESEARCH_RUNS)


@pytest.mark.parametrize("name", RESEARCH_RUNS)
def test_every_preset_resolves_to_a_valid_config_of_its_own(name):
    """A preset is a described set of known keys that validates, and no two presets resolve to the same
    configuration (a copy-paste slip would make two runs of the study identical)."""
    assert load_preset(name)["description"].strip()
    cfg = resolve_config(name)
    assert cfg.preset == name and cfg.problems() == []
    others = [resolve_config(o).to_dict() | {"preset": None} for o in RESEARCH_RUNS if o != name]
    assert cfg.to_dict() | {"preset": None} not in others


@pytest.mark.parametrize("key, value, flag", [("lora_dropout", 1.5, "--lora-dropout"), ("lr", -1, "--lr"),
                                              ("lr_scheduler", "cosin", "--lr-scheduler"),
                                              ("grad_accum", "two", "--grad-accum")])
def test_an_edited_preset_with_an_impossible_value_is_refused_naming_the_flag(tmp_path, key, value, flag):
    """`presets show X > my.yaml`, then a bad edit: refused with the flag named (and a suggestion for a choice)."""
    values = load_preset("small-batch") | {key: value}
    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError) as e:
        resolve_config(None, f)
    assert any(p.startswith(flag) for p in e.value.problems), e.value.problems
    if key == "lr_scheduler":
        assert "did you mean 'cosine'" in str(e.value)


def test_every_preset_file_uses_only_known_keys():
    from rustcoder.config import field_names

    for name in preset_names():
        assert set(load_preset(name)) - {"description"} <= set(field_names()), name


def test_eval_and_train_settings_share_one_validation_style():
    """Both schemas report every problem at once, each naming its flag, through the same ConfigSchema."""
    from rustcoder.config import ConfigSchema
    from rustcoder.eval.config import EvalConfig

    train, evals = TrainConfig(lr=0, dtype="fp8"), EvalConfig(backend="nope", top_p=2)
    for cfg, flags in ((train, {"--lr", "--dtype"}), (evals, {"--backend", "--top-p"})):
        assert isinstance(cfg, ConfigSchema)
        with pytest.raises(ConfigError) as e:
            cfg.validate()
        assert {p.split(":")[0] for p in e.value.problems} == flags and len(e.value.problems) == 2


def test_precedence_defaults_preset_file_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 3.0e-5\nlora_r: 8\nbatch_size: 8\n")
    # preset beats defaults
    assert resolve_config("small-batch").batch_size == 2
    assert TrainConfig().batch_size == 4
    # file beats preset
    cfg = resolve_config("small-batch", cfg_file)
    assert (cfg.lr, cfg.lora_r, cfg.batch_size, cfg.grad_accum) == (3e-5, 8, 8, 2)
    # typed flags beat the file; untyped (None) flags do not
    cfg = resolve_config("small-batch", cfg_file, {"lr": 4e-5, "lora_r": None})
    assert (cfg.lr, cfg.lora_r) == (4e-5, 8)


def test_config_file_may_name_preset_but_explicit_preset_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: aggressive-lr\n")
    assert resolve_config(None, f).lr == 5e-5
    assert resolve_config("baseline", f).lr == 2e-5


def test_unknown_preset_suggests_closest():
    with pytest.raises(UsageError, match="did you mean 'aggressive-lr'"):
        resolve_config("agressive-lr")


def test_unknown_config_key_suggests_closest(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lora_rnk: 8\nlearnig_rate: 1e-4\n")  # lora_rank and learning_rate are accepted aliases
    with pytest.raises(ConfigError) as e:
        resolve_config("baseline", f)
    msg = str(e.value)
    assert "'lora_rnk'" in msg and "did you mean 'lora_rank', which sets 'lora_r'" in msg
    assert "'learnig_rate'" in msg and "did you mean 'learning_rate', which sets 'lr'" in msg


def test_impossible_values_reported_all_at_once_naming_flags():
    with pytest.raises(ConfigError) as e:
        resolve_config("baseline", overrides={"lr": 0.0, "lora_r": 0, "lora_dropout": 1.0, "warmup_ratio": 1.5,
                                              "profile_step": 0})
    problems = e.value.problems
    assert len(problems) == 5
    for flag in ("--lr", "--lora-r", "--lora-dropout", "--warmup-ratio", "--profile-step"):
        assert any(p.startswith(flag + ":") for p in problems), flag


@pytest.mark.parametrize("overrides", [{"lora_dropout": 0.0}, {"warmup_ratio": 0.0}, {"warmup_ratio": 1.0}])
def test_boundary_values_accepted(overrides):
    resolve_config("baseline", overrides=overrides)


def test_unreadable_value_in_file_names_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lora_r: sixteen\n")
    with pytest.raises(ConfigError, match="--lora-r"):
        resolve_config("baseline", f)


def test_unknown_category_rejected_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'bug_detection'"):
        resolve_config("baseline", overrides={"categories": ["bug_detect"]})


@pytest.mark.parametrize("rows, preset, expected", [
    (9000, "baseline", 563),          # research: ~562 (partial last accumulation makes a step)
    (9000, "small-batch", 2250),      # research: 2250
    (9000, "conservative-lr", 1126),  # research: 1125 (2 epochs x 563)
    (9000, "aggressive-lr", 563),
])
def test_step_arithmetic_matches_research(rows, preset, expected):
    assert steps_for(rows, resolve_config(preset))[1] == expected


# ---- CLI ----------------------------------------------------------------------------------------

def test_help_imports_no_torch():
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from rustcoder.cli import main
        for args in (["--help"], ["train", "--help"], ["serve", "--help"], ["merge", "--help"], ["eval", "--help"],
                     ["presets"], ["presets", "show", "baseline"]):
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 0, (args, r.output)
        heavy = [m for m in ("torch", "transformers", "peft", "trl", "datasets") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_help_lists_commands_and_train_flags():
    r = CliRunner().invoke(main, ["--help"])
    for cmd in ("train", "presets", "runs"):
        assert cmd in r.output
    r = CliRunner().invoke(main, ["train", "--help"])
    for flag in ("--preset", "--model", "--dataset", "-n", "--output-dir", "--run-name", "--config", "--dry-run",
                 "--resume", "--push-to-hub", "--lr", "--batch-size", "--grad-accum", "--epochs",
                 "--warmup-ratio", "--lora-r", "--lora-alpha", "--lora-dropout", "--seed", "--categories",
                 "--max-bad-fraction", "--project"):
        assert flag in r.output, flag


def test_presets_show_round_trips_as_config(tmp_path):
    r = CliRunner().invoke(main, ["presets", "show", "high-capacity"])
    assert r.exit_code == 0
    f = tmp_path / "hc.yaml"
    f.write_text(r.output)
    values = yaml.safe_load(r.output)
    assert values["lora_r"] == 32 and values["lora_alpha"] == 64
    cfg = resolve_config("baseline", f)  # the file's values beat the baseline preset
    assert (cfg.lora_r, cfg.lora_dropout) == (32, 0.1)


@pytest.mark.parametrize("args, code, needle", [
    (["train", "--preset", "nope", "--dry-run"], 2, "unknown preset"),
    (["train", "--lr", "-1", "--lora-r", "0", "--dry-run"], 2, "--lora-r"),
    (["train", "--config", "/nonexistent.yaml", "--dry-run"], 2, "does not exist"),
    (["train", "--model", "tiny-qwen2", "--dataset", "/nonexistent/rows.jsonl", "--dry-run"], 1,
     "neither an existing file"),
    (["presets", "show", "smallbatch"], 2, "did you mean 'small-batch'"),
])
def test_cli_bad_input_clear_message_no_traceback(args, code, needle):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert "Traceback" not in r.output


def test_resume_accepts_the_categories_the_run_was_started_with(tmp_path, monkeypatch):
    """`train --resume --categories a,b` names the run's own categories: not a change (was always refused)."""
    import rustcoder.rundir as rundir

    (tmp_path / "runs" / "r").mkdir(parents=True)
    cfg = resolve_config("small-batch", overrides=dict(categories="bug_detection,code_review", run_name="r"))
    monkeypatch.setattr(rundir, "load_run_config", lambda run_dir: cfg)
    from rustcoder.rundir import resume_target

    got, run_dir = resume_target({"output_dir": str(tmp_path / "runs"), "run_name": "r",
                                   "categories": "bug_detection,code_review"})
    assert got is cfg and run_dir.name == "r"
    with pytest.raises(UsageError, match="cannot change --categories"):
        resume_target({"output_dir": str(tmp_path / "runs"), "run_name": "r", "categories": "bug_detection"})


def test_renamed_settings_still_work_under_their_old_names_and_say_the_new_one(tmp_path):
    """data_path -> forward_layout, fast_paths -> fast_dropout: old YAML keys, --set values and overrides still
    set the field, each with a warning naming the new key; both names at once is refused; a saved run config with
    the old names loads silently (a run started before the rename resumes)."""
    import warnings

    from rustcoder.config import RenamedSettingWarning, config_from_dict
    from rustcoder.sweep import parse_settings

    f = tmp_path / "old.yaml"
    f.write_text("data_path: padded\nfast_paths: false\n")
    with pytest.warns(RenamedSettingWarning) as seen:
        cfg = resolve_config(config_file=f)
    assert (cfg.forward_layout, cfg.fast_dropout) == ("padded", False)
    messages = [str(w.message) for w in seen]
    assert any("'data_path'" in m and "'forward_layout' (--forward-layout)" in m and str(f) in m for m in messages)
    assert any("'fast_paths'" in m and "'fast_dropout' (--fast-dropout)" in m for m in messages)
    with pytest.warns(RenamedSettingWarning, match="forward_layout"):
        assert resolve_config(overrides={"data_path": "grouped"}).forward_layout == "grouped"
    with pytest.warns(RenamedSettingWarning, match="--set"):
        assert parse_settings(["fast-paths=true"]) == {"fast_dropout": True}
    f.write_text("data_path: padded\nforward_layout: grouped\n")
    with pytest.warns(RenamedSettingWarning), pytest.raises(ConfigError, match="both set 'forward_layout'"):
        resolve_config(config_file=f)
    saved = TrainConfig(forward_layout="padded", fast_dropout=True).to_dict()
    saved["data_path"], saved["fast_paths"] = saved.pop("forward_layout"), saved.pop("fast_dropout")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old_run = config_from_dict(saved)
    assert (old_run.forward_layout, old_run.fast_dropout) == ("padded", True)


def test_renamed_flags_still_work_hidden_from_help(monkeypatch):
    """`train --data-path X --no-fast-paths` sets forward_layout and fast_dropout (with the warning); --help shows
    only the new flags."""
    import rustcoder.modeling as modeling
    import rustcoder.train as train_module
    from rustcoder.config import RenamedSettingWarning

    seen = {}

    def stop(cfg, **kw):
        seen["cfg"] = cfg
        raise UsageError("planned")

    monkeypatch.setattr(modeling, "load_config", lambda *a, **k: None)
    monkeypatch.setattr(train_module, "plan_training", stop)
    with pytest.warns(RenamedSettingWarning) as warned:
        r = CliRunner().invoke(main, ["train", "--data-path", "grouped", "--no-fast-paths", "--dry-run"])
    renamed = [str(w.message).split(" in ")[0] for w in warned if w.category is RenamedSettingWarning]
    assert sorted(renamed) == ["'data_path' (--data-path)", "'fast_paths' (--fast-paths)"]
    assert r.exit_code == 2 and "planned" in r.output, r.output
    assert (seen["cfg"].forward_layout, seen["cfg"].fast_dropout) == ("grouped", False)
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--forward-layout" in help_text and "--fast-dropout" in help_text
    assert "--data-path" not in help_text and "--fast-paths" not in help_text


def test_a_renamed_setting_warns_the_command_line_user_in_one_plain_line(monkeypatch):
    """The CLI shows rustcoder's own warnings as `warning: MESSAGE` (Python printed `/path/cli.py:144:
    RenamedSettingWarning: ...` and then the source line that raised it); other warnings keep Python's format."""
    import warnings

    from rustcoder import terminal
    from rustcoder.config import RenamedSettingWarning, current_name

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    terminal.install()
    assert warnings.formatwarning is terminal.format_warning
    with pytest.warns(RenamedSettingWarning) as seen:
        assert current_name("data_path", "the command line") == "forward_layout"
    shown = warnings.formatwarning(seen[0].message, seen[0].category, seen[0].filename, seen[0].lineno)
    assert shown.startswith("warning: 'data_path' (--data-path) in the command line is deprecated")
    assert shown.count("\n") == 1 and "forward_layout" in shown and "RenamedSettingWarning" not in shown
    other = warnings.formatwarning("a library's warning", DeprecationWarning, "lib.py", 3)
    assert other.startswith("lib.py:3: DeprecationWarning: a library's warning")  # Python's own format
