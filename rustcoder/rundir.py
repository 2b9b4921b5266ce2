"""The run-directory contract: what a run, an adapter and a merged directory hold, how to tell them apart,
which base model (and revision) an adapter belongs to, the newest finished run and the newest merged model.

train writes this contract; merge, eval, serve, compare and the CLI read it only through this module, so
its names and precedence rules exist once. Light: standard library and PyYAML.

    runs/NAME/                   a run: manifest.json, config.yaml, adapter/, metrics.json, checkpoints/, ...
    runs/NAME/adapter/           a PEFT adapter: adapter_config.json, weights, tokenizer, chat_template.jinja
    runs/NAME/merged/            a merged model: config.json, weights, tokenizer, merge_report.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
DATA_SUMMARY = "data_summary.json"
TRAIN_IDS = "train_ids.txt"
EVAL_SPLIT = "eval_split.jsonl"
MERGED_DIR = "merged"
MERGE_REPORT = "merge_report.json"
ADAPTER_CONFIG = "adapter_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
MODEL_CONFIG = "config.json"

KINDS = ("run", "adapter", "merged", "model")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kind_of(path: str | Path) -> str | None:
    """"run" (a manifest, no model config), "adapter" (adapter_config.json, no model config), "merged" (a model
    with merge_report.json), "model" (any other model directory with config.json), or None."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / MODEL_CONFIG).is_file():
        return "merged" if (p / MERGE_REPORT).is_file() else "model"
    if (p / MANIFEST).is_file():
        return "run"
    if (p / ADAPTER_CONFIG).is_file():
        return "adapter"
    return None


def adapter_dir_of(path: str | Path) -> tuple[Path, Path | None]:
    """(adapter directory, run directory or None) for a run directory or an adapter directory."""
    p = Path(path)
    if (p / ADAPTER_CONFIG).is_file():
        parent = p.parent
        return p, parent if (parent / MANIFEST).is_file() and p.name == ADAPTER_DIR else None
    return p / ADAPTER_DIR, p


def read_manifest(run_dir: str | Path) -> dict:
    """A run's manifest ({} when there is none or it cannot be read)."""
    return _read_json(Path(run_dir) / MANIFEST)


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """An adapter's adapter_config.json ({} when there is none or it cannot be read)."""
    return _read_json(Path(adapter_dir) / ADAPTER_CONFIG)


def read_merge_report(merged_dir: str | Path) -> dict | None:
    """A merged model's merge_report.json, or None when it is not a complete rustcoder merge."""
    p = Path(merged_dir) / MERGE_REPORT
    return _read_json(p) if p.is_file() else None


@dataclass
class BaseRef:
    """The base model an adapter belongs to.

    name: what to load (a local directory or a hub id); revision: the hub revision to load it at (None for
    a local directory, or when unknown); recorded: the name as the run recorded it (for messages and model
    cards); source: which rule chose it ("override", "manifest path", "manifest", "adapter config")."""

    name: str
    revision: str | None
    recorded: str
    source: str


def base_of(path: str | Path, override: str | None = None) -> BaseRef:
    """The base model of a run or adapter directory, by one precedence: an explicit override (--base), the
    local directory the run loaded (manifest ``base_model_path``, when it still exists), the run's
    ``base_model`` at ``base_model_revision``, then adapter_config.json's ``base_model_name_or_path`` at its
    ``revision``. Raises UsageError when none says."""
    adapter_dir, run_dir = adapter_dir_of(path)
    manifest = read_manifest(run_dir) if run_dir is not None else {}
    adapter_cfg = read_adapter_config(adapter_dir)
    recorded = manifest.get("base_model") or adapter_cfg.get("base_model_name_or_path") or ""
    if override:
        return BaseRef(str(override), None, recorded or str(override), "override")
    local = manifest.get("base_model_path")
    if local and Path(local).is_dir():
        return BaseRef(str(local), None, recorded or str(local), "manifest path")
    if manifest.get("base_model"):
        return BaseRef(manifest["base_model"], manifest.get("base_model_revision"), recorded, "manifest")
    if adapter_cfg.get("base_model_name_or_path"):
        return BaseRef(adapter_cfg["base_model_name_or_path"], adapter_cfg.get("revision"), recorded,
                       "adapter config")
    raise UsageError(f"{adapter_dir} does not say which base model it was trained on; pass the base explicitly "
                     "(--base / --base-model ID_OR_DIR).")


def list_runs(output_dir: str | Path) -> list[Path]:
    """Run directories (those with a manifest) under output_dir, newest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / MANIFEST).is_file()]
    return sorted(runs, key=lambda p: read_manifest(p).get("created_at", 0), reverse=True)


def newest_run(output_dir: str | Path = "runs", status: str | None = "finished") -> Path:
    """The newest run directory (with the given status); a clear error when there is none."""
    for run in list_runs(output_dir):
        if status is None or read_manifest(run).get("status") == status:
            return run
    what = f"{status} training run" if status else "training run"
    raise UsageError(f"no {what} found under {str(output_dir)!r}. Train one first "
                     "(`rustcoder train --preset small-batch`), or pass a run directory.")


def resolve_name(name: str | None, runs_dir: str | Path = "runs", *, hub_ids: bool = True) -> str | None:
    """What a MODEL / RUN_DIR argument names, the way a user means it, before anything loads or is written.

    An existing path stays as it is; a bare NAME that is a run under runs_dir becomes that run's path; a bare
    name that is neither a run nor a built-in tiny model (nor in the hub cache) is an error that lists the
    runs, and so is RUNS_DIR/NAME of a missing run (it would otherwise be read as a hub id). With ``hub_ids``
    an ``org/name`` passes through; while the hub is offline it must be in the hub cache. eval, serve and merge
    resolve names here, so the same name means the same thing to each.
    """
    if name is None:
        return None
    path = Path(name).expanduser()
    if path.exists():
        return name
    runs = Path(runs_dir)
    parts = Path(name).parts
    if len(parts) == 1 and not name.startswith((".", "~")):
        if (runs / name).exists():
            return str(runs / name)
        from .tiny import TINY_MODELS

        if name in TINY_MODELS or (hub_ids and _cached_hub_model(name)):
            return name
        _no_such_run(parts[0], runs, tiny=hub_ids)
    if len(parts) == 2 and Path(parts[0]) in (runs, Path(runs.name)) and not name.startswith(("/", "~")):
        _no_such_run(parts[1], runs, tiny=hub_ids)  # runs/NAME: a run, never a hub org called "runs"
    if hub_ids and len(parts) == 2 and not name.startswith((".", "/", "~")) and not (Path(parts[0]).is_dir()):
        from . import hub

        if not hub.in_hub_cache(name):
            if hub.settle_offline():
                raise UsageError(f"{name!r} is not a local directory. "
                                 + hub.hub_hint(name, "pass a run directory, a merged model directory or tiny-qwen2"))
            if hub.repo_missing(name):
                raise UsageError(f"no model {name!r} on the hub, and it is not a local directory. Check the id; for "
                                 "a private repo log in with `hf auth login` (or export HF_TOKEN=...).")
    return name


def built_on_tiny(name: str | None, runs_dir: str | Path = "runs") -> bool:
    """Whether MODEL (None: the newest finished run under runs_dir) is a built-in tiny model, or a run, adapter or
    merge of one: its answers are random, so long generations cost minutes and show nothing more."""
    from .tiny import TINY_MODELS

    if name is None:
        try:
            name = str(newest_run(runs_dir))
        except UsageError:
            return False
    if name in TINY_MODELS:
        return True
    path = Path(name).expanduser()
    kind = kind_of(path)
    if kind in ("run", "adapter"):
        try:
            base = base_of(path)
        except UsageError:
            return False
        return base.recorded in TINY_MODELS or (Path(base.name) / "rustcoder_tiny.json").is_file()
    if kind == "merged":
        recorded = (read_merge_report(path) or {}).get("base") or {}
        return recorded.get("name") in TINY_MODELS or recorded.get("trained_on") in TINY_MODELS
    return kind == "model" and (path / "rustcoder_tiny.json").is_file()


def _cached_hub_model(name: str) -> bool:
    from .hub import in_hub_cache

    return in_hub_cache(name)


def _no_such_run(name: str, runs: Path, *, tiny: bool) -> None:
    from .errors import did_you_mean

    found = [p.name for p in list_runs(runs)]  # runs first, newest first; then other directories (unfinished)
    if runs.is_dir():
        found += sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name not in found)
    where = str(runs.resolve())
    if not runs.is_dir():
        have = f"there is no {where} (run from the directory that holds runs/, or pass --runs-dir / a path)"
    else:
        have = ("it holds: " + ", ".join(found[:10]) + (f" ... ({len(found)} in all)" if len(found) > 10 else "")
                if found else "it is empty")
    hint = did_you_mean(name, found) if found else ""
    others = ("; a hub id has the form org/name (e.g. Qwen/Qwen2-7B-Instruct), a built-in tiny model is "
              "tiny-qwen2 or tiny-qwen3, a directory path works too") if tiny else "; pass a run directory path"
    raise UsageError(f"no run named {name!r} in {where}{hint}; {have}{others}.")


def resume_target(overrides: dict):
    """(config, run_dir) of the run ``train --resume`` continues: --run-name under --output-dir, else the newest
    unfinished run there; typed changes to its config are refused (a resumed run keeps its config)."""
    output_dir = overrides.get("output_dir") or "runs"
    name = overrides.get("run_name")
    if name:
        run_dir = Path(output_dir) / name
        if not run_dir.is_dir():
            raise UsageError(f"no run {name!r} under {output_dir!r} to resume. "
                             f"Existing runs: {', '.join(p.name for p in list_runs(output_dir)) or 'none'}.")
    else:
        unfinished = [p for p in list_runs(output_dir) if read_manifest(p).get("status") != "finished"]
        if not unfinished:
            raise UsageError(f"no unfinished run under {output_dir!r} to resume; pass --run-name NAME.")
        run_dir = unfinished[0]
    from .config import coerce_field

    cfg = load_run_config(run_dir)
    changed = [k for k, v in overrides.items()  # compared as the config stores them ("a,b" is a list)
               if v is not None and k not in ("output_dir", "run_name") and getattr(cfg, k) != coerce_field(k, v)]
    if changed:
        raise UsageError(f"cannot change {', '.join('--' + k.replace('_', '-') for k in changed)} when resuming "
                         f"{run_dir.name}: a resumed run keeps its config. Start a new run instead.")
    return cfg, run_dir


def merged_dirs_of(run_dir: str | Path) -> list[Path]:
    """Where a run's merged models may be: RUN/merged and wherever its manifest says it was merged to."""
    run_dir = Path(run_dir)
    found = [run_dir / MERGED_DIR]
    recorded = read_manifest(run_dir).get("merged_dir")
    if recorded and Path(recorded) != found[0]:
        found.append(Path(recorded))
    return found


def newest_merged(runs_dir: str | Path = "runs") -> Path:
    """The most recently merged model among the runs under runs_dir (what `rustcoder serve` serves).

    Looks at RUN/merged and wherever a run's manifest says it was merged to; only complete merges (with
    merge_report.json and config.json) whose verification passed or was skipped count."""
    found: list[tuple[float, Path]] = []
    for run in list_runs(runs_dir):
        for c in merged_dirs_of(run):
            report = read_merge_report(c)
            if report is not None and (c / MODEL_CONFIG).is_file():
                if (report.get("verification") or {}).get("passed") is not False:
                    found.append((report.get("created_at", 0), c.resolve()))
    if not found:
        raise UsageError(f"no merged model under {str(runs_dir)!r}. Merge a run first: `rustcoder merge` "
                         "(merges the newest finished run).")
    return max(found, key=lambda x: x[0])[1]


def read_run_config(run_dir: str | Path) -> dict:
    """A run's saved config.yaml as a plain dict ({} when absent); see load_run_config for the typed one."""
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def load_run_config(run_dir: str | Path):
    """The resolved TrainConfig a run was started with (validated like any config)."""
    from .config import config_from_dict

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise UsageError(f"{run_dir} is not a rustcoder run directory (no {CONFIG}).")
    return config_from_dict(read_run_config(run_dir))


def new_run_dir(cfg) -> Path:
    """A new, unique run directory for a TrainConfig (OUTPUT_DIR/RUN_NAME, exp-PRESET-SIZE by default, with a
    -2, -3 ... suffix when taken)."""
    from .config import default_run_name

    return unique_run_dir(cfg.output_dir, cfg.run_name or default_run_name(cfg))


def unique_run_dir(output_dir: str | Path, name: str) -> Path:
    """``output_dir/name``, or name-2, name-3... when taken (Trackio appends to a reused run name)."""
    root = Path(output_dir)
    candidate = root / name
    n = 2
    while candidate.exists():
        candidate = root / f"{name}-{n}"
        n += 1
    return candidate
