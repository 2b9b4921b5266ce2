"""verify_merge: a merged model checked against base + adapter in two layers (exactness, function),
in full or layerwise mode, and the report and refusal texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..artifacts import read_json
from ..errors import RustcoderError
from ..rundir import MERGE_REPORT as REPORT
from .checks import (DEFAULT_MAX_EFFECT_LOST, check, exactness_checks, forward_noise_rtol, loaded_tie_check,
                     output_checks, peft_scale_problems, tokenizer_checks, verification_summary)
from .layerwise import LAYERWISE_GREEDY_TOKENS, layerwise_probe_outputs, layerwise_unsupported, weight_sizes
from .plan import MergePlan, load_adapter_tensors, plan_merge
from .probes import GREEDY_TOKENS, probe_outputs, reference_outputs
from .sources import save_dtype_of, skeleton, tie_word_embeddings, tied_keys
from .tensors import Meter

def verify_layerwise(merged_dir: Path, base_dir: Path, adapter_dir: Path, plan: MergePlan, tie: bool,
                      tied: tuple[str, str],
                      dtype: str, run_tok, merged_tok, noise_rtol: float, max_effect_lost: float,
                      log: Callable, device: str = "cpu") -> tuple[dict[str, dict], dict]:
    """Exactness tensor by tensor (on the CPU, as the merge computed it), then the models run one decoder layer
    at a time on device; returns (checks, memory)."""
    import torch

    checks_meter, forward_meter = Meter(), Meter()
    log("checking every merged tensor against the float32 merge rounded to its dtype, one tensor at a time")
    checks = exactness_checks(merged_dir, base_dir, plan, tie, tied, dtype, checks_meter,
                               peft_scale_problems(base_dir, adapter_dir, plan))
    loaded_tie_check(checks, skeleton(merged_dir), tie)
    on = "" if device == "cpu" else f" on {device}"
    log(f"reference outputs (base + adapter unmerged, base, and the merge rounded to {dtype}; float32), one decoder "
        f"layer at a time{on}")
    tokens = LAYERWISE_GREEDY_TOKENS
    gpu = torch.device(device).type == "cuda"
    if gpu:
        torch.cuda.init()  # a fresh process: reset_peak_memory_stats("cuda:N") does not initialise CUDA itself
        torch.cuda.reset_peak_memory_stats(device)
    reference = layerwise_probe_outputs(base_dir, run_tok, plan=plan, base_logits=True, round_to=dtype,
                                        meter=forward_meter, greedy_tokens=tokens, device=device)
    log(f"running the merged model on the probe prompts, one decoder layer at a time{on}")
    how = f"layer-by-layer forward in float32 with a KV cache{on}"
    try:
        got = layerwise_probe_outputs(merged_dir, merged_tok, reference=reference, meter=forward_meter,
                                      greedy_tokens=tokens, device=device)
        checks.update(output_checks(reference, got, dtype, tokens, how, noise_rtol, max_effect_lost))
    except RustcoderError as e:
        checks["logits"] = check(False, f"the merged model could not be run: {e}")
        checks["greedy"] = check(False, "the merged model could not be run")
    sizes = weight_sizes(merged_dir)
    memory = {"peak_weight_bytes": max(checks_meter.peak, forward_meter.peak),
              "forward_peak_bytes": forward_meter.peak, "tensor_checks_peak_bytes": checks_meter.peak,
              "max_layers_at_once": max(checks_meter.max_layers, forward_meter.max_layers),
              "largest_layer_fp32_bytes": sizes["largest_layer_fp32"], "embedding_bytes": sizes["embeddings"],
              "layers": sizes["layers"], "greedy_tokens": tokens}
    if gpu:  # what the device held at most (weights, adapter, KV caches, logits, kernels' workspace)
        memory["device_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        torch.cuda.empty_cache()  # hand the cached blocks back: the process may go on (serve, eval, the demo)
    return checks, memory


def verify_full(merged_dir: Path, base_dir: Path, adapter_dir: Path, plan: MergePlan, tie: bool,
                 tied: tuple[str, str], dtype: str, run_tok, merged_tok, reference: list[dict] | None,
                 noise_rtol: float, max_effect_lost: float, log: Callable) -> dict[str, dict]:
    import torch
    from transformers import AutoModelForCausalLM

    log("checking every merged tensor against the float32 merge rounded to its dtype, one tensor at a time")
    checks = exactness_checks(merged_dir, base_dir, plan, tie, tied, dtype, Meter(),
                               peft_scale_problems(base_dir, adapter_dir, plan))
    if reference is None:
        log(f"computing reference outputs (base + adapter unmerged, base, and the merge rounded to {dtype}; float32)")
        reference = reference_outputs(base_dir, adapter_dir, run_tok, dtype)
    log("running the merged model on the probe prompts")
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, attn_implementation="sdpa")
    peft_like = [n for n, _ in model.named_modules() if "lora_" in n or n.endswith("base_layer")]
    checks["lora_free"]["passed"] &= not peft_like
    if peft_like:
        checks["lora_free"]["detail"] += f"; loaded model has LoRA modules: {', '.join(peft_like[:3])}"
    loaded_tie_check(checks, model, tie)
    merged_out = probe_outputs(model, merged_tok)
    del model
    checks.update(output_checks(reference, merged_out, dtype, GREEDY_TOKENS, "full model in float32, generate()",
                                 noise_rtol, max_effect_lost))
    return checks


VERIFY_MODES = ("full", "layerwise")


CHECK_ORDER = ("exact", "logits", "effect", "greedy", "finite", "lora_free", "tied_embeddings", "chat_template", "eos")


def verify_merge(merged_dir: str | Path, base_dir: str | Path, adapter_dir: str | Path, *,
                 reference: list[dict] | None = None, mode: str = "full", plan: MergePlan | None = None,
                 max_effect_lost: float = DEFAULT_MAX_EFFECT_LOST, device: str = "cpu",
                 log: Callable = print) -> dict[str, Any]:
    """Check a merged model against base + adapter in two layers; returns {"passed", "cause", "checks", ...}.

    Exactness ("exact"): every merged tensor is the float32 merge W + scale * B @ A (recomputed from the base
    and adapter files) rounded once to the saved dtype, bit for bit; untouched tensors are the base's. A
    mismatch is a bug (wrong scale, transposition, missed module, tied embeddings).

    Function: on Rust probe prompts, "logits": the merged model computes what the correctly rounded merge
    computes, within float32 forward noise (a mismatch is a bug in what was saved beside the tensors:
    config, tied embeddings, dtype); "effect": the share of the adapter's effect on the logits (base +
    adapter - base) that rounding to the saved dtype loses stays within max_effect_lost (a failure is the
    dtype's resolution, not a bug: merge in float32 or serve the adapter); "greedy": continuations equal
    base + adapter's except at near-ties the rounding can flip. Also: no NaN/inf, no LoRA tensors left,
    tied embeddings consistent with the config (in the files and in the model transformers builds), the
    chat template renders the probes exactly as the run's tokenizer does, eos includes <|im_end|>.

    cause is None when everything passed, "dtype" when only "effect" failed, else "bug".

    mode "full" loads base + adapter (PEFT) and then the merged model, whole, in float32, and generates
    GREEDY_TOKENS tokens. mode "layerwise" (what streaming merges use) never holds more than one decoder
    layer plus the embeddings (and the probes' logits): the models run one layer at a time
    (layerwise_probe_outputs) with LAYERWISE_GREEDY_TOKENS greedy tokens, on device (a CUDA GPU: each layer's
    stored tensors are moved there; the exactness layer stays on the CPU). Layerwise falls back to full
    (saying why) for an architecture or adapter it cannot run; full runs on the CPU; reference applies to
    full mode only.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"mode must be one of {VERIFY_MODES}, not {mode!r}")
    merged_dir, base_dir, adapter_dir = Path(merged_dir), Path(base_dir), Path(adapter_dir)
    config = read_json(merged_dir / "config.json")
    dtype = save_dtype_of(config, merged_dir)
    noise_rtol = forward_noise_rtol(config)
    tied = tied_keys(config)
    tie = tie_word_embeddings(merged_dir)
    checks, run_tok, merged_tok = tokenizer_checks(merged_dir, adapter_dir)
    if plan is None:
        plan = plan_merge(load_adapter_tensors(adapter_dir), read_json(adapter_dir / "adapter_config.json"))
    result: dict[str, Any] = {"skipped": False, "mode": mode, "dtype": dtype, "max_effect_lost": max_effect_lost}
    if mode == "layerwise":
        why = layerwise_unsupported(merged_dir, base_dir, plan)
        if why:
            log(f"layerwise verification is not possible here ({why}): running the full verification, which "
                "holds a float32 copy of the model")
            mode = result["mode"] = "full"
            result["layerwise_unavailable"] = why
    result["device"] = device if mode == "layerwise" else "cpu"
    if mode == "layerwise":
        more, result["memory"] = verify_layerwise(merged_dir, base_dir, adapter_dir, plan, tie, tied, dtype, run_tok,
                                                   merged_tok, noise_rtol, max_effect_lost, log,
                                                   result["device"])
        result["greedy_tokens"] = result["memory"].pop("greedy_tokens")
    else:
        more = verify_full(merged_dir, base_dir, adapter_dir, plan, tie, tied, dtype, run_tok, merged_tok, reference,
                            noise_rtol, max_effect_lost, log)
        result["greedy_tokens"] = GREEDY_TOKENS
    checks.update(more)
    result["checks"] = {k: checks[k] for k in CHECK_ORDER if k in checks}
    failed = {k for k, c in result["checks"].items() if not c["passed"]}
    result["passed"] = not failed
    result["cause"] = None if not failed else "dtype" if failed == {"effect"} else "bug"
    exact, logits, effect = (result["checks"].get(k, {}) for k in ("exact", "logits", "effect"))
    result["exact"] = None if exact.get("skipped") else exact.get("passed")
    result["max_logit_diff"] = logits.get("max_abs_diff")
    result["dtype_floor"] = logits.get("dtype_floor")
    result["effect_kept"] = effect.get("effect_kept")
    return result


def render_report(report: dict) -> str:
    """Human-readable summary of a merge report (what the CLI prints)."""
    lines = [f"merged model: {report['merged_dir']}",
             f"  base {report['base']['name']} + adapter {report['adapter']['dir']} -> {report['dtype']}, "
             f"{report['files']['shards']} shard(s), {report['files']['bytes'] / 1e6:.1f} MB, "
             f"{report['mode']} merge in {report['wall_time_s']:.1f} s"]
    if report.get("untied_embeddings"):
        lines.append("  the adapter changes a tied embedding: lm_head and embed_tokens are saved separately "
                     "(tie_word_embeddings=false)")
    v = report.get("verification") or {}
    if v.get("skipped"):
        lines.append("verification: skipped (--no-verify)")
    else:
        where = f" on {v['device']}" if v.get("device", "cpu") != "cpu" else ""
        lines.append(f"verification: {'passed' if v.get('passed') else 'FAILED'} ({v.get('mode', 'full')}{where}"
                     f"{verification_summary(v)})")
        mem = v.get("memory")
        if mem and "device_peak_bytes" in mem:  # the weights lived on the GPU; host memory held only read buffers
            lines.append(f"  layerwise on {v['device']}: GPU peak {mem['device_peak_bytes'] / 1e6:.1f} MB "
                         f"({mem['max_layers_at_once']} decoder layer(s) at a time; largest layer in float32 "
                         f"{mem['largest_layer_fp32_bytes'] / 1e6:.1f} MB, embeddings "
                         f"{mem['embedding_bytes'] / 1e6:.1f} MB); host read buffers at most "
                         f"{mem['peak_weight_bytes'] / 1e6:.1f} MB")
        elif mem:
            lines.append(f"  layerwise: held at most {mem['peak_weight_bytes'] / 1e6:.1f} MB of weights at once "
                         f"({mem['max_layers_at_once']} decoder layer(s) at a time; largest layer in float32 "
                         f"{mem['largest_layer_fp32_bytes'] / 1e6:.1f} MB, embeddings "
                         f"{mem['embedding_bytes'] / 1e6:.1f} MB)")
        if v.get("device_fallback"):
            lines.append(f"  {v['device_fallback']}: verified on the CPU instead")
        for name, c in v.get("checks", {}).items():
            lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {name:<16} {c['detail']}")
    lines.append(f"report: {Path(report['merged_dir']) / REPORT}")
    return "\n".join(lines)


def refusal_message(report: dict, source: Path) -> str:
    """Why a merge was not saved, with the true cause and the fix."""
    v = report["verification"]
    checks = v["checks"]
    dtype = report["dtype"]
    if v.get("cause") == "dtype":
        e, x = checks["effect"], checks.get("exact", {})
        changed = x.get("changed_share")
        why = (f" only {changed:.1%} of the adapter-targeted weights change at all in {dtype};" if changed is not None
               else "")
        return (f"the merged model was not saved: in {dtype} it keeps only {e['effect_kept']:.1%} of the adapter's "
                f"effect on the probe logits (rounding loses {e['effect_lost']:.1%}, more than --max-effect-lost "
                f"{e['max_effect_lost']:.0%}).\n"
                f"This is not a bug: the merge is exact (every tensor is the float32 merge rounded once to {dtype}), but "
                f"the adapter's update is mostly below {dtype}'s resolution for weights of this size;{why} typical of a "
                "short or low-learning-rate run.\nFix: merge in float32, which keeps the whole effect at twice the "
                f"size: `rustcoder merge {source} --dtype float32`; or serve the adapter unmerged: `rustcoder serve "
                f"--adapter {source}`; or train longer. `--max-effect-lost 1` merges in {dtype} anyway.")
    failed = {k: c["detail"] for k, c in checks.items() if not c["passed"] and k != "effect"}
    return ("the merged model failed verification, so it was not saved:\n"
            + "\n".join(f"  - {k}: {d}" for k, d in failed.items())
            + "\nThis is a bug in the merge or a broken adapter/base, not rounding: report it with the run's "
              "adapter_config.json and merge output.")
