"""What a test binary's run proves: libtest's report read into counts and a status.
"""

from __future__ import annotations

import re

from .policy import ExecutionResult

_TEST_SUMMARY = re.compile(
    r"^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored; (\d+) measured",
    re.MULTILINE,
)


_TEST_RUNNING = re.compile(r"^running (\d+) tests?$", re.MULTILINE)


_TEST_LINE = re.compile(r"^test .+ \.\.\. (ok|FAILED|ignored)\s*$", re.MULTILINE)


def count_tests(result: ExecutionResult, stdout: str) -> None:
    """Fill the result's test counts from libtest's summary (or its per-test lines when it crashed first)."""
    summaries = _TEST_SUMMARY.findall(stdout)
    if summaries:
        _, passed, failed, ignored, _measured = summaries[-1]
        result.tests_passed, result.tests_failed = int(passed), int(failed)
        result.tests_ignored = int(ignored)
    else:  # crashed before the summary: count what was reported
        lines = _TEST_LINE.findall(stdout)
        result.tests_passed = lines.count("ok")
        result.tests_failed = lines.count("FAILED")
        result.tests_ignored = lines.count("ignored")


def libtest_status(stdout: str, returncode: int, sig: str | None) -> tuple[str, str]:
    """(status, detail) of a finished test binary from its stdout, exit code and fatal signal."""
    summaries = _TEST_SUMMARY.findall(stdout)
    running = _TEST_RUNNING.findall(stdout)
    if sig:
        return "runtime_error", f"test binary killed by {sig}"
    if not summaries:
        return "runtime_error", (f"test binary exited with code {returncode} before "
                                 "libtest printed its summary (process::exit or crash)")
    verdict, passed, failed, ignored, measured = summaries[-1]
    counted = int(passed) + int(failed) + int(ignored) + int(measured)
    if running and int(running[0]) != counted:
        return "runtime_error", (f"libtest summary counts {counted} tests but {running[0]} were "
                                 "started: output is inconsistent")
    if verdict == "FAILED" or int(failed) > 0:
        return "test_fail", f"{failed} of {counted} tests failed"
    if returncode != 0:
        return "runtime_error", f"tests passed but the binary exited with code {returncode}"
    return "pass", f"{passed} passed, {ignored} ignored"
