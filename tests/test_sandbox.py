"""The sandbox that compiles and runs model-written Rust, tested against hostile programs.

Hostile programs live in tests/sandbox_programs/*.rs; placeholders like __TOKEN__ are filled in
per test. Tests that need rustc skip when it is missing; tests of a protection that this machine
cannot provide skip with the reason (see sandbox_capabilities()).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rustcoder import sandbox
from rustcoder.sandbox import (
    ISOLATION_TAGS,
    STATUSES,
    TRUNCATION_MARKER,
    ExecutionResult,
    Limits,
    RustcNotFound,
    run_many,
    run_rust,
)

PROGRAMS = Path(__file__).parent / "sandbox_programs"
REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_PROC = Path("/proc/self/cmdline").exists()

PASSING = """
pub fn add(a: i32, b: i32) -> i32 { a + b }

#[cfg(test)]
mod tests {
    use super::*;
    #[test] fn adds() { assert_eq!(add(1, 2), 3); }
    #[test] fn adds_negative() { assert_eq!(add(-1, -2), -3); }
    #[test] fn zero() { assert_eq!(add(0, 0), 0); }
}
"""

FAILING = """
pub fn add(a: i32, b: i32) -> i32 { a - b }

#[cfg(test)]
mod tests {
    use super::*;
    #[test] fn zero() { assert_eq!(add(0, 0), 0); }
    #[test] fn adds() { assert_eq!(add(1, 2), 3, "one plus two"); }
}
"""


def program(name: str, **subs: object) -> str:
    """Source of tests/sandbox_programs/<name>.rs with __KEY__ placeholders replaced."""
    text = (PROGRAMS / f"{name}.rs").read_text()
    for key, value in subs.items():
        text = text.replace(f"__{key.upper()}__", str(value))
    return text


@pytest.fixture(scope="module")
def caps() -> dict:
    if not sandbox.rustc_available():
        pytest.skip("rustc is not installed (https://rustup.rs)")
    return sandbox.sandbox_capabilities()


@pytest.fixture
def fresh_setup():
    """Re-probe the machine for this test and again afterwards (env changes are undone)."""
    sandbox._reset_setup()
    yield
    sandbox._reset_setup()


def matching_processes(needle: str) -> list[str]:
    """Live (non-zombie) processes whose command line contains ``needle``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle.encode() in cmdline and state != "Z":
            readable = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid} {readable}")
    return found


def assert_nothing_left(needle: str, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while True:
        left = matching_processes(needle)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"processes left running: {left}"


def runs_root() -> str:
    return sandbox._get_setup().runs_root


# ---------------------------------------------------------------------------------------------
# API and statuses
# ---------------------------------------------------------------------------------------------


def test_statuses_are_a_fixed_set():
    assert STATUSES == ("pass", "test_fail", "compile_error", "needs_crate", "timeout",
                        "runtime_error", "output_limit", "empty_source", "sandbox_error")


def test_module_does_not_import_torch():
    code = ("import sys, rustcoder.sandbox; "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_empty_source_is_not_compiled():
    for source in ("", "   \n\t"):
        result = run_rust(source)
        assert result.status == "empty_source"
        assert result.compile_seconds == 0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        run_rust("fn main() {}", mode="bench")
    with pytest.raises(ValueError, match="edition"):
        run_rust("fn main() {}", edition="2019")
    with pytest.raises(ValueError, match="positive"):
        run_rust("fn main() {}", run_timeout=0)


def test_missing_rustc_raises_with_install_hint(fresh_setup, monkeypatch):
    monkeypatch.setenv("RUSTCODER_RUSTC", "/nonexistent/rustc")
    assert not sandbox.rustc_available()
    with pytest.raises(RustcNotFound, match="https://rustup.rs"):
        run_rust("fn main() {}", mode="run")


def test_capabilities_describe_this_machine(caps):
    assert caps["usable"], caps["error"]
    assert caps["rustc_version"]
    assert set(caps["isolation"]) <= set(ISOLATION_TAGS)
    for tag in ("private-workdir", "scrubbed-env", "rlimits", "timeouts",
                "process-group-kill", "output-cap"):
        assert tag in caps["isolation"]
    if IS_ROOT:
        assert "unprivileged-user" in caps["isolation"]
        assert caps["sandbox_uid"] == 65534
    json.dumps(caps)


def test_passing_tests_pass_and_are_counted(caps):
    started = time.monotonic()
    result = run_rust(PASSING)
    elapsed = time.monotonic() - started
    assert result.status == "pass", result
    assert (result.tests_passed, result.tests_failed) == (3, 0)
    assert result.compile_seconds > 0 and result.run_seconds > 0
    assert result.isolation == caps["isolation"]
    assert elapsed < 5, f"a tiny test file took {elapsed:.2f}s"
    roundtrip = json.loads(json.dumps(result.to_dict()))
    assert roundtrip["status"] == "pass" and roundtrip["tests_passed"] == 3


def test_failing_assertion_is_test_fail_with_counts(caps):
    result = run_rust(FAILING)
    assert result.status == "test_fail", result
    assert (result.tests_passed, result.tests_failed) == (1, 1)
    assert "one plus two" in result.stdout


def test_type_error_is_compile_error_with_code(caps):
    result = run_rust('fn main() { let x: i32 = "seven"; }', mode="run")
    assert result.status == "compile_error"
    assert "E0308" in result.error_codes
    assert "mismatched types" in result.diagnostics
    assert "main.rs" in result.diagnostics and runs_root() not in result.diagnostics
    assert result.run_seconds == 0


def test_external_crate_is_needs_crate(caps):
    result = run_rust("use serde::Serialize;\n#[derive(Serialize)]\nstruct A { x: i32 }\n"
                      "fn main() {}", mode="run")
    assert result.status == "needs_crate", result
    assert result.missing_crates == ["serde"]
    assert "E0432" in result.error_codes

    result = run_rust("extern crate rand;\nfn main() { let _r: u8 = rand::random(); }", mode="run")
    assert result.status == "needs_crate", result
    assert result.missing_crates == ["rand"]

    result = run_rust("fn main() { let v = regex::Regex::new(\"a+\").unwrap(); }", mode="check")
    assert result.status == "needs_crate" and result.missing_crates == ["regex"]


def test_missing_std_item_or_extra_error_is_still_compile_error(caps):
    result = run_rust("use std::collections::HashMapp;\nfn main() {}", mode="run")
    assert result.status == "compile_error" and result.missing_crates == []
    result = run_rust("mod a {}\nuse a::b;\nfn main() {}", mode="run")
    assert result.status == "compile_error"
    # A missing crate does not excuse an unrelated type error.
    result = run_rust('use serde::Serialize;\nfn main() { let x: i32 = "s"; }', mode="run")
    assert result.status == "compile_error" and result.missing_crates == ["serde"]


def test_panic_in_main_is_runtime_error(caps):
    result = run_rust('fn main() { println!("before"); panic!("boom"); }', mode="run")
    assert result.status == "runtime_error"
    assert result.exit_code == 101
    assert "boom" in result.stderr and "before" in result.stdout


def test_run_mode_passes_and_captures_stdout(caps):
    result = run_rust('fn main() { println!("hello {}", 6 * 7); }', mode="run")
    assert result.status == "pass" and result.stdout == "hello 42\n"
    assert result.exit_code == 0


def test_check_mode_only_type_checks(caps):
    ok = run_rust("pub fn f(x: u32) -> u32 { x * 2 }", mode="check")
    assert ok.status == "pass" and ok.run_seconds == 0
    bad = run_rust("pub fn f(x: u32) -> String { x }", mode="check")
    assert bad.status == "compile_error" and "E0308" in bad.error_codes


def test_exit_inside_a_test_is_not_a_pass(caps):
    result = run_rust(program("exit_in_test"))
    assert result.status == "runtime_error", result
    assert "summary" in result.detail


def test_run_many_keeps_input_order(caps):
    sources = [f'fn main() {{ println!("{i}"); }}' for i in range(5)]
    sources.insert(2, 'fn main() { let x: u8 = "no"; }')
    sources.insert(4, "")
    results = run_many(sources, workers=3, mode="run")
    assert [r.status for r in results] == ["pass", "pass", "compile_error", "pass",
                                           "empty_source", "pass", "pass"]
    assert [r.stdout.strip() for r in results if r.status == "pass"] == ["0", "1", "2", "3", "4"]
    assert all(isinstance(r, ExecutionResult) for r in results)


# ---------------------------------------------------------------------------------------------
# Hostile programs
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to look for leftover processes")
def test_infinite_loop_times_out_and_leaves_nothing(caps):
    started = time.monotonic()
    result = run_rust(program("infinite_loop"), mode="run", run_timeout=1.5)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert 1.5 <= result.run_seconds < 2.5
    assert elapsed < result.compile_seconds + 2.5
    assert_nothing_left(runs_root())


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to look for leftover processes")
def test_spawned_child_is_killed_with_the_group(caps):
    token = str(900000 + uuid.uuid4().int % 99999)
    result = run_rust(program("spawn_sleeper", token=token), mode="run")
    assert result.status == "pass" and "spawned" in result.stdout
    assert_nothing_left(f"sleep\0{token}")


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to look for leftover processes")
def test_child_escaping_the_process_group_dies_with_the_pid_namespace(caps):
    token = str(800000 + uuid.uuid4().int % 99999)
    result = run_rust(program("escape_process_group", token=token), mode="run", run_timeout=1)
    assert result.status == "timeout"
    if "pid-namespace" not in result.isolation:
        subprocess.run(["pkill", "-KILL", "-f", f"^sleep {token}$"], check=False)
        pytest.skip("no PID namespace here: a child in its own process group survives killpg")
    assert_nothing_left(f"sleep\0{token}")


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to look for leftover processes")
def test_fork_bomb_is_contained(caps):
    started = time.monotonic()
    result = run_rust(program("fork_bomb"), mode="run", run_timeout=2,
                      limits=Limits(run_max_processes=64))
    assert result.status in ("timeout", "runtime_error"), result
    assert time.monotonic() - started < result.compile_seconds + 4
    assert_nothing_left(runs_root(), within=5)


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to look for leftover processes")
def test_process_count_is_limited(caps):
    result = run_rust(program("fork_count"), mode="run", run_timeout=5,
                      limits=Limits(run_max_processes=50))
    assert result.status == "pass", result
    forks = int(result.stdout.split("forks=")[1])
    assert 0 < forks < 200, f"forked {forks} processes with a limit of 50"
    assert_nothing_left(runs_root())


def test_thread_count_is_limited(caps):
    result = run_rust(program("thread_bomb"), mode="run", run_timeout=5,
                      limits=Limits(run_max_processes=50))
    assert result.status == "pass", result
    threads = int(result.stdout.split("threads=")[1])
    assert 0 < threads < 200, f"spawned {threads} threads with a limit of 50"


def test_huge_allocation_fails_inside_the_sandbox(caps):
    result = run_rust(program("memory_bomb"), mode="run")
    assert result.status == "runtime_error", result
    assert "allocated" not in result.stdout
    assert "memory allocation" in result.stderr or result.signal


def test_touching_memory_stops_at_the_limit(caps):
    result = run_rust(program("memory_creep"), mode="run")
    assert result.status == "runtime_error", result
    assert "held" not in result.stdout


def test_stdout_flood_is_capped_and_stopped(caps):
    cap = 20_000
    result = run_rust(program("stdout_flood"), mode="run", run_timeout=10, max_output_bytes=cap)
    assert result.status == "output_limit", result
    assert result.stdout.endswith(TRUNCATION_MARKER)
    assert len(result.stdout.encode()) <= cap + len(TRUNCATION_MARKER)
    assert result.run_seconds < 5, "the flood should be stopped at the cap, not at the timeout"


def test_cannot_write_outside_its_workdir(caps):
    token = uuid.uuid4().hex[:12]
    targets = [Path(f"/root/pwned-{token}"), REPO / f"pwned-{token}"]
    try:
        result = run_rust(program("write_outside", token=token, repo=REPO), mode="run")
        assert result.status == "pass", result
        assert "inside ok" in result.stdout
        assert f"denied {targets[0]}" in result.stdout
        if IS_ROOT:
            assert not targets[0].exists(), "wrote into /root"
        if "unprivileged-user" not in result.isolation:
            pytest.skip("not root: programs run as the invoking user, who may write to the repo")
        assert not targets[1].exists(), "wrote into the repository"
        assert "WROTE" not in result.stdout
    finally:
        for target in targets:
            try:
                target.unlink(missing_ok=True)
            except OSError:  # not root: /root cannot even be looked into
                pass


def test_cannot_reach_host_network(caps):
    if "network-namespace" not in caps["isolation"]:
        pytest.skip("no network namespace on this machine: the sandbox does not block network")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        result = run_rust(program("connect_localhost", port=port), mode="run")
        assert result.status == "pass", result
        assert "blocked" in result.stdout and "CONNECTED" not in result.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_parent_environment_does_not_leak(caps, monkeypatch):
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("RUSTCODER_SECRET", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    result = run_rust(program("read_env"), mode="run")
    assert result.status == "pass", result
    assert "runtime=None" in result.stdout and "compiletime=None" in result.stdout
    assert secret not in result.stdout + result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.splitlines()[2:] if "=" in line)
    assert "HF_TOKEN" not in env
    assert env["HOME"].startswith(runs_root()) and env["TMPDIR"] == env["HOME"]


@pytest.mark.skipif(not IS_ROOT, reason="only meaningful when the sandbox drops root")
def test_compile_time_include_of_shadow_does_not_leak(caps):
    shadow = Path("/etc/shadow")
    if not shadow.exists():
        pytest.skip("no /etc/shadow here")
    result = run_rust(program("include_shadow"), mode="run")
    assert result.status == "compile_error", result
    blob = result.diagnostics + result.stdout + result.stderr
    for line in shadow.read_text().splitlines():
        name, _, rest = line.partition(":")
        if len(rest) > 8:
            assert rest not in blob
    assert "Permission denied" in result.diagnostics


@pytest.mark.skipif(not IS_ROOT, reason="only meaningful when the sandbox drops root")
def test_compile_time_include_of_a_root_only_file_does_not_leak(caps, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = "top-secret-" + uuid.uuid4().hex
    (private / "secret.txt").write_text(secret)
    result = run_rust(program("include_root_file", path=private / "secret.txt"), mode="run")
    assert result.status == "compile_error", result
    assert secret not in result.diagnostics + result.stdout + result.stderr


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to look for leftover processes")
def test_compile_timeout_kills_the_compiler(caps):
    started = time.monotonic()
    result = run_rust(program("const_eval_hang"), mode="run", compile_timeout=1.5)
    assert result.status == "timeout"
    assert 1.5 <= result.compile_seconds < 2.5 and result.run_seconds == 0
    assert time.monotonic() - started < 3.5
    assert_nothing_left(runs_root())


def test_kill_all_cannot_reach_a_concurrent_job(caps):
    if "pid-namespace" not in caps["isolation"]:
        pytest.skip("no PID namespace: kill(-1) would hit every process of the sandbox user")
    slow = ('fn main() { std::thread::sleep(std::time::Duration::from_millis(1500)); '
            'println!("survived"); }')
    results = run_many([slow, program("kill_everyone")], workers=2, mode="run")
    assert results[1].status in ("pass", "runtime_error")
    assert results[0].status == "pass" and "survived" in results[0].stdout


# ---------------------------------------------------------------------------------------------
# Degraded machines
# ---------------------------------------------------------------------------------------------


def test_degrades_without_namespaces_or_prlimit(caps, fresh_setup, monkeypatch):
    monkeypatch.setenv("RUSTCODER_SANDBOX_DISABLE", "unshare,prlimit,pidfd")
    with pytest.warns(RuntimeWarning, match="unshare"):
        degraded = sandbox.sandbox_capabilities()
    assert degraded["usable"] and degraded["rlimits"] == "preexec"
    assert "network-namespace" not in degraded["isolation"]
    assert "network-namespace" in degraded["missing"]
    result = run_rust(PASSING)
    assert result.status == "pass" and result.tests_passed == 3
    assert "network-namespace" not in result.isolation
    bomb = run_rust(program("memory_bomb"), mode="run")
    assert bomb.status == "runtime_error", "rlimits set in preexec must still apply"
    loop = run_rust(program("infinite_loop"), mode="run", run_timeout=1)
    assert loop.status == "timeout"
    if HAS_PROC:
        assert_nothing_left(runs_root())
