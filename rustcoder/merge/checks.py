"""The verification's checks: exactness tensor by tensor, the function checks on probe outputs (logits,
effect, greedy), and the file, tokenizer and tied-embedding checks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..artifacts import read_json
from ..modeling import END_OF_TURN
from .plan import MergePlan
from .probes import PROBES, encode, probe_messages, token_id
from .sources import skeleton, text_config
from .tensors import Meter, Reader, rows_per_block, weight_files

# Refuse a merge whose saved dtype loses more than this share of the adapter's effect on the probe
# logits (relative L2 over every probe position and vocabulary entry); --max-effect-lost overrides.
DEFAULT_MAX_EFFECT_LOST = 0.10


# Two float32 forwards of the same weights differ only by float32 rounding, which grows with depth and
# width: the merged model's logits must equal the correctly rounded merge's within
# FORWARD_NOISE * sqrt(layers * hidden) * eps(float32) * max |logit| (+ one eps for logits near zero).
FORWARD_NOISE = 8


def check(passed: bool, detail: str, **numbers) -> dict:
    return {"passed": bool(passed), "detail": detail, **numbers}


def common_prefix(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def finite_max(t) -> float:
    """t.max() as a float with NaN read as inf (Python's max() silently drops a NaN: max(0.0, nan) == 0.0)."""
    v = float(t.max()) if t.numel() else 0.0
    return math.inf if math.isnan(v) else v


def tied_check(ok: bool, tie: bool, lm_key: str) -> dict:
    if tie:
        detail = ("tie_word_embeddings=true and lm_head is the embedding matrix" if ok
                  else "tie_word_embeddings=true but the saved lm_head differs from embed_tokens")
    else:
        detail = ("tie_word_embeddings=false and lm_head is saved" if ok
                  else f"tie_word_embeddings=false but {lm_key} is missing: it would load as random weights")
    return check(ok, detail, tie_word_embeddings=tie)


def loaded_tie_check(checks: dict, model, tie: bool) -> None:
    """The model as transformers builds it must share lm_head with embed_tokens exactly when the config ties them."""
    shared = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if shared != tie:
        checks["tied_embeddings"]["passed"] = False
        checks["tied_embeddings"]["detail"] += (f"; but the loaded model {'shares' if shared else 'does not share'} "
                                                "lm_head with embed_tokens")


def tokenizer_checks(merged_dir: Path, adapter_dir: Path) -> tuple[dict[str, dict], Any, Any]:
    """chat_template and eos checks; also returns (run tokenizer, merged tokenizer)."""
    from transformers import AutoTokenizer

    checks: dict[str, dict] = {}
    run_tok = AutoTokenizer.from_pretrained(adapter_dir)
    merged_tok = AutoTokenizer.from_pretrained(merged_dir)
    template_file = merged_dir / "chat_template.jinja"
    tok_cfg = read_json(merged_dir / "tokenizer_config.json")
    mismatched = []
    convo = probe_messages()
    convo.append(probe_messages()[0] + [{"role": "assistant", "content": "```rust\nfn f() {}\n```"}])
    for messages in convo:
        gen = messages[-1]["role"] != "assistant"
        a = run_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        b = merged_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        if a != b or encode(run_tok, a) != encode(merged_tok, b):
            mismatched.append(messages[0]["content"][:40])
    template_ok = (template_file.is_file() and tok_cfg.get("chat_template") == template_file.read_text(encoding="utf-8")
                   and not mismatched)
    checks["chat_template"] = check(
        template_ok, f"chat_template.jinja and tokenizer_config.json render {len(convo)} conversations exactly as "
        "the run's tokenizer" if template_ok else
        ("chat_template.jinja missing or different from tokenizer_config.json" if not mismatched
         else f"{len(mismatched)} of {len(convo)} conversations render differently"), conversations=len(convo))

    gen_path = merged_dir / "generation_config.json"
    gen = read_json(gen_path) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    im_end = token_id(merged_tok, END_OF_TURN)
    eos_ok = im_end is not None and im_end in eos and merged_tok.eos_token == END_OF_TURN
    checks["eos"] = check(eos_ok, f"generation_config eos {eos} includes {END_OF_TURN} ({im_end}); tokenizer eos "
                           f"{merged_tok.eos_token}", eos_token_id=eos)
    return checks, run_tok, merged_tok


def forward_noise_rtol(config: dict) -> float:
    """Relative float32 noise allowed between two forwards of the same weights (see FORWARD_NOISE)."""
    import torch

    tc = text_config(config)
    depth_width = max(1, int(tc.get("num_hidden_layers") or 1) * int(tc.get("hidden_size") or 1))
    return FORWARD_NOISE * math.sqrt(depth_width) * torch.finfo(torch.float32).eps


def output_checks(reference: list[dict], got: list[dict], dtype: str, greedy_tokens: int, how: str,
                   noise_rtol: float, max_effect_lost: float = DEFAULT_MAX_EFFECT_LOST) -> dict:
    """The function layer: logits, effect and greedy checks from the probe outputs of base + adapter
    (reference, with the correctly rounded merge's logits and the adapter's effect) and the merged model.

    A merged entry has "logits", or "max_abs_diff", "rounded_diff", "diff_sq" and "positions" when it was
    compared on the fly (layerwise). The merged model is compared where both models read the same tokens:
    the prompt and the continuation up to the first token where their greedy outputs differ.

    - logits: the merged model must compute what the correctly rounded merge computes (the exact float32
      merge rounded once to dtype, run in float32), within float32 forward noise. max |merged - (base +
      adapter)| is reported beside the dtype's floor (the same distance for the correctly rounded merge).
    - effect: the share of the adapter's effect on the logits that rounding to dtype loses,
      ||rounded merge - reference|| / ||reference - base|| over every probe position and vocabulary entry,
      must not exceed max_effect_lost.
    - greedy: a continuation may differ from the reference's only where the reference's top-two margin is
      within what the logits differ by (a near-tie rounding can flip)."""
    import torch

    max_diff = rounded_diff = floor_max = effect_max = max_ref = 0.0
    floor_sq = effect_sq = diff_sq = effect_sq_compared = 0.0
    positions = skipped = 0
    same, near_ties, diverged = 0, [], []
    per_probe = []
    for i, (ref, g) in enumerate(zip(reference, got)):
        max_ref = max(max_ref, finite_max(ref["logits"].abs()))
        if "max_abs_diff" in g:
            d, dr, sq, n, missed = (g["max_abs_diff"], g["rounded_diff"], g["diff_sq"], g["positions"],
                                    g.get("not_compared", 0))
        else:  # positions whose inputs are the same tokens: the prompt and the common part of the continuations
            both = min(len(ref["logits"]), len(g["logits"]))
            n = min(both, common_prefix(ref["prompt_ids"] + ref["greedy"], g["prompt_ids"] + g["greedy"]))
            missed = both - n
            delta = ref["logits"][:n] - g["logits"][:n]
            d = finite_max(delta.abs())
            dr = finite_max((ref["rounded_logits"][:n] - g["logits"][:n]).abs())
            sq = float(torch.linalg.vector_norm(delta).double() ** 2)  # no float64 copy of the logits
        per_probe.append(d)
        skipped += missed
        positions += n
        max_diff, rounded_diff = max(max_diff, d), max(rounded_diff, dr)
        diff_sq += sq
        effect_sq += float(ref["effect_sq"].sum())
        effect_sq_compared += float(ref["effect_sq"][:n].sum())
        floor_sq += float(ref["floor_sq"].sum())
        effect_max = max(effect_max, finite_max(ref["effect_max"]))
        floor_max = max(floor_max, finite_max(ref["floor_max"]))
    tolerance = noise_rtol * max_ref + 1.2e-7
    for i, (ref, g) in enumerate(zip(reference, got)):
        if ref["greedy"] == g["greedy"]:
            same += 1
            continue
        k = common_prefix(ref["greedy"], g["greedy"])
        margin = ref["margins"][k] if k < len(ref["margins"]) else math.inf
        (near_ties if margin <= 2 * (per_probe[i] + tolerance) else diverged).append(
            {"probe": PROBES[i][0], "token": k, "reference_margin": margin})
    lost = math.sqrt(floor_sq / effect_sq) if effect_sq > 0 else 0.0
    merged_lost = math.sqrt(diff_sq / effect_sq_compared) if effect_sq_compared > 0 else 0.0
    checks = {}
    checks["logits"] = check(
        rounded_diff <= tolerance,
        f"max |merged - correctly rounded {dtype} merge| = {rounded_diff:.2e} over {len(reference)} probes and "
        f"{positions} positions, tolerance {tolerance:.2e} (float32 forward noise: {noise_rtol:.1e} x max |logit| "
        f"{max_ref:.3g})" + (f" ({skipped} positions after the greedy outputs part, where the inputs differ, not "
                             "compared)" if skipped else "")
        + f"; max |merged - (base + adapter)| = {max_diff:.2e} against the {dtype} floor {floor_max:.2e}; the "
        f"adapter itself moves logits by up to {effect_max:.2e} [{how}]",
        max_abs_diff=max_diff, rounded_diff=rounded_diff, tolerance=tolerance, noise_rtol=noise_rtol,
        dtype_floor=floor_max, max_abs_logit=max_ref, adapter_effect=effect_max, positions=positions,
        positions_not_compared=skipped)
    if effect_sq > 0:
        detail = (f"{dtype} keeps {1 - lost:.1%} of the adapter's effect on the probe logits (rounding the merge "
                  f"to {dtype} loses {lost:.1%}; the limit is {max_effect_lost:.0%}, --max-effect-lost)")
    else:
        detail = "the adapter does not change the probe logits: there is no effect to lose"
    checks["effect"] = check(lost <= max_effect_lost, detail, effect_lost=lost, effect_kept=1 - lost,
                              merged_effect_lost=merged_lost, max_effect_lost=max_effect_lost, dtype=dtype)
    checks["greedy"] = check(
        not diverged, f"{same}/{len(reference)} greedy continuations identical ({greedy_tokens} tokens max, {how})"
        + (f"; {len(near_ties)} differ at a near-tie that {dtype} rounding can flip" if near_ties else "")
        + (f"; {len(diverged)} diverge where the logits agree: " + ", ".join(f"{d['probe']} at token {d['token']}"
                                                                              for d in diverged)
           if diverged else ""), identical=same, probes=len(reference), tokens=greedy_tokens, near_ties=near_ties,
        diverged=diverged)
    return checks


def blocks_equal(reader: Reader, a: str, b: str) -> bool:
    import torch

    step = rows_per_block(reader.shape(a))
    for (_, _, x), (_, _, y) in zip(reader.rows(a, step), reader.rows(b, step)):
        if x.dtype != y.dtype or not torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            return False
    return True


def _half_ulp(e32, dtype):
    """Half the spacing of dtype's representable numbers at each element's magnitude (the most a correct
    rounding of a float32 value to dtype can move it)."""
    import torch

    fi = torch.finfo(dtype)
    _, exp = torch.frexp(e32)  # e32 = m * 2**exp with 0.5 <= |m| < 1: dtype's spacing there is 2**(exp-1) * eps
    ulp = torch.ldexp(torch.ones_like(e32), exp - 1) * fi.eps
    return ulp.clamp_min(fi.smallest_normal * fi.eps) / 2  # subnormals: a fixed spacing


def peft_scale_problems(model_dir: Path, adapter_dir: Path, plan: MergePlan) -> list[str]:
    """Where the plan's LoRA modules or scales differ from what PEFT itself computes for this adapter config
    on this architecture (PEFT's LoRA layers injected into a meta-device skeleton: no memory, no weights).
    The merge, the exactness check and the layerwise reference all use the plan's scales: this is the check
    that does not share them."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig.from_pretrained(str(adapter_dir))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = inject_adapter_in_model(config, skeleton(model_dir), low_cpu_mem_usage=True)
    peft = {f"{name}.weight": next(iter(m.scaling.values())) for name, m in model.named_modules()
            if isinstance(getattr(m, "scaling", None), dict) and m.scaling}
    problems = [f"PEFT applies a LoRA to {k.removesuffix('.weight')}, the merge does not" for k in sorted(peft)
                if k not in plan.updates]
    problems += [f"the merge changes {k.removesuffix('.weight')}, which PEFT does not adapt" for k in
                 sorted(plan.updates) if k not in peft]
    problems += [f"{k.removesuffix('.weight')}: the merge scales B @ A by {u.scale:g}, PEFT by {peft[k]:g}"
                 for k, u in sorted(plan.updates.items()) if k in peft and not math.isclose(u.scale, peft[k],
                                                                                             rel_tol=1e-6)]
    return problems


def exactness_checks(merged_dir: Path, base_dir: Path, plan: MergePlan, tie: bool, tied: tuple[str, str],
                      dtype: str, meter: Meter, scale_problems: list[str] | None = None) -> dict[str, dict]:
    """exact, finite, lora_free and tied_embeddings, reading one tensor at a time.

    Exactness: every LoRA-targeted weight must be the float32 merge W + scale * B @ A (recomputed here from
    the base and adapter files, with PEFT's formulas) rounded once to its saved dtype, bit for bit. The only
    element allowed to differ is one whose float32 value lies so close to the midpoint of two neighbours in
    the saved dtype that float32 noise (another BLAS kernel, another device) decides the rounding:
    |merged - expected| <= half an ulp of the dtype + 16 * eps(float32) * (|expected| + |W|); those are
    counted as ties. A tensor the adapter replaces (modules_to_save) must be the adapter's tensor rounded
    the same way, and every other tensor byte-identical to the base's (or to its rounding, when the merge
    changes the dtype). Also counts how many targeted elements the adapter changes at all in the saved
    dtype: an update below the dtype's resolution rounds back to the base weight."""
    import torch

    lm_key, embed_key = tied
    eps32 = torch.finfo(torch.float32).eps
    comparable = bool(weight_files(base_dir))
    skipped = None if comparable else f"{base_dir} has no safetensors weights to recompute the merge from"
    if comparable and plan.unsupported:
        skipped = "the adapter uses " + "; ".join(plan.unsupported) + " (merged by PEFT; not recomputed here)"
    bad, leftovers, problems = [], [], list(scale_problems or []) if not skipped else []
    n_lora = n_replaced = n_same = n_bitwise = count = ties = 0
    changed = targeted = 0
    with Reader(merged_dir, meter) as merged, Reader(base_dir if comparable else merged_dir, meter) as base:
        for name in merged.names():
            count += 1
            if "lora_" in name or ".base_layer." in name or "modules_to_save" in name:
                leftovers.append(name)
            mdtype = merged.dtype(name)
            shape = merged.shape(name)
            src = None
            if comparable and not skipped:
                src = name if name in base else embed_key if name == lm_key and embed_key in base else None
                if src is None:
                    problems.append(f"{name} is not in the base model")
                elif base.shape(src) != shape:
                    problems.append(f"{name} has shape {shape}, the base {base.shape(src)}")
                    src = None
            u, rep = plan.updates.get(name), plan.replacements.get(name)
            if src is not None and (u is not None or rep is not None):
                # whole tensors, as the merge computes them (a float32 matmul of a block of rows need not
                # round like the whole product)
                m, b = merged.read(name), base.read(src)
                if mdtype.is_floating_point:
                    nonfinite = int((~torch.isfinite(m)).sum())
                    if nonfinite:
                        bad.append(f"{name} ({nonfinite} non-finite values)")
                w32 = rep.float() if rep is not None else b.float()
                expected = u.apply(w32) if u is not None else w32
                want = expected.to(mdtype)
                if u is not None:
                    targeted += want.numel()
                    changed += int((want != w32.to(mdtype)).sum())
                if torch.equal(m, want):
                    n_bitwise += 1
                    ok = True
                else:
                    diff = (m.float() - expected).abs()
                    allowed = _half_ulp(expected, mdtype) + 16 * eps32 * (expected.abs() + w32.abs())
                    ok = bool((diff <= allowed).all())
                    if ok:
                        ties += int((m != want).sum())
                    else:
                        worst = int((diff > allowed).sum())
                        problems.append(f"{name} is not {'W + scale * B @ A' if u is not None else 'the adapter tensor'}"
                                        f" rounded once to {str(mdtype).removeprefix('torch.')} ({worst} of "
                                        f"{diff.numel()} elements differ, by up to {finite_max(diff):.2e})")
                    del diff, allowed
                if ok:
                    n_lora += u is not None
                    n_replaced += u is None
                del m, b, w32, expected, want
                continue
            step = rows_per_block(shape)
            nonfinite, differs = 0, False
            base_blocks = base.rows(src, step) if src is not None else None
            for _, _, m in merged.rows(name, step):
                if mdtype.is_floating_point:
                    nonfinite += int((~torch.isfinite(m)).sum())
                if base_blocks is not None:
                    _, _, b = next(base_blocks)
                    want = b if b.dtype == m.dtype else b.to(m.dtype)
                    differs |= not torch.equal(m.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))
                    del want, b
                del m
            if nonfinite:
                bad.append(f"{name} ({nonfinite} non-finite values)")
            if src is None:
                continue
            if differs:
                problems.append(f"{name} differs from the base although the adapter does not change it")
            else:
                n_same += 1
        if comparable and not skipped:
            for name in base.names():
                if name not in merged and not (tie and name == lm_key):
                    problems.append(f"{name} is missing from the merged model")
            for name in sorted(plan.touched):
                if name not in merged and name not in base and not (tie and name == lm_key):
                    problems.append(f"the adapter changes {name}, which the merged model does not have")
        if tie:
            tied_ok = lm_key not in merged or (embed_key in merged and merged.shape(lm_key) == merged.shape(embed_key)
                                               and blocks_equal(merged, lm_key, embed_key))
        else:
            tied_ok = lm_key in merged
    if skipped:
        exact = check(True, f"not checked: {skipped}; the logits checks below still compare the merged model "
                       "with base + adapter", skipped=skipped)
    else:
        exact = check(
            not problems,
            (f"{n_lora} LoRA-targeted tensors are W + scale * B @ A computed in float32 and rounded once to "
             f"{dtype}" + (f", {n_replaced} replaced ones the adapter's tensors" if n_replaced else "")
             + (", bit for bit" if not ties else f" ({ties} element(s) at float32 rounding ties)")
             + f"; {n_same} untouched tensors byte-identical to the base"
             + (f"; {dtype} keeps the adapter's change in {changed / targeted:.1%} of the targeted weights"
                if targeted else ""))
            if not problems else f"not the exact merge ({len(problems)} problem(s)): " + "; ".join(problems[:5]),
            lora_tensors=n_lora, replaced_tensors=n_replaced, identical_tensors=n_same, bitwise_tensors=n_bitwise,
            tie_elements=ties, targeted_elements=targeted, changed_elements=changed,
            changed_share=(changed / targeted) if targeted else None)
    return {
        "exact": exact,
        "finite": check(not bad and count > 0, f"{count} tensors, no NaN/inf" if not bad
                         else "non-finite values in " + ", ".join(bad[:5]), tensors=count),
        "lora_free": check(not leftovers, "no LoRA/PEFT tensors left" if not leftovers
                            else "PEFT tensors left in the model: " + ", ".join(leftovers[:5])),
        "tied_embeddings": tied_check(tied_ok, tie, lm_key),
    }


def verification_summary(v: dict) -> str:
    """'; exact: yes, logits max diff .., bf16 floor .., effect kept ..%' from a verification result."""
    parts = []
    if v.get("exact") is not None:
        parts.append(f"exact: {'yes' if v['exact'] else 'NO'}")
    if v.get("max_logit_diff") is not None:
        parts.append(f"logits max diff {v['max_logit_diff']:.1e} vs {v.get('dtype', '')} floor "
                     f"{v.get('dtype_floor') or 0:.1e}")
    if v.get("effect_kept") is not None:
        parts.append(f"{v.get('dtype', '')} keeps {v['effect_kept']:.1%} of the adapter's effect")
    return "; " + ", ".join(parts) if parts else ""
