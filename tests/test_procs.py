"""Process groups (rustcoder.procs): a whole group stops, a leader is not reaped early, a child dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rustcoder import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups as Linux has them")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _grandchild_group(tmp_path, trap_term: bool = False):
    """A shell leader that starts a background sleep (the grandchild) and writes its pid."""
    pidfile = tmp_path / "grandchild.pid"
    trap = "trap '' TERM; " if trap_term else ""
    proc = procs.start_group(["/bin/sh", "-c", f"{trap}sleep 300 & echo $! > {pidfile}; wait"])
    deadline = time.monotonic() + 10
    while not (pidfile.is_file() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, int(pidfile.read_text())


def test_stop_group_ends_the_leader_and_what_it_started(tmp_path):
    proc, grandchild = _grandchild_group(tmp_path)
    assert os.getpgid(grandchild) == proc.pid and procs.group_alive(proc.pid)
    code = procs.stop_group(proc, timeout=5)
    assert code is not None and proc.returncode is not None
    assert not _alive(grandchild) and not procs.group_alive(proc.pid)


def test_sigkill_follows_when_sigterm_is_ignored(tmp_path):
    proc, grandchild = _grandchild_group(tmp_path, trap_term=True)
    started = time.monotonic()
    procs.stop_group(proc, timeout=0.5)
    assert not _alive(grandchild) and time.monotonic() - started < 8


def test_exit_status_does_not_reap_the_leader(tmp_path):
    proc = procs.start_group(["/bin/sh", "-c", "exit 7"])
    deadline = time.monotonic() + 10
    while procs.exit_status(proc) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procs.exit_status(proc) == 7 and proc.returncode is None  # still a zombie: its group id is reserved
    with open(f"/proc/{proc.pid}/stat", "rb") as fh:
        assert fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    assert procs.reap(proc) == 7


def test_a_child_started_to_die_with_its_parent_does(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from rustcoder import procs
        child = procs.start_group(["sleep", "300"], die_with_parent=True)
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(300)
    """)])
    deadline = time.monotonic() + 20
    while not (pidfile.is_file() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)  # the parent cannot clean up: the kernel must
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
