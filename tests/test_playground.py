"""The playground: its OpenAI client, Rust extraction, "Check with rustc", and the page in a real browser.

A scripted OpenAI-compatible endpoint (stdlib HTTP server) streams a known Rust answer slowly, so the
browser test can see streaming and a known rustc diagnostic (E0308); the other side of the
side-by-side view is a real transformers engine serving the tiny model.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rustcoder import playground as pg
from rustcoder.openai_client import ChatClient, EndpointError, normalize_endpoint
from rustcoder.data.categories import CATEGORIES, CATEGORY_NAMES
from rustcoder.errors import MissingExtraError, UsageError

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

BAD_RUST_ANSWER = """Here is the function:

```rust
/// Adds two numbers.
pub fn add(a: i32, b: i32) -> i32 {
    let total: i64 = a + b;
    total
}
```

It returns the sum."""

GOOD_RUST = "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ScriptedEndpoint:
    """An OpenAI-compatible server that streams a fixed answer in small delayed pieces and records requests."""

    def __init__(self, answer: str, models=("scripted-rust",), api_key: str | None = None, delay: float = 0.04,
                 piece: int = 6):
        self.answer, self.models, self.api_key, self.delay, self.piece = answer, list(models), api_key, delay, piece
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self):
                if endpoint.api_key and self.headers.get("Authorization") != f"Bearer {endpoint.api_key}":
                    self._json(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list",
                                            "data": [{"id": m, "object": "model"} for m in endpoint.models]})
                self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                if not body.get("stream"):
                    return self._json(200, {"object": "chat.completion", "model": body.get("model"),
                                            "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": endpoint.answer}}]})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                text = endpoint.answer
                for i in range(0, len(text), endpoint.piece):
                    event = {"object": "chat.completion.chunk", "model": body.get("model"),
                             "choices": [{"index": 0, "delta": {"content": text[i:i + endpoint.piece]}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(endpoint.delay)
                done = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    endpoint = ScriptedEndpoint(BAD_RUST_ANSWER, delay=0.0)
    yield endpoint
    endpoint.close()


def needs_rustc():
    from rustcoder import sandbox

    if not sandbox.rustc_available():
        pytest.skip("rustc is not installed")


# ---- the HTTP client ----------------------------------------------------------------------------

def test_client_lists_models_answers_and_streams(scripted):
    client = ChatClient(scripted.url)
    assert client.models() == ["scripted-rust"]
    messages = [{"role": "user", "content": "add"}]
    assert client.chat(messages, "scripted-rust", temperature=0.0) == BAD_RUST_ANSWER
    pieces = list(client.stream_chat(messages, "scripted-rust", temperature=0.2, top_p=0.9, max_tokens=64, seed=None))
    assert len(pieces) > 10 and "".join(pieces) == BAD_RUST_ANSWER
    sent = scripted.requests[-1]
    assert sent["stream"] is True and sent["model"] == "scripted-rust" and "seed" not in sent
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.2, 0.9, 64)


def test_client_errors_say_what_to_do():
    locked = ScriptedEndpoint("x", api_key="right-key-123")
    try:
        with pytest.raises(EndpointError, match="HTTP 401: Incorrect API key provided.*--api-key"):
            ChatClient(locked.url, api_key="wrong").models()
        with pytest.raises(EndpointError, match="HTTP 401"):
            list(ChatClient(locked.url).stream_chat([{"role": "user", "content": "x"}]))
        assert ChatClient(locked.url, api_key="right-key-123").models() == ["scripted-rust"]
    finally:
        locked.close()
    with pytest.raises(EndpointError, match="cannot reach .*rustcoder serve"):
        ChatClient(f"http://127.0.0.1:{free_port()}/v1").models()


@pytest.mark.parametrize("given,expected", [("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
                                            ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
                                            ("localhost:8001", "http://localhost:8001/v1"),
                                            ("https://host.example/v1/", "https://host.example/v1")])
def test_endpoint_urls_are_normalized(given, expected):
    assert normalize_endpoint(given) == expected


# ---- Rust in answers ----------------------------------------------------------------------------

def test_extract_rust():
    assert pg.extract_rust(BAD_RUST_ANSWER).startswith("/// Adds two numbers.\npub fn add")
    two = "Fixed:\n```rust\nfn a() {}\n```\nand tests:\n```rs\n#[test]\nfn t() { a() }\n```"
    assert pg.extract_rust(two) == "fn a() {}\n\n#[test]\nfn t() { a() }\n"
    assert pg.extract_rust("```\nfn bare() {}\n```") == "fn bare() {}\n"
    assert pg.extract_rust("```python\nprint(1)\n```") == ""  # fenced, but not Rust
    assert pg.extract_rust("fn unfenced() -> u8 { 1 }") == "fn unfenced() -> u8 { 1 }\n"
    assert pg.extract_rust("```rust\nfn cut_off(") == "fn cut_off(\n"  # an answer stopped mid-block
    assert pg.extract_rust("") == ""


@pytest.mark.parametrize("source,mode", [("fn f() {}", "check"), ("fn main() { }", "run"),
                                         ("fn f() {}\n#[test]\nfn t() {}", "test"),
                                         ("fn main() {}\n#[test]\nfn t() {}", "test")])
def test_choose_mode(source, mode):
    assert pg.choose_mode(source) == mode
    assert pg.choose_mode(source, "check") == "check"


def test_check_answer_reports_rustc_diagnostics():
    needs_rustc()
    bad = pg.check_answer(BAD_RUST_ANSWER)
    assert bad.status == "compile_error" and bad.result.error_codes == ["E0308"]
    assert "does not compile" in bad.markdown and "https://doc.rust-lang.org/error_codes/E0308.html" in bad.markdown
    assert "mismatched types" in bad.markdown
    good = pg.check_answer(f"```rust\n{GOOD_RUST}```")
    assert good.status == "pass" and "✓ compiles" in good.markdown
    tests = pg.check_answer(f"```rust\n{GOOD_RUST}\n#[test]\nfn adds() {{ assert_eq!(add(2, 2), 5); }}\n```")
    assert tests.status == "test_fail" and "tests: 0 passed, 1 failed" in tests.markdown
    run = pg.check_answer('```rust\nfn main() { println!("hello from rust"); }\n```')
    assert run.status == "pass" and "hello from rust" in run.markdown
    assert pg.check_answer("I cannot help with that.\n```text\nno\n```").status == "empty_source"


def test_task_picker_uses_the_training_system_prompts():
    assert [pg.system_prompt(c) for c in CATEGORY_NAMES] == [CATEGORIES[c].system for c in CATEGORY_NAMES]
    assert pg.system_prompt(pg.FREE_CHAT) == ""
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert pg.build_messages("SYS", history, "q2") == [{"role": "system", "content": "SYS"}, *history,
                                                       {"role": "user", "content": "q2"}]
    assert pg.build_messages("  ", [], "q")[0] == {"role": "user", "content": "q"}


# ---- the app ------------------------------------------------------------------------------------

def test_binding_and_sharing_need_a_password():
    with pytest.raises(UsageError, match="--username and --password"):
        pg.check_bind("0.0.0.0", None)
    pg.check_bind("0.0.0.0", ("me", "pw"))
    pg.check_bind("127.0.0.1", None)
    with pytest.raises(UsageError, match="public link"):
        pg.launch_playground("http://127.0.0.1:1/v1", share=True, block=False)


def test_missing_gradio_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'rustcoder\[playground\]'"):
        pg.build_playground("http://127.0.0.1:1/v1")


def test_build_playground_side_by_side(scripted):
    gr = pytest.importorskip("gradio")
    app = pg.build_playground(scripted.url, compare=scripted.url, models=["tuned", "base"])
    assert isinstance(app, gr.Blocks)
    dropdowns = {c.elem_id: c for c in app.blocks.values() if isinstance(c, gr.Dropdown)}
    assert dropdowns["rc-model-a"].value == "tuned" and dropdowns["rc-model-b"].value == "base"
    assert dropdowns["rc-task"].choices[1:] == [(c, c) for c in CATEGORY_NAMES]
    # an endpoint that is down still gives a page, which says so
    down = pg.build_playground(f"http://127.0.0.1:{free_port()}/v1")
    notes = [c.value for c in down.blocks.values() if isinstance(c, gr.Markdown) and c.value]
    assert any("cannot reach" in n for n in notes)


# ---- in a real browser --------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright is not installed (pip install playwright; never `playwright install`)")
    if not CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return sync_playwright


@pytest.mark.slow
def test_playground_in_chromium(tiny_qwen2):
    """Load the page, pick a task, send a prompt, watch both answers stream, check with rustc, screenshot."""
    sync_playwright = _playwright()
    pytest.importorskip("gradio")
    needs_rustc()
    from rustcoder.serve import build_spec, start_server, transformers_serving_missing

    if transformers_serving_missing():
        pytest.skip("transformers serving is not installed: pip install 'rustcoder[serve]'")

    scripted = ScriptedEndpoint(BAD_RUST_ANSWER, models=["rust-finetuned"], delay=0.05, piece=4)
    engine = start_server(build_spec(tiny_qwen2, engine="transformers", port=free_port()), health_timeout=120)
    app = None
    try:
        app, url = pg.launch_playground(scripted.url, compare=engine.base_url, port=free_port(), block=False)
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                page.goto(url)
                page.wait_for_selector("#rc-prompt textarea", timeout=60_000)
                assert page.input_value("#rc-system textarea") == CATEGORIES["code_generation"].system

                page.click("#rc-task input")  # the task picker sets the training system prompt
                page.get_by_role("option", name="bug_detection", exact=True).click()
                page.wait_for_function(
                    "want => document.querySelector('#rc-system textarea').value === want",
                    arg=CATEGORIES["bug_detection"].system, timeout=10_000)

                page.fill("#rc-prompt textarea", "Write a Rust function that adds two i32 values.")
                page.click("#rc-send")
                lengths = []
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    text = page.inner_text("#rc-chat-a")
                    lengths.append(len(text))
                    if "It returns the sum." in text:
                        break
                    time.sleep(0.1)
                assert "It returns the sum." in page.inner_text("#rc-chat-a")
                assert len(set(lengths)) >= 3, lengths  # the answer grew on screen: streamed
                page.wait_for_function(  # side B (the real engine) answered too
                    "() => document.querySelectorAll('#rc-chat-b .message').length >= 2", timeout=60_000)
                # Rust highlighting: Prism tokens inside the answer's rust code block
                page.wait_for_selector("#rc-chat-a code.language-rust .token.keyword", timeout=10_000)

                page.click("#rc-check")
                page.wait_for_function("() => document.querySelector('#rc-report-a').innerText.includes('E0308')",
                                       timeout=30_000)
                report = page.inner_text("#rc-report-a")
                assert "does not compile" in report and "mismatched types" in report
                page.wait_for_function("() => document.querySelector('#rc-report-b').innerText.trim().length > 0",
                                       timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
            finally:
                browser.close()
        sent = scripted.requests[-1]
        assert sent["messages"][0] == {"role": "system", "content": CATEGORIES["bug_detection"].system}
        assert sent["messages"][-1]["content"] == "Write a Rust function that adds two i32 values."
        assert sent["model"] == "rust-finetuned" and sent["stream"] is True
    finally:
        if app is not None:
            app.close()
        engine.stop()
        scripted.close()
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000


@pytest.mark.slow
def test_playground_started_with_sigint_ignored_stops_on_sigint():
    """`nohup rustcoder playground &` starts it with SIGINT ignored; Ctrl-C / kill -INT must still stop it."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rustcoder.cli", "playground", "--endpoint", "http://127.0.0.1:9/v1",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_key_protected_endpoint_gets_a_login_and_a_host_check():
    """F7: with the endpoint's API key and no --username, the playground's login is `api` + the key (its
    routes refuse anyone else), and on loopback a Host naming another machine (DNS rebinding) is refused."""
    pytest.importorskip("gradio")
    import httpx

    key = "playground-key-0123"
    endpoint = ScriptedEndpoint("fn main() {}", api_key=key, delay=0.0)
    port = free_port()
    app, url = pg.launch_playground(endpoint.url, api_key=key, port=port, block=False)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/config", timeout=10).status_code == 401  # no login: nothing
        call = httpx.post(base + "/gradio_api/call/respond", json={"data": []}, timeout=10)
        assert call.status_code in (401, 403), call.text[:200]
        evil = httpx.get(base + "/", headers={"Host": f"evil.example:{port}"}, timeout=10)
        assert evil.status_code == 400
        with httpx.Client(base_url=base, timeout=10) as c:
            assert c.post("/login", data={"username": "api", "password": "wrong"}).status_code == 400
            assert c.post("/login", data={"username": "api", "password": key}).status_code == 200
            assert c.get("/config").status_code == 200
    finally:
        app.close()
        endpoint.close()
    assert pg.login_for(("me", "pw"), key) == ("me", "pw") and pg.login_for(None, None) is None
