"""Peak memory and time of merging a LoRA adapter: PEFT in memory vs rustcoder's streaming merge.

Builds a Qwen2-shaped model of about --size-gb GB (random bf16 weights written straight to
safetensors shards, never held whole) and a LoRA adapter for it (r 16 on every linear layer, random
non-zero B), then merges it in separate processes:

  peft-fp32           base loaded in float32, PeftModel.merge_and_unload(), cast to bf16, save_pretrained
                      (the same arithmetic as rustcoder: must give identical tensors); no verification
  peft-native         base loaded in bf16 (what most merge scripts do); PEFT keeps the adapter in float32
                      and adds its float32 update to the bf16 weight with one rounding, so this should be
                      equal too (the comparison checks it rather than assuming it); no verification
  streaming-noverify  rustcoder.merge.merge(..., streaming=True, verify=False)
  streaming           rustcoder.merge.merge(..., streaming=True): the streaming merge followed by its
                      default, layerwise verification (tensor checks + both models run one decoder
                      layer at a time) -- what `rustcoder merge --streaming` does; on a machine with a
                      CUDA GPU the verification's forwards run there (--verify-device auto)
  streaming-cpuverify the same with --verify-device cpu (only with --compare-cpu-verify: on a GPU machine,
                      the CPU verification side by side with the GPU's)
  streaming-fullverify  the streaming merge, then verify_merge(mode="full"): whole models in float32,
                      which is what --streaming verification did before it became layerwise

Each worker reports its own peak RSS (VmHWM from /proc/self/status, the kernel's high-water mark of
its resident memory), and the verifying workers the high-water mark reached when the merge was done
and verification began; the parent times them. The streaming output is then compared tensor for
tensor with both PEFT outputs.

    python benchmarks/merge_memory.py --size-gb 2.5
    python benchmarks/merge_memory.py --size-gb 0.3 --skip peft-native --skip streaming-fullverify  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKERS = ("imports", "peft-fp32", "peft-native", "streaming-noverify", "streaming", "streaming-cpuverify",
           "streaming-fullverify")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---- building the inputs ------------------------------------------------------------------------

def qwen_config(size_gb: float, shape: str | None = None):
    """A Qwen2.5-1.5B-shaped config (hidden 1536, 12 heads, 2 kv heads, vocab 151936) with as many
    layers as fit in size_gb of bf16 weights; with shape, that real Qwen shape whole (rustcoder.tiny.QWEN_SHAPES)."""
    from transformers import Qwen2Config

    if shape:
        from rustcoder.tiny import QWEN_SHAPES

        q = QWEN_SHAPES[shape]
        return Qwen2Config(vocab_size=q["vocab_size"], hidden_size=q["hidden_size"], intermediate_size=q["intermediate"],
                           num_hidden_layers=q["layers"], num_attention_heads=q["heads"],
                           num_key_value_heads=q["kv_heads"], max_position_embeddings=4096,
                           tie_word_embeddings=q["tied"], dtype="bfloat16", eos_token_id=151645, pad_token_id=151643,
                           bos_token_id=None)

    hidden, inter, vocab, kv_dim = 1536, 8960, 151936, 256
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter + hidden + 2 * kv_dim + 2 * hidden
    embed = vocab * hidden
    layers = max(1, round((size_gb * 1e9 / 2 - embed) / per_layer))
    return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=True, dtype="bfloat16", eos_token_id=151645, pad_token_id=151643,
                       bos_token_id=None)


def _param_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = [(n, tuple(p.shape)) for n, p in model.named_parameters()]  # tied lm_head appears once
    return names


def build_base(out: Path, size_gb: float, shard_mb: int = 500, seed: int = 0, shape: str | None = None) -> Path:
    """Write a random Qwen2-shaped bf16 checkpoint of about size_gb, shard by shard."""
    import torch
    from safetensors.torch import save_file

    config = qwen_config(size_gb, shape)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shapes = _param_shapes(config)
    shards: list[dict] = [{}]
    sizes = [0]
    for name, shape in shapes:
        nbytes = 2 * int(torch.tensor(shape).prod())
        if sizes[-1] and sizes[-1] + nbytes > shard_mb * 1e6:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = shape
        sizes[-1] += nbytes
    weight_map = {}
    for i, group in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in group.items():
            if name.endswith("norm.weight"):
                t = torch.ones(shape)
            else:
                t = torch.randn(shape, generator=gen) * 0.02
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = fname
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": False}))
    return out


def build_adapter(out: Path, base: Path, r: int = 16, alpha: int = 32, seed: int = 1) -> Path:
    """A LoRA adapter (PEFT's file layout) on every linear layer of the base, with random non-zero B."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from rustcoder.modeling import load_tokenizer
    from rustcoder.tiny import tiny_model_dir

    config = json.loads((base / "config.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in _param_shapes(qwen_config_from(config)):
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in TARGETS:
            out_f, in_f = shape
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, in_f, generator=gen) / in_f ** 0.5
            tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_f, r, generator=gen) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TARGETS), task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(out)
    tok, _ = load_tokenizer(str(tiny_model_dir("tiny-qwen2")), model_type="qwen2")  # ChatML tokens + template
    tok.save_pretrained(out)
    return out


def qwen_config_from(config: dict):
    from transformers import Qwen2Config

    return Qwen2Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type",
                                                                          "transformers_version")})


# ---- workers (each in its own process) ----------------------------------------------------------

def run_worker(kind: str, base: Path, adapter: Path, out: Path) -> dict:
    t0 = time.time()
    if kind == "imports":
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    elif kind in ("peft-fp32", "peft-native"):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dtype = torch.float32 if kind == "peft-fp32" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.to(torch.bfloat16)
        model.save_pretrained(out, max_shard_size="500MB")
    elif kind == "streaming-noverify":
        from rustcoder.merge import merge

        merge(adapter, output_dir=out, streaming=True, verify=False, log=lambda *_: None)
    elif kind in ("streaming", "streaming-cpuverify", "streaming-fullverify"):
        from rustcoder.merge import merge, verify_merge

        marks = {}

        def log(msg, *_):  # the merge logs when verification starts: note the high-water mark there
            if "merge_peak_rss_mb" not in marks and (msg.startswith("checking every merged tensor")
                                                     or msg.startswith("computing reference")):
                marks["merge_peak_rss_mb"], marks["merge_s"] = peak_rss_mb(), time.time() - t0

        if kind != "streaming-fullverify":
            report = merge(adapter, output_dir=out, streaming=True, max_effect_lost=1.0, log=log,
                           verify_device="cpu" if kind == "streaming-cpuverify" else "auto").report["verification"]
        else:
            merge(adapter, output_dir=out, streaming=True, verify=False, log=lambda *_: None)
            marks["merge_peak_rss_mb"], marks["merge_s"] = peak_rss_mb(), time.time() - t0
            report = verify_merge(out, adapter_base(adapter), adapter, mode="full", max_effect_lost=1.0,
                                  log=lambda *_: None)
        logits = report["checks"]["logits"]
        extra = {"verification": {"mode": report["mode"], "device": report.get("device", "cpu"),
                                  "passed": report["passed"],
                                  "max_abs_diff": logits["max_abs_diff"], "tolerance": logits["tolerance"],
                                  "exact": report.get("exact"), "dtype_floor": report.get("dtype_floor"),
                                  "effect_kept": report.get("effect_kept"), "rounded_diff": logits["rounded_diff"],
                                  "adapter_effect": logits["adapter_effect"], "positions": logits["positions"],
                                  "greedy_identical": report["checks"]["greedy"]["identical"],
                                  "greedy_tokens": report.get("greedy_tokens"), "memory": report.get("memory")},
                 **marks}
        return {"worker": kind, "peak_rss_mb": peak_rss_mb(), "inner_s": time.time() - t0, **extra}
    else:
        raise SystemExit(f"unknown worker {kind}")
    return {"worker": kind, "peak_rss_mb": peak_rss_mb(), "inner_s": time.time() - t0}


def adapter_base(adapter: Path) -> Path:
    return Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the address space (reset by exec); getrusage's
    ru_maxrss survives exec, so a worker started by a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, base: Path, adapter: Path, out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, str(base), str(adapter), str(out)],
                          capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


# ---- comparing outputs --------------------------------------------------------------------------

def compare(a_dir: Path, b_dir: Path) -> dict:
    """Tensor-for-tensor comparison of two model directories (one tensor in memory at a time)."""
    import torch
    from safetensors import safe_open

    from rustcoder.merge import iter_tensors, weight_files

    where = {}
    for f in weight_files(b_dir):
        with safe_open(str(f), "pt") as h:
            where.update({k: f for k in h.keys()})
    names_a, unequal, elements, differing, max_diff = set(), [], 0, 0, 0.0
    for name, ta in iter_tensors(a_dir):
        names_a.add(name)
        if name not in where:
            unequal.append(name)
            continue
        with safe_open(str(where[name]), "pt") as h:
            tb = h.get_tensor(name)
        elements += ta.numel()
        if ta.dtype != tb.dtype or ta.shape != tb.shape:
            unequal.append(name)
            continue
        if not torch.equal(ta, tb):
            unequal.append(name)
            d = (ta.float() - tb.float()).abs()
            differing += int((d > 0).sum())
            max_diff = max(max_diff, float(d.max()))
    missing = sorted(set(where) - names_a)
    return {"tensors": len(names_a), "unequal_tensors": len(unequal), "missing_in_first": missing,
            "differing_elements": differing, "elements": elements, "max_abs_diff": max_diff,
            "equal": not unequal and not missing}


# ---- main ---------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=2.5, help="bf16 size of the synthetic base model")
    p.add_argument("--shard-mb", type=int, default=500, help="base shard size")
    p.add_argument("--shape", choices=["0.5b", "1.5b", "7b"], default=None,
                   help="build this real Qwen shape whole instead of --size-gb (7b: 15 GB bf16)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--workdir", default=None, help="where to build (default: a fresh temp dir, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--skip", action="append", default=[], choices=WORKERS, help="skip a worker")
    p.add_argument("--compare-cpu-verify", action="store_true",
                   help="also run streaming-cpuverify (the verification on the CPU, to compare with a GPU's)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results to this file")
    p.add_argument("--worker", nargs=4, metavar=("KIND", "BASE", "ADAPTER", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, base, adapter, out = args.worker
        print(json.dumps(run_worker(kind, Path(base), Path(adapter), Path(out))))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rc-merge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        base = build_base(work / "base", args.size_gb, args.shard_mb, shape=args.shape)
        adapter = build_adapter(work / "adapter", base, r=args.rank)
        base_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        n_shards = len(list(base.glob("*.safetensors")))
        largest = max(f.stat().st_size for f in base.glob("*.safetensors"))
        print(f"base: {base_bytes / 1e9:.2f} GB bf16 in {n_shards} shards (largest {largest / 1e6:.0f} MB), "
              f"{qwen_config_from(json.loads((base / 'config.json').read_text())).num_hidden_layers} layers; "
              f"adapter r {args.rank} on {len(TARGETS)} modules/layer "
              f"({(adapter / 'adapter_model.safetensors').stat().st_size / 1e6:.0f} MB); built in "
              f"{time.time() - t0:.0f} s")
        results = {}
        for kind in WORKERS:
            if kind in args.skip or (kind == "streaming-cpuverify" and not args.compare_cpu_verify):
                continue
            out = work / f"out-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            r = measure(kind, base, adapter, out)
            results[kind] = r
            line = f"  {kind:<20} peak RSS {r['peak_rss_mb']:8.0f} MB   wall {r['wall_s']:6.1f} s"
            if "merge_peak_rss_mb" in r:
                v = r["verification"]
                line += (f"   (merge done at {r['merge_peak_rss_mb']:.0f} MB / {r['merge_s']:.0f} s; {v['mode']} "
                         f"verification on {v['device']}, "
                         f"{'passed' if v['passed'] else 'FAILED'} in {r['inner_s'] - r['merge_s']:.0f} s: exact "
                         f"{v['exact']}, logits max diff "
                         f"{v['max_abs_diff']:.2e} vs dtype floor {v['dtype_floor']:.2e}, |merged - rounded merge| "
                         f"{v['rounded_diff']:.1e} (tolerance {v['tolerance']:.1e}), effect kept "
                         f"{v['effect_kept']:.1%}, greedy {v['greedy_identical']}/4 identical over "
                         f"{v['greedy_tokens']} tokens)")
            print(line)
        checks = {}
        ours = next((k for k in ("streaming", "streaming-noverify") if k in results), None)
        if ours:
            for other in ("peft-fp32", "peft-native"):
                if other in results:
                    checks[other] = compare(work / f"out-{ours}", work / f"out-{other}")
        s = results.get(ours) if ours else None
        print("\nsummary")
        for other in ("peft-fp32", "peft-native"):
            if s and other in results:
                o, c = results[other], checks[other]
                print(f"  {other} / {ours}: peak RSS {o['peak_rss_mb'] / s['peak_rss_mb']:.1f}x "
                      f"({o['peak_rss_mb']:.0f} vs {s['peak_rss_mb']:.0f} MB), time {o['wall_s'] / s['wall_s']:.2f}x "
                      f"({o['wall_s']:.0f} vs {s['wall_s']:.0f} s)")
                if c["equal"]:
                    print(f"    outputs equal tensor for tensor ({c['tensors']} tensors)")
                else:
                    print(f"    outputs differ: {c['unequal_tensors']} of {c['tensors']} tensors, "
                          f"{c['differing_elements']} of {c['elements']} elements "
                          f"({c['differing_elements'] / max(1, c['elements']):.2%}), max |diff| {c['max_abs_diff']:.3g}")
        if "imports" in results:
            floor = results["imports"]["peak_rss_mb"]
            for kind in ("streaming-noverify", "streaming", "streaming-fullverify"):
                if kind in results:
                    print(f"  {kind} above the import floor ({floor:.0f} MB for torch + transformers + peft): "
                          f"{results[kind]['peak_rss_mb'] - floor:.0f} MB; largest base shard {largest / 1e6:.0f} MB")
        if "streaming" in results and "streaming-cpuverify" in results:
            g, c = results["streaming"], results["streaming-cpuverify"]
            gv, cv = g["inner_s"] - g["merge_s"], c["inner_s"] - c["merge_s"]
            print(f"  verification on {g['verification']['device']} vs cpu: {gv:.0f} vs {cv:.0f} s ({cv / gv:.1f}x); "
                  f"logits max diff {g['verification']['max_abs_diff']:.3e} vs {c['verification']['max_abs_diff']:.3e}")
        mem = (results.get("streaming") or {}).get("verification", {}).get("memory")
        if mem and "device_peak_bytes" in mem:
            print(f"  layerwise verification on the GPU: GPU peak {mem['device_peak_bytes'] / 1e6:.0f} MB "
                  f"(largest layer in float32 {mem['largest_layer_fp32_bytes'] / 1e6:.0f} MB, embeddings "
                  f"{mem['embedding_bytes'] / 1e6:.0f} MB); host read buffers at most "
                  f"{mem['forward_peak_bytes'] / 1e6:.0f} MB")
        elif mem:
            print(f"  layerwise verification held at most {mem['forward_peak_bytes'] / 1e6:.0f} MB of weights in the "
                  f"forward ({mem['max_layers_at_once']} layer at a time; largest layer in float32 "
                  f"{mem['largest_layer_fp32_bytes'] / 1e6:.0f} MB, embeddings {mem['embedding_bytes'] / 1e6:.0f} MB) "
                  f"and {mem['tensor_checks_peak_bytes'] / 1e6:.0f} MB in the tensor checks")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"size_gb": base_bytes / 1e9, "shards": n_shards,
                                                       "results": results, "comparisons": checks}, indent=2))
        if "peft-fp32" in checks and not checks["peft-fp32"]["equal"]:
            raise SystemExit("streaming output differs from the PEFT float32 merge")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
