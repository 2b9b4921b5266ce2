"""The verification's probe prompts and what whole models (base + adapter, base, the correctly rounded
merge, the merged model) compute on them.
"""

from __future__ import annotations

from pathlib import Path

from ..modeling import END_OF_TURN
from .sources import load_adapter, load_base_fp32
from .tensors import torch_dtype

GREEDY_TOKENS = 16


# Short prompts from four Rust task categories, rendered with the run's chat template.
PROBES: tuple[tuple[str, dict], ...] = (
    ("code_generation", {"title": "Sum of squares",
                         "description": "Return the sum of the squares of a slice of integers.",
                         "function_signature": "fn sum_of_squares(xs: &[i64]) -> i64"}),
    ("bug_detection", {"buggy_code": "fn last(v: &Vec<i32>) -> i32 { v[v.len()] }"}),
    ("code_explanation", {"code": "fn gcd(a: u64, b: u64) -> u64 { if b == 0 { a } else { gcd(b, a % b) } }"}),
    ("function_naming", {"code": "fn __placeholder__(s: &str) -> bool { s.chars().eq(s.chars().rev()) }"}),
)


def probe_messages() -> list[list[dict]]:
    """Chat messages of the verification probes (system + user turn for each Rust task category)."""
    from ..data.categories import build_messages

    return [build_messages(cat, inp) for cat, inp in PROBES]


def render_prompt(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def token_id(tokenizer, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    return tid if isinstance(tid, int) and tid != tokenizer.unk_token_id else None


def probe_outputs(model, tokenizer, base_logits: bool = False) -> list[dict]:
    """Greedy continuations and float32 logits of a model on the probe prompts.

    With base_logits=True (a PEFT model) also the logits with the adapter disabled: the adapter's own
    effect, against which the dtype's rounding is measured (see add_rounded_outputs).
    """
    import torch
    from transformers import GenerationConfig

    model.eval()
    im_end = token_id(tokenizer, END_OF_TURN)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=GREEDY_TOKENS, eos_token_id=im_end,
                               pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
    results = []
    with torch.no_grad():
        for messages in probe_messages():
            prompt = encode(tokenizer, render_prompt(tokenizer, messages))
            ids = torch.tensor([prompt])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg)
            new = out.sequences[0, len(prompt):].tolist()
            full = torch.tensor([prompt + new])
            logits = model(input_ids=full, use_cache=False).logits[0].float()
            item = {"prompt_ids": prompt, "greedy": new, "logits": logits,
                    "margins": [float((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item()) for s in out.scores]}
            if base_logits and hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    item["base_logits"] = model(input_ids=full, use_cache=False).logits[0].float()
            results.append(item)
    return results


def effect_stats(ref, base):
    """Per position: (squared sum, max) over the vocabulary of the adapter's effect reference - base."""
    import torch

    effect = ref - base
    # norms in float32 (no float64 copy of positions x vocabulary), squared in float64
    return torch.linalg.vector_norm(effect, dim=-1).double() ** 2, effect.abs().amax(-1)


def finish_reference(item: dict, rounded) -> None:
    """Per-position numbers of one reference probe: the adapter's effect (reference - base, from
    base_logits or already in effect_sq/effect_max) and the dtype's floor (correctly rounded merge -
    reference), as squared sums and maxima over the vocabulary."""
    import torch

    ref = item["logits"]
    if "base_logits" in item:
        item["effect_sq"], item["effect_max"] = effect_stats(ref, item.pop("base_logits"))
    floor = rounded - ref
    item["rounded_logits"] = rounded
    item["floor_sq"] = torch.linalg.vector_norm(floor, dim=-1).double() ** 2
    item["floor_max"] = floor.abs().amax(-1)


def round_parameters_(model, dtype: str) -> None:
    """Round every floating parameter to dtype and back to float32, in place: what saving in dtype does."""
    import torch

    target = torch_dtype(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(target).float()


def add_rounded_outputs(reference: list[dict], rounded_model) -> None:
    """Logits of the correctly rounded merge (a merged float32 model after round_parameters_) on the
    reference's own tokens; completes each reference probe (see finish_reference)."""
    import torch

    rounded_model.eval()
    with torch.no_grad():
        for item in reference:
            full = torch.tensor([item["prompt_ids"] + item["greedy"]])
            finish_reference(item, rounded_model(input_ids=full, use_cache=False).logits[0].float())


def reference_outputs(base_dir: str | Path, adapter_dir: str | Path, tokenizer, dtype: str = "float32") -> list[dict]:
    """Probe outputs of base + adapter (PEFT, unmerged) in float32: what the merged model must reproduce;
    with the base's logits and those of PEFT's float32 merge rounded once to dtype (the dtype's floor)."""
    model = load_adapter(load_base_fp32(Path(base_dir)), adapter_dir)
    out = probe_outputs(model, tokenizer, base_logits=True)
    merged = model.merge_and_unload()
    round_parameters_(merged, dtype)
    add_rounded_outputs(out, merged)
    del model, merged
    return out
