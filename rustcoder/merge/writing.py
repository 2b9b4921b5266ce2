"""The merge itself and the files beside the weights: streaming (shard by shard) or in memory (PEFT),
config, generation config, tokenizer and chat template, model card.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..artifacts import atomic_write_json, read_json
from ..errors import RustcoderError
from ..modeling import END_OF_TURN
from .checks import verification_summary
from .plan import MergePlan, check_fit
from .probes import PROBES, add_rounded_outputs, probe_outputs, token_id
from .sources import Source, load_adapter, load_base_fp32
from .tensors import (ST_DTYPES, SafetensorsWriter, read_safetensors_header, read_tensor, st_code, tensor_shapes,
                      torch_dtype, weight_files)

MAX_SHARD_SIZE = "5GB"  # in-memory merges; streaming keeps the base's own shard layout


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja", "tokenizer.model")


def edited_config(base_dir: Path, dtype: str, untie: bool) -> dict:
    cfg = read_json(base_dir / "config.json")
    keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["dtype"]
    for k in keys:
        cfg[k] = dtype
    if untie:
        cfg["tie_word_embeddings"] = False
        if "text_config" in cfg and isinstance(cfg["text_config"], dict):
            cfg["text_config"]["tie_word_embeddings"] = False
    return cfg


def generation_config(base_dir: Path, config: dict, tokenizer) -> dict:
    path = base_dir / "generation_config.json"
    gen = read_json(path) if path.is_file() else {}
    eos = gen.get("eos_token_id", config.get("eos_token_id"))
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    im_end = token_id(tokenizer, END_OF_TURN)
    if im_end is None:
        raise RustcoderError(f"the run's tokenizer has no {END_OF_TURN} token: the merged model could not stop "
                             "at the end of its turn.")
    if im_end not in eos:
        eos.insert(0, im_end)
    gen["eos_token_id"] = eos
    if tokenizer.pad_token_id is not None:
        gen["pad_token_id"] = tokenizer.pad_token_id
    gen.setdefault("bos_token_id", config.get("bos_token_id"))
    return gen


def copy_tokenizer(adapter_dir: Path, out: Path) -> str:
    """Copy the run's tokenizer files and put the chat template in tokenizer_config.json too."""
    for name in _TOKENIZER_FILES:
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, out / name)
    template = (adapter_dir / "chat_template.jinja").read_text(encoding="utf-8")
    tok_cfg = read_json(out / "tokenizer_config.json")
    tok_cfg["chat_template"] = template
    tok_cfg["eos_token"] = END_OF_TURN
    for local_only in ("is_local", "local_files_only"):  # describe where the run loaded from, not the model
        tok_cfg.pop(local_only, None)
    atomic_write_json(out / "tokenizer_config.json", tok_cfg)
    return template


def model_card(src: Source, report: dict) -> str:
    m = src.manifest
    run_name = m.get("run_name") or (src.run_dir.name if src.run_dir else src.adapter_dir.name)
    ds = m.get("dataset") or {}
    dataset = ds.get("source")
    hub_dataset = dataset if dataset and "/" in dataset and not Path(dataset).exists() else None
    metrics = {k: v for k, v in (m.get("metrics") or {}).items() if k.startswith(("eval_", "train_loss"))}
    if isinstance(m.get("eval"), dict):
        metrics.update({f"eval/{k}": v for k, v in m["eval"].items() if isinstance(v, (int, float))})
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    ver = report.get("verification") or {}
    if ver.get("skipped"):
        verified = "not verified (merged with --no-verify)"
    else:
        verified = (f"verified ({ver.get('mode', 'full')}): every merged tensor is the float32 merge rounded once "
                    f"to {report['dtype']}" + verification_summary(ver).replace("; ", " (", 1) + f") on {len(PROBES)} Rust probe "
                    "prompts; see `merge_report.json`")
    front = ["---", f"base_model: {src.base_name if not Path(src.base_name).exists() else src.trained_base}",
             "library_name: transformers", "pipeline_tag: text-generation"]
    if hub_dataset:
        front += ["datasets:", f"- {hub_dataset}"]
    front += ["tags:", "- rust", "- code", "- rustcoder", "- merged-lora", "---"]
    lines = front + [
        f"# {run_name} (merged)", "",
        f"`{src.base_name}` with the rustcoder LoRA adapter `{run_name}` folded into its weights: a standalone "
        f"model, no PEFT needed. Saved in {report['dtype']}.", "",
        f"- Base model: `{src.base_name}`" + (f" (adapter trained on `{src.trained_base}`)" if src.base_overridden else ""),
        f"- Adapter: `{run_name}` (LoRA r {report['lora']['r']}, alpha {report['lora']['alpha']}"
        + (", rsLoRA" if report["lora"]["rslora"] else "") + (", DoRA" if report["lora"]["dora"] else "") + ")",
    ]
    if dataset:
        lines.append(f"- Dataset: `{dataset}`" + (f" (fingerprint {ds.get('fingerprint')}, {ds.get('train_rows')} train / "
                                                  f"{ds.get('eval_rows')} eval rows)" if ds.get("fingerprint") else ""))
    if m.get("preset"):
        lines.append(f"- Preset: `{m['preset']}`")
    lines += [f"- Chat template: ChatML (`chat_template.jinja`); answers end with `{END_OF_TURN}`, which "
              "`generation_config.json` lists as an eos token.", f"- Merge: {verified}.", ""]
    if rows:
        lines += ["| metric | value |", "| --- | --- |", rows, ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)",
              "```", "", "or `vllm serve PATH`, or `rustcoder serve`.", ""]
    return "\n".join(lines)


def untie_needed(tie: bool, plan: MergePlan, tied: tuple[str, str]) -> bool:
    return tie and bool(plan.touched & set(tied))


def merge_streaming(src: Source, plan: MergePlan, out: Path, dtype: str, untie: bool, tied: tuple[str, str],
                     log: Callable) -> None:
    """Shard by shard, tensor by tensor: W' = W + scale * B @ A in float32, cast to dtype."""
    if plan.unsupported:
        raise RustcoderError("--streaming cannot merge this adapter: " + "; ".join(plan.unsupported)
                             + ". Merge it without --streaming (in memory, with PEFT).")
    target_dtype = torch_dtype(dtype)
    lm_key, embed_key = tied
    files = weight_files(src.base_dir)
    all_keys = set(tensor_shapes(src.base_dir))
    missing_new = [k for k in plan.replacements if k not in all_keys and not (untie and k == lm_key)]
    if missing_new:
        raise RustcoderError("--streaming cannot add tensors the base does not have: " + ", ".join(missing_new)
                             + ". Merge it without --streaming.")
    add_lm_head = untie and lm_key not in all_keys
    weight_map: dict[str, str] = {}
    total = 0
    for i, f in enumerate(files, 1):
        header, start, _ = read_safetensors_header(f)
        order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
        entries: list[tuple[str, str, str]] = []  # (output name, source name, dtype code)
        for name in order:
            code = header[name]["dtype"]
            out_code = st_code(target_dtype) if ST_DTYPES[code].startswith(("float", "bfloat")) else code
            entries.append((name, name, out_code))
            if add_lm_head and name == embed_key:
                entries.append((lm_key, name, out_code))
        writer = SafetensorsWriter(out / f.name, [(o, c, header[s]["shape"]) for o, s, c in entries],
                                    {"format": "pt"})
        try:
            with open(f, "rb") as fh:
                for out_name, src_name, code in entries:
                    untouched = out_name not in plan.replacements and out_name not in plan.updates
                    if untouched and code == header[src_name]["dtype"]:  # same bytes: copy without holding them
                        writer.copy(out_name, fh, start + header[src_name]["data_offsets"][0])
                        weight_map[out_name] = f.name
                        continue
                    t = read_tensor(fh, header[src_name], start)
                    if out_name in plan.replacements:
                        t = plan.replacements[out_name]
                    u = plan.updates.get(out_name)
                    if u is not None:
                        t = u.apply(t.float())
                    writer.write(out_name, t.to(torch_dtype(ST_DTYPES[code])))
                    weight_map[out_name] = f.name
                    del t
            writer.close()
        except BaseException:
            writer.fh.close()
            raise
        total += writer.total
        log(f"  shard {i}/{len(files)}: {f.name} ({len(entries)} tensors)")
    if len(files) > 1 or (src.base_dir / "model.safetensors.index.json").is_file():
        atomic_write_json(out / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def _untie(model) -> None:
    """Give lm_head its own copy of the embedding matrix (before an adapter changes one of them)."""
    import torch

    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    out.weight = torch.nn.Parameter(inp.weight.detach().clone())


def merge_in_memory(src: Source, plan: MergePlan, out: Path, dtype: str, untie: bool, tokenizer, verify: bool,
                     log: Callable):
    """Base in float32 + PEFT merge_and_unload, cast to dtype, saved as sharded safetensors."""
    model = load_base_fp32(src.base_dir)
    if not weight_files(src.base_dir):  # a .bin base: its shapes are known only once loaded
        check_fit(plan, {k: (list(v.shape), "") for k, v in model.state_dict().items()}, src.base_name,
                  src.trained_base)
    if untie:
        _untie(model)
    peft_model = load_adapter(model, src.adapter_dir)
    reference = None
    if verify:
        log("computing reference outputs (base + adapter, unmerged, float32)")
        reference = probe_outputs(peft_model, tokenizer, base_logits=True)
    merged = peft_model.merge_and_unload()
    import torch

    with torch.no_grad():  # parameters only: buffers such as rotary frequencies stay float32, as a load computes them
        for p in merged.parameters():
            p.data = p.data.to(torch_dtype(dtype))
    log(f"saving merged weights ({dtype})")
    merged.save_pretrained(out, max_shard_size=MAX_SHARD_SIZE)
    if verify:  # the saved weights, back in float32: the correctly rounded merge's logits (the dtype's floor)
        with torch.no_grad():
            for p in merged.parameters():
                p.data = p.data.float()
        add_rounded_outputs(reference, merged)
    return reference
