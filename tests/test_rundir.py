"""The run-directory contract (rustcoder.rundir): kinds, the base-model precedence, newest run and merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rustcoder import rundir
from rustcoder.errors import UsageError


def _run(root: Path, name: str, manifest: dict, adapter_cfg: dict | None = None) -> Path:
    run = root / name
    (run / "adapter").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_cfg or {}))
    return run


def test_kinds(tmp_path):
    run = _run(tmp_path, "r", {"status": "finished"})
    (run / "merged").mkdir()
    (run / "merged" / "config.json").write_text("{}")
    (run / "merged" / "merge_report.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert [rundir.kind_of(p) for p in (run, run / "adapter", run / "merged", tmp_path / "model", tmp_path / "x")] \
        == ["run", "adapter", "merged", "model", None]
    assert rundir.adapter_dir_of(run) == (run / "adapter", run)
    assert rundir.adapter_dir_of(run / "adapter") == (run / "adapter", run)


def test_base_precedence_override_local_path_manifest_revision_adapter_config(tmp_path):
    local = tmp_path / "Qwen-local"
    local.mkdir()
    cfg = {"base_model_name_or_path": "Qwen/From-Adapter", "revision": "r-adapter"}
    full = {"base_model": "Qwen/Qwen2-7B-Instruct", "base_model_revision": "r-run", "base_model_path": str(local)}
    run = _run(tmp_path, "a", full, cfg)
    assert rundir.base_of(run, override="other") == rundir.BaseRef("other", None, "Qwen/Qwen2-7B-Instruct", "override")
    assert (rundir.base_of(run).name, rundir.base_of(run).source) == (str(local), "manifest path")
    local.rmdir()  # the directory the run loaded is gone: the hub id at the run's revision
    ref = rundir.base_of(run / "adapter")
    assert (ref.name, ref.revision, ref.source) == ("Qwen/Qwen2-7B-Instruct", "r-run", "manifest")
    bare = _run(tmp_path, "b", {}, cfg)  # no manifest record: the adapter config's
    assert (rundir.base_of(bare).name, rundir.base_of(bare).revision) == ("Qwen/From-Adapter", "r-adapter")
    with pytest.raises(UsageError, match="does not say which base model"):
        rundir.base_of(_run(tmp_path, "c", {}, {}))


def test_newest_run_and_newest_merged(tmp_path):
    old = _run(tmp_path, "old", {"created_at": 1, "status": "finished"})
    new = _run(tmp_path, "new", {"created_at": 2, "status": "running"})
    assert rundir.list_runs(tmp_path) == [new, old]
    assert rundir.newest_run(tmp_path) == old and rundir.newest_run(tmp_path, status=None) == new
    with pytest.raises(UsageError, match="no merged model"):
        rundir.newest_merged(tmp_path)
    for run, t, passed in ((old, 5, True), (new, 9, False)):  # a failed verification never counts
        (run / "merged").mkdir()
        (run / "merged" / "config.json").write_text("{}")
        (run / "merged" / "merge_report.json").write_text(json.dumps({"created_at": t,
                                                                       "verification": {"passed": passed}}))
    assert rundir.newest_merged(tmp_path) == (old / "merged").resolve()


def test_run_config_is_read_and_typed(tmp_path):
    run = _run(tmp_path, "r", {})
    with pytest.raises(UsageError, match="not a rustcoder run directory"):
        rundir.load_run_config(run)
    (run / "config.yaml").write_text("preset: small-batch\nlr: 3.0e-5\ncategories: [bug_detection]\n")
    assert rundir.read_run_config(run)["lr"] == 3e-5
    cfg = rundir.load_run_config(run)
    assert cfg.lr == 3e-5 and cfg.categories == ["bug_detection"]
