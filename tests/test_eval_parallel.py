"""Data-parallel generation (`rustcoder eval --data-parallel N`): the option and its checks, the
transformers backend's batch-level shards (together exactly the single-process answers), merging
the workers' shard files, and end to end on a tiny trained run: 2 worker processes give the same
samples and per-category scores as one process, a killed parallel run resumes without regenerating
finished samples and leaves no process behind, and a failing worker is reported with its log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rustcoder.cli import main
from rustcoder.errors import ConfigError, RustcoderError, UsageError
from rustcoder.eval import EvalConfig, evaluate, plan_eval
from rustcoder.eval import parallel
from rustcoder.eval.backends import GenParams, GenRequest, ModelTarget, plan_batches, shard_units
from rustcoder.eval.evaldir import prepare_eval_dir
from rustcoder.eval.store import SAMPLES
from rustcoder.eval.suites import dataset_suite, load_items
from rustcoder.sandbox import rustc_available

needs_rustc = pytest.mark.skipif(not rustc_available(), reason="rustc not installed")


# ---- the option ---------------------------------------------------------------------------------

def test_option_checks_and_flag():
    assert EvalConfig(data_parallel=2).problems() == []
    assert any("--data-parallel: must be >= 1" in p for p in EvalConfig(data_parallel=0).problems())
    for bad in (dict(endpoint="http://x", model="m"), dict(predictions="p.jsonl"), dict(oracle=True)):
        probs = EvalConfig(data_parallel=2, **bad).problems()
        assert any(p.startswith("--data-parallel:") for p in probs), (bad, probs)
    with pytest.raises(ConfigError):
        EvalConfig(data_parallel=2, oracle=True).check()
    res = CliRunner().invoke(main, ["eval", "--help"])
    assert "--data-parallel" in res.output and "CUDA_VISIBLE_DEVICES" in res.output


def test_devices_and_threads():
    assert parallel.assign_devices(2, []) == [None, None]  # CPU
    assert parallel.assign_devices(2, ["0", "1", "2"]) == ["0", "1"]
    assert parallel.assign_devices(2, ["3", "5", "6", "7"], per_worker=2) == ["3,5", "6,7"]  # vLLM tensor parallel
    with pytest.raises(UsageError, match="needs 4 GPUs; 2 visible"):
        parallel.assign_devices(4, ["0", "1"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert parallel.cpu_threads(1) == cores and parallel.cpu_threads(1000) == 1


def test_batch_plan_and_shard_units():
    class Item:
        def __init__(self, i):
            self.id, self.category, self.messages = f"i{i}", "c", []

    reqs = [GenRequest(Item(i), n=1 + (i % 2)) for i in range(7)]
    greedy, sampled = GenParams(), GenParams(temperature=0.8)
    batches = plan_batches(reqs, [5, 9, 1, 9, 3, 7, 2], greedy, 3)
    # longest first (stable), split by n, batch_size prompts per batch
    assert [(n, off, b) for n, off, b in batches] == [(2, 0, [1, 3, 5]), (1, 0, [0, 4, 6]), (1, 3, [2])]
    assert shard_units("transformers", reqs, greedy, 3) == 3
    assert shard_units("transformers", reqs, sampled, 3) == 3 + 2  # n=2: one prompt (2 samples) per batch
    assert shard_units("vllm", reqs, greedy, 3) == 7
    # under a token budget the count is the fewest batches the budget can make (empty prompts)
    # (under a token budget: prompt lengths estimated at 4 characters a token; these messages are empty)
    assert shard_units("transformers", reqs, GenParams(max_new_tokens=10), 3, batch_tokens=40) == 1 + 2  # n=1: 4 rows; n=2: 2 + 1


def test_static_cache_batches_fit_the_cache_transformers_keeps():
    """transformers keeps a static cache as long as the longest it made (the first batch: the longest prompts), so
    every static batch under a budget is planned at that length: one power-of-two row count whose KV cache fits."""
    class Item:
        def __init__(self, i):
            self.id, self.category, self.messages = f"i{i}", "c", []

    lengths = [700, 40, 35, 30, 300, 25, 20, 15, 12, 10, 9, 8]
    reqs = [GenRequest(Item(i)) for i in range(len(lengths))]
    params = GenParams(max_new_tokens=100)
    dynamic = plan_batches(reqs, lengths, params, 4, batch_tokens=4000)
    assert len({len(b) for _, _, b in dynamic}) > 1  # short prompts share bigger batches
    static = plan_batches(reqs, lengths, params, 4, batch_tokens=4000, kv_cache="static")
    cache_len = 768 + 100  # the longest prompt's 128-token bucket + new tokens, for every batch
    rows = {len(b) for _, _, b in static[:-1]}
    assert rows == {4} and len(static[-1][2]) <= 4 and 4 * cache_len <= 4000 < 8 * cache_len
    assert sorted(i for _, _, b in static for i in b) == list(range(len(lengths)))
    assert static[0][2][0] == 0  # longest first, as in the dynamic plan


def test_transformers_shards_are_the_single_process_batches(tiny_qwen2, request):
    """Shards i of N together give exactly what one process gives, greedy and sampled (same
    batches, same seeds), and never overlap."""
    import torch

    from rustcoder.eval.backends import TransformersBackend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy machine makes multi-threaded CPU kernels crawl; results do not change
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    items = load_items(dataset_suite("sample"), limit=1).items
    backend = TransformersBackend(str(tiny_qwen2), batch_size=4, log=lambda *_: None)
    target = ModelTarget("model", "local", "tiny", path=str(tiny_qwen2))
    for params, n in ((GenParams(max_new_tokens=6), 1), (GenParams(max_new_tokens=6, temperature=0.9), 2)):
        reqs = [GenRequest(i, n=n) for i in items]

        def answers(gen):
            return {r.item.id: [(g.text, g.finish_reason, g.tokens) for g in gens] for r, gens in gen}

        whole = answers(backend.generate(reqs, params, target))
        parts = [answers(backend.generate_shard(reqs, params, target, s, 2)) for s in range(2)]
        assert all(parts) and sum(len(p) for p in parts) == len(whole) == len(items)
        assert {k: v for p in parts for k, v in p.items()} == whole
    backend.close()


def test_workers_whose_gpus_hold_different_budgets_cut_the_same_batches(tiny_qwen2, tmp_path, monkeypatch):
    """An automatic budget is measured per worker (its GPU's free memory): workers agree on the smallest, so
    batch i of N is the same batch everywhere and every request is generated exactly once."""
    import threading
    from dataclasses import asdict

    from rustcoder.eval import backends

    budgets = {"worker-0": 300, "worker-1": 2000}  # tokens: about 1 prompt per batch vs several
    monkeypatch.setattr(backends, "auto_batch_tokens", lambda model, device: budgets[threading.current_thread().name])
    items = load_items(dataset_suite("sample"), limit=1).items
    reqs = [GenRequest(i, n=1) for i in items]
    params = GenParams(max_new_tokens=3)
    target = ModelTarget("model", "local", "tiny", path=str(tiny_qwen2))
    spec = {"cfg": EvalConfig(model=str(tiny_qwen2), batch_tokens=None).to_dict(), "backend": "transformers",
            "params": asdict(params), "jobs": [{"target": asdict(target), "fingerprint": "fp",
                                                "requests": [parallel._request_dict(r) for r in reqs]}]}
    work = tmp_path / "generate-workers"
    work.mkdir()
    logs: dict[int, list[str]] = {0: [], 1: []}
    errors = []

    def worker(shard):
        try:
            parallel.run_worker(spec, shard, 2, work / f"shard-{shard}.jsonl", log=logs[shard].append)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,), name=f"worker-{s}") for s in range(2)]
    threads[0].start()  # (processes in real use; threads here must not load models at the same time)
    deadline = time.time() + 300
    while not (work / "budget-0-0").exists() and not errors and time.time() < deadline:
        time.sleep(0.05)  # worker 0 loaded and measured; it waits for worker 1's budget
    threads[1].start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    keys = [json.loads(line)["id"] for s in range(2) for line in (work / f"shard-{s}.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(i.id for i in items)  # each request once: none twice, none lost
    assert any("generation budget 300 tokens, the smallest any worker's GPU holds (this one: 2,000)" in line
               for line in logs[1])
    assert sorted(p.name for p in work.glob("budget-*")) == ["budget-0-0", "budget-0-1"]


def test_budget_agreement_waits_for_every_worker(tmp_path):
    import threading

    got = {}

    def worker(shard, mine):
        got[shard] = parallel.agree_on_budget(tmp_path, "job", shard, 3, mine, poll_s=0.01)

    threads = [threading.Thread(target=worker, args=(s, b)) for s, b in enumerate((9000, 4096, 12000))]
    threads[0].start()
    threads[2].start()
    time.sleep(0.2)
    assert not got  # worker 1 has not measured yet: nobody plans
    threads[1].start()
    for t in threads:
        t.join(timeout=10)
    assert got == {0: 4096, 1: 4096, 2: 4096}


# ---- merging shard files ------------------------------------------------------------------------

def _record(tag, item, index, answer, fp):
    return {"key": f"{tag}:{item.id}:{index}", "model": tag, "id": item.id, "category": item.category,
            "sample_index": index, "answer": answer, "finish_reason": "stop", "tokens": 1,
            "backend": "transformers", "fingerprint": fp}


def test_merge_shards_once_each_in_a_fixed_order(tiny_qwen2, tmp_path):
    out = tmp_path / "eval"
    plan = plan_eval(EvalConfig(model=str(tiny_qwen2), dataset="sample", limit=1, output_dir=str(out),
                                data_parallel=2))
    prepare_eval_dir(plan, log=lambda *_: None)
    (target,) = plan.targets
    fp = plan.fingerprint(target)
    items = plan.items.items
    work = out / parallel.WORK_DIR
    work.mkdir()
    # one sample is already in samples.jsonl; the shards overlap, hold a stale sample and a torn line
    done = {k: v for k, v in _record("model", items[0], 0, "kept", fp).items() if k != "fingerprint"}
    (out / SAMPLES).write_text(json.dumps(done) + "\n")
    shard0 = [_record("model", items[i], 0, f"a{i}", fp) for i in (5, 0, 3)]
    shard1 = [_record("model", items[i], 0, f"b{i}", fp) for i in (3, 1)] + [_record("model", items[2], 0, "old", "x")]
    (work / "shard-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shard0))
    (work / "shard-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shard1) + '{"key": "model:to')
    logs: list[str] = []
    assert parallel.merge_shards(plan, logs.append) == 3
    lines = [json.loads(l) for l in (out / SAMPLES).read_text().splitlines()]
    assert [r["answer"] for r in lines] == ["kept", "b1", "a3", "a5"]  # item order of the suite
    assert len({r["key"] for r in lines}) == len(lines) and not any("fingerprint" in r for r in lines)
    assert not list(work.glob("shard-*")) and any("other settings" in m for m in logs)
    (work / "worker-0.log").write_text("old log")
    assert parallel.merge_shards(plan, logs.append) == 0 and (work / "worker-0.log").is_file()  # idempotent
    assert parallel.merge_shards(plan, logs.append, clean=True) == 0 and not work.exists()

    # --overwrite discards the workers' directory with the samples
    work.mkdir()
    (work / "shard-0.jsonl").write_text(json.dumps(shard0[0]) + "\n")
    plan.cfg.overwrite = True
    prepare_eval_dir(plan, log=lambda *_: None)
    assert not work.exists() and not (out / SAMPLES).exists()


# ---- end to end, with worker processes ----------------------------------------------------------

COMMON = dict(compare_base=True, limit=1, max_new_tokens=16, workers=2)


def _samples(eval_dir: Path) -> dict[str, dict]:
    recs = [json.loads(l) for l in (eval_dir / SAMPLES).read_text().splitlines()]
    by_key = {r["key"]: r for r in recs}
    assert len(by_key) == len(recs), "a sample id twice in samples.jsonl"
    return by_key


def _workers_of(work_dir: Path) -> list[int]:
    """Pids of live processes whose command line names this eval's worker spec."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "rustcoder.eval.parallel" in cmd and str(work_dir) in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@needs_rustc
def test_two_workers_match_one_process(trained_run):
    workdir, run_dir = trained_run
    single_process = workdir / "dp1"
    evaluate(EvalConfig(model=str(run_dir), output_dir=str(single_process), batch_tokens=1500, **COMMON),
             log=lambda *_: None)
    out = workdir / "dp2"
    logs: list[str] = []
    evaluate(EvalConfig(model=str(run_dir), output_dir=str(out), batch_tokens=1500, data_parallel=2, **COMMON),
             log=logs.append)
    text = "\n".join(logs)
    assert "with 2 worker process(es) (CPU, " in text or "with 2 worker process(es) (GPU" in text
    assert "generate: 30 sample(s) from the workers' shard files merged" in text
    assert not (out / parallel.WORK_DIR).exists()  # logs and spec removed after a clean run

    one, two = _samples(single_process), _samples(out)
    assert set(one) == set(two) and len(one) == 30  # 15 items x adapter and base
    for key in one:
        assert {k: one[key][k] for k in ("answer", "finish_reason", "tokens")} == \
               {k: two[key][k] for k in ("answer", "finish_reason", "tokens")}, key
    # merged in a fixed order: adapter then base, items in suite order
    order = [k.split(":")[0] for k in (out / SAMPLES).read_text().split('"key": "')[1:]]
    assert order == ["adapter"] * 15 + ["base"] * 15

    m1 = json.loads((single_process / "metrics.json").read_text())
    m2 = json.loads((out / "metrics.json").read_text())
    for tag in ("adapter", "base"):
        c1, c2 = m1["models"][tag]["categories"], m2["models"][tag]["categories"]
        assert len(c1) == 15 and c1 == c2  # every per-category number: scores, statuses, teacher-forced
    assert m1["comparison"]["categories"].keys() == m2["comparison"]["categories"].keys()


@pytest.mark.slow
@needs_rustc
def test_killed_parallel_run_resumes_without_orphans(trained_run):
    workdir, run_dir = trained_run
    out = workdir / "killed"
    work = out / parallel.WORK_DIR
    args = [sys.executable, "-m", "rustcoder", "eval", str(run_dir), "--compare-base", "--limit", "1",
            "--max-new-tokens", "96", "--workers", "2", "--batch-size", "1", "--batch-tokens", "0", "--no-teacher-forced",
            "--data-parallel", "2", "--output-dir", str(out)]
    parent = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and parent.poll() is None:
            shards = list(work.glob("shard-*.jsonl")) if work.is_dir() else []
            if sum(len(s.read_text().splitlines()) for s in shards) >= 2:
                break
            time.sleep(0.05)
        assert parent.poll() is None, "the evaluation ended before it could be killed"
        assert len(_workers_of(work)) == 2
        parent.send_signal(signal.SIGKILL)  # no cleanup in the parent: the workers must notice alone
        parent.wait()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    deadline = time.time() + 15
    while _workers_of(work) and time.time() < deadline:
        time.sleep(0.2)
    assert _workers_of(work) == [], "workers outlived their killed parent"

    # what the workers finished is in their shard files; mark it, so a regenerated sample would show
    finished = {}
    for shard in work.glob("shard-*.jsonl"):
        lines = []
        for line in shard.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn by the kill
            rec["answer"] += " [kept]"
            finished[rec["key"]] = rec["answer"]
            lines.append(json.dumps(rec))
        shard.write_text("\n".join(lines) + "\n")
    assert 2 <= len(finished) < 30

    logs: list[str] = []
    evaluate(EvalConfig(model=str(run_dir), output_dir=str(out), batch_size=1, batch_tokens=0, teacher_forced=False,
                        data_parallel=2, **dict(COMMON, max_new_tokens=96)), log=logs.append)
    text = "\n".join(logs)
    assert f"generate: {len(finished)} sample(s) from the workers' shard files merged" in text
    samples = _samples(out)
    assert len(samples) == 30 and {k.split(":")[0] for k in samples} == {"adapter", "base"}
    for key, answer in finished.items():
        assert samples[key]["answer"] == answer  # not regenerated
    regenerated = [k for k in samples if k not in finished]
    assert len(regenerated) == 30 - len(finished)
    assert all(not samples[k]["answer"].endswith(" [kept]") for k in regenerated)
    assert _workers_of(work) == []


@pytest.mark.slow
def test_failing_worker_is_reported_with_its_log(trained_run, tmp_path):
    _, run_dir = trained_run
    broken = tmp_path / "broken-run"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("eval"))
    (broken / "adapter" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "eval"
    with pytest.raises(RustcoderError) as err:
        evaluate(EvalConfig(model=str(broken), output_dir=str(out), teacher_forced=False, data_parallel=2,
                            batch_tokens=0, **COMMON), log=lambda *_: None)
    msg = str(err.value)
    assert "generation worker " in msg and " of 2" in msg and "exited with code 1" in msg
    assert "End of " in msg and "worker-" in msg and "header too large" in msg  # the end of the worker's log
    assert "a rerun resumes" in msg
    assert _workers_of(out / parallel.WORK_DIR) == []
    assert list((out / parallel.WORK_DIR).glob("worker-*.log"))  # kept for a closer look
