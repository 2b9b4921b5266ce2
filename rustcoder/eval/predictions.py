"""Reading a predictions file (answers made elsewhere) into the eval directory's sample records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import DataError, UsageError
from .store import sample_key
from .suites import EvalItem

MAX_PREDICTION_SAMPLES = 1000  # samples per item a predictions file may number (sample_index 0..999)


def read_predictions(path: str, by_id: dict[str, EvalItem]) -> tuple[dict[str, dict], list[str], int]:
    """Predictions file (.jsonl, .json or .parquet) -> ({key: sample record}, model tags, unknown ids).

    A repeated id is an error unless its lines carry distinct ``sample_index`` values.
    """
    from ..data.strandset import iter_records

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"predictions file {path!r} does not exist.")
    out: dict[str, dict] = {}
    tags: list[str] = []
    unknown = 0
    next_index: Counter = Counter()
    first_line: dict[tuple[str, str], int] = {}
    for lineno, rec in iter_records(p, what="one JSON object with an id and an answer"):
        item_id = rec.get("id") if rec.get("id") is not None else rec.get("task_id")
        item_id = str(item_id) if isinstance(item_id, (str, int)) and not isinstance(item_id, bool) else ""
        answer = next((rec[k] for k in ("answer", "completion", "response", "output", "text") if k in rec), None)
        if not item_id or answer is None:
            raise DataError(f"{p}:{lineno}: each line needs an id (or task_id) and an answer (or completion).")
        if not isinstance(answer, str):
            raise DataError(f"{p}:{lineno}: the answer of {item_id!r} is {type(answer).__name__}, not text. "
                            "Write the model's answer as a JSON string.")
        if item_id not in by_id:
            unknown += 1
            continue
        tag = str(rec.get("model") or "predictions")
        if tag not in tags:
            tags.append(tag)
        index = rec.get("sample_index")
        if index is None:
            if (tag, item_id) in first_line:
                raise DataError(
                    f"{p}:{lineno}: id {item_id!r} (model {tag!r}) was already answered at line "
                    f"{first_line[(tag, item_id)]}. Remove the duplicate, or, for several samples per item, give "
                    "each line a \"sample_index\" (0, 1, ...).")
            index = next_index[(tag, item_id)]
        elif isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise DataError(f"{p}:{lineno}: sample_index must be a whole number >= 0, got {index!r}.")
        elif index >= MAX_PREDICTION_SAMPLES:  # F19: every item gets a record per index up to the largest
            raise DataError(f"{p}:{lineno}: sample_index {index} is over the limit of {MAX_PREDICTION_SAMPLES - 1}; "
                            "sample indices number each id's samples 0, 1, ..., N-1.")
        first_line.setdefault((tag, item_id), lineno)
        next_index[(tag, item_id)] = max(next_index[(tag, item_id)], int(index) + 1)
        item = by_id[item_id]
        key = sample_key(tag, item_id, int(index))
        if key in out:
            raise DataError(f"{p}:{lineno}: id {item_id!r} sample_index {index} (model {tag!r}) appears twice "
                            f"(first at line {out[key]['line']}); each sample needs its own sample_index.")
        out[key] = {"key": key, "model": tag, "id": item_id, "category": item.category,
                    "sample_index": int(index), "answer": str(answer),
                    # a file cannot mark its own answers as excluded (error) or missing
                    "finish_reason": "length" if rec.get("finish_reason") == "length" else "stop",
                    "tokens": rec.get("tokens") if isinstance(rec.get("tokens"), int) else None,
                    "backend": "predictions", "line": lineno}
    seen: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for rec in out.values():
        seen.setdefault((rec["model"], rec["id"]), []).append((rec["sample_index"], rec["line"]))
    for (tag, item_id), got in seen.items():
        indices = sorted(i for i, _ in got)
        if indices != list(range(len(indices))):
            gap = next(k for k, i in enumerate(indices) if i != k)
            line = max(ln for _, ln in got)
            raise DataError(f"{p}:{line}: id {item_id!r} (model {tag!r}) has sample_index values {indices[:5]}"
                            f"{'...' if len(indices) > 5 else ''}, but sample {gap} is missing; sample indices "
                            f"must be 0..N-1 (here 0..{len(indices) - 1}) for each id.")
    return out, tags, unknown

