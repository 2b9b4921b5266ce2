"""Scoring answers whose right statuses are known: hand-written --predictions, the oracle on the
built-in sample, train/eval overlap, resume after a crash, --redo, the endpoint backend and the LLM
judge against a fake OpenAI server, and the vLLM backend's clean refusal. Needs rustc for the
execution checks (skipped cleanly without it); no model is loaded."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.eval import EvalConfig, evaluate
from rustcoder.eval.backends import Backend, Generation
from rustcoder.eval.metrics import chrf
from rustcoder.eval.suites import dataset_suite, load_items
from rustcoder.sandbox import rustc_available

needs_rustc = pytest.mark.skipif(not rustc_available(), reason="rustc not installed")


@pytest.fixture(scope="module")
def items():
    """The built-in test sample's items by category: {category: [EvalItem, EvalItem]}."""
    out: dict[str, list] = {}
    for it in load_items(dataset_suite("sample")).items:
        out.setdefault(it.category, []).append(it)
    return out


def _pick(items, category, needle):
    return next(i for i in items[category] if needle in json.dumps(i.data))


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _scores(eval_dir: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, (eval_dir / "scores.jsonl").read_text().splitlines())}


ROMAN_WRONG = """```rust
pub fn to_roman(n: u32) -> Option<String> {
    if n == 0 || n > 3999 { return None; }
    Some("I".repeat(n as usize))
}
```"""
ROMAN_TYPE_ERROR = "```rust\npub fn to_roman(n: u32) -> Option<String> {\n    let s: String = n;\n    Some(s)\n}\n```"


@needs_rustc
def test_hand_written_predictions_get_the_right_statuses(items, tmp_path):
    roman = _pick(items, "code_generation", "to_roman")
    roman_code = roman.data["output_data"]["code"]
    percent = _pick(items, "test_generation", "percent")
    insert = _pick(items, "code_completion", "insert_sorted")
    reserve = _pick(items, "function_naming", "reserve_stock")
    buffer = _pick(items, "variable_naming", "read_up_to")
    ext = _pick(items, "api_usage_prediction", "extension")
    summary = items["code_summarization"][0]
    bug = _pick(items, "bug_detection", "char_frequencies")
    p = lambda tag, it, answer: {"model": tag, "id": it.id, "answer": answer}  # noqa: E731
    preds = [
        p("good", roman, roman.reference),
        p("wrong", roman, ROMAN_WRONG),
        p("typeerr", roman, ROMAN_TYPE_ERROR),
        p("crate", roman, "```rust\nuse serde::Serialize;\n\n" + roman_code + "\n```"),
        p("empty", roman, "   \n"),
        p("prose", roman, "I would use a lookup table of numeral values."),
        p("good", percent, percent.reference),
        p("wrong", percent, "```rust\n#[test]\nfn third() {\n    assert_eq!(percent(1, 3), 34);\n}\n```"),
        p("prose", percent, "```rust\nfn helper() -> u8 { 1 }\n```"),
        p("good", insert, insert.reference),
        p("typeerr", insert, "`v.binary_search(&x) { Ok(i) => i, Err(_) => \"no\" }`"),
        p("good", reserve, "The function could be named `reserve_stock`."),
        p("wrong", reserve, "reserve_items"),
        p("good", buffer, "Variable name: buffer"),
        p("good", ext, "`let ext = path.extension( ).and_then(|e| e.to_str()).unwrap_or(\"\") ;`"),
        p("wrong", ext, "let ext = path.extension();"),
        p("good", summary, summary.reference),
        p("wrong", summary, "It sorts things."),
        p("good", bug, bug.reference),
    ]
    out = tmp_path / "eval"
    result = evaluate(EvalConfig(predictions=str(_write(tmp_path / "preds.jsonl", preds)), dataset="sample",
                                 output_dir=str(out), workers=2), log=lambda *_: None)
    s = _scores(out)

    def st(tag, it):
        return s[f"{tag}:{it.id}:0"]

    assert st("good", roman)["status"] == "pass" and st("good", roman)["primary"] == 100.0
    assert st("good", roman)["has_tests"] is True
    assert st("wrong", roman)["status"] == "test_fail" and st("wrong", roman)["compiled"] is True
    assert st("typeerr", roman)["status"] == "compile_error" and st("typeerr", roman)["error_codes"] == ["E0308"]
    crate = st("crate", roman)
    # the task never names serde: the answer's missing crate counts against it (F17: not excluded from the rate)
    assert crate["status"] == "needs_crate" and crate["missing_crates"] == ["serde"] and crate["primary"] == 0.0
    assert st("empty", roman)["status"] == "empty_answer" and st("empty", roman)["primary"] == 0.0
    assert st("prose", roman)["status"] == "no_code"
    assert st("good", percent)["status"] == "pass"
    assert st("wrong", percent)["status"] == "test_fail"
    assert st("prose", percent)["status"] == "no_tests"
    assert st("good", insert)["status"] == "pass" and st("good", insert)["exact"] == 1.0
    assert st("typeerr", insert)["status"] == "compile_error" and "E0308" in st("typeerr", insert)["error_codes"]
    assert st("good", reserve)["status"] == "match" and st("good", reserve)["primary"] == 100.0
    assert st("wrong", reserve)["status"] == "mismatch" and st("wrong", reserve)["token_f1"] == 0.5
    assert st("good", buffer)["status"] == "match"
    assert st("good", ext)["status"] == "match" and st("good", ext)["edit_sim"] == 1.0
    assert st("wrong", ext)["status"] == "mismatch" and 0 < st("wrong", ext)["edit_sim"] < 1
    assert st("good", summary)["chrf"] == pytest.approx(100.0)
    ref = summary.data["output_data"]["summary"]
    assert st("wrong", summary)["chrf"] == pytest.approx(chrf("It sorts things.", ref))
    assert st("wrong", summary)["primary"] == pytest.approx(chrf("It sorts things.", ref))
    assert st("good", bug)["status"] == "pass" and st("good", bug)["chrf"] == pytest.approx(100.0)

    # needs_crate is counted on its own and, as the task never names the crate, stays in the pass-rate
    # denominator (scored 0); the category's other item, which "crate" did not answer, is missing and scores 0
    crate_cat = result.metrics["models"]["crate"]["categories"]["code_generation"]
    assert crate_cat["needs_crate"] == 1 and crate_cat["statuses"]["missing"] == crate_cat["items"] - 1
    assert crate_cat["scored"] == crate_cat["items"] and crate_cat["primary"] == 0.0
    typeerr = result.metrics["models"]["typeerr"]["categories"]["code_generation"]
    assert typeerr["error_codes"] == {"E0308": 1} and typeerr["compile_rate"] == 0.0
    # the program that was compiled is kept, for a person to read
    ex = {r["key"]: r for r in map(json.loads, (out / "executions.jsonl").read_text().splitlines())}
    assert "mod tests" in ex[f"good:{roman.id}:0"]["program"]
    report = (out / "report.md").read_text()
    assert "needs_crate" in report and "E0308" in report


@needs_rustc
def test_oracle_on_the_builtin_sample_scores_every_category_100(tmp_path):
    result = evaluate(EvalConfig(oracle=True, dataset="sample", output_dir=str(tmp_path / "o"), workers=2),
                      log=lambda *_: None)
    cats = result.metrics["models"]["reference"]["categories"]
    assert len(cats) == 15
    assert {c: d["primary"] for c, d in cats.items()} == {c: 100.0 for c in cats}
    oracle = result.metrics["oracle"]
    assert oracle["pass"] == oracle["total"] == 30 and oracle["unexpected"] == 0


def _fake_run(tmp_path: Path, train_ids: list[str]) -> Path:
    run = tmp_path / "runs" / "fake-run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 8}))
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "kind": "rustcoder-run", "status": "finished", "created_at": time.time(), "base_model": "tiny-qwen2",
        "base_model_path": str(base_dir), "dataset": {"source": "sample", "revision": None}}))
    (run / "train_ids.txt").write_text("".join(i + "\n" for i in train_ids))
    return run


@needs_rustc
def test_rows_in_train_ids_are_excluded_and_reported(items, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    leaked = [items["code_generation"][0].id, items["function_naming"][0].id, items["code_review"][1].id]
    run = _fake_run(tmp_path, leaked)
    all_items = [i for its in items.values() for i in its]
    preds = _write(tmp_path / "preds.jsonl", [{"id": i.id, "answer": i.reference} for i in all_items])
    res = CliRunner().invoke(main, ["eval", str(run), "--predictions", str(preds), "--by-task", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "3 eval row(s) are in the training set" in res.output and "excluded 3 eval row(s)" in res.output
    eval_dir = Path("evals-out") / "fake-run" / "sample-test"
    m = json.loads((eval_dir / "metrics.json").read_text())
    ov = m["data"]["overlap"]
    assert ov["excluded"] == 3 and sorted(ov["ids"]) == sorted(leaked)
    assert ov["checked_against"].endswith("train_ids.txt")
    scored = {r["id"] for r in map(json.loads, (eval_dir / "scores.jsonl").read_text().splitlines())}
    assert not scored & set(leaked) and len(scored) == 27
    assert m["models"]["predictions"]["categories"]["code_generation"]["items"] == 1
    assert "**3** row(s) found in" in (eval_dir / "report.md").read_text()


def test_run_trained_on_a_local_file_is_scored_on_its_held_out_split(rows_file, tmp_path):
    from rustcoder.data.strandset import row_id

    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    held = [row_id(r) for r in rows[:6]]
    run = _fake_run(tmp_path, [row_id(r) for r in rows[6:60]])
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["dataset"]["source"] = str(rows_file)
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "eval_split.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in held))
    preds = _write(tmp_path / "preds.jsonl", [{"id": i, "answer": "something"} for i in held])
    result = evaluate(EvalConfig(model=str(run), predictions=str(preds), no_exec=True,
                                 output_dir=str(tmp_path / "e")), log=lambda *_: None)
    assert result.plan.suite.name == "eval-split"
    assert sorted(i.id for i in result.plan.items.items) == sorted(held)
    statuses = result.metrics["models"]["predictions"]["overall"]["statuses"]
    assert "pass" not in statuses and "compile_error" not in statuses  # --no-exec compiled nothing


def test_model_resolution_run_adapter_merged_and_plan_defaults(items, tmp_path, monkeypatch):
    from rustcoder.eval import plan_eval
    from rustcoder.eval.models import resolve_eval_targets

    monkeypatch.chdir(tmp_path)
    leaked = [items["code_search"][0].id]
    run = _fake_run(tmp_path, leaked)
    (run / "adapter" / "chat_template.jinja").write_text("{{ 'template' }}")

    res = resolve_eval_targets(None, runs_dir=str(tmp_path / "runs"))  # the newest finished run
    assert res.picked_newest and res.kind == "run" and res.run_dir == run and res.train_ids == set(leaked)
    assert res.target.adapter_dir == str(run / "adapter") and res.target.adapter_enabled
    assert res.base.path == res.target.path and res.base.adapter_enabled is False  # one load serves both
    assert res.target.chat_template == "{{ 'template' }}" and res.trained_dataset == "sample"

    as_adapter = resolve_eval_targets(str(run / "adapter"))
    assert as_adapter.kind == "run" and as_adapter.run_dir == run

    merged = run / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    (merged / "merge_report.json").write_text(json.dumps({"run_dir": str(run),
                                                          "base": {"name": "tiny", "dir": str(tmp_path / "base")}}))
    res = resolve_eval_targets(str(merged))
    assert res.kind == "merged" and res.target.tag == "merged" and res.target.adapter_dir is None
    assert res.base.path == str(tmp_path / "base") and res.train_ids == set(leaked)

    plan = plan_eval(EvalConfig(model=str(run), compare_base=True))
    assert plan.suite.name == "sample-test" and plan.eval_dir == run / "eval" / "sample-test"
    assert [t.tag for t in plan.targets] == ["adapter", "base"] and plan.teacher_forced
    assert [o["id"] for o in plan.items.overlap] == leaked and len(plan.items.items) == 29
    plan = plan_eval(EvalConfig(model=str(merged), limit=1, dataset="sample"))
    assert plan.eval_dir == Path("evals-out") / "fake-run-merged" / "sample-test" and len(plan.items.items) == 15

    from rustcoder.errors import UsageError

    with pytest.raises(UsageError, match="--base-model"):
        plan_eval(EvalConfig(model="rust", endpoint="http://127.0.0.1:9", compare_base=True, dataset="sample"))
    with pytest.raises(UsageError, match="no finished training run"):
        plan_eval(EvalConfig(runs_dir=str(tmp_path / "nothing")))


class _ReferenceAnswers(Backend):
    """Answers with the reference; raises after ``fail_after`` items (a killed run)."""

    name = "fake"

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after
        self.calls: list[str] = []

    def generate(self, requests, params, target):
        for r in requests:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("killed")
            self.calls.append(r.item.id)
            yield r, [Generation(r.item.reference, "stop", 5) for _ in range(r.n)]


@needs_rustc
def test_resume_generates_only_what_is_missing_and_redo_rescored(tmp_path):
    out = tmp_path / "eval"
    cfg = dict(model="served", endpoint="http://127.0.0.1:9", dataset="sample", output_dir=str(out), workers=2)
    crashed = _ReferenceAnswers(fail_after=7)
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(EvalConfig(**cfg), backend_factory=lambda t, p: crashed, log=lambda *_: None)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 7
    with (out / "samples.jsonl").open("a") as fh:  # a write torn by the kill
        fh.write('{"key": "model:torn')
    resumed = _ReferenceAnswers()
    result = evaluate(EvalConfig(**cfg), backend_factory=lambda t, p: resumed, log=lambda *_: None)
    assert len(resumed.calls) == 23 and not set(resumed.calls) & set(crashed.calls)
    assert len({json.loads(l)["key"] for l in (out / "samples.jsonl").read_text().splitlines()
                if l.startswith('{"key": "model:') and l.endswith("}")}) == 30
    assert result.metrics["models"]["model"]["overall"]["score"] == 100.0

    # --redo score: no generation, no execution, scores rebuilt from the earlier stages' files
    n_exec = len((out / "executions.jsonl").read_text().splitlines())
    never = _ReferenceAnswers(fail_after=0)
    again = evaluate(EvalConfig(**cfg, redo="score"), backend_factory=lambda t, p: never, log=lambda *_: None)
    assert never.calls == [] and len((out / "executions.jsonl").read_text().splitlines()) == n_exec
    assert again.metrics["models"]["model"]["overall"]["score"] == 100.0

    # other decoding settings into the same directory are refused, not mixed in
    from rustcoder.errors import UsageError

    with pytest.raises(UsageError, match="other settings"):
        evaluate(EvalConfig(**cfg, max_new_tokens=7), backend_factory=lambda t, p: never, log=lambda *_: None)


# ---- the endpoint backend against a fake OpenAI-compatible server --------------------------------

class _FakeOpenAI(BaseHTTPRequestHandler):
    answers: dict[str, str] = {}
    requests: list[dict] = []
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, data: dict, code: int = 200):
        body = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send({"object": "list", "data": [{"id": "rust"}, {"id": "base"}]})
        else:
            self._send({"error": "not found"}, 404)

    def do_POST(self):
        if self.path != "/v1/chat/completions":  # e.g. vLLM's /tokenize, which the endpoint backend asks first
            return self._send({"error": "not found"}, 404)
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            cls.requests.append(req)
            time.sleep(0.02)
            msgs = req["messages"]
            if "grade answers" in msgs[0]["content"]:
                text = "Score: 8\nClose to the reference."
            elif req.get("model") == "base":
                text = ""
            else:
                text = cls.answers.get(msgs[-1]["content"], "")
            self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}], "usage": {"completion_tokens": len(text.split())}})
        finally:
            with cls.lock:
                cls.in_flight -= 1


@pytest.fixture()
def fake_openai(items):
    _FakeOpenAI.answers = {i.messages[-1]["content"]: i.reference for its in items.values() for i in its}
    _FakeOpenAI.requests = []
    _FakeOpenAI.max_in_flight = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@needs_rustc
def test_endpoint_backend_compare_base_and_judge(fake_openai, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(EvalConfig(model="rust", endpoint=fake_openai, base_model="base", compare_base=True,
                                 dataset="sample", judge_endpoint=fake_openai, output_dir=str(out), workers=2,
                                 max_new_tokens=300, concurrency=4), log=lambda *_: None)
    m = result.metrics
    mine, base = m["models"]["model"]["categories"], m["models"]["base"]["categories"]
    assert all(d["primary"] == 100.0 for d in mine.values())
    assert all(d["primary"] == 0.0 for d in base.values())
    comp = m["comparison"]
    assert comp["model"] == "model" and comp["base"] == "base"
    assert all(e["delta"] == 100.0 and e["n_pairs"] == 2 for e in comp["categories"].values())
    # two items per category are too few for an interval: no significance is claimed
    assert all(e["ci"] is None and not e["significant"] for e in comp["categories"].values())
    assert comp["overall"]["delta"] == 100.0 and comp["overall"]["improved"] == []
    # the judge scored the prose answers
    assert mine["code_summarization"]["judge"] == 8.0 and mine["bug_detection"]["judged"] == 2
    assert "judge" not in mine["function_naming"]
    gen = [r for r in _FakeOpenAI.requests if "grade answers" not in r["messages"][0]["content"]]
    assert len(gen) == 60 and {r["model"] for r in gen} == {"rust", "base"}
    assert all(r["max_tokens"] == 300 and "<|im_end|>" in r["stop"] and r["temperature"] == 0.0 for r in gen)
    assert _FakeOpenAI.max_in_flight >= 2  # requests really ran concurrently
    assert m["teacher_forced"] is False  # needs local weights
    assert (out / "judgments.jsonl").is_file() and (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_endpoint_errors_become_generation_error_samples_and_are_retried(tmp_path):
    out = tmp_path / "eval"
    cfg = EvalConfig(model="rust", endpoint="http://127.0.0.1:9", dataset="sample", output_dir=str(out),
                     categories=["function_naming"], no_exec=True)
    from rustcoder.eval import backends

    calls = []
    orig = backends.EndpointBackend.complete

    def counted(self, *args, **kw):  # port 9 refuses the connection: the OpenAI SDK's own error path
        calls.append(args)
        return orig(self, *args, **kw)

    backends.EndpointBackend.complete = counted
    try:
        result = evaluate(cfg, log=lambda *_: None)
    finally:
        backends.EndpointBackend.complete = orig
    cat = result.metrics["models"]["model"]["categories"]["function_naming"]
    assert cat["statuses"] == {"generation_error": 2} and cat["primary"] is None and cat["excluded"] == 2
    assert len(calls) == 2



def test_without_matplotlib_the_chart_names_its_install_command_and_the_report_is_written(items, tmp_path,
                                                                                          monkeypatch):
    """The chart is the plots extra: without matplotlib plot_scores raises MissingExtraError with the exact install
    command, and an evaluation still writes its metrics and report (no chart), saying how to get one."""
    import sys

    from rustcoder import extras
    from rustcoder.errors import MissingExtraError
    from rustcoder.eval.report import plot_scores

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is not installed
    with pytest.raises(MissingExtraError) as e:
        plot_scores({}, tmp_path / "x.png")
    assert extras.install_command("matplotlib") in str(e.value)
    preds = _write(tmp_path / "preds.jsonl", [{"id": i.id, "answer": "parse_config"} for i in items["function_naming"]])
    lines: list[str] = []
    result = evaluate(EvalConfig(predictions=str(preds), dataset="sample", categories=["function_naming"],
                                 output_dir=str(tmp_path / "e")), log=lines.append)
    assert result.plot_path is None and result.metrics["plot"] is None and not (tmp_path / "e" / "scores.png").exists()
    assert "per-category scores" not in result.report_path.read_text()
    assert any(extras.install_command("matplotlib") in line for line in lines), lines

# ---- vLLM: a clear message when it is not installed ----------------------------------------------

def test_vllm_backend_without_vllm_says_how_to_install(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    from rustcoder.errors import MissingExtraError
    from rustcoder.eval.backends import import_vllm, vllm_lora_rank

    with pytest.raises(MissingExtraError, match="pip install vllm"):
        import_vllm()
    assert (vllm_lora_rank(16), vllm_lora_rank(12), vllm_lora_rank(1)) == (16, 16, 1)
    monkeypatch.chdir(tmp_path)
    run = _fake_run(tmp_path, [])
    res = CliRunner().invoke(main, ["eval", str(run), "--backend", "vllm", "--limit", "1"])
    assert res.exit_code == 1 and "pip install vllm" in res.output and "Traceback" not in res.output


@pytest.mark.gpu
def test_vllm_backend_generates_with_the_adapter_as_a_lora_module():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("vllm")
    pytest.skip("run by hand on a GPU machine: rustcoder eval RUN --backend vllm --compare-base")
