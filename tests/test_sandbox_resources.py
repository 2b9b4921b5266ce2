"""The sandbox against answers that attack resources, channels and cleanup (issue 22, items 4 and 5).

Hostile programs live in tests/sandbox_programs/resources/*.rs. They run in one batch, 4 at a time, next to
well-behaved victim jobs; each asserts its status and its own evidence, the victims must be untouched, and
after the batch nothing of any job may be left: processes of the jobs' uids, mounts, cgroups, work dirs,
keys, a busy vsock port. Checks that need a protection this machine lacks are skipped with the reason.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from rustcoder import sandbox
from rustcoder.sandbox import STATUSES, ExecutionResult, Limits, run_many, run_rust
from rustcoder.sandbox import api as sandbox_api
from rustcoder.sandbox import jobdir
from rustcoder.sandbox.jobdir import remove_tree

RESOURCES = Path(__file__).parent / "sandbox_programs" / "resources"
REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
LIBC = ctypes.CDLL(None, use_errno=True)


def program(name: str, **subs: object) -> str:
    """Source of tests/sandbox_programs/resources/<name>.rs with __KEY__ placeholders replaced."""
    path = RESOURCES / f"{name}.rs"
    text = (path if path.exists() else RESOURCES.parent / f"{name}.rs").read_text()
    for key, value in subs.items():
        text = text.replace(f"__{key.upper()}__", str(value))
    return text


@pytest.fixture(scope="module")
def caps() -> dict:
    if not sandbox.rustc_available():
        pytest.skip("rustc is not installed (https://rustup.rs)")
    return sandbox.sandbox_capabilities()


def _number(result: ExecutionResult, key: str) -> int:
    """The last ``key=N`` / ``key N`` number the program printed."""
    found = re.findall(rf"{key}[= ](\d+)", result.stdout)
    assert found, (key, result)
    return int(found[-1])


def at_most(key: str, limit: int, *, required: bool = True, slack: int = 0):
    """The program's last ``key`` number is within ``limit`` (+ ``slack``: a child killed at the cap may be
    counted once more by its parent before it sees the death)."""
    def check(result: ExecutionResult, world: dict) -> None:
        if not required and not re.search(rf"{key}[= ]\d", result.stdout):
            return
        value = _number(result, key)
        assert value <= limit + slack, f"{key}={value} beyond the cap of {limit}: {result.stdout[-300:]}"
    return check


def equals(key: str, value: int):
    def check(result: ExecutionResult, world: dict) -> None:
        assert _number(result, key) == value, result.stdout
    return check


def no_host_path(result: ExecutionResult, world: dict) -> None:
    for path in world["host_paths"]:
        assert path not in result.stdout, f"host path {path!r} visible in the job: {result.stdout[-1500:]}"


def overlapped(other: str):
    """The receiver of a channel ran while its sender did (else the test proves nothing)."""
    def check(result: ExecutionResult, world: dict) -> None:
        (s0, s1), (r0, r1) = world["spans"][other], world["spans"][world["current"]]
        assert min(s1, r1) - max(s0, r0) > 1.0, f"sender {s0:.1f}-{s1:.1f}, receiver {r0:.1f}-{r1:.1f}"
    return check


def host_dir_intact(result: ExecutionResult, world: dict) -> None:
    assert (world["host_dir"] / "keep.txt").read_text() == "keep", "cleanup followed a symlink to the host"


def both(*checks):
    def check(result: ExecutionResult, world: dict) -> None:
        for c in checks:
            c(result, world)
    return check


@dataclass
class Attack:
    """One hostile program, how it runs, and what the sandbox must make of it."""

    name: str
    statuses: tuple[str, ...] = ("pass",)
    needs: tuple[str, ...] = ()  # isolation tags without which the checks cannot hold
    limits: Limits | None = None
    run_timeout: float = 10
    expect: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    check: Callable[[ExecutionResult, dict], None] | None = None
    subs: dict = field(default_factory=dict)


QUOTA = ("job-quota",)
TMP_QUOTA = ("job-quota", "private-tmp")
MEMCG = ("memory-cgroup",)
FILTER = ("syscall-filter",)
SMALL_DIR = Limits(job_dir_bytes=64 * MIB, job_dir_inodes=2048)
BIG_FILES = Limits(job_dir_bytes=64 * MIB, run_file_bytes=4 << 30)

ATTACKS = [
    # channels between concurrent jobs first, so that each sender and receiver pair runs together
    Attack("lock_channel_send", needs=FILTER, expect=("released",)),
    Attack("lock_channel_recv", needs=FILTER, expect=("listened",), forbid=("CHANNEL",),
           check=overlapped("lock_channel_send")),
    Attack("socket_channel_send", needs=("network-namespace",), expect=("released",)),
    Attack("socket_channel_recv", needs=("network-namespace", "mount-namespace"), expect=("listened",),
           forbid=("CHANNEL",), check=overlapped("socket_channel_send")),
    Attack("ipc_channel_send", needs=("ipc-namespace",), expect=("released",)),
    Attack("ipc_channel_recv", needs=("ipc-namespace", "private-tmp"), expect=("listened",), forbid=("CHANNEL",),
           check=overlapped("ipc_channel_send")),
    # disk and inodes of the job's directory, /tmp and /dev/shm
    Attack("disk_fill_job", needs=QUOTA, limits=SMALL_DIR, check=at_most("wrote", 64)),
    Attack("inode_flood_job", needs=QUOTA, limits=SMALL_DIR, check=at_most("files", 2048)),
    Attack("dir_flood_job", needs=QUOTA, limits=SMALL_DIR, check=at_most("dirs", 2048)),
    Attack("inode_flood_tmp", needs=TMP_QUOTA, check=at_most("files", 4096)),
    Attack("inode_flood_shm", needs=TMP_QUOTA, check=at_most("files", 4096)),
    Attack("sparse_huge_file", needs=QUOTA, limits=BIG_FILES, check=at_most("wrote", 64)),
    Attack("fallocate_job", needs=QUOTA, limits=BIG_FILES, check=at_most("size", 64 * MIB)),
    # memory of the whole process tree, kernel memory included
    Attack("socketpair_memory", ("pass", "runtime_error"), needs=MEMCG,
           limits=Limits(run_tree_memory_bytes=192 * MIB), check=at_most("held_max", 192, required=False, slack=2 * 8)),
    Attack("fork_allocate", ("pass", "runtime_error"), needs=MEMCG,
           limits=Limits(run_tree_memory_bytes=512 * MIB), check=at_most("rss_max", 512, required=False)),
    Attack("memfd_memory", ("pass", "runtime_error"), needs=MEMCG,
           limits=Limits(run_tree_memory_bytes=256 * MIB), check=at_most("held", 256)),
    Attack("tmpfs_memory", ("pass", "runtime_error"), needs=MEMCG + QUOTA,
           limits=Limits(run_tree_memory_bytes=96 * MIB), check=at_most("held", 96, required=False)),
    Attack("scm_rights_flood", ("pass", "runtime_error"), needs=MEMCG,
           limits=Limits(run_tree_memory_bytes=128 * MIB), check=at_most("held", 128, required=False)),
    # netlink receive queues: kernel memory no cgroup counts (red team F4b: 242 MiB queued against 128 MiB)
    Attack("netlink_memory", needs=MEMCG + FILTER, limits=Limits(run_tree_memory_bytes=128 * MIB),
           check=at_most("queued", 128)),
    # what namespaces do not cover: socket families beyond unix/inet (an allow-list), vsock, keyrings, inotify, ...
    Attack("socket_families", needs=FILTER,
           expect=("unix: opened", "inet: opened", "inet6: opened", "netlink: refused 97", "packet: refused 97",
                   "alg: refused 97", "key: refused 97", "xdp: refused 97", "vsock: refused 97",
                   "unknown: refused 97", "netlink_high_bits: refused 97", "netlink pair: refused 97",
                   "unix pair: opened")),
    Attack("vsock_bind", needs=FILTER, expect=("blocked",), forbid=("BOUND", "socket made")),
    Attack("vsock_connect", needs=FILTER, expect=("blocked",), forbid=("CONNECTED", "socket made")),
    Attack("keyring_store", needs=FILTER, expect=("user: blocked",), forbid=("stored",)),
    Attack("keyring_read", needs=FILTER, expect=("found 0",), forbid=("LEAKED",)),
    Attack("keyring_session_read", needs=("private-keyring",), forbid=("key ",)),
    Attack("inotify_watch", needs=FILTER, expect=("blocked", "dnotify: blocked"), forbid=("WATCHING",)),
    Attack("io_uring_probe", needs=FILTER, expect=("blocked",), forbid=("IO_URING",)),
    Attack("perf_bpf_probe", needs=FILTER, expect=("perf: blocked",), forbid=("OPENED", "GOT")),
    # new namespaces (a user namespace gives CAP_NET_RAW: AF_PACKET rings that no cgroup counts)
    Attack("namespace_escape", needs=FILTER, forbid=("ESCAPED",),
           expect=("thread 42 spawn true", "clone: blocked", "clone3: blocked", "setns: blocked", "packet: blocked",
                   "unshare: blocked")),
    # the page cache of shared read-only files: eviction and residency probes
    Attack("pagecache_probe", needs=FILTER, forbid=("ALLOWED",),
           expect=("read 4096",) + tuple(f"{c}: blocked" for c in ("fadvise", "readahead", "preadv2", "mincore",
                                                                   "madvise", "cachestat"))),
    # host paths
    Attack("proc1_cmdline_paths", needs=("mount-namespace",), expect=("environ unreadable",),
           forbid=("ENVIRON:", "env RUSTCODER_JOB"), check=no_host_path),
    Attack("mountinfo_paths", needs=("mount-namespace", "job-quota"), check=no_host_path),
    Attack("proc_self_cgroup", needs=("cgroup-namespace", "memory-cgroup"), check=no_host_path),
    Attack("host_info", needs=("mount-namespace",), forbid=("SHOWS",),
           expect=("hostname sandbox", "/proc/cmdline empty", "/proc/key-users empty", "/proc/kallsyms empty",
                   "/proc/sys/kernel/random/boot_id empty", "/proc/loadavg empty")),
    # what a job leaves behind for the cleanup
    Attack("deep_dir_chain", subs={"depth": 1200}, check=equals("depth", 1200)),
    Attack("symlink_loops", check=both(at_most("links", 100), host_dir_intact)),
    Attack("chmod_000_tree", expect=("closed 30",)),
    Attack("odd_names", check=at_most("odd names", 100)),
    Attack("fifo_socket_files", expect=("reader true",)),
    Attack("survivor_process", expect=("left a survivor: true",)),
]
VICTIMS = ("victim_busy", "victim_busy", "victim")


def test_at_least_35_attacks_each_a_file():
    names = [a.name for a in ATTACKS]
    assert len(set(names)) == len(names) >= 35
    on_disk = {p.stem for p in RESOURCES.glob("*.rs")} - {"victim_busy"}
    assert set(names) == on_disk, "every program in tests/sandbox_programs/resources is in the table"


def _vsock_watch(port: int, stop: threading.Event, busy: list) -> None:
    """On the host, keep checking that the jobs' vsock port is free (a job's bind would make it busy)."""
    while not stop.is_set():
        try:
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        except (OSError, AttributeError):
            return  # no vsock here: nothing a job could reach either
        try:
            s.bind((socket.VMADDR_CID_ANY, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                busy.append(port)
        finally:
            s.close()
        stop.wait(0.1)


def _add_session_key(secret: str) -> int:
    """Put ``secret`` in this process's session keyring (a job must not read it); returns its id or -1."""
    payload = secret.encode()
    return LIBC.syscall(248, b"user", b"rustcoder-canary", payload, len(payload), -3)  # add_key, KEY_SPEC_SESSION


def _key_users() -> dict[int, str]:
    try:
        lines = Path("/proc/key-users").read_text().splitlines()
    except OSError:
        return {}
    return {int(line.split(":")[0]): line for line in lines if line.strip()}


def _own_cgroup_paths() -> list[str]:
    paths = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        path = line.split(":", 2)[2]
        if path not in ("/", ""):
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def world(caps, tmp_path_factory):
    """Canaries on the host, the batch run 4 at a time beside victims, then what was left behind."""
    import psutil

    token = uuid.uuid4().hex[:12]
    secret = "keycanary-" + uuid.uuid4().hex
    host_dir = tmp_path_factory.mktemp("host-dir")
    (host_dir / "keep.txt").write_text("keep")
    key_id = _add_session_key(secret)
    port = 20000 + int(token[:4], 16) % 20000
    setup = sandbox.get_setup()
    subs = {"token": token, "hostdir": host_dir, "port": port, "shmkey": 0x52440000 + int(token[:4], 16)}
    jobs = [(f"victim{i}", program(v, token=f"{token}-{i}"), {}) for i, v in enumerate(VICTIMS)]
    jobs[1:1] = [(a.name, program(a.name, **{**subs, **a.subs}),
                  {"run_timeout": a.run_timeout, **({"limits": a.limits} if a.limits else {})}) for a in ATTACKS]
    spans: dict[str, tuple[float, float]] = {}

    def timed(name: str, src: str, kwargs: dict) -> ExecutionResult:
        started = time.monotonic()
        try:
            return run_rust(src, mode="run", **{"run_timeout": 10, **kwargs})
        finally:
            spans[name] = (started, time.monotonic())

    stop, busy = threading.Event(), []
    watcher = threading.Thread(target=_vsock_watch, args=(port, stop, busy), daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(timed, name, src, kw) for name, src, kw in jobs}
            results = {name: f.result() for name, f in futures.items()}
        elapsed = time.monotonic() - started
        stop.set()
        watcher.join()
        uids = {r.job_uid for r in results.values() if r.job_uid}
        deadline = time.monotonic() + 5
        while True:
            left = []
            for proc in psutil.process_iter(["uids", "cmdline", "status"]):
                info = proc.info
                if info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(info["cmdline"] or [])
                if (info["uids"] and info["uids"].real in uids) or token in cmd:
                    left.append(f"{proc.pid} uid={info['uids'].real} {cmd[:80]}")
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        mounts = Path("/proc/self/mountinfo").read_text()
        groups = []
        if setup.cgroups is not None:
            for base in {setup.cgroups.memory, setup.cgroups.pids} - {None}:
                groups += [n for n in os.listdir(base) if n.startswith(f"rustcoder-{os.getpid()}-")]
        yield {
            "results": results, "spans": spans, "elapsed": elapsed, "left_running": left, "busy_vsock": busy,
            "secret": secret, "key_added": key_id >= 0, "host_dir": host_dir,
            "host_paths": [setup.runs_root, "rustcoder-sandbox", str(REPO), os.path.realpath(tempfile.gettempdir()) + "/",
                           "fstab-", "skeleton-"] + _own_cgroup_paths() + [f"rustcoder-{os.getpid()}-"],
            "left_mounts": [line for line in mounts.splitlines() if setup.runs_root in line],
            "left_groups": groups,
            "left_dirs": sorted(n for n in os.listdir(setup.runs_root) if n.startswith("run-")),
            "left_keys": {uid: line for uid, line in _key_users().items() if uid in uids},
        }
    finally:
        stop.set()
        if key_id >= 0:
            LIBC.syscall(250, 3, key_id)  # KEYCTL_REVOKE


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack(attack: Attack, world: dict, caps: dict):
    result = world["results"][attack.name]
    blob = "\n".join([result.stdout, result.stderr, result.diagnostics, result.detail])
    assert result.status in STATUSES
    assert world["secret"] not in blob, "the evaluator's session keyring leaked into a job"
    missing = [t for t in attack.needs if t not in caps["isolation"]]
    if missing:
        pytest.skip(f"this machine lacks {missing}: only the status set is checked")
    assert result.status in attack.statuses, result
    for text in attack.expect:
        assert text in result.stdout, (text, result)
    for text in attack.forbid:
        assert text not in blob, (text, blob[-2000:])
    if attack.check:
        world["current"] = attack.name
        attack.check(result, world)


def test_victims_beside_the_attacks_are_untouched(world):
    for i, _ in enumerate(VICTIMS):
        result = world["results"][f"victim{i}"]
        assert result.status == "pass", result
        assert "victim intact" in result.stdout, result.stdout
        assert "TAMPERED" not in result.stdout


def test_nothing_of_any_job_outlives_it(world, caps):
    assert world["left_running"] == [], "processes left running"
    assert world["left_dirs"] == [], "work dirs left behind"
    assert world["left_mounts"] == [], "job mounts left behind"
    assert world["left_groups"] == [], "cgroups left behind"
    assert world["left_keys"] == {}, "keys left in the jobs' uids"
    assert world["busy_vsock"] == [], "a job's vsock bind reached the host"
    assert all(r.job_uid is not None for r in world["results"].values())
    assert world["elapsed"] < 180, f"the batch took {world['elapsed']:.0f}s"


# ---------------------------------------------------------------------------------------------
# Cleanup never fails, the uid is always handed back, every item gets a status
# ---------------------------------------------------------------------------------------------


def _deep_chain(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)


@pytest.mark.slow
def test_remove_tree_handles_what_rmtree_cannot():
    """No recursion (a 100,000-deep chain), no following links, closed modes, fifos, odd names.

    Built outside pytest's temp dir (pytest's own cleanup would hit the RecursionError) and removed in any case.
    """
    import shutil

    disk = Path(tempfile.mkdtemp(prefix="rustcoder-test-"))
    # 100,000 levels in memory (a tmpfs) where there is one: this machine's disk takes minutes for that many
    base = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else disk
    try:
        keep = disk / "outside"
        keep.mkdir()
        (keep / "keep.txt").write_text("keep")
        deep = disk / "deep"
        deep.mkdir()
        _deep_chain(deep, 1200)
        with pytest.raises(RecursionError):  # what broke evals before
            shutil.rmtree(deep)
        assert remove_tree(str(deep)) is None and not deep.exists()
        job = base / "job"
        job.mkdir()
        _deep_chain(job, 100_000)
        (job / "link-out").symlink_to(keep)
        (job / "link-file").symlink_to(keep / "keep.txt")
        (job / "loop").symlink_to(job / "loop")
        os.mkfifo(job / "fifo")
        closed = job / "closed" / "inner"
        closed.mkdir(parents=True)
        (closed / "f").write_text("x")
        os.chmod(closed, 0)
        os.chmod(job / "closed", 0o500)
        (job / os.fsdecode(b"odd\n\xff name")).write_text("x")
        assert remove_tree(str(job)) is None
        assert not job.exists()
        assert (keep / "keep.txt").read_text() == "keep"
        assert remove_tree(str(disk / "never-there")) is None
    finally:
        remove_tree(str(base), 600)
        remove_tree(str(disk), 600)


def test_remove_tree_gives_up_in_bounded_time_and_says_why(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    for i in range(50):
        (job / f"f{i}").write_text("x")
    why = remove_tree(str(job), deadline_seconds=0)
    assert why and "still removing" in why


def test_a_deep_chain_on_the_hosts_disk_is_removed(caps, monkeypatch):
    """Without the job's own tmpfs (degraded), the job's directory is on the host's disk: still removed."""
    monkeypatch.setenv("RUSTCODER_SANDBOX_DISABLE", "job-quota")
    sandbox.reset_setup()
    try:
        assert "job-quota" not in sandbox.sandbox_capabilities()["isolation"]
        result = run_rust(program("deep_dir_chain", depth=2500), mode="run", run_timeout=60)
        assert result.status == "pass" and "depth 2500" in result.stdout, result
        assert "cleanup" not in result.detail
        assert [n for n in os.listdir(sandbox.get_setup().runs_root) if n.startswith("run-")] == []
    finally:
        sandbox.reset_setup()


def test_a_failing_cleanup_is_reported_with_the_item_and_the_uid_is_released(caps, monkeypatch):
    def broken(path, *args, **kwargs):
        raise RuntimeError("cleanup exploded")

    sandbox.get_setup()  # probed before the breakage
    monkeypatch.setattr(jobdir, "remove_tree", broken)
    monkeypatch.setattr(jobdir, "unmount", broken)
    result = run_rust('fn main() { println!("hi"); }', mode="run")
    assert result.status == "pass" and result.stdout == "hi\n"
    assert "cleanup: RuntimeError: cleanup exploded" in result.detail
    pool = sandbox.get_setup().uid_pool
    if pool is not None:  # the slot is free again: its lock can be taken
        import fcntl

        fd = os.open(pool.lock_dir / f"uid-{result.job_uid}.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    monkeypatch.undo()
    for name in os.listdir(sandbox.get_setup().runs_root):
        if name.startswith("run-"):
            jobdir.unmount(os.path.join(sandbox.get_setup().runs_root, name))
            remove_tree(os.path.join(sandbox.get_setup().runs_root, name))


def test_one_broken_item_is_its_own_sandbox_error_and_the_batch_keeps_the_rest(caps, monkeypatch):
    real = sandbox_api._compile_and_run

    def flaky(setup, job, group, source, *args):
        if "BREAK" in source:
            raise RuntimeError("the sandbox broke on this one")
        return real(setup, job, group, source, *args)

    monkeypatch.setattr(sandbox_api, "_compile_and_run", flaky)
    sources = [f'fn main() {{ println!("{i}"); }}' for i in range(3)]
    sources.insert(1, "// BREAK\nfn main() {}")
    results = run_many(sources, workers=2, mode="run")
    assert [r.status for r in results] == ["pass", "sandbox_error", "pass", "pass"]
    assert "the sandbox broke on this one" in results[1].detail
    assert [r.stdout for r in results if r.status == "pass"] == ["0\n", "1\n", "2\n"]


FORGED_LINKER = 'compile_error!("linker `cc` not found");\nfn main() {}'


def test_an_answer_cannot_make_itself_an_excluded_sandbox_error(caps, monkeypatch):
    """sandbox_error leaves the pass-rate denominator: the answer's own text (a forged "linker not found"
    message, a lone surrogate, a huge program, a program the harness chokes on) must give a counted status."""
    forged = run_rust(FORGED_LINKER, mode="run")
    assert forged.status == "compile_error", forged
    assert "linker `cc` not found" in forged.diagnostics
    surrogate = run_rust("fn main() {} // \ud800", mode="run")
    assert surrogate.status == "compile_error", surrogate
    assert "not valid UTF-8 text" in surrogate.detail and "\\ud800" in surrogate.detail
    in_tests = run_rust("pub fn f() {}", tests="#[test] fn t() {} // \udfff", tests_untrusted=True)
    assert in_tests.status == "compile_error" and "its tests" in in_tests.detail, in_tests
    huge = run_rust("fn main() {}\n" + "// x\n" * (sandbox_api.MAX_SOURCE_CHARS // 5 + 1), mode="run")
    assert huge.status == "compile_error" and "over the sandbox's limit" in huge.detail, huge

    def choke(*args, **kwargs):
        raise RecursionError("the harness choked")

    monkeypatch.setattr(sandbox_api.Harness, "judge", choke)  # the run's output is the answer's too
    misread = run_rust("pub fn f() {}", tests="#[test] fn t() { f() }")
    assert misread.status == "runtime_error" and "could not read the program's output" in misread.detail, misread

    monkeypatch.setattr(sandbox_api, "build_harness", choke)
    choked = run_rust("pub fn f() {}", tests="#[test] fn t() { f() }")
    assert choked.status == "compile_error" and "RecursionError" in choked.detail, choked


def test_a_missing_linker_is_still_a_sandbox_error(caps, monkeypatch):
    """Where the set-up found no linker, rustc's own spanless "linker `cc` not found" error is the sandbox's."""
    sandbox.get_setup()
    fake = {"message": "linker `cc` not found", "level": "error", "code": None, "spans": [], "children": []}
    real = sandbox_api.parse_diagnostics
    monkeypatch.setattr(sandbox_api, "parse_diagnostics", lambda stderr: ([fake], []) if b"NOLINK" in stderr
                        else real(stderr))
    monkeypatch.setattr(sandbox.get_setup(), "linker", None)
    result = run_rust('compile_error!("NOLINK");', mode="run")
    assert result.status == "sandbox_error" and "no C linker" in result.detail, result
    forged = run_rust(FORGED_LINKER, mode="run")  # the answer's own message has a span in its file
    assert forged.status == "compile_error", forged


def test_a_reused_uid_finds_no_key_of_the_job_before(caps, monkeypatch):
    """Force uid reuse (one slot): the second job runs as the first one's uid and must find nothing."""
    if "per-job-uid" not in caps["isolation"]:
        pytest.skip("no per-job uids here (needs root)")
    monkeypatch.setenv("RUSTCODER_SANDBOX_UID_SLOTS", "1")
    monkeypatch.setenv("RUSTCODER_SANDBOX_UID_BASE", "1790900")
    sandbox.reset_setup()
    try:
        token = uuid.uuid4().hex[:8]
        first = run_rust(program("keyring_store", token=token), mode="run")
        second = run_rust(program("keyring_read", token=token), mode="run")
        assert first.job_uid == second.job_uid == 1790900
        assert first.status == second.status == "pass", (first, second)
        assert "LEAKED" not in second.stdout and "found 0" in second.stdout, second.stdout
        assert 1790900 not in _key_users(), "keys left in the reused uid"
    finally:
        sandbox.reset_setup()


def test_each_job_runs_in_a_cpu_group_of_its_own_with_the_default_share(caps):
    """CPU fairness between concurrent jobs comes from a CPU cgroup per job (siblings with equal shares), not
    from the kernel's sched_autogroup: two running jobs are in two distinct groups holding their processes,
    each with the default share, and both groups are gone afterwards."""
    from rustcoder.sandbox.setup import get_setup

    if "cpu-share" not in caps["isolation"]:
        pytest.skip("no CPU cgroup per job on this machine: " + "; ".join(caps.get("warnings", [])))
    base = get_setup().cgroups
    prefix = f"rustcoder-{os.getpid()}-"
    sleeper = "fn main() { std::thread::sleep(std::time::Duration::from_millis(2500)); }"
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(run_many, [sleeper, sleeper], workers=2, mode="run")
    seen: dict[str, str] = {}
    while not future.done():
        for name in os.listdir(base.cpu):
            if not name.startswith(prefix):
                continue
            try:
                procs = Path(base.cpu, name, "cgroup.procs").read_text().split()
                share = Path(base.cpu, name, "cpu.weight" if base.version == 2 else "cpu.shares").read_text()
            except OSError:
                continue  # made or removed meanwhile
            if procs:
                seen[name] = share.strip()
        time.sleep(0.05)
    pool.shutdown()
    assert [r.status for r in future.result()] == ["pass", "pass"], future.result()
    assert len(seen) >= 2, f"jobs' processes were not seen in CPU groups of their own: {seen}"
    assert set(seen.values()) == {"100" if base.version == 2 else "1024"}, seen  # the kernel's defaults
    assert not [n for n in os.listdir(base.cpu) if n.startswith(prefix)], "a job's CPU group was left"


def test_degraded_hosts_say_which_resource_protections_are_missing(caps, monkeypatch):
    monkeypatch.setenv("RUSTCODER_SANDBOX_DISABLE", "cgroup,syscall-filter,keyring,job-quota")
    sandbox.reset_setup()
    try:
        with pytest.warns(RuntimeWarning):
            degraded = sandbox.sandbox_capabilities()
        for tag in ("memory-cgroup", "pids-cgroup", "syscall-filter", "private-keyring", "job-quota"):
            assert tag in degraded["missing"] and tag not in degraded["isolation"]
        assert any("cgroup" in w for w in degraded["warnings"])
        result = run_rust(program("vsock_bind", port=7), mode="run")
        assert result.status == "pass" and "syscall-filter" not in result.isolation
    finally:
        sandbox.reset_setup()


# ---------------------------------------------------------------------------------------------
# `rustcoder eval` finishes with a report, on this run and on a rerun
# ---------------------------------------------------------------------------------------------

ADD_PROMPT = "/// Adds two numbers.\npub fn add(a: i32, b: i32) -> i32 {"
ADD_TEST = "#[cfg(test)]\nmod tests {\n    use super::*;\n    #[test]\n    fn adds() { assert_eq!(add(2, 3), 5); }\n}"
LITTER = r'''pub fn add(a: i32, b: i32) -> i32 {
    // leaves a 1,200-deep chain, closed directories, a symlink loop and a process behind, then answers
    let _ = std::env::set_current_dir("/job").or_else(|_| std::env::set_current_dir(std::env::temp_dir()));
    for _ in 0..1200 {
        if std::fs::create_dir("d").is_err() || std::env::set_current_dir("d").is_err() { break; }
    }
    let _ = std::os::unix::fs::symlink("loop", "loop");
    let _ = std::process::Command::new("/bin/sleep").arg("600").spawn();
    a + b
}'''


def test_eval_with_hostile_answers_finishes_with_a_report_on_runs_and_reruns(caps, tmp_path):
    import json
    import subprocess
    import sys

    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"task_id": f"t/{i}", "prompt": ADD_PROMPT, "canonical_solution": "    a + b\n}",
                                         "test": ADD_TEST, "entry_point": "add"}) + "\n" for i in range(5)))
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "t/0", "answer": f"```rust\n{LITTER}\n```"},
        {"id": "t/1", "answer": "```rust\npub fn add(a: i32, b: i32) -> i32 { a + b }\n```"},
        {"id": "t/2", "answer": "```rust\npub fn add(a: i32, b: i32) -> i32 { a - b }\n```"},
        # a lone surrogate crashed the store (F18); a forged "linker not found" excluded the item (F17)
        {"id": "t/3", "answer": "```rust\npub fn add(a: i32, b: i32) -> i32 { todo!() } // \ud800\n```"},
        {"id": "t/4", "answer": "```rust\ncompile_error!(\"linker `cc` not found\");\n"
                                "pub fn add(a: i32, b: i32) -> i32 { todo!() }\n```"},
    ]))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "rustcoder", "eval", "--predictions", str(preds), "--benchmark", str(bench),
           "--output-dir", str(out), "--workers", "2"]
    for attempt in ("run", "rerun"):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (attempt, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (attempt, proc.stderr[-3000:])
        assert (out / "report.md").is_file(), attempt
    scores = {r["key"]: r for r in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    by_id = {k.split(":")[1]: r for k, r in scores.items()}
    assert by_id["t/1"]["status"] == "pass" and by_id["t/2"]["status"] != "pass"
    assert by_id["t/0"]["status"] == "pass", by_id["t/0"]  # a correct answer that littered: judged, cleaned up
    assert by_id["t/3"]["status"] in ("test_fail", "compile_error") and by_id["t/3"]["passed"] == 0.0, by_id["t/3"]
    assert by_id["t/4"]["status"] == "compile_error" and by_id["t/4"]["passed"] == 0.0, by_id["t/4"]
    assert "\ufffd" in (out / "samples.jsonl").read_text(encoding="utf-8")  # stored, normalised
    metrics = json.loads((out / "metrics.json").read_text())
    assert "sandbox_error" not in json.dumps(metrics.get("statuses", metrics)), metrics
