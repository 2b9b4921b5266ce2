"""The playground: chat with a served model, check its Rust with rustc, compare two models side by side.

A Gradio app that talks to any OpenAI-compatible endpoint (``rustcoder serve``, vLLM, transformers
serve) only through the HTTP API, with rustcoder's one OpenAI client (``rustcoder.openai_client``, the
``openai`` SDK), streamed. The task picker applies the same per-category system prompt training used
(``rustcoder.data.categories``); "Check with rustc" compiles the answer's Rust in the evaluation
sandbox (``rustcoder.sandbox``) and shows the diagnostics.

Binds 127.0.0.1 by default; another address requires a username and password; never creates a
public share link unless asked to (and then only with a password).
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from .data.categories import CATEGORIES, CATEGORY_NAMES
from .errors import MissingExtraError, RustcoderError, UsageError
from .openai_client import ChatClient, EndpointError, normalize_endpoint  # noqa: F401 - EndpointError: API

PLAYGROUND_INSTALL = "pip install 'rustcoder[playground]'"
PASSWORD_ENV = "RUSTCODER_PLAYGROUND_PASSWORD"
FREE_CHAT = "free chat (no task prompt)"
DEFAULT_TASK = "code_generation"
CHECK_MODES = ("auto", "check", "test", "run")
_STATUS_TEXT = {  # symbols from common text fonts (no emoji font needed)
    "pass": "✓ compiles",
    "test_fail": "✗ tests failed",
    "compile_error": "✗ does not compile",
    "needs_crate": "⚠ needs an external crate (the sandbox has only std)",
    "timeout": "⚠ timed out",
    "runtime_error": "✗ runtime error",
    "output_limit": "⚠ output limit reached",
    "empty_source": "∅ no Rust code in the answer",
    "sandbox_error": "⚠ sandbox error",
}


def require_gradio():
    """Import gradio, or raise MissingExtraError with the install command."""
    try:
        import gradio
    except ImportError:
        raise MissingExtraError("Gradio (the playground)", PLAYGROUND_INSTALL) from None
    return gradio


KEY_USERNAME = "api"  # the login name when the password is the endpoint's API key


def login_for(auth: tuple[str, str] | None, *api_keys: str | None) -> tuple[str, str] | None:
    """The playground's login: AUTH when given; else, when the endpoint has an API key, user ``api`` with that
    key as password (the playground must not re-serve a key-protected API to anyone: red-team F7); else None."""
    key = next((k for k in api_keys if k), None)
    return auth or ((KEY_USERNAME, key) if key else None)


def host_check_middleware(host: str) -> list:
    """Starlette's TrustedHostMiddleware for a playground bound to loopback (refuses a Host naming another
    machine: DNS rebinding, as the gateway does); none when it binds a network address."""
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from .net import is_loopback

    if not is_loopback(host):
        return []
    return [Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1"])]


def check_bind(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to expose the playground beyond this machine without a username and password."""
    from .net import is_loopback

    if not is_loopback(host) and not auth:
        raise UsageError(f"--host {host} makes the playground (which compiles and runs code) reachable from the "
                         f"network: pass --username and --password (or set {PASSWORD_ENV}), or keep the default "
                         "--host 127.0.0.1.")


# ---- Rust in answers ----------------------------------------------------------------------------

def extract_rust(answer: str) -> str:
    """The Rust code of an answer, found the way evaluation finds it (rustcoder.eval.extract): its
    ```rust (or unlabelled) blocks joined, else the bare answer when it looks like Rust, else ''."""
    from .eval.extract import extract_code

    code = extract_code(answer or "", which="all")
    return code.strip("\n") + "\n" if code and code.strip() else ""


def choose_mode(source: str, mode: str = "auto") -> str:
    """The sandbox mode for a source: 'test' when it has tests, 'run' when it has main, else 'check'."""
    if mode != "auto":
        if mode not in CHECK_MODES:
            raise ValueError(f"mode must be one of {CHECK_MODES}, got {mode!r}")
        return mode
    if "#[test]" in source:
        return "test"
    if re.search(r"\bfn\s+main\s*\(", source):
        return "run"
    return "check"


@dataclass
class CheckReport:
    """What "Check with rustc" shows: a status line, details in Markdown, and the raw result."""

    status: str
    markdown: str
    result: Any = None  # sandbox.ExecutionResult, when the sandbox ran


def _fenced(text: str, lang: str = "text") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def check_answer(answer: str, mode: str = "auto") -> CheckReport:
    """Compile the Rust in an answer in the evaluation sandbox and describe the outcome in Markdown."""
    from . import sandbox

    source = extract_rust(answer)
    if not source.strip():
        return CheckReport("empty_source", "**∅ no Rust code in this answer**: nothing to compile.")
    mode = choose_mode(source, mode)
    try:
        result = sandbox.run_rust(source, mode=mode)
    except sandbox.RustcNotFound as e:
        return CheckReport("sandbox_error", f"**⚠ rustc is not installed**: {e}")
    lines = [f"**{_STATUS_TEXT.get(result.status, result.status)}** · `rustc` mode `{mode}`"
             f" · compile {result.compile_seconds:.2f} s"]
    if result.error_codes:
        codes = ", ".join(f"[{c}](https://doc.rust-lang.org/error_codes/{c}.html)" for c in result.error_codes)
        lines.append(f"error codes: {codes}")
    if result.missing_crates:
        lines.append("missing crates: " + ", ".join(f"`{c}`" for c in result.missing_crates))
    if mode == "test" and result.status in ("pass", "test_fail"):
        lines.append(f"tests: {result.tests_passed} passed, {result.tests_failed} failed")
    if result.detail and result.status not in ("pass",):
        lines.append(f"detail: {result.detail}")
    if result.diagnostics.strip():
        lines.append("**diagnostics**\n" + _fenced(result.diagnostics))
    if mode == "run" and result.stdout.strip():
        lines.append("**stdout**\n" + _fenced(result.stdout))
    if result.stderr.strip() and result.status in ("runtime_error", "test_fail", "timeout"):
        lines.append("**stderr**\n" + _fenced(result.stderr[-3000:]))
    lines.append("<details><summary>compiled source</summary>\n\n" + _fenced(source, "rust") + "\n</details>")
    return CheckReport(result.status, "\n\n".join(lines), result)


def system_prompt(task: str) -> str:
    """The system prompt training used for a task category ('' for free chat)."""
    return CATEGORIES[task].system if task in CATEGORIES else ""


def build_messages(system: str, history: list[dict], prompt: str) -> list[dict]:
    """The chat sent to the model: system prompt (if any), the earlier turns, the new user turn."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": m["role"], "content": m["content"]} for m in history if m["role"] in ("user", "assistant")]
    return messages + [{"role": "user", "content": prompt}]


def _sampling(temperature, top_p, max_tokens, seed) -> dict:
    params = {"temperature": float(temperature), "top_p": float(top_p), "max_tokens": int(max_tokens)}
    if seed not in (None, "", -1) and int(seed) >= 0:
        params["seed"] = int(seed)
    return params


def stream_side(client: ChatClient, messages: list[dict], model: str | None, params: dict, put, stop_flag) -> None:
    """Stream one side's answer into PUT (text pieces, then None); a refusal or failure becomes a visible
    "⚠ ..." line carrying the server's message (a 400 says which field and why), never a silent stop."""
    stream = client.stream_chat(messages, model, **params)
    try:
        for piece in stream:
            if stop_flag.is_set():
                break
            put(piece)
    except RustcoderError as e:
        put(f"\n\n⚠ {e}")
    except Exception as e:  # a broken stream must not hang the UI
        put(f"\n\n⚠ {type(e).__name__}: {e}")
    finally:
        stream.close()
        put(None)


# ---- the app ------------------------------------------------------------------------------------

@dataclass
class Side:
    """One endpoint + model shown in the playground (side A, and side B when comparing)."""

    client: ChatClient
    models: list[str]
    label: str


def _discover(endpoint: str, api_key: str | None, models: list[str] | None) -> tuple[ChatClient, list[str], str]:
    client = ChatClient(endpoint, api_key)
    note = ""
    if not models:
        try:
            models = client.models()
        except RustcoderError as e:
            models, note = [], f": ⚠ {e}"
    return client, list(models or []), note


def build_playground(endpoint: str, compare: str | None = None, *, api_key: str | None = None,
                     compare_api_key: str | None = None, models: list[str] | None = None,
                     compare_models: list[str] | None = None, model: str | None = None,
                     compare_model: str | None = None, title: str = "rustcoder playground"):
    """Build the Gradio app (a gr.Blocks) for ENDPOINT, side by side with COMPARE when given.

    ``models`` skips asking the endpoint's /v1/models; ``model``/``compare_model`` pick the model on
    each side (COMPARE may be the same endpoint with another model, e.g. the base model that vLLM
    serves next to a LoRA adapter).
    """
    gr = require_gradio()
    client_a, models_a, note_a = _discover(endpoint, api_key, models)
    sides = [Side(client_a, models_a, "A")]
    notes = [f"**A** `{client_a.base_url}`{note_a}"]
    if compare:
        same = normalize_endpoint(compare) == client_a.base_url and (compare_api_key or api_key) == api_key
        if same and not compare_models:
            client_b, models_b, note_b = client_a, models_a, note_a
        else:
            client_b, models_b, note_b = _discover(compare, compare_api_key or api_key, compare_models)
        sides.append(Side(client_b, models_b, "B"))
        notes.append(f"**B** `{client_b.base_url}`{note_b}")
    default_models = [model, compare_model]
    for i, side in enumerate(sides):
        if default_models[i] is None and side.models:
            # Side B defaults to a model other than side A's (on one vLLM server: the base next to the adapter).
            others = [m for m in side.models if i == 0 or m != default_models[0]]
            default_models[i] = (others or side.models)[0]
    task_choices = [FREE_CHAT] + list(CATEGORY_NAMES)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\n" + " · ".join(notes)
                    + "\n\nPick a Rust task (it sets the system prompt training used), ask, then press "
                      "**Check with rustc** to compile the answer's Rust in the sandbox.")
        with gr.Row():
            task = gr.Dropdown(task_choices, value=DEFAULT_TASK, label="Rust task", scale=2, elem_id="rc-task")
            model_dds = []
            for i, side in enumerate(sides):
                model_dds.append(gr.Dropdown(side.models, value=default_models[i], label=f"model {side.label}",
                                             allow_custom_value=True, scale=2, elem_id=f"rc-model-{side.label.lower()}"))
        system = gr.Textbox(system_prompt(DEFAULT_TASK), label="system prompt (from the task; editable)", lines=2,
                            elem_id="rc-system")
        with gr.Accordion("sampling", open=False):
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.2, step=0.05, label="temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top_p")
                max_tokens = gr.Slider(16, 4096, value=512, step=16, label="max tokens")
                seed = gr.Number(value=-1, precision=0, label="seed (-1 = random)")
        with gr.Row():
            bots = [gr.Chatbot(label=f"{side.label} · {default_models[i] or side.client.base_url}", height=460,
                               elem_id=f"rc-chat-{side.label.lower()}", buttons=["copy", "copy_all"])
                    for i, side in enumerate(sides)]
        prompt = gr.Textbox(placeholder="Ask for Rust: a function, a fix, a review, tests…", label="prompt",
                            lines=3, elem_id="rc-prompt")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="rc-send")
            stop = gr.Button("Stop", elem_id="rc-stop")
            clear = gr.Button("Clear", elem_id="rc-clear")
        with gr.Row():
            check = gr.Button("Check with rustc", variant="secondary", elem_id="rc-check")
            mode = gr.Radio(list(CHECK_MODES), value="auto", label="rustc mode",
                            info="auto: test if the code has #[test], run if it has main, else type-check")
        with gr.Row():
            reports = [gr.Markdown("", elem_id=f"rc-report-{side.label.lower()}", elem_classes=["rc-check"],
                                   max_height=520) for side in sides]
        histories = [gr.State([]) for _ in sides]

        task.change(system_prompt, task, system)

        def respond(prompt_text, system_text, temperature_v, top_p_v, max_tokens_v, seed_v, *rest):
            n = len(sides)
            chosen, hist = list(rest[:n]), [list(h) for h in rest[n:]]
            if not (prompt_text or "").strip():
                yield (*hist, *hist, prompt_text)
                return
            params = _sampling(temperature_v, top_p_v, max_tokens_v, seed_v)
            updates: queue.Queue = queue.Queue()
            stop_flag = threading.Event()
            answers = [""] * n
            for i in range(n):
                hist[i] = hist[i] + [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": ""}]

            def run(i: int) -> None:
                messages = build_messages(system_text, hist[i][:-2], prompt_text)
                stream_side(sides[i].client, messages, chosen[i] or None, params,
                            lambda piece: updates.put((i, piece)), stop_flag)

            threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
            for t in threads:
                t.start()
            done = 0
            try:
                yield (*hist, *hist, "")
                while done < n:
                    items = [updates.get()]
                    time.sleep(0.03)  # batch the deltas that arrived meanwhile: fewer UI updates
                    while not updates.empty():
                        items.append(updates.get_nowait())
                    for i, piece in items:
                        if piece is None:
                            done += 1
                        else:
                            answers[i] += piece
                            hist[i][-1] = {"role": "assistant", "content": answers[i]}
                    yield (*hist, *hist, "")
            finally:
                stop_flag.set()

        inputs = [prompt, system, temperature, top_p, max_tokens, seed, *model_dds, *histories]
        outputs = [*histories, *bots, prompt]
        send_event = send.click(respond, inputs, outputs)
        submit_event = prompt.submit(respond, inputs, outputs)
        stop.click(None, None, None, cancels=[send_event, submit_event])

        def clear_all():
            return (*([[]] * len(sides)), *([[]] * len(sides)), *([""] * len(sides)))

        clear.click(clear_all, None, [*histories, *bots, *reports], cancels=[send_event, submit_event])

        def check_all(mode_v, *hist):
            out = []
            for h in hist:
                last = next((m["content"] for m in reversed(h) if m["role"] == "assistant"), None)
                if last is None:
                    out.append("*no answer to check yet*")
                else:
                    out.append(check_answer(last, mode_v).markdown)
            return out[0] if len(out) == 1 else tuple(out)

        check.click(check_all, [mode, *histories], reports)
    app.queue(default_concurrency_limit=4)
    return app


def _stop_on_signals() -> None:
    """Ctrl-C / kill -INT stop a blocking playground even when started with SIGINT ignored
    (`nohup ... &`); SIGTERM too."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)


def launch_playground(endpoint: str, compare: str | None = None, *, api_key: str | None = None,
                      compare_api_key: str | None = None, models: list[str] | None = None,
                      compare_models: list[str] | None = None, model: str | None = None,
                      compare_model: str | None = None, host: str = "127.0.0.1", port: int = 7860,
                      auth: tuple[str, str] | None = None, share: bool = False, block: bool = True):
    """Build and launch the playground on HOST:PORT; returns (app, local URL). Blocks unless block=False.

    With an API key and no AUTH the login is user ``api``, password the key (``login_for``); on loopback a
    Host header naming another machine is refused (400).

    With ``models`` listing two or more models and no COMPARE, side B shows the endpoint's second
    model (e.g. the base model next to a LoRA adapter served by vLLM).
    """
    auth = login_for(auth, api_key, compare_api_key)
    check_bind(host, auth)
    if share and not auth:
        raise UsageError("--share publishes the playground on a public link: it requires --username and --password.")
    if compare is None and models and len(models) > 1:
        compare = endpoint
        compare_models = models
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_playground(endpoint, compare, api_key=api_key, compare_api_key=compare_api_key, models=models,
                           compare_models=compare_models, model=model, compare_model=compare_model)
    if block:
        _stop_on_signals()  # before the port opens: a signal sent once it answers must stop it
    try:
        app.launch(server_name=host, server_port=port, auth=auth, share=share, prevent_thread_lock=True,
                   quiet=True, show_error=True, inbrowser=False, footer_links=[],
                   app_kwargs={"middleware": host_check_middleware(host)})
    except OSError as e:
        raise RustcoderError(f"playground: cannot listen on {host}:{port} ({e}). Pick another with --port.") from None
    except KeyboardInterrupt:  # Ctrl-C while it was still starting
        app.close()
        return app, f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    if not block:
        return app, url
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return app, url
