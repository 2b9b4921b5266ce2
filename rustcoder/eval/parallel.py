"""Data-parallel generation (``--data-parallel N``): N worker processes, one per GPU, each loading the
model on its own device and generating a disjoint part of the pending samples.

Parent (``generate_parallel``): writes one spec (the pending requests of every target, the settings)
into ``EVAL_DIR/generate-workers/``, starts ``python -m rustcoder.eval.parallel SPEC --shard i``
for each worker (a fresh interpreter: nothing loaded is inherited) with ``CUDA_VISIBLE_DEVICES`` set
to its GPU(s), or on CPU ``max(1, cores // N)`` torch threads each, watches them, and merges their
shard files into samples.jsonl once they are done (``merge_shards``).

Worker (``main``): loads the backend once for all targets that share weights, runs its part
(``Backend.generate_shard``: for transformers the batches numbered i, i + N, ... of the batches a
single process would make, so greedy and sampled answers do not depend on N) and appends every
finished request to its own ``shard-i.jsonl`` (flushed: a kill loses at most the batch in flight).

Resuming: samples in leftover shard files are merged into samples.jsonl before anything is planned,
so a killed parallel run (or a worker failure) never regenerates what was finished. A worker that
fails stops the others and raises RustcoderError with the end of its log; workers run in their own
process group (vLLM's engine processes included), which the parent kills when it stops them, and
each worker exits when its parent disappears (a parent killed with SIGKILL leaves no orphans).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..errors import RustcoderError, UsageError
from ..memory import GEN_CPU_BATCH_TOKENS
from ..procs import exit_status, set_parent_death_signal, start_group, stop_groups
from .backends import GenParams, GenRequest, ModelTarget, shard_units

if TYPE_CHECKING:  # pragma: no cover
    from .plan import EvalPlan

WORK_DIR = "generate-workers"  # in the eval directory: spec.json, shard-I.jsonl, worker-I.log
SPEC = "spec.json"
LOG_TAIL_LINES = 25
_STOP_GRACE = 10.0  # seconds a stopped worker gets before SIGKILL


def shard_path(work_dir: Path, index: int) -> Path:
    """Where worker ``index`` appends its samples."""
    return work_dir / f"shard-{index}.jsonl"


def log_path(work_dir: Path, index: int) -> Path:
    """Worker ``index``'s stdout and stderr."""
    return work_dir / f"worker-{index}.log"


# ---- devices ------------------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries (empty: CPU only)."""
    try:
        import torch

        count = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        return []
    if not count:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env and env.strip():
        return [d.strip() for d in env.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def assign_devices(workers: int, gpus: list[str], per_worker: int = 1) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker: worker i gets GPUs i*per_worker .. (i+1)*per_worker-1 of
    ``gpus``; None for every worker on a CPU-only machine."""
    if not gpus:
        return [None] * workers
    need = workers * per_worker
    if need > len(gpus):
        each = f" x --tensor-parallel-size {per_worker}" if per_worker > 1 else ""
        raise UsageError(f"--data-parallel {workers}{each} needs {need} GPUs; {len(gpus)} visible "
                         f"({','.join(gpus)}). Lower --data-parallel, or set CUDA_VISIBLE_DEVICES.")
    return [",".join(gpus[i * per_worker:(i + 1) * per_worker]) for i in range(workers)]


def cpu_threads(workers: int) -> int:
    """Torch threads per worker on CPU: the cores shared out."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


# ---- merging ------------------------------------------------------------------------------------

def merge_shards(plan: "EvalPlan", log=print, *, clean: bool = False) -> int:
    """Move the samples in ``generate-workers/shard-*.jsonl`` into samples.jsonl; returns how many.

    Append-only and idempotent: a sample id already in samples.jsonl (and not an error) is skipped,
    each id is added once, in a fixed order (targets, then items as the suite lists them, then sample
    index), with one flushed write; the shard files are removed only after it. A kill at any point
    leaves samples.jsonl valid (a torn last line is ignored) and the shard files to merge next time.
    Samples made with other settings (their target's fingerprint changed) are dropped. ``clean``:
    remove the whole directory afterwards (the old workers' logs and spec too).
    """
    from .store import SAMPLES, JsonlStore

    work = plan.eval_dir / WORK_DIR
    files = sorted(work.glob("shard-*.jsonl")) if work.is_dir() else []
    if not files:
        if clean:
            remove_work_dir(plan.eval_dir)
        return 0
    store = JsonlStore(plan.eval_dir / SAMPLES)
    done = {k for k, v in store.load().items() if v.get("finish_reason") != "error"}
    fingerprints = {t.tag: plan.fingerprint(t) for t in plan.targets}
    new: dict[str, dict] = {}
    stale = 0
    for f in files:
        for key, rec in JsonlStore(f).load().items():
            fp = rec.pop("fingerprint", None)
            if fingerprints.get(rec.get("model")) != fp:
                stale += 1
            elif key not in done and key not in new:
                new[key] = rec
    target_pos = {t.tag: n for n, t in enumerate(plan.targets)}
    item_pos = {item.id: n for n, item in enumerate(plan.items.items)}
    far = len(item_pos) + 1

    def order(rec: dict) -> tuple:
        return (target_pos.get(rec.get("model"), len(target_pos)), item_pos.get(rec.get("id"), far),
                str(rec.get("id")), int(rec.get("sample_index") or 0), rec["key"])

    store.append(sorted(new.values(), key=order))
    for f in files:
        f.unlink(missing_ok=True)
    if clean:
        remove_work_dir(plan.eval_dir)
    if new:
        log(f"generate: {len(new)} sample(s) from the workers' shard files merged into {SAMPLES}")
    if stale:
        log(f"generate: {stale} sample(s) in shard files were made with other settings; dropped")
    return len(new)


def agree_on_budget(work: Path, key: str, shard: int, shards: int, mine: int, poll_s: float = 0.05) -> int:
    """The smallest automatic generation budget among the workers, once all have measured theirs.

    Each worker sizes its budget from its own GPU's free memory after loading the model; GPUs a few MB
    apart can give different budgets, hence different batch plans, and batch i of N would then be a
    different batch in each worker (samples made twice, others never). So every worker runs the batches
    of the one plan they all can hold. Each writes its budget beside the shard files and waits for the
    others' (files: the workers share nothing else); a failing worker ends the wait, because the parent
    then stops them all.
    """
    from ..artifacts import atomic_write_text

    atomic_write_text(work / f"budget-{key}-{shard}", str(int(mine)))
    while True:
        try:
            return min(int((work / f"budget-{key}-{i}").read_text()) for i in range(shards))
        except (FileNotFoundError, ValueError):  # not all written yet
            time.sleep(poll_s)


def remove_work_dir(eval_dir: Path) -> None:
    """Delete the workers' directory (``--overwrite`` / ``--redo generate``)."""
    shutil.rmtree(Path(eval_dir) / WORK_DIR, ignore_errors=True)


# ---- the parent ---------------------------------------------------------------------------------

def _request_dict(r: GenRequest) -> dict:
    return {"id": r.item.id, "category": r.item.category, "messages": r.item.messages,
            "n": r.n, "start": r.start, "indices": r.sample_indices}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:]) or "    (empty log)"


def _count_lines(files: list[Path]) -> int:
    total = 0
    for f in files:
        try:
            with f.open("rb") as fh:
                total += sum(1 for _ in fh)
        except OSError:
            pass
    return total


def generate_parallel(plan: "EvalPlan", jobs: list[tuple[ModelTarget, list[GenRequest]]], log=print) -> int:
    """Generate ``jobs`` ((target, pending requests), local targets) with ``plan.cfg.data_parallel``
    worker processes, then merge their samples into samples.jsonl; returns how many workers ran.
    Raises RustcoderError naming the worker (and the end of its log) when one fails; the others are
    stopped, finished samples kept."""
    from .store import SAMPLES

    jobs = [(t, reqs) for t, reqs in jobs if reqs]
    if not jobs:
        return 0
    cfg = plan.cfg
    per_gpu = (cfg.tensor_parallel_size or 1) if plan.backend == "vllm" else 1
    budget = GEN_CPU_BATCH_TOKENS if cfg.batch_tokens is None else (cfg.batch_tokens or None)  # auto: an estimate
    units = max(shard_units(plan.backend, reqs, plan.params, cfg.batch_size, budget, cfg.kv_cache) for _, reqs in jobs)
    workers = max(1, min(cfg.data_parallel or 1, units))
    gpus = visible_gpus()
    devices = assign_devices(cfg.data_parallel or 1, gpus, per_gpu)[:workers]
    threads = None if gpus else cpu_threads(workers)

    work = plan.eval_dir.resolve() / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    (plan.eval_dir / SAMPLES).touch()  # a rerun with other settings is refused, as for any started eval
    spec = {"cfg": cfg.to_dict(), "backend": plan.backend, "params": asdict(plan.params),
            "jobs": [{"target": asdict(t), "fingerprint": plan.fingerprint(t),
                      "requests": [_request_dict(r) for r in reqs]} for t, reqs in jobs]}
    for stale in work.glob("budget-*"):  # a killed run's budgets are not this run's
        stale.unlink(missing_ok=True)
    spec_file = work / SPEC
    spec_file.write_text(json.dumps(spec, ensure_ascii=False, default=str))
    total = sum(r.n for _, reqs in jobs for r in reqs)
    where = (f"GPU {', '.join(d for d in devices if d)}" if gpus
             else f"CPU, {threads} thread(s) each")
    log(f"generate {', '.join(f'{t.tag}: {sum(r.n for r in reqs)}' for t, reqs in jobs)} sample(s) with "
        f"{workers} worker process(es) ({where}); logs in {work}")
    for t, _ in jobs:
        log(f"  {t.describe()}")

    procs: list[subprocess.Popen] = []
    logs: list = []
    ok = False
    try:
        for i in range(workers):
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            if devices[i] is not None:
                env["CUDA_VISIBLE_DEVICES"] = devices[i]
            if threads is not None:
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            cmd = [sys.executable, "-m", "rustcoder.eval.parallel", str(spec_file), "--shard", str(i),
                   "--shards", str(workers), "--out", str(shard_path(work, i)), "--parent", str(os.getpid())]
            if threads is not None:
                cmd += ["--threads", str(threads)]
            fh = log_path(work, i).open("w", encoding="utf-8")
            logs.append(fh)
            procs.append(start_group(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env))
        started = last_log = time.time()
        shards = [shard_path(work, i) for i in range(workers)]
        while True:
            codes = [exit_status(p) for p in procs]
            failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None:
                code = codes[failed]
                stop_groups(procs, timeout=_STOP_GRACE)
                merge_shards(plan, log)  # keep what every worker finished
                how = (f"was killed by {_signal_name(-code)}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
                       if code < 0 else f"exited with code {code}")
                dev = f", CUDA_VISIBLE_DEVICES={devices[failed]}" if devices[failed] is not None else ""
                raise RustcoderError(
                    f"generation worker {failed} of {workers}{dev} {how}; the other workers were stopped and the "
                    f"samples finished so far are kept (a rerun resumes). End of {log_path(work, failed)}:\n"
                    f"{_tail(log_path(work, failed))}")
            if all(c == 0 for c in codes):
                break
            if time.time() - last_log >= 15:
                log(f"  {_count_lines(shards)}/{total} samples, {time.time() - started:.0f} s")
                last_log = time.time()
            time.sleep(0.2)
        ok = True
    finally:
        stop_groups(procs, timeout=_STOP_GRACE)
        for fh in logs:
            fh.close()
    if ok:
        log(f"  {_count_lines(shards)}/{total} samples, {time.time() - started:.0f} s")
        merge_shards(plan, log, clean=True)  # the logs, the spec and the shard files go
    return workers


# ---- the worker ---------------------------------------------------------------------------------

def _exit_with_group(code: int) -> None:
    """End this worker and everything it started (vLLM's engine processes share its group)."""
    try:
        if os.name == "posix" and os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Exit once the parent is gone, even when it was SIGKILLed and could not stop us: on Linux the
    kernel sends SIGTERM at once (PR_SET_PDEATHSIG), elsewhere a thread polls the parent id."""
    def on_term(signum, frame) -> None:
        os.write(2, b"worker stopping: SIGTERM (the evaluation stopped it, or its parent is gone)\n")
        _exit_with_group(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    set_parent_death_signal(signal.SIGTERM)  # Linux; elsewhere the watch thread below

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                _exit_with_group(3)
            time.sleep(0.5)

    if os.getppid() != parent:  # gone before PR_SET_PDEATHSIG took effect
        _exit_with_group(3)
    threading.Thread(target=watch, daemon=True, name="rustcoder-parent-watch").start()


def run_worker(spec: dict, shard: int, shards: int, out: Path, log=print) -> int:
    """Generate this worker's part of every job in ``spec``; append samples to ``out``. Returns how many."""
    from .config import EvalConfig
    from .loading import Backends, default_backend_factory
    from .store import JsonlStore, sample_record

    cfg = EvalConfig(**spec["cfg"])
    params = GenParams(**spec["params"])
    plan_like = SimpleNamespace(cfg=cfg, backend=spec["backend"])
    backends = Backends(plan_like, default_backend_factory, log)
    store = JsonlStore(out)
    made = 0
    targets = [ModelTarget(**job["target"]) for job in spec["jobs"]]
    try:
        for n, (job, target) in enumerate(zip(spec["jobs"], targets)):
            requests = [GenRequest(SimpleNamespace(id=r["id"], category=r["category"], messages=r["messages"]),
                                   n=r["n"], start=r["start"], indices=r["indices"]) for r in job["requests"]]
            backend = backends.get(target)
            if shards > 1 and getattr(backend, "batch_tokens_auto", False):  # one batch plan for every worker
                measured = backend.batch_tokens
                backend.batch_tokens = agree_on_budget(out.parent, str(n), shard, shards, measured)
                if backend.batch_tokens != measured:
                    log(f"worker {shard}: generation budget {backend.batch_tokens:,} tokens, the smallest any worker's "
                        f"GPU holds (this one: {measured:,}), so all cut the same batches")
            started, count = time.time(), 0
            for req, gens in backend.generate_shard(requests, params, target, shard, shards):
                recs = [dict(sample_record(target.tag, req, j, g, backend.name), fingerprint=job["fingerprint"])
                        for j, g in zip(req.sample_indices, gens)]
                store.append(recs)
                count += len(recs)
            made += count
            log(f"worker {shard}: {target.tag}: {count} sample(s) in {time.time() - started:.1f} s")
            backends.release_unneeded(targets[n + 1:])
    finally:
        backends.close()
    return made


def main(argv: list[str] | None = None) -> int:
    """``python -m rustcoder.eval.parallel SPEC --shard I --shards N --out FILE``: one worker."""
    ap = argparse.ArgumentParser(prog="python -m rustcoder.eval.parallel", description=main.__doc__)
    ap.add_argument("spec")
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--shards", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = ap.parse_args(argv)
    if args.parent:
        _die_with_parent(args.parent)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"worker {args.shard} of {args.shards}: pid {os.getpid()}, CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}, threads {args.threads or 'default'}", flush=True)
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    try:
        run_worker(spec, args.shard, args.shards, Path(args.out), log=lambda *a: print(*a, flush=True))
    except RustcoderError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
