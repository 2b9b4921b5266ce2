"""Errors meant for people: what is wrong and how to fix it.

Library code raises these; only the CLI turns them into an exit code (usage errors exit 2,
domain errors exit 1) and prints them without a traceback.
"""

from __future__ import annotations

import difflib


class RustcoderError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 1


class UsageError(RustcoderError):
    """Bad flags, presets, config keys or values (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more invalid configuration values, reported all at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"invalid configuration ({len(self.problems)} {noun}):\n{lines}")


class DataError(RustcoderError):
    """The dataset cannot be used as given (missing file, bad columns, too many bad rows)."""


class MissingExtraError(RustcoderError):
    """An optional stack (vLLM, Gradio, ...) is not installed."""

    def __init__(self, what: str, install: str):
        super().__init__(f"{what} is not installed. Install it with:\n  {install}")


def did_you_mean(name: str, choices) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
