"""What MODEL names: a run directory, an adapter directory, a merged directory, a hub id or an
endpoint's served model, resolved into the targets to evaluate and what the artifact says about
itself (base model, chat template, training data and training row ids).

Standard library only: nothing is loaded here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import artifacts, rundir
from ..errors import UsageError
from .backends import ModelTarget



@dataclass
class ResolvedModel:
    """The model to evaluate, where its facts came from, and its base (for --compare-base)."""

    kind: str  # run, adapter, merged, model, endpoint, reference, predictions
    label: str  # for people: run name, directory or hub id
    target: ModelTarget | None
    base: ModelTarget | None = None  # None: no base known (compare-base needs --base-model)
    run_dir: Path | None = None
    manifest: dict = field(default_factory=dict)
    train_ids: set[str] | None = None
    train_ids_source: str | None = None
    eval_split_ids: set[str] | None = None
    trained_dataset: str | None = None
    trained_dataset_revision: str | None = None
    max_length: int | None = None
    picked_newest: bool = False
    slug: str = "model"


def slug(text: str) -> str:
    """A directory-safe short name (Qwen/Qwen2-7B -> qwen-qwen2-7b)."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-")[:80] or "model"


def read_ids(path: Path) -> set[str]:
    """Row ids, one per line."""
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _adapter_identity(adapter_dir: Path) -> dict:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        p = adapter_dir / name
        if p.is_file():
            st = p.stat()
            h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return {"adapter_dir": str(adapter_dir.resolve()), "adapter_fingerprint": h.hexdigest()[:16]}


def _template(adapter_or_model: Path) -> str | None:
    p = adapter_or_model / "chat_template.jinja"
    return p.read_text() if p.is_file() else None


def _run_facts(res: ResolvedModel, run_dir: Path) -> None:
    res.run_dir = run_dir
    res.manifest = artifacts.read_json(run_dir / artifacts.MANIFEST)
    ids_path = run_dir / artifacts.TRAIN_IDS
    if ids_path.is_file():
        res.train_ids, res.train_ids_source = read_ids(ids_path), str(ids_path)
    split_path = run_dir / artifacts.EVAL_SPLIT
    if split_path.is_file():
        from ..data.strandset import iter_records

        res.eval_split_ids = {row.get("id") for _, row in iter_records(split_path, "one held-out row with its id")}
    ds = res.manifest.get("dataset") or {}
    res.trained_dataset, res.trained_dataset_revision = ds.get("source"), ds.get("revision")
    cfg = rundir.read_run_config(run_dir)
    res.max_length = cfg.get("max_length")
    res.trained_dataset = res.trained_dataset or cfg.get("dataset")


def resolve_eval_targets(model: str | None, *, runs_dir: str = "runs", base_model: str | None = None,
                         endpoint: str | None = None) -> ResolvedModel:
    """The targets MODEL names (None: the newest finished run under runs_dir) and its base, without loading
    anything. (``modeling.resolve_model`` is the other resolution: a name to a loadable path.)"""
    from ..modeling import resolve_model as resolve_path

    if endpoint:
        name = model
        target = ModelTarget("model", "endpoint", name or endpoint, endpoint=endpoint, served_name=name,
                             identity={"endpoint": endpoint, "served_name": name})
        base = None
        if base_model:
            base = ModelTarget("base", "endpoint", base_model, endpoint=endpoint, served_name=base_model,
                               identity={"endpoint": endpoint, "served_name": base_model})
        return ResolvedModel("endpoint", name or endpoint, target, base, slug=slug(name or "endpoint"))

    picked = model is None
    if picked:
        model = str(rundir.newest_run(runs_dir))
    missing = artifacts.missing_path_message(model, "MODEL")
    if missing:
        raise UsageError(missing + " Pass a run directory (runs/NAME), a merged or adapter directory, or a hub id; "
                         "without MODEL, the newest finished run under --runs-dir is evaluated.")
    path = Path(model).expanduser()

    # run directory (manifest + adapter) or a bare adapter directory
    adapter_dir = None
    run_dir = None
    if (path / artifacts.MANIFEST).is_file() and (path / artifacts.ADAPTER_DIR / "adapter_config.json").is_file():
        run_dir, adapter_dir = path, path / artifacts.ADAPTER_DIR
    elif (path / "adapter_config.json").is_file():
        adapter_dir = path
        if path.name == artifacts.ADAPTER_DIR and (path.parent / artifacts.MANIFEST).is_file():
            run_dir = path.parent
    elif (path / artifacts.MANIFEST).is_file() and not (path / "config.json").is_file():
        status = artifacts.read_json(path / artifacts.MANIFEST).get("status")
        raise UsageError(f"run {path} has no adapter yet (status {status!r}): finish or resume the training "
                         "(`rustcoder train --resume`), or pick another run.")
    if adapter_dir is not None:
        res = ResolvedModel("run" if run_dir else "adapter", (run_dir or adapter_dir).name, None,
                            picked_newest=picked)
        if run_dir:
            _run_facts(res, run_dir)
        ref = rundir.base_of(adapter_dir, override=base_model)  # the one precedence rule
        base_path = ref.name if ref.source == "manifest path" else resolve_path(ref.name)  # hub id / tiny name
        revision = ref.revision
        template = _template(adapter_dir)
        ident = _adapter_identity(adapter_dir) | {"base": base_path}
        res.target = ModelTarget("adapter", "local", base_path, path=base_path, revision=revision,
                                 adapter_dir=str(adapter_dir), chat_template=template, identity=ident)
        res.base = ModelTarget("base", "local", base_path, path=base_path, revision=revision,
                               adapter_dir=str(adapter_dir), adapter_enabled=False, chat_template=template,
                               identity={"base": base_path, "adapter_disabled": True})
        res.slug = slug(res.label)
        return res

    # merged (or any) model directory, or a hub id / built-in tiny model
    resolved = resolve_path(model)
    is_dir = Path(resolved).is_dir()
    given_dir = Path(model).expanduser().is_dir()
    name = Path(resolved).name if given_dir else model  # a path's folder name, else the hub id / tiny name
    if given_dir and name in ("merged", artifacts.ADAPTER_DIR):  # RUN/merged: say whose
        name = f"{Path(resolved).parent.name}-{name}"
    res = ResolvedModel("model", model, None, picked_newest=picked, slug=slug(name))
    tag = "model"
    report_path = Path(resolved) / rundir.MERGE_REPORT if is_dir else None
    if report_path is not None and report_path.is_file():
        report = artifacts.read_json(report_path)
        res.kind, tag = "merged", "merged"
        src_run = report.get("run_dir")
        if src_run and (Path(src_run) / artifacts.MANIFEST).is_file():
            _run_facts(res, Path(src_run))
        base_info = report.get("base") or {}
        base_path = base_model or base_info.get("dir") or base_info.get("name")
        if base_path:
            base_path = resolve_path(base_path) if (base_model or not Path(base_path).is_dir()) else base_path
            res.base = ModelTarget("base", "local", base_path, path=base_path,
                                   revision=None if base_model else base_info.get("revision"),
                                   identity={"base": base_path})
    elif base_model:
        bp = resolve_path(base_model)
        res.base = ModelTarget("base", "local", base_model, path=bp, identity={"base": bp})
    # A merge carries the template its run trained with; any other model directory's chat_template.jinja is its
    # stock one, which rustcoder replaces (modeling.load_tokenizer) as in training and serving
    template = _template(Path(resolved)) if is_dir and res.kind == "merged" else None
    res.target = ModelTarget(tag, "local", model, path=resolved, chat_template=template,
                             identity={"model": str(resolved)})
    if res.base is not None and template and res.base.chat_template is None:
        res.base.chat_template = template  # the same prompt format for both sides
    return res


def reference_model() -> ResolvedModel:
    """The reference answers as a 'model' (--oracle)."""
    return ResolvedModel("reference", "reference answers", ModelTarget("reference", "reference", "reference answers",
                                                                       identity={"reference": True}),
                         slug="oracle")
