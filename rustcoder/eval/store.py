"""The eval directory's files and the append-only JSONL store every stage writes (keyed by sample id), so a
killed evaluation resumes where it stopped."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

from . import throughput
from .backends import GenRequest

EVAL_FORMAT = 1  # bump when sample keys or prompt rendering change (old eval dirs are then refused)
CONFIG_FILE = "eval_config.yaml"
SAMPLES = "samples.jsonl"
EXECUTIONS = "executions.jsonl"
SCORES = "scores.jsonl"
TEACHER_FORCED = "teacher_forced.jsonl"
JUDGMENTS = "judgments.jsonl"
METRICS = "metrics.json"
REPORT = "report.md"
PLOT = "scores.png"
STAGE_FILES = {
    "generate": [SAMPLES, TEACHER_FORCED, JUDGMENTS, throughput.STATS_FILE],
    "execute": [EXECUTIONS],
    "score": [SCORES],
    "report": [METRICS, REPORT, PLOT],
}
STAGE_ORDER = ["generate", "execute", "score", "report"]


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def as_text(line: str) -> str:
    """``line`` with every lone surrogate (from JSON such as ``"\\ud800"``, never valid UTF-8) replaced by U+FFFD,
    so that any answer a model, a server or a predictions file gives can be written and read back."""
    return _LONE_SURROGATE.sub("\ufffd", line)


class JsonlStore:
    """An append-only JSONL file of records with a "key"; a torn last line (kill mid-write) is ignored."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        """{key: record}; the last record of a key wins."""
        out: dict[str, dict] = {}
        if not self.path.is_file():
            return out
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "key" in rec:
                    out[rec["key"]] = rec
        return out

    def append(self, records: Iterable[dict]) -> None:
        """Append records and flush them to disk."""
        records = list(records)
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            if fh.tell() > 0:  # a kill may have left a line without its newline
                with self.path.open("rb") as rfh:
                    rfh.seek(-1, os.SEEK_END)
                    if rfh.read(1) != b"\n":
                        fh.write("\n")
            for rec in records:
                fh.write(as_text(json.dumps(rec, ensure_ascii=False, default=str)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def sample_key(tag: str, item_id: str, index: int) -> str:
    """The id of one sample: MODEL:ITEM_ID:SAMPLE_INDEX."""
    return f"{tag}:{item_id}:{index}"


def sample_record(tag: str, req: GenRequest, index: int, gen, backend: str) -> dict:
    """The samples.jsonl line of generation ``gen`` (sample ``index`` of ``req``'s item) of target ``tag``."""
    rec = {"key": sample_key(tag, req.item.id, index), "model": tag, "id": req.item.id,
           "category": req.item.category, "sample_index": index, "answer": gen.text,
           "finish_reason": gen.finish_reason, "tokens": gen.tokens, "backend": backend}
    if gen.error:
        rec["error"] = gen.error
    return rec
