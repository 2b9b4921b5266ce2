"""Self-describing artifact folders: atomic writes, run directories and their manifests.

A run directory holds everything the next stage needs (config, manifest, adapter, tokenizer and chat
template, metrics), so ``rustcoder eval`` and ``rustcoder merge`` need no repeated flags.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from .rundir import (ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG, DATA_SUMMARY, EVAL_SPLIT, MANIFEST,  # noqa: F401
                     METRICS, TRAIN_IDS, list_runs, newest_run)  # the run-directory contract lives in rundir


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file so that readers see either the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_yaml(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's result."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("rustcoder", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "trackio"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the rustcoder checkout (None when not installed from git)."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def push_folder(folder: str | Path, repo: str, what: str) -> str:
    """Upload a folder (adapter or merged model, with its model card) to a hub model repo; returns its URL.

    A failed push raises a RustcoderError that says the files are safe and how to retry.
    """
    from huggingface_hub import HfApi

    from .errors import RustcoderError

    try:
        api = HfApi()
        api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message=f"Upload rustcoder {what}")
    except Exception as e:
        raise RustcoderError(f"push to {repo!r} failed: {type(e).__name__}: {e}\nThe {what} is safe in {folder}; "
                             f"log in with `hf auth login` and push it again with "
                             f"`hf upload {repo} {folder}`.") from None
    return f"https://huggingface.co/{repo}"


def missing_path_message(name: str, what: str = "path") -> str | None:
    """What to say when NAME reads as a local path that does not exist; None when it exists or is a hub id.

    ``runs/nope`` is a path when ``runs/`` exists here (a hub id ``org/name`` would not start with a
    local directory); so is anything starting with ``.``, ``/`` or ``~``.
    """
    path = Path(name).expanduser()
    if path.exists():
        return None
    parts = Path(name).parts
    local = (name.startswith((".", "/", "~")) or name.endswith("/") or len(parts) > 2
             or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir()))
    if not local:
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        entries = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
    except OSError:
        entries = []
    where = f" {str(parent) if str(parent) != '.' else 'the current directory'} holds: " + (
        ", ".join(entries[:12]) + (f" ... ({len(entries)} entries)" if len(entries) > 12 else "")
        if entries else "nothing") + "."
    return f"{what} {name!r} does not exist.{where}"


def trackio_run_names(project: str) -> set[str]:
    """Run names already logged to a local Trackio project (empty when Trackio or the project is absent)."""
    try:
        from trackio.sqlite_storage import SQLiteStorage

        return set(SQLiteStorage.get_runs(project))
    except Exception:  # no trackio, no database yet, another schema: nothing known
        return set()


def unique_run_name(output_dir: str | Path, name: str, project: str | None = None) -> str:
    """NAME, or NAME-2, NAME-3 ...: free both as a directory under output_dir and as a run in the Trackio
    project (Trackio appends to a reused run name, merging two runs' curves into one)."""
    taken = trackio_run_names(project) if project else set()
    candidate, n = name, 2
    while (Path(output_dir) / candidate).exists() or candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def run_project(run_dir: str | Path) -> str | None:
    """The Trackio project a run logged to (from its config.yaml), or None."""
    path = Path(run_dir) / CONFIG
    try:
        return (yaml.safe_load(path.read_text()) or {}).get("project")
    except (OSError, yaml.YAMLError):
        return None


def new_manifest(cfg, run_dir: Path, data_summary: dict, template: str, base_resolved: str) -> dict:
    """The manifest written when a run starts; updated as it progresses."""
    return {
        "kind": "rustcoder-run",
        "run_name": run_dir.name,
        "status": "running",
        "created_at": time.time(),
        "preset": cfg.preset,
        "base_model": cfg.model,
        "base_model_path": base_resolved,
        "base_model_revision": cfg.model_revision,
        "dataset": {"source": cfg.dataset, "revision": cfg.dataset_revision,
                    "fingerprint": data_summary.get("fingerprint"),
                    "train_rows": data_summary.get("train_rows"), "eval_rows": data_summary.get("eval_rows")},
        "chat_template": template,
        "adapter_dir": ADAPTER_DIR,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }


def update_manifest(run_dir: Path, **changes) -> dict:
    """Merge changes into a run's manifest (atomically) and return it."""
    path = Path(run_dir) / MANIFEST
    manifest = read_json(path) if path.exists() else {}
    manifest.update(changes)
    atomic_write_json(path, manifest)
    return manifest
