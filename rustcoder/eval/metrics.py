"""Scoring functions: pass@k, chrF, edit similarity, name/code normalisation, paired bootstrap.

Standard library (plus numpy for the bootstrap only): no torch, no sacrebleu. ``chrf`` reproduces
sacreBLEU 2.x ``CHRF()`` defaults (character n-grams 1..6, no word n-grams, beta 2, whitespace
removed, precision and recall averaged over the orders both sides have, F-beta x 100).
"""

from __future__ import annotations

import math
import re
from collections import Counter
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

def _char_ngrams(text: str, order: int) -> list[Counter]:
    s = "".join(text.split())
    return [Counter(s[i:i + n] for i in range(len(s) - n + 1)) for n in range(1, order + 1)]


def chrf_statistics(hypothesis: str, reference: str, order: int = CHRF_CHAR_ORDER) -> list[int]:
    """[hyp n-grams, ref n-grams, matching n-grams] for each order 1..order, flattened."""
    stats: list[int] = []
    for h, r in zip(_char_ngrams(hypothesis, order), _char_ngrams(reference, order)):
        stats += [sum(h.values()), sum(r.values()), sum((h & r).values())]
    return stats


def chrf_from_statistics(stats: Sequence[int], beta: float = CHRF_BETA) -> float:
    """chrF (0-100) from flattened statistics, as sacreBLEU 2.x computes it (eps_smoothing=False)."""
    prec = rec = 0.0
    effective = 0
    for i in range(len(stats) // 3):
        n_hyp, n_ref, n_match = stats[3 * i: 3 * i + 3]
        if n_hyp > 0 and n_ref > 0:
            prec += n_match / n_hyp
            rec += n_match / n_ref
            effective += 1
    if effective == 0:
        return 0.0
    prec /= effective
    rec /= effective
    if prec + rec == 0:
        return 0.0
    b2 = beta ** 2
    return 100.0 * (1 + b2) * prec * rec / (b2 * prec + rec)


def chrf(hypothesis: str, reference: str, order: int = CHRF_CHAR_ORDER, beta: float = CHRF_BETA) -> float:
    """Sentence-level chrF (0-100) of a hypothesis against one reference (sacreBLEU sentence_score)."""
    return chrf_from_statistics(chrf_statistics(hypothesis, reference, order), beta)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str], order: int = CHRF_CHAR_ORDER,
                beta: float = CHRF_BETA) -> float:
    """Corpus-level chrF (0-100): n-gram statistics summed over all pairs first (sacreBLEU corpus_score)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    total = [0] * (3 * order)
    for h, r in zip(hypotheses, references):
        for i, v in enumerate(chrf_statistics(h, r, order)):
            total[i] += v
    return chrf_from_statistics(total, beta)


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
