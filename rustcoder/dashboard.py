"""The Trackio dashboard of a project (``rustcoder runs --dashboard``): Trackio's own server in a child
process, on a port of its own (the playground takes 7860), its output without colour codes when piped,
and Ctrl-C a clean stop. Standard library only (Trackio runs in the child)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from .terminal import ANSI, wants_plain

DEFAULT_PORT = 7861  # first port tried; Trackio takes the next free one when it is busy


def _copy(source, target, plain: bool) -> None:
    """Copy a child's output line by line (colour codes dropped when ``plain``)."""
    for line in iter(source.readline, ""):
        target.write(ANSI.sub("", line) if plain else line)
        target.flush()
    source.close()


def open_dashboard(project: str, port: int = DEFAULT_PORT) -> int:
    """Run Trackio's dashboard for ``project`` until it stops or Ctrl-C; returns the exit code (0 after Ctrl-C).

    Trackio runs in its own process group, so a terminal's Ctrl-C reaches only this process, which then stops
    the group (SIGTERM): Ctrl-C at any moment, even while Trackio is still starting, ends without a Python
    traceback from Trackio and without click's "Aborted!". The group dies with this process too.
    """
    from .procs import stop_group, start_group

    env = {**os.environ, "GRADIO_SERVER_PORT": str(port)}  # where Trackio starts looking for a free port
    plain = [wants_plain(sys.stdout), wants_plain(sys.stderr)]
    pipe = subprocess.PIPE if any(plain) else None
    child = start_group([sys.executable, "-m", "trackio.cli", "show", "--project", project], die_with_parent=True,
                        env=env, stdout=pipe, stderr=pipe, text=True if pipe else None)
    copies = []
    try:  # from here on, Ctrl-C at any moment stops the group
        if pipe:
            copies = [threading.Thread(target=_copy, args=(src, dst, p), daemon=True)
                      for src, dst, p in ((child.stdout, sys.stdout, plain[0]),
                                          (child.stderr, sys.stderr, plain[1]))]
            for t in copies:
                t.start()
        code = child.wait()
    except KeyboardInterrupt:
        stop_group(child, timeout=10)
        code = 0
    for t in copies:
        t.join(timeout=5)
    if code == 0:
        print("dashboard stopped", file=sys.stderr)
    return code
