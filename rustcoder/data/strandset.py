"""Strandset-Rust-v1 rows: loading, parsing, validating, sampling and the stratified eval split.

Rows have five string columns: crate_name, input_data, output_data, task_category, test. The two
data columns hold a dict serialized as JSON or as a Python dict literal (single quotes); both are
parsed as data only (``json.loads`` or ``ast.literal_eval``, which never evaluates code).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError
from .categories import CATEGORIES, build_messages

COLUMNS = ("crate_name", "input_data", "output_data", "task_category", "test")
SAMPLE_NAMES = ("sample", "builtin", "builtin:sample")
BAD_REASONS = ("unparsable_input", "unparsable_output", "missing_column", "unknown_category",
               "missing_input_field", "missing_output_field", "empty_answer", "wrong_type")
LIST_FIELDS = ("test_cases",)  # fields that may hold a list of strings instead of one string


class BadRow(Exception):
    """A row that cannot be used; ``reason`` is one of BAD_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def parse_field(value: Any) -> dict:
    """Parse an input_data/output_data value: a dict, a JSON string, or a Python dict literal.

    Never evaluates code: ``ast.literal_eval`` accepts only literals. Raises ValueError when the value
    is not a dict in either form.
    """
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    text = value.strip()
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise ValueError(f"neither JSON nor a Python literal ({type(e).__name__})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a dict, got {type(parsed).__name__}")
    return parsed


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, tuple)):
        return any(str(v).strip() for v in value)
    return bool(str(value).strip())


def _wrong_type(data: dict, keys, where: str) -> str | None:
    """Why a field the category reads is not text (numbers and lists would be trained on as
    Python's rendering of them), or None."""
    for key in keys:
        value = data.get(key)
        if value is None or isinstance(value, str):
            continue
        if key in LIST_FIELDS and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            continue
        return f"{where}.{key} is {type(value).__name__}, not text"
    return None


def row_id(row: dict) -> str:
    """Content hash of a raw row (category + input + output), used to detect train/eval overlap."""
    h = hashlib.sha256()
    for k in ("task_category", "input_data", "output_data"):
        h.update(str(row.get(k, "")).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@dataclass
class Example:
    """A usable row: its category, chat messages (system, user, assistant) and provenance."""

    id: str
    category: str
    crate_name: str
    messages: list[dict]
    input_data: dict
    output_data: dict
    test: str = ""

    def to_record(self) -> dict:
        return {"id": self.id, "category": self.category, "crate_name": self.crate_name,
                "messages": self.messages, "test": self.test}


def parse_row(row: dict, keep_fields: bool = True) -> Example:
    """Turn one raw Strandset row into an Example, or raise BadRow naming why it is unusable.

    keep_fields=False drops the parsed input/output dicts once the messages are built (training
    needs only the messages; at Strandset scale the dicts are a second copy of the text).
    """
    for col in ("input_data", "output_data", "task_category"):
        if col not in row or row[col] is None:
            raise BadRow("missing_column", col)
    for col in ("task_category", "crate_name", "test"):
        if row.get(col) is not None and not isinstance(row[col], str):
            raise BadRow("wrong_type", f"column {col} is {type(row[col]).__name__}, not text")
    for col in ("input_data", "output_data"):
        if not isinstance(row[col], (str, dict)):
            raise BadRow("wrong_type", f"column {col} is {type(row[col]).__name__}, not a JSON object or its text")
    category = str(row["task_category"]).strip()
    cat = CATEGORIES.get(category)
    if cat is None:
        raise BadRow("unknown_category", category)
    try:
        inp = parse_field(row["input_data"])
    except ValueError as e:
        raise BadRow("unparsable_input", str(e)) from None
    try:
        out = parse_field(row["output_data"])
    except ValueError as e:
        raise BadRow("unparsable_output", str(e)) from None
    wrong = _wrong_type(inp, cat.inputs + cat.optional_inputs, "input_data") \
        or _wrong_type(out, cat.outputs, "output_data")
    if wrong:
        raise BadRow("wrong_type", wrong)
    missing_in = [k for k in cat.inputs if not _present(inp.get(k))]
    if missing_in:
        raise BadRow("missing_input_field", ",".join(missing_in))
    missing_out = [k for k in cat.outputs if k not in out]
    if missing_out:
        raise BadRow("missing_output_field", ",".join(missing_out))
    if not all(_present(out.get(k)) for k in cat.outputs):
        raise BadRow("empty_answer", ",".join(k for k in cat.outputs if not _present(out.get(k))))
    return Example(
        id=row_id(row), category=category, crate_name=str(row.get("crate_name") or ""),
        messages=build_messages(category, inp, out), input_data=inp if keep_fields else {},
        output_data=out if keep_fields else {}, test=str(row.get("test") or ""),
    )


# ---- sources ------------------------------------------------------------------------------------

def is_sample(source: str) -> bool:
    return source in SAMPLE_NAMES


def sample_path(split: str = "train") -> Path:
    """Path of the built-in Strandset-shaped sample for a split ('train' or 'test')."""
    return Path(str(resources.files("rustcoder") / "data" / "sample" / f"strandset_{split}.jsonl"))


def _describe(value: Any) -> str:
    text = json.dumps(value)[:40] if not isinstance(value, (bytes, bytearray)) else repr(value[:40])
    return f"{type(value).__name__} {text}" if value is not None else "null"


def _decode(path: Path, where: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}). "
                        "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def _loads(path: Path, where: str, text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{where} is not valid JSON ({e.msg}). {what}") from None
    except RecursionError:
        raise DataError(f"{path}:{where}: JSON nested too deeply to read (more than about 1,000 levels). "
                        f"{what}") from None


def iter_records(path: Path, what: str = "one JSON object with the Strandset columns"
                 ) -> Iterator[tuple[str, dict]]:
    """(location, row) for every row of a .jsonl, .json or .parquet file; DataError (naming the file,
    the line or row, and the fix) for anything that is not a readable row object."""
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _iter_parquet_rows(path)
        return
    if path.suffix == ".json":
        data = _loads(path, "1", _decode(path, "1", path.read_bytes()), f"It must hold a list of {what}s.")
        if isinstance(data, dict):
            data = data.get("data") or data.get("rows") or [data]
        if not isinstance(data, list):
            raise DataError(f"{path} must hold a list of row objects (each {what}), got {_describe(data)}.")
        for index, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(f"{path}: item {index} of the list is {_describe(row)}, not a row object "
                                f"(each item must be {what}).")
            yield f"item {index}", row
        return
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = _decode(path, str(lineno), raw)
            if not line.strip():
                continue
            row = _loads(path, str(lineno), line, f"Each line of a .jsonl file must be {what}.")
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno} is {_describe(row)}, not a JSON object. Each line of a .jsonl "
                                f"file must be {what}.")
            yield str(lineno), row


def iter_rows(path: Path) -> Iterator[dict]:
    """Every row of a .jsonl, .json or .parquet file (``iter_records`` without the locations)."""
    for _, row in iter_records(path):
        yield row



def _iter_parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow
    import pyarrow.parquet as pq

    fix = "Re-download or re-export it, or pass a .jsonl file."
    try:
        pf = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
                        + fix) from None
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"row {index}", row
                index += 1
    except (pyarrow.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{path}: row group after row {index} cannot be read ({str(e).splitlines()[0]}). "
                        + fix) from None


ROW_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _files_for(path: Path, split: str) -> list[Path]:
    if path.is_file():
        if path.suffix not in ROW_FILE_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}. Use .parquet, .jsonl or .json.")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in ROW_FILE_SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no .parquet, .jsonl or .json files.")
    split_files = [p for p in files if p.name.startswith(split) or f"{split}-" in p.name
                   or f"_{split}" in p.stem or p.parent.name == split]
    return split_files or files


def read_rows(source: str, split: str = "train", revision: str | None = None) -> Iterator[dict]:
    """Raw rows from the built-in sample, a local file/directory, or a hub dataset id."""
    if is_sample(source):
        yield from iter_rows(sample_path(split))
        return
    path = Path(source).expanduser()
    if path.exists():
        for f in _files_for(path, split):
            yield from iter_rows(f)
        return
    if source.startswith((".", "/", "~")) or source.endswith(ROW_FILE_SUFFIXES) or source.count("/") != 1:
        raise DataError(f"dataset {source!r} is neither an existing file or directory nor a hub id "
                        "(owner/name). Pass a local .parquet/.jsonl/.json path, a hub id such as "
                        "Fortytwo-Network/Strandset-Rust-v1, or 'sample'.")
    yield from _iter_hub(source, split, revision)


def _iter_hub(source: str, split: str, revision: str | None) -> Iterator[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DataError("loading a hub dataset needs `datasets`: pip install datasets") from None
    try:
        ds = datasets.load_dataset(source, split=split, revision=revision)
    except Exception as e:  # network, auth, missing split: all become one clear message
        from ..hub import hub_hint

        raise DataError(f"could not load {source!r} (split {split!r}, revision {revision}) from the hub: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
                        + hub_hint(source, "download the parquet files and pass their path with --dataset (or "
                                           "--dataset sample)")) from None
    yield from ds


# ---- preparation --------------------------------------------------------------------------------

@dataclass
class PreparedData:
    """Sampled, parsed and split rows, plus what was skipped and why."""

    train: list[Example]
    eval: list[Example]
    bad_counts: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    source: str = ""
    fingerprint: str = ""

    @property
    def bad_total(self) -> int:
        return sum(self.bad_counts.values())

    def category_counts(self) -> dict[str, dict[str, int]]:
        """{category: {"train": n, "eval": m}} in the canonical category order."""
        tr = Counter(e.category for e in self.train)
        ev = Counter(e.category for e in self.eval)
        return {c: {"train": tr[c], "eval": ev[c]} for c in CATEGORIES if tr[c] or ev[c]}

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "fingerprint": self.fingerprint, "rows_read": self.rows_read,
                "train_rows": len(self.train), "eval_rows": len(self.eval),
                "bad_rows": self.bad_total, "bad_counts": dict(self.bad_counts),
                "categories": self.category_counts()}


def collect_examples(rows: Iterable[dict], num_examples: int | None = None, seed: int = 42,
                     categories: Iterable[str] | None = None, keep_fields: bool = True
                     ) -> tuple[list[Example], Counter, int]:
    """Shuffle rows (seeded), then parse until ``num_examples`` usable ones are found (all when None).

    Returns (examples, bad-row counts per reason, rows examined). Rows outside ``categories`` are
    passed over without counting as bad.
    """
    rows = list(rows)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    wanted = set(categories) if categories else None
    examples: list[Example] = []
    bad: Counter = Counter()
    examined = 0
    for idx in order:
        if num_examples is not None and len(examples) >= num_examples:
            break
        row, rows[idx] = rows[idx], None  # free each raw row once it is parsed
        if wanted is not None and str(row.get("task_category", "")).strip() not in wanted:
            continue
        examined += 1
        try:
            examples.append(parse_row(row, keep_fields))
        except BadRow as e:
            bad[e.reason] += 1
    return examples, bad, examined


def stratified_split(examples: list[Example], eval_fraction: float, seed: int = 42
                     ) -> tuple[list[Example], list[Example]]:
    """Deterministic split with about ``eval_fraction`` of each category held out.

    The eval size is round(total x fraction), shared across categories by largest remainder, so the
    research's 10,000 rows split exactly 9,000 / 1,000.
    """
    by_cat: dict[str, list[Example]] = {}
    for e in examples:
        by_cat.setdefault(e.category, []).append(e)
    target = max(1, round(len(examples) * eval_fraction))
    target = min(target, len(examples) - 1)
    quotas = {c: len(v) * eval_fraction for c, v in by_cat.items()}
    alloc = {c: int(q) for c, q in quotas.items()}
    remainder = target - sum(alloc.values())
    for c in sorted(quotas, key=lambda c: (-(quotas[c] - alloc[c]), c))[:max(remainder, 0)]:
        alloc[c] += 1
    rng = random.Random(seed + 1)
    train, held = [], []
    for c, items in by_cat.items():
        items = list(items)
        rng.shuffle(items)
        k = min(alloc[c], len(items))
        held.extend(items[:k])
        train.extend(items[k:])
    rng.shuffle(train)
    held.sort(key=lambda e: (list(CATEGORIES).index(e.category), e.id))
    return train, held


def fingerprint_rows(examples: Iterable[Example]) -> str:
    """A short hash over example ids: identical samples give identical fingerprints."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.id.encode())
    return h.hexdigest()[:16]


def prepare_data(source: str, *, split: str = "train", revision: str | None = None,
                 num_examples: int | None = None, eval_fraction: float = 0.1, seed: int = 42,
                 categories: Iterable[str] | None = None, max_bad_fraction: float = 0.01,
                 keep_fields: bool = True) -> PreparedData:
    """Load, sample, parse and split a Strandset source; stop with a DataError past the bad-row threshold.

    keep_fields=False keeps only what training needs (messages, ids), not the parsed field dicts.
    """
    rows = read_rows(source, split=split, revision=revision)
    examples, bad, examined = collect_examples(rows, num_examples, seed, categories, keep_fields)
    if examined and bad and sum(bad.values()) / examined > max_bad_fraction:
        detail = ", ".join(f"{k}={v}" for k, v in bad.most_common())
        raise DataError(f"{sum(bad.values())} of {examined} rows examined in {source!r} are unusable "
                        f"({detail}), more than --max-bad-fraction {max_bad_fraction:g}. Fix the data, or "
                        "raise --max-bad-fraction to skip them.")
    if len(examples) < 2:
        raise DataError(f"{source!r} yielded {len(examples)} usable rows; at least 2 are needed "
                        "(one to train on, one to evaluate).")
    if num_examples is not None and len(examples) < num_examples:
        # Not an error: a small source simply has fewer rows than asked for.
        pass
    train, held = stratified_split(examples, eval_fraction, seed)
    return PreparedData(train=train, eval=held, bad_counts=dict(bad), rows_read=examined,
                        source=source, fingerprint=fingerprint_rows(examples))
