"""Evaluation suites (data files in the top-level ``evals/``) and the items they yield.

A suite is a YAML file: a Strandset split (hub id + pinned revision, a local file, or the built-in
sample) or a benchmark file in the HumanEval-Rust format (``prompt``, ``canonical_solution``,
``test``, ``entry_point``), with its decoding defaults, prompt format, pass@k values and known
issues. Loading a suite gives ``EvalItem``s: the prompt messages, the reference answer and the
fields the task registry needs, with training-set overlap, bad rows, duplicates and unusable
benchmark tasks set aside and reported. Standard library + PyYAML.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import DataError, UsageError, did_you_mean
from . import extract

SUITE_KINDS = ("strandset", "humaneval-rust")
DEFAULT_EDITION = "2021"  # rows (and suites) that name no edition are compiled as Rust 2021
HUMANEVAL_FIELDS = ("prompt", "canonical_solution", "test", "entry_point")


def evals_dir() -> Path:
    """Where suite definitions live: $RUSTCODER_EVALS_DIR; else ``rustcoder/evals/`` inside an installed
    wheel (pyproject.toml maps the top-level ``evals/`` there); else a checkout's top-level ``evals/``."""
    env = os.environ.get("RUSTCODER_EVALS_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]  # .../rustcoder
    installed = package / "evals"
    return installed if installed.is_dir() else package.parent / "evals"


@dataclass
class Suite:
    """One evaluation suite, as read from its YAML file (paths resolved)."""

    name: str
    kind: str
    description: str = ""
    dataset: str | None = None  # strandset: hub id, local path or 'sample'
    revision: str | None = None
    split: str = "test"
    path: str | None = None  # humaneval-rust: the benchmark file
    edition: str = DEFAULT_EDITION  # for rows without their own "edition"
    k: list[int] = field(default_factory=lambda: [1, 5, 10])
    generation: dict = field(default_factory=dict)  # max_new_tokens, temperature, top_p, samples
    prompt: dict = field(default_factory=dict)  # system, user (with {prompt})
    known_issues: dict = field(default_factory=dict)  # task id -> {reason, exclude}
    source_file: str | None = None
    eval_split_ids: set[str] | None = None  # only rows with these ids (a run's held-out split)

    def to_dict(self) -> dict:
        """The resolved suite, for eval_config.yaml."""
        d = {k: v for k, v in self.__dict__.items() if k != "eval_split_ids"}
        d["eval_split_rows"] = len(self.eval_split_ids) if self.eval_split_ids is not None else None
        return d


def suite_files() -> dict[str, Path]:
    """{suite name: yaml path} for every suite in evals_dir()."""
    root = evals_dir()
    out = {}
    if root.is_dir():
        for p in sorted(root.glob("*.yaml")):
            try:
                name = (yaml.safe_load(p.read_text()) or {}).get("name") or p.stem
            except yaml.YAMLError:
                continue
            out[name] = p
    return out


def load_suite_file(path: str | Path) -> Suite:
    """Read and check one suite YAML; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read suite {path}: {e}") from None
    known = set(Suite.__dataclass_fields__) - {"source_file", "eval_split_ids"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)}{did_you_mean(unknown[0], known)}; "
                         f"valid keys: {', '.join(sorted(known))}")
    if data.get("kind") not in SUITE_KINDS:
        raise UsageError(f"{path}: kind must be one of {', '.join(SUITE_KINDS)}, got {data.get('kind')!r}")
    suite = Suite(**{"name": path.stem, **data}, source_file=str(path))
    if suite.path and not Path(suite.path).is_absolute():
        suite.path = str((path.parent / suite.path).resolve())
    if suite.dataset and suite.dataset not in ("sample",) and suite.dataset.startswith("."):
        suite.dataset = str((path.parent / suite.dataset).resolve())
    suite.edition = str(suite.edition)
    return suite


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``humaneval-rust``, ``strandset-test``, ...) or by YAML path."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return load_suite_file(p)
    files = suite_files()
    if name_or_path in files:
        return load_suite_file(files[name_or_path])
    raise UsageError(f"no evaluation suite {name_or_path!r}{did_you_mean(name_or_path, files)}. Suites in "
                     f"{evals_dir()}: {', '.join(files) or 'none'}; or pass a .yaml suite file.")


def _builtin(name: str, kind: str, **kw) -> Suite:
    """A suite file's content (or these defaults when $RUSTCODER_EVALS_DIR points where it is not)."""
    files = suite_files()
    if name in files:
        return load_suite_file(files[name])
    return Suite(name=name, kind=kind, **kw)


def benchmark_suite(value: str) -> Suite:
    """The suite for --benchmark: a suite name, a suite YAML, or a HumanEval-Rust-format .jsonl file."""
    p = Path(value).expanduser()
    if p.suffix in (".jsonl", ".json") or (p.exists() and p.suffix not in (".yaml", ".yml")):
        if not p.is_file():
            raise UsageError(f"benchmark file {value!r} does not exist.")
        base = _builtin("humaneval-rust", "humaneval-rust")
        is_shipped = p.resolve() == Path(_default_path(base) or "/nonexistent").resolve()
        if not is_shipped:
            base.edition = DEFAULT_EDITION  # rows without "edition" run as 2021 (said in the report)
        base.path = str(p.resolve())
        base.name = p.stem.lower().replace("_", "-")
        base.known_issues = base.known_issues if is_shipped else {}
        return base
    suite = load_suite(value)
    if suite.kind != "humaneval-rust":
        raise UsageError(f"suite {suite.name!r} is a {suite.kind} suite; pass it with --dataset.")
    return suite


def _default_path(suite: Suite) -> str:
    files = suite_files()
    if suite.name in files:
        return load_suite_file(files[suite.name]).path or ""
    return suite.path or ""


def dataset_suite(value: str, revision: str | None = None) -> Suite:
    """The suite for --dataset: 'sample', a suite name/YAML, a hub id (its test split) or a local file/dir."""
    from ..config import STRANDSET_ID, STRANDSET_REVISION
    from ..data.strandset import is_sample

    if is_sample(value):
        suite = _builtin("sample-test", "strandset", dataset="sample",
                         description="rustcoder's built-in Strandset-shaped test sample (30 rows)")
    elif value in suite_files() or Path(value).suffix in (".yaml", ".yml"):
        suite = load_suite(value)
        if suite.kind != "strandset":
            raise UsageError(f"suite {suite.name!r} is a benchmark; pass it with --benchmark.")
    elif Path(value).expanduser().exists():
        p = Path(value).expanduser().resolve()
        suite = _builtin("strandset-test", "strandset")
        suite.name, suite.dataset, suite.revision, suite.source_file = (p.stem.replace("_", "-"), str(p), None, None)
        suite.description = f"local Strandset-format rows from {p}"
    else:
        suite = _builtin("strandset-test", "strandset", dataset=STRANDSET_ID, revision=STRANDSET_REVISION)
        if value != suite.dataset:
            suite.name = value.split("/")[-1].lower() + "-test"
            suite.dataset, suite.revision = value, None
            suite.description = f"{value} test split"
    if revision is not None:
        suite.revision = revision
    return suite


# ---- items --------------------------------------------------------------------------------------

@dataclass
class EvalItem:
    """One thing to answer: prompt messages, the reference answer, and the fields scoring needs."""

    id: str
    task: str  # key in tasks.TASKS
    category: str  # what the report groups by
    messages: list[dict]
    reference: str
    data: dict = field(default_factory=dict)
    invalid: str | None = None  # benchmark task that cannot be scored (why)
    excluded: str | None = None  # known issue: left out of scoring (why)


@dataclass
class ItemSet:
    """A suite's items plus everything set aside, for the report."""

    items: list[EvalItem]
    rows_read: int = 0
    overlap: list[dict] = field(default_factory=list)  # {id, category}: in the training set, not scored
    overlap_checked: str | None = None  # where the training ids came from (None: not checked)
    bad_counts: dict = field(default_factory=dict)
    duplicates: int = 0
    invalid: list[dict] = field(default_factory=list)  # {id, category, reason}
    excluded: list[dict] = field(default_factory=list)  # {id, category, reason}
    limited_from: int | None = None  # items before --limit

    def summary(self) -> dict:
        """What was read, scored and set aside."""
        return {"rows_read": self.rows_read, "items": len(self.items),
                "by_category": dict(Counter(i.category for i in self.items)),
                "overlap": {"checked_against": self.overlap_checked, "excluded": len(self.overlap),
                            "by_category": dict(Counter(o["category"] for o in self.overlap)),
                            "ids": [o["id"] for o in self.overlap]},
                "bad_rows": dict(self.bad_counts), "duplicates": self.duplicates,
                "invalid_tasks": self.invalid, "excluded_tasks": self.excluded,
                "limited_from": self.limited_from}


def _limit(items: list[EvalItem], limit: int | None, order: list[str]) -> list[EvalItem]:
    items = sorted(items, key=lambda i: (order.index(i.category) if i.category in order else len(order),
                                         i.category, i.id))
    if limit is None:
        return items
    taken: Counter = Counter()
    out = []
    for it in items:
        if taken[it.category] < limit:
            out.append(it)
            taken[it.category] += 1
    return out


def load_items(suite: Suite, *, train_ids: set[str] | None = None, train_ids_source: str | None = None,
               limit: int | None = None, categories: list[str] | None = None,
               keep_invalid: bool = False) -> ItemSet:
    """The suite's items (at most ``limit`` per category), with overlap, bad rows and bad tasks set aside.

    ``keep_invalid`` keeps unusable and excluded benchmark tasks in the set, flagged (the oracle runs
    them to show why they fail).
    """
    if suite.kind == "strandset":
        result = _strandset_items(suite, train_ids, categories)
        result.overlap_checked = train_ids_source if train_ids is not None else None
        from ..data.categories import CATEGORY_NAMES

        order = list(CATEGORY_NAMES)
    else:
        result = _humaneval_items(suite, categories, keep_invalid)
        order = ["codegen", "transform", "fix", "explain"]
    before = len(result.items)
    result.items = _limit(result.items, limit, order)
    if limit is not None and before > len(result.items):
        result.limited_from = before
    return result


def _strandset_items(suite: Suite, train_ids: set[str] | None, categories: list[str] | None) -> ItemSet:
    from ..data.strandset import BadRow, parse_row, read_rows, row_id

    wanted = set(categories) if categories else None
    out = ItemSet(items=[])
    seen: set[str] = set()
    bad: Counter = Counter()
    for row in read_rows(suite.dataset, split=suite.split, revision=suite.revision):
        out.rows_read += 1
        rid = row_id(row)
        if suite.eval_split_ids is not None and rid not in suite.eval_split_ids:
            continue
        if wanted is not None and str(row.get("task_category", "")).strip() not in wanted:
            continue
        if rid in seen:
            out.duplicates += 1
            continue
        seen.add(rid)
        try:
            ex = parse_row(row)
        except BadRow as e:
            bad[e.reason] += 1
            continue
        if train_ids is not None and rid in train_ids:
            out.overlap.append({"id": rid, "category": ex.category})
            continue
        out.items.append(EvalItem(
            id=rid, task=ex.category, category=ex.category, messages=ex.messages[:2],
            reference=ex.messages[2]["content"],
            data={"input_data": ex.input_data, "output_data": ex.output_data, "test": ex.test,
                  "crate_name": ex.crate_name}))
    out.bad_counts = dict(bad)
    if not out.items and not out.overlap:
        raise DataError(f"{suite.dataset!r} (split {suite.split!r}) has no usable rows"
                        + (f" in categories {', '.join(categories)}" if categories else "")
                        + (f"; bad rows: {dict(bad)}" if bad else "") + ".")
    return out


def validate_benchmark_task(task: dict) -> str | None:
    """Why a HumanEval-Rust task cannot be scored (None when it can)."""
    from ..sandbox import EDITIONS

    wrong = [f for f in (*HUMANEVAL_FIELDS, "task_id", "edition")
             if task.get(f) is not None and not isinstance(task.get(f), str)]
    if wrong:
        return "field(s) " + ", ".join(f"{f} ({type(task[f]).__name__})" for f in wrong) + " must be text"
    if task.get("edition") and str(task["edition"]) not in EDITIONS:
        return f"edition {task['edition']!r} is not one of {', '.join(EDITIONS)}"
    missing = [f for f in HUMANEVAL_FIELDS if not str(task.get(f) or "").strip()]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    test = str(task["test"])
    if "#[test]" not in test:
        return "the test block has no #[test] function (truncated in the benchmark file)"
    if extract.brace_balance(test) != 0:
        return "the test block has unbalanced braces (truncated in the benchmark file)"
    return None


def _fill(template: str, task: dict) -> str:
    out = template
    for k in ("prompt", "entry_point", "task_id"):
        out = out.replace("{" + k + "}", str(task.get(k) or ""))
    return out


def _humaneval_items(suite: Suite, categories: list[str] | None, keep_invalid: bool) -> ItemSet:
    path = Path(suite.path or "")
    if not suite.path or not path.is_file():
        raise DataError(f"benchmark file {suite.path!r} of suite {suite.name!r} does not exist. Pass the file with "
                        "--benchmark PATH (HumanEval-Rust format: prompt, canonical_solution, test, entry_point).")
    system = suite.prompt.get("system", "You are an expert Rust programmer. Complete the Rust function. "
                                        "Answer with the complete function in one ```rust block.")
    user = suite.prompt.get("user", "Complete this Rust function:\n\n```rust\n{prompt}\n```")
    out = ItemSet(items=[])
    wanted = set(categories) if categories else None
    seen: set[str] = set()
    from ..data.strandset import iter_records

    for lineno, task in iter_records(path, what="one JSON object with prompt, canonical_solution, test and "
                                                 "entry_point"):
        out.rows_read += 1
        tid = str(task.get("task_id") or f"{path.stem}/{lineno}")
        category = str(task.get("category") or "all")
        if wanted is not None and category not in wanted:
            continue
        if tid in seen:
            out.duplicates += 1
            continue
        seen.add(tid)
        invalid = validate_benchmark_task(task)
        issue = suite.known_issues.get(tid) or {}
        excluded = issue.get("reason") if issue.get("exclude") else None
        prompt = str(task.get("prompt") or "")
        item = EvalItem(
            id=tid, task="humaneval-rust", category=category,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": _fill(user, task)}],
            reference="```rust\n" + prompt + "\n" + str(task.get("canonical_solution") or "") + "\n```",
            data={"prompt": prompt, "test": str(task.get("test") or ""),
                  "entry_point": str(task.get("entry_point") or ""),
                  "edition": str(task.get("edition") or suite.edition),
                  "edition_given": bool(task.get("edition")),
                  "canonical_solution": str(task.get("canonical_solution") or ""),
                  "known_issue": issue.get("reason")},
            invalid=invalid, excluded=excluded)
        if invalid:
            out.invalid.append({"id": tid, "category": category, "reason": invalid})
        elif excluded:
            out.excluded.append({"id": tid, "category": category, "reason": excluded})
        if keep_invalid or not (invalid or excluded):
            out.items.append(item)
    if not out.items:
        raise DataError(f"{path} has no usable tasks" + (f" in categories {', '.join(categories)}" if categories
                                                          else "") + ".")
    return out
