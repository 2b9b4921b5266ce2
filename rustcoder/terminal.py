"""What rustcoder's commands write to the terminal: no colour codes in piped output, a stdout that carries
only the JSON under ``--json``, third-party lines that name a command a fresh shell lacks said with the one
that works, library warnings that name no action left out, and how to call this rustcoder from any
directory. Standard library only."""

from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Trackio's banner (trackio.utils.print_dashboard_instructions) says `trackio show --project "P"`; that script
# is not on PATH in a fresh shell (it lives in the environment's bin/), `rustcoder runs --dashboard` is.
_TRACKIO_SHOW = re.compile(r'trackio show --project "([^"]*)"')


def rustcoder_command() -> str:
    """How to call this rustcoder from a fresh shell (no activated environment), in any directory: plain
    ``rustcoder`` when it is installed in a directory every shell has on PATH, else the environment's
    script by its absolute path."""
    script = Path(sys.executable).parent / "rustcoder"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m rustcoder"
    if str(script.parent) in ("/usr/bin", "/usr/local/bin", "/bin"):
        return "rustcoder"
    return shlex.quote(str(script.absolute()))


def path_arg(path) -> str:
    """A path as an argument of a printed command: absolute (and quoted), so it works from any directory."""
    return shlex.quote(str(Path(path).resolve()))


def rewrite(text: str) -> str:
    """A third-party line as rustcoder says it (only Trackio's dashboard command, today)."""
    if "trackio show" not in text:
        return text
    return _TRACKIO_SHOW.sub(lambda m: f"{rustcoder_command()} runs --dashboard --project {shlex.quote(m[1])}",
                             text)


class TerminalText:
    """A text stream that says third-party lines in rustcoder's words and, when ``plain``, drops ANSI escape
    sequences (colour codes libraries print unconditionally)."""

    def __init__(self, stream, plain: bool):
        self._stream, self.plain = stream, plain

    def write(self, text):
        if isinstance(text, str):
            text = rewrite(text)
            if self.plain:
                text = ANSI.sub("", text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def is_tty(stream) -> bool:
    """Whether a stream is a terminal (False for pipes, files, closed or odd streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def wants_plain(stream) -> bool:
    """No colour for piped or redirected output, or with NO_COLOR set."""
    return not is_tty(stream) or bool(os.environ.get("NO_COLOR"))


def quiet_known_warnings() -> None:
    """Filter, by exact message, library warnings that every run printed and that name no action for the user.

    peft asks each model it wraps for ``is_gradient_checkpointing`` (peft_model.py: every train, eval and merge
    of an adapter), a property transformers 5 deprecated with a FutureWarning in favour of
    ``is_activation_checkpointing``: peft's call, not ours, and nothing the user can change.
    """
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the command line: rustcoder's own warnings (a renamed setting ...) are a line
    ``warning: MESSAGE`` for the user, not Python's ``path:line: Category: message`` plus the source line of
    rustcoder that raised it; any other warning keeps Python's format."""
    if getattr(category, "__module__", "").startswith("rustcoder"):
        return f"warning: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


_python_formatwarning = warnings.formatwarning


def install() -> None:
    """Wrap sys.stdout and sys.stderr in TerminalText (once), filter the known library warnings and show
    rustcoder's own as plain lines (``format_warning``)."""
    quiet_known_warnings()
    warnings.formatwarning = format_warning
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, TerminalText):
            continue
        setattr(sys, name, TerminalText(stream, wants_plain(stream)))


@contextmanager
def stdout_to_stderr():
    """While the block runs, everything written to stdout goes to stderr: this process's prints and its
    libraries' (sys.stdout), and what child processes write to file descriptor 1. For ``--json``: the JSON
    is written after the block, alone on stdout."""
    saved_fd = None
    try:
        sys.stdout.flush()
    except (AttributeError, ValueError, OSError):
        pass
    try:
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors 1/2 (embedded use): the Python-level swap below still holds
        saved_fd = None
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        sys.stdout = saved
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
