"""Scoring functions: pass@k, chrF, edit similarity, name/code normalisation, paired bootstrap.

Standard library plus numpy (the bootstrap) and sacreBLEU (chrF, its ``CHRF()`` defaults: character
n-grams 1..6, no word n-grams, beta 2); no torch.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

CHRF_CHAR_ORDER = 6
CHRF_BETA = 2

RUST_KEYWORDS = frozenset(
    "as async await break const continue crate dyn else enum extern false fn for if impl in let loop match "
    "mod move mut pub ref return self Self static struct super trait true type unsafe use where while "
    "abstract become box do final macro override priv typeof unsized virtual yield try gen".split()
)


# ---- pass@k -------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c pass.

    Computed as a stable product. Raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(n: int, ks: Iterable[int] = (1, 5, 10)) -> list[int]:
    """The k values pass@k can be reported for with n samples per task (k <= n)."""
    return sorted({k for k in ks if 1 <= k <= n})


# ---- chrF ---------------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _chrf_metric(order: int, beta: float):
    from sacrebleu.metrics import CHRF  # imported when scoring: keeps `rustcoder --help` light

    return CHRF(char_order=order, word_order=0, beta=beta)


def chrf(hypothesis: str, reference: str, order: int = CHRF_CHAR_ORDER, beta: float = CHRF_BETA) -> float:
    """Sentence-level chrF (0-100) of a hypothesis against one reference: sacreBLEU's ``CHRF`` (character
    n-grams 1..order, no word n-grams, F-beta, whitespace removed)."""
    return float(_chrf_metric(order, beta).sentence_score(hypothesis, [reference]).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str], order: int = CHRF_CHAR_ORDER,
                beta: float = CHRF_BETA) -> float:
    """Corpus-level chrF (0-100): sacreBLEU's corpus score (n-gram statistics summed over all pairs first)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return float(_chrf_metric(order, beta).corpus_score(list(hypotheses), [list(references)]).score)


# ---- edit similarity, normalisation -------------------------------------------------------------

def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insertions, deletions, substitutions of cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - levenshtein(a, b) / max(len(a), len(b)), in [0, 1]; two empty strings are identical (1.0)."""
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


_FENCE_LINE = re.compile(r"^\s*```[\w+-]*\s*$", re.MULTILINE)


def normalize_code(text: str) -> str:
    """Code compared as tokens: fences and a trailing ';' dropped, whitespace collapsed, and removed
    next to punctuation (``foo( x )`` == ``foo(x)``), so layout differences do not count."""
    s = _FENCE_LINE.sub("", text or "").strip()
    s = s.strip("`").strip()
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"\s*([^\w\s])\s*", r"\1", s)
    return s.rstrip(";").strip()


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_PREFIXES = re.compile(r"^(?:pub(?:\([^)]*\))?\s+)?(?:(?:async|const|unsafe)\s+)*(?:fn|let\s+mut|let|mut|static|const)\s+")


def normalize_name(text: str) -> str:
    """The identifier an answer names: the first `backticked` span (else the first non-empty line),
    without ``fn``/``let``/``mut`` and arguments, lowercased. "" when there is no identifier."""
    s = _FENCE_LINE.sub("", text or "").strip()
    quoted = re.search(r"`([^`\n]+)`", s)
    if quoted:
        s = quoted.group(1)
    else:
        s = next((line for line in s.splitlines() if line.strip()), "")
        label = re.match(r"^[A-Za-z ]+:\s*(?=\S)", s)  # "Function name: foo"
        if label:
            s = s[label.end():]
    s = _NAME_PREFIXES.sub("", s.strip().strip("'\"*"))
    m = _IDENT.search(s)
    return m.group(0).lower() if m else ""


def name_token_f1(predicted: str, reference: str) -> float:
    """F1 of the snake_case parts of two names (``reserve_stock`` vs ``reserve_items`` -> 0.5)."""
    p = [t for t in predicted.lower().split("_") if t]
    r = [t for t in reference.lower().split("_") if t]
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def is_valid_identifier(name: str) -> bool:
    """A usable Rust identifier that is not a keyword."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)) and name not in RUST_KEYWORDS and name != "_"


# ---- aggregation helpers ------------------------------------------------------------------------

def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the non-None values; None when there are none."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def paired_bootstrap(deltas: Sequence[float], resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile confidence interval of the mean of per-item paired differences (None for < 2 items)."""
    if len(deltas) < 2:
        return None
    import numpy as np

    rng = np.random.default_rng(seed)
    d = np.asarray(deltas, dtype=float)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
