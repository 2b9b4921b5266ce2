"""rustc's JSON diagnostics read into statuses: compile errors, missing crates, error codes.
"""

from __future__ import annotations

import json
import re

from .policy import MAX_DIAGNOSTIC_CHARS, TRUNCATION_MARKER


_BUILTIN_CRATES = {"std", "core", "alloc", "proc_macro", "test", "crate", "self", "super"}


_RESOLUTION_CODES = {
    "E0405", "E0412", "E0422", "E0423", "E0425", "E0432", "E0433", "E0463",
    "E0531", "E0532", "E0599", "E0282", "E0283",
}


_MISSING_CRATE_PATTERNS = [
    re.compile(r"unlinked crate `([^`]+)`"),
    re.compile(r"cannot find module or crate `([^`]+)`"),
    re.compile(r"can't find crate for `([^`]+)`"),
    re.compile(r"undeclared crate or module `([^`]+)`"),  # rustc <= 1.86 wording
    re.compile(r"maybe a missing crate `([^`]+)`"),  # older E0432 wording
    re.compile(r"you might be missing a crate named `([^`]+)`"),
]


def parse_diagnostics(stderr: bytes) -> tuple[list[dict], list[str]]:
    """rustc --error-format=json output -> (error diagnostics, non-JSON lines)."""
    errors, raw = [], []
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            if line.strip():
                raw.append(line)
            continue
        try:
            diag = json.loads(line)
        except ValueError:
            raw.append(line)
            continue
        if not isinstance(diag, dict) or not str(diag.get("level", "")).startswith("error"):
            continue
        if str(diag.get("message", "")).startswith("aborting due to"):
            continue
        errors.append(diag)
    return errors, raw


def _missing_crate(diag: dict) -> str | None:
    """The external crate an E0432/E0433/E0463 error is about, or None."""
    code = (diag.get("code") or {}).get("code")
    if code not in ("E0432", "E0433", "E0463"):
        return None
    texts = [diag.get("message", "")]
    texts += [s.get("label") or "" for s in diag.get("spans", [])]
    texts += [c.get("message", "") for c in diag.get("children", [])]
    for text in texts:
        for pattern in _MISSING_CRATE_PATTERNS:
            match = pattern.search(text)
            if match:
                crate = match.group(1).split("::")[0].strip()
                if crate and crate not in _BUILTIN_CRATES:
                    return crate
                return None
    return None


def classify_compile_errors(errors: list[dict]) -> tuple[str, list[str]]:
    """("needs_crate" | "compile_error", missing crate names)."""
    missing: list[str] = []
    other_real_error = False
    for diag in errors:
        crate = _missing_crate(diag)
        if crate:
            if crate not in missing:
                missing.append(crate)
            continue
        code = (diag.get("code") or {}).get("code")
        message = str(diag.get("message", ""))
        # Follow-on resolution errors (a type from the missing crate, a derive macro, ...) do
        # not make it the model's fault; any other error (E0308, syntax, ...) does.
        if code in _RESOLUTION_CODES or (code is None and message.startswith("cannot find")):
            continue
        other_real_error = True
    if missing and not other_real_error:
        return "needs_crate", missing
    return "compile_error", missing


def render(errors: list[dict]) -> str:
    """The errors as rustc rendered them, capped at MAX_DIAGNOSTIC_CHARS."""
    parts = [str(d.get("rendered") or d.get("message") or "").rstrip() for d in errors]
    text = "\n".join(p for p in parts if p)
    if len(text) > MAX_DIAGNOSTIC_CHARS:
        text = text[:MAX_DIAGNOSTIC_CHARS] + TRUNCATION_MARKER
    return text


def codes(errors: list[dict]) -> list[str]:
    """The distinct error codes (E0308, ...) in order of appearance."""
    codes: list[str] = []
    for diag in errors:
        code = (diag.get("code") or {}).get("code")
        if code and code not in codes:
            codes.append(code)
    return codes


def crash_reason(sig: str | None, returncode: int, raw: list[str]) -> str:
    """Why rustc died on this source (stack overflow, memory, CPU, ICE, ...), for ``detail``."""
    text = "\n".join(raw)
    if "overflowed its stack" in text or (sig == "SIGSEGV" and "interrupted by SIGSEGV" in text):
        what = "stack overflow"
    elif "memory allocation of" in text or "out of memory" in text.lower():
        what = "out of memory (compile address-space limit)"
    elif sig == "SIGXCPU":
        what = "CPU time limit"
    elif sig == "SIGXFSZ":
        what = "file size limit"
    elif "internal compiler error" in text:
        what = "internal compiler error"
    else:
        what = next((line.strip() for line in raw if line.strip()), "no diagnostic")[:200]
    return f"{what}; {sig or f'exit code {returncode}'}"
