"""merge(): resolve, plan, merge, verify and install a merged model atomically and idempotently; and
finding the newest merge.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import artifacts
from ..artifacts import atomic_write_json, atomic_write_text, read_json
from ..errors import RustcoderError, UsageError
from ..rundir import MERGE_REPORT as REPORT
from ..rundir import MERGED_DIR
from .checks import DEFAULT_MAX_EFFECT_LOST
from .device import check_verify_device, choose_verify_device, verification_mode
from .layerwise import layerwise_unsupported
from .plan import check_fit, load_adapter_tensors, plan_merge
from .sources import (MERGE_DTYPES, MERGE_FORMAT, Source, adapter_dir_of, adapter_fingerprint, base_identity,
                      check_not_quantized, merge_key, resolve_source, save_dtype_of, tie_word_embeddings, tied_keys)
from .tensors import tensor_shapes, weight_files
from .verify import refusal_message, render_report, verify_merge
from .writing import (copy_tokenizer, edited_config, generation_config, merge_in_memory, merge_streaming, model_card,
                      untie_needed)

@dataclass
class MergeResult:
    """Where the merged model is, its merge report, and whether this call did anything."""

    merged_dir: Path
    report: dict[str, Any]
    already_merged: bool = False
    pushed_to: str | None = None

    @property
    def verified(self) -> bool | None:
        """True/False when verification ran, None when it was skipped."""
        v = self.report.get("verification") or {}
        return None if v.get("skipped") else bool(v.get("passed"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp_dirs(target: Path, log: Callable = print) -> list[Path]:
    """Remove temporary siblings of target left by merges that were killed (their process is gone)."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(f".{target.name}.*-*"):
        m = re.match(rf"\.{re.escape(target.name)}\.(merging|replaced)-(\d+)-", p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log(f"removed {len(removed)} half-written merge(s) left by a killed run: {', '.join(p.name for p in removed)}")
    return removed


def _looks_replaceable(target: Path) -> bool:
    return (target / REPORT).is_file() or (target / "config.json").is_file() or not any(target.iterdir())


def install(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished temporary directory into place (swapping out an old merge with force)."""
    if target.exists():
        if not force:
            raise RustcoderError(f"{target} appeared while merging; pass --force to replace it.")
        old = target.parent / f".{target.name}.replaced-{os.getpid()}-{int(time.time())}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def write_report(out: Path, report: dict) -> None:
    atomic_write_json(out / REPORT, report)


def default_output_dir(run_dir: str | Path) -> Path:
    """RUN_DIR/merged for a run directory; ADAPTER_DIR-merged beside a bare adapter directory."""
    adapter_dir, real_run = adapter_dir_of(Path(run_dir))
    return real_run / MERGED_DIR if real_run else adapter_dir.parent / f"{adapter_dir.name}-merged"


def merge(run_dir: str | Path, output_dir: str | Path | None = None, base: str | None = None, force: bool = False,
          verify: bool = True, streaming: bool = False, push_to_hub: str | None = None, dtype: str = "auto",
          max_effect_lost: float = DEFAULT_MAX_EFFECT_LOST, verify_device: str = "auto",
          log: Callable = print) -> MergeResult:
    """Merge a run's LoRA adapter into its base model and save a standalone, verified model directory.

    run_dir is a training run directory (or an adapter directory); output_dir defaults to RUN_DIR/merged.
    base overrides the base model the run recorded (hub id or directory). The merge is computed in
    float32 and saved in dtype ("auto": the base's; or one of MERGE_DTYPES); with streaming=True it runs
    shard by shard with memory of about one tensor. Merging the same adapter into the same base in the
    same dtype again is a no-op. Raises RustcoderError (with what to do) for a quantized or mismatched
    base, missing files, an existing target without force, or a failed verification (the target is then
    left untouched): a merge that is not exact is a bug; one whose dtype loses more than max_effect_lost
    of the adapter's effect is refused with the fix (float32, or serving the adapter). verify_device ("auto",
    "cpu", "cuda[:N]"): where the verification's forwards run; on a GPU it verifies layer by layer there
    whichever way the merge ran (see device.verification_mode).
    """
    if dtype != "auto" and dtype not in MERGE_DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of auto, {', '.join(MERGE_DTYPES)}")
    if not 0 <= max_effect_lost <= 1:
        raise UsageError(f"--max-effect-lost {max_effect_lost} must be a share between 0 and 1 (e.g. 0.1 for 10%)")
    verify_device = check_verify_device(verify_device)
    started = time.time()
    src = resolve_source(run_dir, base, streaming)
    target = Path(output_dir) if output_dir else default_output_dir(run_dir)
    target = target.expanduser().resolve()
    for forbidden in (src.adapter_dir, src.base_dir, src.run_dir):
        if forbidden is not None and target == Path(forbidden).resolve():
            raise UsageError(f"--output-dir {target} is the {'base model' if forbidden == src.base_dir else 'run'} "
                             "directory itself; choose a new directory.")

    base_config = read_json(src.base_dir / "config.json")
    check_not_quantized(base_config, src.base_name, src.trained_base)
    base_dtype = save_dtype_of(base_config, src.base_dir)
    dtype = base_dtype if dtype == "auto" else dtype
    adapter_sha = adapter_fingerprint(src.adapter_dir)
    identity = base_identity(src.base_dir)
    key = merge_key(adapter_sha, identity["sha256"], dtype)

    clean_stale_temp_dirs(target, log)
    if target.exists():
        previous = read_json(target / REPORT) if (target / REPORT).is_file() else None
        if previous and previous.get("merge_key") == key:
            return _pushed(_already_merged(src, target, previous, verify, max_effect_lost, verify_device, log),
                           push_to_hub, log)
        if not force:
            why = ("it holds a merge of a different adapter or base" if previous
                   else "it is not a rustcoder merge")
            raise RustcoderError(f"{target} already exists and {why}. Pass --force to replace it, or choose "
                                 "another --output-dir.")
        if not target.is_dir() or not _looks_replaceable(target):
            raise RustcoderError(f"{target} exists and is not a model directory; refusing to replace it even with "
                                 "--force. Choose another --output-dir.")

    from transformers import AutoTokenizer

    log(f"merging {src.adapter_dir} into {src.base_name} ({'streaming' if streaming else 'in memory'}, float32 -> "
        f"{dtype})")
    from ..modeling import architecture_note

    if architecture_note(base_config.get("model_type"), src.base_name):
        log(architecture_note(base_config.get("model_type"), src.base_name))
    if src.base_overridden:
        log(f"note: --base {src.base_name!r} replaces the base the adapter was trained on ({src.trained_base!r})")
    plan = plan_merge(load_adapter_tensors(src.adapter_dir), src.adapter_config)
    trained_cfg_path = Path(src.manifest.get("base_model_path") or "") / "config.json"
    trained_config = read_json(trained_cfg_path) if src.base_overridden and trained_cfg_path.is_file() else None
    tied = tied_keys(base_config)
    tie = tie_word_embeddings(src.base_dir)
    if weight_files(src.base_dir):
        shapes = tensor_shapes(src.base_dir)
        if tie and tied[0] not in shapes and tied[1] in shapes:  # a tied checkpoint stores the matrix once
            shapes[tied[0]] = shapes[tied[1]]
        check_fit(plan, shapes, src.base_name, src.trained_base, base_config, trained_config)
    elif streaming:
        raise RustcoderError(f"--streaming needs safetensors weights; {src.base_dir} has none.")
    untie = untie_needed(tie, plan, tied)
    if untie:
        log("the adapter changes a tied embedding matrix: saving lm_head and embed_tokens separately "
            "(tie_word_embeddings=false), as base + adapter computes them")
    tokenizer = AutoTokenizer.from_pretrained(src.adapter_dir)
    mode, device = _verification(verify, verify_device, streaming, src.base_dir, plan, log)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.merging-{os.getpid()}-", dir=target.parent))
    try:
        reference = None
        if streaming:
            merge_streaming(src, plan, tmp, dtype, untie, tied, log)
        else:
            reference = merge_in_memory(src, plan, tmp, dtype, untie, tokenizer, verify and mode == "full", log)
        config = edited_config(src.base_dir, dtype, untie)
        atomic_write_json(tmp / "config.json", config)
        atomic_write_json(tmp / "generation_config.json", generation_config(src.base_dir, config, tokenizer))
        copy_tokenizer(src.adapter_dir, tmp)
        shards = weight_files(tmp)
        report = {
            "kind": "rustcoder-merge",
            "merge_format": MERGE_FORMAT,
            "created_at": time.time(),
            "merged_dir": str(target),
            "mode": "streaming" if streaming else "in-memory",
            "merge_key": key,
            "run_dir": str(src.run_dir) if src.run_dir else None,
            "run_name": src.manifest.get("run_name"),
            "adapter": {"dir": str(src.adapter_dir), "sha256": adapter_sha, "tensors": plan.adapter_keys},
            "base": {"name": src.base_name, "dir": str(src.base_dir), "revision": src.base_revision,
                     "trained_on": src.trained_base, "overridden": src.base_overridden, "identity": identity},
            "dtype": dtype,
            "base_dtype": base_dtype,
            "compute_dtype": "float32",
            "lora": {"r": src.adapter_config.get("r"), "alpha": src.adapter_config.get("lora_alpha"),
                     "rslora": bool(src.adapter_config.get("use_rslora")),
                     "dora": bool(src.adapter_config.get("use_dora")),
                     "merged_tensors": len(plan.updates), "replaced_tensors": sorted(plan.replacements)},
            "tie_word_embeddings": tie and not untie,
            "untied_embeddings": untie,
            "files": {"shards": len(shards), "bytes": sum(f.stat().st_size for f in shards)},
            "versions": artifacts.package_versions(),
        }
        if verify:
            report["verification"] = _verify(tmp, src, reference=reference, mode=mode, plan=plan,
                                             max_effect_lost=max_effect_lost, device=device,
                                             requested=verify_device, log=log)
        else:
            report["verification"] = {"skipped": True, "passed": None}
        report["wall_time_s"] = time.time() - started
        atomic_write_text(tmp / "README.md", model_card(src, report))
        if verify and not report["verification"]["passed"]:
            raise RustcoderError(refusal_message(report, src.run_dir or src.adapter_dir))
        write_report(tmp, report)
        install(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if src.run_dir is not None:
        artifacts.update_manifest(src.run_dir, merged_dir=str(target), merged_at=time.time())
    return _pushed(MergeResult(merged_dir=target, report=report), push_to_hub, log)


def _pushed(result: MergeResult, repo: str | None, log: Callable) -> MergeResult:
    if repo:
        result.pushed_to = push_merged(result.merged_dir, repo)
        log(f"pushed merged model to {result.pushed_to}")
    return result


def _verification(verify: bool, requested: str, streaming: bool, base_dir: Path, plan, log: Callable) -> tuple[str, str]:
    """(mode, device) of the verification, said in one line when it is not the plain CPU one."""
    if not verify:
        return "full", "cpu"
    device, why = choose_verify_device(requested, base_dir, plan)
    impossible = layerwise_unsupported(base_dir, base_dir, plan)
    mode = verification_mode(streaming, device, impossible)
    if device != "cpu" and mode == "full":  # only layerwise runs on a GPU
        why = f"layer-by-layer verification is not possible here ({impossible})"
        if requested != "auto":
            raise UsageError(f"--verify-device {requested}: {why}, and only that runs on a GPU; use "
                             "--verify-device cpu or auto")
        device = "cpu"
    if device != "cpu":
        log(f"verification: layer by layer on {device} ({why})")
    elif why not in ("no CUDA GPU", "--verify-device cpu"):
        log(f"verification: on the CPU, not the GPU: {why}")
    return mode, device


def _verify(merged: Path, src: Source, *, reference, mode: str, plan, max_effect_lost: float, device: str,
            requested: str, log: Callable) -> dict:
    """verify_merge on device. Under --verify-device auto, a GPU that fails the verification's pass (out of
    memory: another process took it since it was measured; or any error of the GPU path) hands the
    verification to the CPU, saying so: a verdict (RustcoderError) is never retried."""
    try:
        return verify_merge(merged, src.base_dir, src.adapter_dir, reference=reference, mode=mode, plan=plan,
                            max_effect_lost=max_effect_lost, device=device, log=log)
    except Exception as e:
        if device == "cpu" or isinstance(e, RustcoderError):
            raise
        import torch

        first = str(e).splitlines()[0][:200] if str(e) else ""
        what = (f"the verification ran out of memory on {device} ({first})" if isinstance(e, torch.OutOfMemoryError)
                else f"the verification failed on {device} ({type(e).__name__}: {first}; please report it)")
        torch.cuda.empty_cache()
        if requested != "auto":
            raise RustcoderError(f"{what}. Use --verify-device cpu (or auto, which falls back to the CPU).") from e
    log(f"{what}: verifying on the CPU instead")
    result = verify_merge(merged, src.base_dir, src.adapter_dir, reference=reference, mode=mode, plan=plan,
                          max_effect_lost=max_effect_lost, device="cpu", log=log)
    result["device_fallback"] = what
    return result


def _already_merged(src: Source, target: Path, previous: dict, verify: bool, max_effect_lost: float,
                    verify_device: str, log: Callable) -> MergeResult:
    log(f"{target} already holds this adapter merged into this base in {previous.get('dtype')} (same adapter weights, "
        "base and dtype): nothing to do.")
    if verify and (previous.get("verification") or {}).get("skipped"):
        log("it was merged with --no-verify: verifying it now")
        plan = plan_merge(load_adapter_tensors(src.adapter_dir), src.adapter_config)
        mode, device = _verification(True, verify_device, previous.get("mode") == "streaming", src.base_dir, plan,
                                     log)
        previous["verification"] = _verify(target, src, reference=None, mode=mode, plan=plan,
                                           max_effect_lost=max_effect_lost, device=device, requested=verify_device,
                                           log=log)
        write_report(target, previous)
        if not previous["verification"]["passed"]:
            raise RustcoderError(f"{target} failed verification.\n" + refusal_message(previous, src.run_dir or
                                                                                      src.adapter_dir)
                                 + "\nRe-merge with --force once fixed.\n" + render_report(previous))
    return MergeResult(merged_dir=target, report=previous, already_merged=True)


def push_merged(merged_dir: str | Path, repo: str) -> str:
    """Upload a merged model directory (with its model card and merge report) to a hub model repo."""
    return artifacts.push_folder(merged_dir, repo, "merged model")
