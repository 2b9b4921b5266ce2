"""`rustcoder merge`: merged == base + adapter, streaming == in memory, refusals, atomicity, no-op re-merge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rustcoder import artifacts
from rustcoder.cli import main
from rustcoder.config import resolve_config
from rustcoder.errors import RustcoderError, UsageError
from rustcoder.merge import REPORT, iter_tensors, merge, newest_merged, probe_messages, verify_merge, weight_files

QUIET = dict(log=lambda *_: None)


# ---- fixtures -----------------------------------------------------------------------------------

def _copy_run(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "runs" / run.name
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints", "merged", "eval"))
    return dest


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy of the trained run (tests may break it)."""
    return _copy_run(trained_run[1], tmp_path)


@pytest.fixture(scope="session")
def merged_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the trained run, merged once in memory with verification (tests only read it)."""
    run = _copy_run(trained_run[1], tmp_path_factory.mktemp("merged"))
    merge(run, **QUIET)
    return run


@pytest.fixture(scope="session")
def reference(merged_run, tiny_qwen2):
    """Probe outputs of base + adapter (unmerged), computed once."""
    from transformers import AutoTokenizer

    from rustcoder.merge import reference_outputs

    adapter = merged_run / "adapter"
    return reference_outputs(tiny_qwen2, adapter, AutoTokenizer.from_pretrained(adapter))


def _copy_model(src: Path, dest: Path, dtype=None, shard: str | None = None) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype or torch.float32)
    model.save_pretrained(dest, **({"max_shard_size": shard} if shard else {}))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "generation_config")):
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture(scope="session")
def sharded_base(tiny_qwen2, tmp_path_factory) -> Path:
    """tiny-qwen2 saved in several safetensors shards."""
    base = _copy_model(tiny_qwen2, tmp_path_factory.mktemp("sharded") / "base", shard="50KB")
    assert len(weight_files(base)) > 3
    return base


def _make_adapter(base: Path, out: Path, seed: int = 0, model_type: str = "qwen2", b_std: float = 0.1, **lora) -> Path:
    """A PEFT adapter with random non-zero updates and rustcoder's tokenizer/chat template beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rustcoder.modeling import load_tokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(**lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:  # PEFT starts an embedding's A at zero
                p.normal_(0, b_std)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.02)
            elif "magnitude" in name:
                p.mul_(1.2)
    model.save_pretrained(out)
    tok, _ = load_tokenizer(str(base), model_type=model_type)
    tok.save_pretrained(out)
    return out


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    return dict(iter_tensors(model_dir))


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".merging-" in p.name or ".replaced-" in p.name]


# ---- merged == base + adapter -------------------------------------------------------------------

@pytest.mark.slow
def test_cli_merges_newest_run_into_a_model_equal_to_base_plus_adapter(trained_run, tiny_qwen2, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run = _copy_run(trained_run[1], tmp_path)
    r = CliRunner().invoke(main, ["merge", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert f"merging the newest finished run: {run}" in r.output
    assert "verification: passed" in r.output
    merged_dir = run / "merged"
    assert merged_dir.is_dir() and not _leftovers(run)

    # a plain transformers checkpoint: no PEFT wrapper, no LoRA modules or tensors
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert type(merged).__name__ == "Qwen2ForCausalLM"
    assert not [n for n, _ in merged.named_modules() if "lora" in n or "base_layer" in n]
    assert not [k for k in _tensors(merged_dir) if "lora" in k]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32),
                                          str(run / "adapter")).eval()

    tok = AutoTokenizer.from_pretrained(merged_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    greedy = GenerationConfig(do_sample=False, max_new_tokens=12, eos_token_id=im_end, pad_token_id=tok.pad_token_id)
    for messages in probe_messages():
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = ids["input_ids"]
        with torch.no_grad():
            a, b = merged(ids).logits, reference(ids).logits
            with reference.disable_adapter():
                plain = reference(ids).logits
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
            assert (b - plain).abs().max() > 1e-2  # the adapter matters, so equality above means something
            ga = merged.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy)
            gb = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=greedy)
        assert ga.tolist() == gb.tolist()

    # stops at the end of its turn; carries the run's chat template in both places
    gen = json.loads((merged_dir / "generation_config.json").read_text())
    assert im_end in gen["eos_token_id"]
    template = (merged_dir / "chat_template.jinja").read_text()
    assert template == (run / "adapter" / "chat_template.jinja").read_text()
    assert json.loads((merged_dir / "tokenizer_config.json").read_text())["chat_template"] == template
    assert tok.eos_token == "<|im_end|>"

    report = json.loads((merged_dir / REPORT).read_text())
    assert report["verification"]["passed"] is True
    logits = report["verification"]["checks"]["logits"]
    assert report["verification"]["exact"] is True and report["dtype"] == "float32"
    assert logits["rounded_diff"] <= logits["tolerance"] < 1e-3 and logits["max_abs_diff"] < 1e-4
    assert logits["adapter_effect"] > 100 * logits["max_abs_diff"]  # the adapter matters: equality means something
    assert report["verification"]["effect_kept"] > 0.9999  # float32 keeps the whole effect
    assert report["verification"]["checks"]["greedy"]["identical"] == len(probe_messages())
    card = (merged_dir / "README.md").read_text()
    manifest = artifacts.read_json(run / "manifest.json")
    for needle in ("tiny-qwen2", "rust-run", manifest["dataset"]["source"], "eval_loss"):
        assert needle in card, needle
    assert manifest["merged_dir"] == str(merged_dir)
    assert newest_merged(tmp_path / "runs") == merged_dir.resolve()


@pytest.mark.slow
def test_remerging_the_same_adapter_is_a_noop(merged_run):
    weights = merged_run / "merged" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (merged_run / "merged" / REPORT).read_text())
    r = CliRunner().invoke(main, ["merge", str(merged_run)])
    assert r.exit_code == 0, r.output
    assert "nothing to do" in r.output
    assert (weights.stat().st_mtime_ns, (merged_run / "merged" / REPORT).read_text()) == before


@pytest.mark.slow
def test_noverify_merge_is_verified_by_a_later_plain_merge(run):
    result = merge(run, verify=False, **QUIET)
    assert result.verified is None
    again = merge(run, **QUIET)
    assert again.already_merged and again.verified is True
    assert json.loads((run / "merged" / REPORT).read_text())["verification"]["passed"] is True


# ---- streaming == in memory ---------------------------------------------------------------------

ADAPTERS = {
    "all-linear": dict(r=8, lora_alpha=16, target_modules="all-linear"),
    "rslora": dict(r=8, lora_alpha=16, target_modules=["q_proj", "o_proj"], use_rslora=True),
    "rank-alpha-patterns": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                rank_pattern={"v_proj": 4}, alpha_pattern={"down_proj": 5}),
    "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], use_dora=True),
    "modules-to-save-lm-head": dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "lora-on-tied-lm-head": dict(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]),
    "lora-on-tied-embed": dict(r=4, lora_alpha=8, target_modules=["k_proj", "embed_tokens"]),
}
TIED = {"modules-to-save-lm-head", "lora-on-tied-lm-head", "lora-on-tied-embed"}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_streaming_merge_equals_in_memory_merge_tensor_for_tensor(kind, sharded_base, tmp_path):
    adapter = _make_adapter(sharded_base, tmp_path / "adapter", **ADAPTERS[kind])
    in_memory = merge(adapter, output_dir=tmp_path / "in-memory", **QUIET)
    streamed = merge(adapter, output_dir=tmp_path / "streamed", streaming=True, **QUIET)
    for result in (in_memory, streamed):
        assert result.verified is True, result.report["verification"]
    # the streaming merge was verified layer by layer, the in-memory one with whole models: same numbers
    full, layerwise = in_memory.report["verification"], streamed.report["verification"]
    assert (full["mode"], layerwise["mode"]) == ("full", "layerwise")
    assert abs(full["checks"]["logits"]["max_abs_diff"] - layerwise["checks"]["logits"]["max_abs_diff"]) < 1e-5
    assert layerwise["checks"]["logits"]["adapter_effect"] == pytest.approx(full["checks"]["logits"]["adapter_effect"],
                                                                            abs=1e-5)
    assert layerwise["checks"]["greedy"]["identical"] == len(probe_messages())
    assert layerwise["checks"]["exact"]["lora_tensors"] > 0 and layerwise["memory"]["max_layers_at_once"] == 1
    for v in (full, layerwise):  # both layers ran on both paths, bit for bit
        assert v["exact"] is True and v["checks"]["exact"]["tie_elements"] == 0
    assert layerwise["effect_kept"] == pytest.approx(full["effect_kept"], abs=1e-6)
    a, b = _tensors(tmp_path / "in-memory"), _tensors(tmp_path / "streamed")
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal
    base = _tensors(sharded_base)
    changed = [k for k in base if k in a and not torch.equal(a[k], base[k])]
    assert changed  # the adapter really changed weights
    assert len(weight_files(tmp_path / "streamed")) == len(weight_files(sharded_base)) > 3
    cfg_a = json.loads((tmp_path / "in-memory" / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "streamed" / "config.json").read_text())
    assert cfg_a == cfg_b
    if kind in TIED:  # the adapter changes one of a tied pair: saved untied, with lm_head present
        assert cfg_b["tie_word_embeddings"] is False and "lm_head.weight" in b
        assert not torch.equal(b["lm_head.weight"], b["model.embed_tokens.weight"])
    else:
        assert cfg_b["tie_word_embeddings"] is True and "lm_head.weight" not in b


def test_merging_into_a_tied_lm_head_without_untying_is_caught_by_verification(sharded_base, tmp_path,
                                                                                 monkeypatch):
    """The classic collapse: a LoRA on a tied lm_head merged into the shared matrix also changes embed_tokens."""
    import rustcoder.merge.api as api

    adapter = _make_adapter(sharded_base, tmp_path / "adapter", **ADAPTERS["lora-on-tied-lm-head"])
    monkeypatch.setattr(api, "untie_needed", lambda *a: False)
    with pytest.raises(RustcoderError, match="failed verification") as err:
        merge(adapter, output_dir=tmp_path / "merged", **QUIET)
    assert "exact:" in str(err.value) and "model.embed_tokens.weight differs from the base" in str(err.value)
    assert "not rounding" in str(err.value)  # a bug, said as one
    assert not (tmp_path / "merged").exists() and not _leftovers(tmp_path)


def test_bf16_base_is_merged_in_fp32_and_saved_in_bf16(sharded_base, tmp_path):
    base = _copy_model(sharded_base, tmp_path / "base-bf16", dtype=torch.bfloat16, shard="100KB")
    adapter = _make_adapter(base, tmp_path / "adapter", r=8, lora_alpha=16, target_modules="all-linear")
    result = merge(adapter, output_dir=tmp_path / "merged", streaming=True, **QUIET)
    assert result.verified is True
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    merged = _tensors(tmp_path / "merged")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    v = result.report["verification"]
    logits = v["checks"]["logits"]
    assert v["mode"] == "layerwise" and v["exact"] is True and v["checks"]["exact"]["tie_elements"] == 0
    assert logits["max_abs_diff"] > 0  # bf16 rounding shows...
    assert logits["max_abs_diff"] == pytest.approx(logits["dtype_floor"], rel=1e-3)  # ...and is exactly the floor
    assert logits["rounded_diff"] <= logits["tolerance"] and 0.9 < v["effect_kept"] < 1
    full = verify_merge(tmp_path / "merged", base, adapter, mode="full", **QUIET)
    assert full["passed"] and abs(full["checks"]["logits"]["max_abs_diff"] - logits["max_abs_diff"]) < 1e-5
    assert full["effect_kept"] == pytest.approx(v["effect_kept"], abs=1e-4)
    # float32 arithmetic then one rounding: W' = bf16(W + scale * B @ A), not bf16 additions
    from safetensors.torch import load_file

    lora = load_file(str(adapter / "adapter_model.safetensors"))
    key = "model.layers.0.self_attn.q_proj"
    A = lora[f"base_model.model.{key}.lora_A.weight"]
    B = lora[f"base_model.model.{key}.lora_B.weight"]
    W = _tensors(base)[f"{key}.weight"]
    expected = (W.float() + (B @ A) * (16 / 8)).to(torch.bfloat16)
    assert torch.equal(merged[f"{key}.weight"], expected)


def test_qwen3_adapter_merges_with_its_thinking_off_template(tiny_qwen3, tmp_path):
    adapter = _make_adapter(tiny_qwen3, tmp_path / "adapter", model_type="qwen3", r=8, lora_alpha=16,
                            target_modules="all-linear")
    result = merge(adapter, streaming=True, **QUIET)
    assert result.verified is True
    assert result.merged_dir == (tmp_path / "adapter-merged").resolve()
    assert json.loads((result.merged_dir / "config.json").read_text())["model_type"] == "qwen3"
    assert "<think>" in (result.merged_dir / "chat_template.jinja").read_text()


# ---- bf16: rounding is not a bug, a wrong merge is ---------------------------------------------------

@pytest.fixture(scope="session")
def short_run_bf16(sharded_base, tmp_path_factory) -> tuple[Path, Path]:
    """(bf16 base, adapter) like a few steps at a small learning rate: LoRA B of 1e-5, so most of the update
    W + scale * B @ A lies below bf16's resolution (half an ulp at |W| ~ 0.02 is 6e-5)."""
    tmp = tmp_path_factory.mktemp("short-bf16")
    base = _copy_model(sharded_base, tmp / "base-bf16", dtype=torch.bfloat16, shard="100KB")
    adapter = _make_adapter(base, tmp / "adapter", b_std=1e-5, r=16, lora_alpha=32, target_modules="all-linear")
    return base, adapter


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["in-memory", "streaming"])
def test_short_run_bf16_merge_is_refused_for_its_dtype_and_float32_passes_both_layers(short_run_bf16, tmp_path,
                                                                                      streaming):
    _, adapter = short_run_bf16
    flags = ["--streaming"] if streaming else []
    r = CliRunner().invoke(main, ["merge", str(adapter), "--output-dir", str(tmp_path / "bf16"), *flags])
    assert r.exit_code == 1, r.output
    out = " ".join(r.output.split())
    assert "in bfloat16 it keeps only" in out and "This is not a bug" in out and "is a bug" not in out
    assert f"rustcoder merge {adapter} --dtype float32" in out and f"rustcoder serve --adapter {adapter}" in out
    assert "Traceback" not in r.output and not (tmp_path / "bf16").exists() and not _leftovers(tmp_path)

    r = CliRunner().invoke(main, ["merge", str(adapter), "--output-dir", str(tmp_path / "fp32"), "--dtype", "float32",
                                  *flags])
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "fp32" / REPORT).read_text())["verification"]
    assert v["passed"] and v["exact"] is True and v["dtype"] == "float32" and v["effect_kept"] > 0.99
    assert v["checks"]["exact"]["changed_share"] > 0.99  # float32 keeps nearly every element of the update
    assert {t.dtype for t in _tensors(tmp_path / "fp32").values()} == {torch.float32}
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"

    # the same merge in bf16 with the limit lifted: exact, and the numbers say what bf16 cost
    r = CliRunner().invoke(main, ["merge", str(adapter), "--output-dir", str(tmp_path / "lifted"),
                                  "--max-effect-lost", "1", *flags])
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "lifted" / REPORT).read_text())["verification"]
    assert v["exact"] is True and v["cause"] is None and v["effect_kept"] < 0.9
    assert v["checks"]["exact"]["changed_share"] < 0.5  # most of the update rounded back to the base weight
    assert v["max_logit_diff"] == pytest.approx(v["dtype_floor"], rel=1e-3)  # the merge sits exactly on the floor


@pytest.mark.slow
def test_a_real_three_step_small_batch_run_on_a_bf16_base_is_refused_for_its_dtype(rows_file, sharded_base, tmp_path):
    """The case from the field: `train --preset small-batch` for 3 steps (lr 2e-5) on a bf16 base, then
    `merge`. Before: 'verified' with a tolerance larger than the adapter's whole effect. Now: exact, and
    refused for the dtype with the fix; --dtype float32 passes both layers."""
    from rustcoder.train import train

    base = _copy_model(sharded_base, tmp_path / "base-bf16", dtype=torch.bfloat16)
    cfg = resolve_config("small-batch", overrides=dict(
        model=str(base), dataset=str(rows_file), num_examples=40, max_steps=3, output_dir=str(tmp_path / "runs"),
        report_to="none", run_name="short"))
    run = train(cfg, progress=False, **QUIET).run_dir
    r = CliRunner().invoke(main, ["merge", str(run)])
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and "This is not a bug" in out and "in bfloat16 it keeps only" in out, r.output
    r = CliRunner().invoke(main, ["merge", str(run), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    v = json.loads((run / "merged" / REPORT).read_text())["verification"]
    assert v["passed"] and v["exact"] is True and v["effect_kept"] > 0.99


def _corrupt_merge(adapter: Path, how: str):
    """Wraps a merge so that its LoRA-targeted tensors are saved wrong: with twice the scale, or unchanged."""
    import dataclasses

    from safetensors.torch import load_file, save_file

    from rustcoder.merge import load_adapter_tensors, plan_merge

    plan = plan_merge(load_adapter_tensors(adapter), json.loads((adapter / "adapter_config.json").read_text()))

    def after(out: Path, base: Path):
        base_t = _tensors(base)
        for shard in weight_files(out):
            tensors = load_file(str(shard))
            for key, t in tensors.items():
                u = plan.updates.get(key)
                if u is None:
                    continue
                w = base_t[key].float()
                wrong = dataclasses.replace(u, scale=2 * u.scale).apply(w) if how == "wrong-scale" else w
                tensors[key] = wrong.to(t.dtype)
            save_file(tensors, str(shard), metadata={"format": "pt"})
    return after


@pytest.mark.parametrize("streaming", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["in-memory", "streaming"])
@pytest.mark.parametrize("how", ["wrong-scale", "adapter-left-out"])
def test_a_wrong_merge_fails_exactness_however_small_the_adapters_effect(short_run_bf16, tmp_path, monkeypatch,
                                                                         streaming, how):
    import rustcoder.merge.api as api

    base, adapter = short_run_bf16
    corrupt = _corrupt_merge(adapter, how)
    name = "merge_streaming" if streaming else "merge_in_memory"
    original = getattr(api, name)

    def broken(src, plan, out, *args, **kwargs):
        result = original(src, plan, out, *args, **kwargs)
        corrupt(out, base)
        return result
    monkeypatch.setattr(api, name, broken)
    with pytest.raises(RustcoderError) as err:  # even with the effect limit lifted: exactness alone refuses it
        merge(adapter, output_dir=tmp_path / "merged", streaming=streaming, max_effect_lost=1.0, **QUIET)
    msg = str(err.value)
    assert "exact: " in msg and "not the exact merge" in msg and "not rounding" in msg
    assert "This is not a bug" not in msg
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("streaming", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["in-memory", "streaming"])
def test_a_wrong_scale_shared_by_the_merge_and_its_recomputation_is_caught_against_peft(short_run_bf16, tmp_path,
                                                                                        monkeypatch, streaming):
    """The merge, the exactness recomputation and the layerwise reference all read the plan's scales: a bug
    there (alpha / sqrt(r) for plain LoRA, say) is caught by comparing them with PEFT's own."""
    import dataclasses

    import rustcoder.merge.api as api
    import rustcoder.merge.verify as verify

    _, adapter = short_run_bf16
    original = api.plan_merge

    def wrong_scales(tensors, config):
        plan = original(tensors, config)
        plan.updates = {k: dataclasses.replace(u, scale=u.scale / 2) for k, u in plan.updates.items()}
        return plan
    monkeypatch.setattr(api, "plan_merge", wrong_scales)  # the merge and its verification both plan
    monkeypatch.setattr(verify, "plan_merge", wrong_scales)
    with pytest.raises(RustcoderError) as err:
        merge(adapter, output_dir=tmp_path / "merged", streaming=streaming, dtype="float32", **QUIET)
    msg = str(err.value)
    assert "the merge scales B @ A by 1, PEFT by 2" in msg and "not rounding" in msg


# ---- verification fails when it should ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage, failing", [
    ("scale", "logits"), ("nan", "finite"), ("template", "chat_template"), ("eos", "eos"),
])
def test_verification_detects_a_broken_merged_model(merged_run, reference, tiny_qwen2, tmp_path, damage, failing):
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(merged_run / "merged", broken)
    if damage in ("scale", "nan"):
        tensors = _tensors(broken)
        key = "model.layers.0.self_attn.q_proj.weight"
        tensors[key] = tensors[key] * 1.5 if damage == "scale" else tensors[key].index_fill(0, torch.tensor([0]),
                                                                                             float("nan"))
        save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    elif damage == "template":
        (broken / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
        cfg = json.loads((broken / "tokenizer_config.json").read_text())
        cfg["chat_template"] = (broken / "chat_template.jinja").read_text()
        (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    else:
        gen = json.loads((broken / "generation_config.json").read_text())
        gen["eos_token_id"] = [0]
        (broken / "generation_config.json").write_text(json.dumps(gen))
    intact = json.loads((merged_run / "merged" / REPORT).read_text())["verification"]
    assert intact["passed"] is True and all(c["passed"] for c in intact["checks"].values())
    result = verify_merge(broken, tiny_qwen2, merged_run / "adapter", reference=reference, **QUIET)
    assert result["passed"] is False
    assert result["checks"][failing]["passed"] is False


# ---- layerwise verification (streaming merges) ---------------------------------------------------

def _with_lm_head(src: Path, dest: Path, seed: int = 1) -> Path:
    """src re-saved untied, with an lm_head of its own (random), like Qwen2.5-7B/14B."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    model.save_pretrained(dest)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "generation_config")):
            shutil.copy(f, dest / f.name)
    assert "lm_head.weight" in _tensors(dest)
    return dest


def _reshaped(src: Path, dest: Path, seed: int = 0, **config) -> Path:
    """A random model with src's config changed by config (and src's tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(src)
    for k, v in config.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dest, max_shard_size="200KB")
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "generation_config")):
            shutil.copy(f, dest / f.name)
    return dest


@pytest.mark.parametrize("arch, variant", [("qwen2", "tied"), ("qwen2", "untied"), ("qwen3", "tied"),
                                           ("qwen3", "untied"), ("qwen2", "sliding-window")])
def test_layerwise_forward_equals_the_transformers_forward(arch, variant, tiny_qwen2, tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rustcoder.merge import layerwise_probe_outputs
    from rustcoder.merge.tensors import Meter

    src = tiny_qwen2 if arch == "qwen2" else tiny_qwen3
    if variant == "untied":
        model_dir = _with_lm_head(src, tmp_path / "model")
    elif variant == "sliding-window":  # every layer attends to the last 8 positions only
        model_dir = _reshaped(src, tmp_path / "model", use_sliding_window=True, sliding_window=8, max_window_layers=0,
                              layer_types=["sliding_attention", "sliding_attention"])
    else:
        model_dir = src
    tok = AutoTokenizer.from_pretrained(model_dir)
    meter = Meter()
    got = layerwise_probe_outputs(model_dir, tok, greedy_tokens=6, meter=meter)
    assert meter.max_layers == 1 and meter.bytes == 0  # one layer at a time, and nothing left behind
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (variant != "untied")
    if variant == "sliding-window":
        assert set(model.config.layer_types) == {"sliding_attention"}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    greedy = GenerationConfig(do_sample=False, max_new_tokens=6, eos_token_id=im_end, pad_token_id=tok.pad_token_id)
    for item in got:
        ids = torch.tensor([item["prompt_ids"]])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy)[0, ids.shape[1]:]
            assert item["greedy"] == gen.tolist()
            fed = torch.tensor([item["prompt_ids"] + item["greedy"][:-1]])
            expected = model(fed, use_cache=False).logits[0]
        assert item["logits"].shape == expected.shape
        torch.testing.assert_close(item["logits"], expected, atol=2e-5, rtol=0)


def test_the_reference_pass_reads_an_untouched_untied_embedding_as_stored(tiny_qwen2, tmp_path):
    """The rounded model's input embedding is the stored one when the merge leaves it as stored: rows are looked
    up in it, not in a float32 copy held for the whole pass (2.2 GB on an untied 7B)."""
    from transformers import AutoModelForCausalLM

    from rustcoder.merge.layerwise import _Layerwise
    from rustcoder.merge.plan import MergePlan
    from rustcoder.merge.tensors import Meter

    src = _with_lm_head(tiny_qwen2, tmp_path / "untied32")
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(tmp_path / "untied16")
    for target, copied in (("bfloat16", False), ("float32", True)):  # float32 output: rounding changes it
        lw = _Layerwise(tmp_path / "untied16", Meter(), plan=MergePlan(), round_to=target)
        ids = torch.tensor([[3, 7, 11]])
        rows = lw.embed_ids(ids, "rounded")
        held = lw._rounded_matrices[lw.embed_key]
        assert (held is lw.embed) is (not copied) and lw.embed.dtype == torch.bfloat16
        torch.testing.assert_close(rows, lw.embed[ids].float(), rtol=0, atol=0)
        lw.close()


@pytest.mark.parametrize("margin, passes", [(1e-6, True), (5.0, False)])
def test_logits_are_compared_only_where_both_models_saw_the_same_tokens(margin, passes):
    """After greedy outputs part at a near-tie the two models read different tokens: those positions are
    not compared (they differ by far more than any tolerance, and say nothing about the merge)."""
    from rustcoder.merge.checks import output_checks

    ref_logits = torch.randn(6, 10)  # prompt [1, 2, 3] + greedy [4, 5, 6]
    got_logits = ref_logits.clone()
    got_logits[4:] += 100.0  # positions whose inputs include the diverged token 7
    reference = [{"prompt_ids": [1, 2, 3], "greedy": [4, 5, 6], "margins": [5.0, margin, 5.0], "logits": ref_logits,
                  "rounded_logits": ref_logits.clone(), "effect_sq": torch.ones(6), "effect_max": torch.ones(6),
                  "floor_sq": torch.zeros(6), "floor_max": torch.zeros(6)}]
    got = [{"prompt_ids": [1, 2, 3], "greedy": [4, 7, 8], "margins": [5.0, 5.0, 5.0], "logits": got_logits}]
    checks = output_checks(reference, got, "float32", 3, "test", noise_rtol=1e-5)
    assert checks["logits"]["passed"] is True and checks["logits"]["max_abs_diff"] == 0.0
    assert (checks["logits"]["positions"], checks["logits"]["positions_not_compared"]) == (4, 2)
    assert checks["greedy"]["passed"] is passes
    assert len(checks["greedy"]["near_ties" if passes else "diverged"]) == 1
    got[0]["logits"][3, 0] = float("nan")  # a NaN where the inputs agree is a failure, not max(0.0, nan) == 0.0
    assert output_checks(reference, got, "float32", 3, "test", noise_rtol=1e-5)["logits"]["passed"] is False


@pytest.fixture(scope="session")
def streamed_merge(sharded_base, tmp_path_factory) -> tuple[Path, Path]:
    """(merged dir, adapter dir): an all-linear LoRA streamed into the sharded base without verification."""
    tmp = tmp_path_factory.mktemp("streamed")
    adapter = _make_adapter(sharded_base, tmp / "adapter", **ADAPTERS["all-linear"])
    merge(adapter, output_dir=tmp / "merged", streaming=True, verify=False, **QUIET)
    return tmp / "merged", adapter


def test_layerwise_verification_passes_a_correct_streaming_merge(streamed_merge, sharded_base, monkeypatch):
    import rustcoder.merge.layerwise as layerwise

    merged, adapter = streamed_merge
    intact = verify_merge(merged, sharded_base, adapter, mode="layerwise", **QUIET)
    assert intact["passed"] is True and intact["mode"] == "layerwise" and intact["greedy_tokens"] == 8
    assert all(c["passed"] for c in intact["checks"].values())
    exact = intact["checks"]["exact"]
    assert exact["lora_tensors"] == 14 and exact["identical_tensors"] > 0 and exact["tie_elements"] == 0
    # an architecture the layerwise forward does not know falls back to the full verification, saying so
    monkeypatch.setattr(layerwise, "LAYERWISE_MODEL_TYPES", ("qwen3",))
    lines = []
    fallback = verify_merge(merged, sharded_base, adapter, mode="layerwise", log=lines.append)
    assert fallback["passed"] is True and fallback["mode"] == "full" and fallback["exact"] is True
    assert "model_type 'qwen2'" in fallback["layerwise_unavailable"] and any("full verification" in x for x in lines)
    assert fallback["checks"]["logits"]["max_abs_diff"] == pytest.approx(intact["checks"]["logits"]["max_abs_diff"],
                                                                         abs=1e-5)


def test_layerwise_merged_pass_reads_the_reference_continuation_in_one_pass(streamed_merge, sharded_base, tmp_path):
    """The merged model's layerwise pass teacher-forces the reference's tokens: its greedy output is the one it
    generates itself up to and including the first token where it differs from the reference, with the same
    margins there, at one pass over the layers instead of one per token."""
    from transformers import AutoTokenizer

    from rustcoder.merge import layerwise_probe_outputs
    from rustcoder.merge.checks import common_prefix
    from rustcoder.merge.tensors import Meter

    merged, _ = streamed_merge
    other = tmp_path / "other"  # a different model, so that greedy outputs part somewhere
    shutil.copytree(merged, other)
    _edit_tensor(other, "model.layers.0.mlp.down_proj.weight", lambda t: t * 3.0)
    tok = AutoTokenizer.from_pretrained(merged)
    reference = layerwise_probe_outputs(merged, tok, greedy_tokens=6)
    for r in reference:  # compared against as if it were a reference pass's rounded merge
        r["rounded_logits"] = r["logits"]
    reads = []
    meter = Meter()
    real_alloc = meter.alloc
    meter.alloc = lambda name: reads.append(name) or real_alloc(name)
    forced = layerwise_probe_outputs(other, tok, reference=reference, greedy_tokens=6, meter=meter)
    free = layerwise_probe_outputs(other, tok, greedy_tokens=6)
    layer0 = [n for n in reads if ".layers.0.mlp.down_proj" in n]
    assert len(layer0) == 1  # one pass over the layers
    parted = 0
    for ref, f, g in zip(reference, forced, free):
        k = common_prefix(ref["greedy"], g["greedy"])
        assert common_prefix(ref["greedy"], f["greedy"]) == k and len(f["greedy"]) == len(ref["greedy"])
        upto = min(k + 1, len(g["greedy"]), len(f["greedy"]))
        assert f["greedy"][:upto] == g["greedy"][:upto]
        assert f["margins"][:upto] == pytest.approx(g["margins"][:upto], abs=1e-4)
        assert f["positions"] == len(ref["prompt_ids"]) + len(ref["greedy"]) - 1 and f["not_compared"] == 0
        parted += k < len(ref["greedy"])
    assert parted  # the check saw a difference somewhere


def _edit_tensor(model_dir: Path, key: str, fn) -> None:
    from safetensors.torch import load_file, save_file

    shard = next(f for f in weight_files(model_dir) if key in load_file(str(f)))
    tensors = load_file(str(shard))
    tensors[key] = fn(tensors[key])
    save_file(tensors, str(shard), metadata={"format": "pt"})


@pytest.mark.parametrize("damage, failing", [
    ("scale", {"exact", "logits"}),
    ("nan", {"exact", "finite", "logits"}),
    ("untouched", {"exact"}),  # changed by 1e-5: only the tensor check is sure to see it
])
def test_layerwise_verification_detects_a_damaged_merged_tensor(streamed_merge, sharded_base, tmp_path, damage,
                                                                failing, monkeypatch):
    import rustcoder.merge.verify as verify

    monkeypatch.setattr(verify, "LAYERWISE_GREEDY_TOKENS", 2)  # detection does not need long generations
    merged, adapter = streamed_merge
    broken = tmp_path / "broken"
    shutil.copytree(merged, broken)
    if damage == "scale":
        _edit_tensor(broken, "model.layers.0.self_attn.q_proj.weight", lambda t: t * 1.5)
    elif damage == "nan":
        _edit_tensor(broken, "model.layers.1.mlp.down_proj.weight", lambda t: t.index_fill(0, torch.tensor([3]),
                                                                                            float("nan")))
    else:  # a tensor the adapter does not touch, changed by far less than any logit tolerance
        _edit_tensor(broken, "model.layers.1.input_layernorm.weight", lambda t: t.index_fill(0, torch.tensor([0]),
                                                                                              t[0] + 1e-5))
    result = verify_merge(broken, sharded_base, adapter, mode="layerwise", **QUIET)
    assert result["passed"] is False and result["mode"] == "layerwise"
    failed = {k for k, c in result["checks"].items() if not c["passed"]}
    assert failing <= failed and failed <= failing | {"greedy", "logits"}
    assert result["cause"] == "bug"
    expected_name = {"scale": "q_proj", "nan": "down_proj", "untouched": "input_layernorm"}[damage]
    assert expected_name in result["checks"]["exact"]["detail"]


def test_layerwise_verification_holds_one_layer_at_a_time(tiny_qwen2, tmp_path, monkeypatch):
    """A 16-layer model merged and verified with --streaming: the verifier's file reads are counted."""
    import rustcoder.merge.verify as verify
    from rustcoder.merge.layerwise import weight_sizes

    monkeypatch.setattr(verify, "LAYERWISE_GREEDY_TOKENS", 2)  # each token is a pass over all layers: keep the test quick
    base = _reshaped(tiny_qwen2, tmp_path / "base", num_hidden_layers=16, layer_types=["full_attention"] * 16)
    adapter = _make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules="all-linear")
    r = CliRunner().invoke(main, ["merge", str(adapter), "--streaming", "--output-dir", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    assert "verification: passed (layerwise; exact: yes, logits max diff" in r.output
    report = json.loads((tmp_path / "merged" / REPORT).read_text())["verification"]
    assert report["mode"] == "layerwise" and report["greedy_tokens"] == 2
    mem, sizes = report["memory"], weight_sizes(base)
    assert sizes["layers"] == 16 and mem["largest_layer_fp32_bytes"] == sizes["largest_layer_fp32"]
    layer, embed = sizes["largest_layer_fp32"], sizes["embeddings"]
    assert mem["max_layers_at_once"] == 1  # never two decoder layers' tensors alive together
    # the forward holds the (tied) embedding matrix, one layer and the final norm; the tensor checks one
    # tensor of the merged model and the same tensor of the base (the embedding is the largest)
    assert embed + layer <= mem["forward_peak_bytes"] <= embed + layer + 1024
    assert mem["tensor_checks_peak_bytes"] == 2 * embed
    assert mem["peak_weight_bytes"] < 16 * layer / 4  # a fraction of the model's 16 layers


# ---- refusals -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_refuses_a_base_with_other_shapes_naming_the_mismatch(run, tmp_path):
    from rustcoder.tiny import build_tiny_model

    small = build_tiny_model(tmp_path / "tiny-h32", hidden_size=32)
    r = CliRunner().invoke(main, ["merge", str(run), "--base", str(small)])
    assert r.exit_code == 1, r.output
    assert "does not fit this adapter" in r.output
    assert "model.layers.0.self_attn.q_proj: adapter expects weight (out x in) 64x64" in r.output
    assert "config hidden_size: the adapter's base has 64" in r.output
    assert "Traceback" not in r.output
    assert not (run / "merged").exists()


@pytest.mark.slow
def test_refuses_a_quantized_base(run, tiny_qwen2, tmp_path):
    quantized = tmp_path / "tiny-4bit"
    shutil.copytree(tiny_qwen2, quantized)
    cfg = json.loads((quantized / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (quantized / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["merge", str(run), "--base", str(quantized)])
    assert r.exit_code == 1, r.output
    assert "is quantized (bitsandbytes, 4-bit)" in r.output
    assert "full-precision base with --base" in r.output and "tiny-qwen2" in r.output
    assert not (run / "merged").exists()


@pytest.mark.slow
def test_refuses_an_existing_target_without_force(run, tmp_path):
    target = tmp_path / "somewhere"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, ["merge", str(run), "--output-dir", str(target), "--no-verify"])
    assert r.exit_code == 1 and "already exists" in r.output and "--force" in r.output
    # --force never deletes a directory that is not a model
    r = CliRunner().invoke(main, ["merge", str(run), "--output-dir", str(target), "--force", "--no-verify"])
    assert r.exit_code == 1 and "not a model directory" in r.output
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_force_replaces_a_merge_of_another_base(run, tiny_qwen2, tmp_path):
    merge(run, verify=False, **QUIET)
    bf16 = _copy_model(tiny_qwen2, tmp_path / "tiny-bf16", dtype=torch.bfloat16)
    r = CliRunner().invoke(main, ["merge", str(run), "--base", str(bf16), "--no-verify"])
    assert r.exit_code == 1 and "different adapter or base" in r.output
    r = CliRunner().invoke(main, ["merge", str(run), "--base", str(bf16), "--force"])
    assert r.exit_code == 0, r.output
    report = json.loads((run / "merged" / REPORT).read_text())
    assert report["base"]["name"] == str(bf16) and report["dtype"] == "bfloat16"
    assert report["verification"]["passed"] is True
    assert not _leftovers(run)


@pytest.mark.slow
def test_missing_files_are_all_listed(run):
    (run / "adapter" / "adapter_model.safetensors").unlink()
    (run / "adapter" / "chat_template.jinja").unlink()
    r = CliRunner().invoke(main, ["merge", str(run)])
    assert r.exit_code == 1, r.output
    assert "missing 2 file(s)" in r.output
    assert str(run / "adapter" / "adapter_model.safetensors") in r.output
    assert str(run / "adapter" / "chat_template.jinja") in r.output


def test_missing_base_shard_is_listed(sharded_base, tmp_path):
    adapter = _make_adapter(sharded_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    base = tmp_path / "base"
    shutil.copytree(sharded_base, base)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    gone = weight_files(base)[1]
    gone.unlink()
    r = CliRunner().invoke(main, ["merge", str(adapter), "--streaming"])
    assert r.exit_code == 1, r.output
    assert "is incomplete: missing 1 file(s)" in r.output and str(gone) in r.output


def test_no_run_and_unknown_run_are_usage_errors(tmp_path):
    r = CliRunner().invoke(main, ["merge", "--runs-dir", str(tmp_path / "none")])
    assert r.exit_code == 2 and "no finished training run found" in r.output
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_streaming_refuses_what_it_cannot_merge(sharded_base, tmp_path):
    adapter = _make_adapter(sharded_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"],
                            lora_bias=True)
    r = CliRunner().invoke(main, ["merge", str(adapter), "--streaming", "--no-verify"])
    assert r.exit_code == 1, r.output
    assert "--streaming cannot merge this adapter: lora_bias" in r.output and "without --streaming" in r.output
    assert not (tmp_path / "adapter-merged").exists()
    # the in-memory merge (PEFT) handles it, and verification proves it
    assert merge(adapter, **QUIET).verified is True


# ---- atomicity ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_merge_failing_at_the_end_leaves_no_target_and_no_temp_dir(run, monkeypatch):
    import rustcoder.merge.api as api

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(api, "write_report", boom)
    with pytest.raises(OSError, match="disk full"):
        merge(run, verify=False, **QUIET)
    assert not (run / "merged").exists()
    assert not _leftovers(run)


@pytest.mark.slow
def test_a_killed_merge_leaves_no_target_and_its_temp_dir_is_cleaned_next_time(run):
    script = textwrap.dedent("""
        import os, signal, sys
        import rustcoder.merge.api as api
        api.install = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        api.merge(sys.argv[1], verify=False, log=lambda *_: None)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -9, proc.stderr
    assert not (run / "merged").exists()
    stale = _leftovers(run)
    assert len(stale) == 1 and (run / stale[0] / "model.safetensors").is_file()  # killed after writing weights
    lines = []
    merge(run, verify=False, log=lines.append)
    assert any("half-written" in line for line in lines)
    assert (run / "merged" / REPORT).is_file() and not _leftovers(run)


# ---- hub, serve hand-off, --help ----------------------------------------------------------------

@pytest.mark.slow
def test_push_to_hub_uploads_the_merged_directory(merged_run, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo, **kw):
            calls.append(("create", repo))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = merge(merged_run, push_to_hub="me/rust-merged", **QUIET)
    assert result.pushed_to == "https://huggingface.co/me/rust-merged"
    assert calls[0] == ("create", "me/rust-merged")
    assert calls[1][1] == "me/rust-merged" and {REPORT, "config.json", "README.md"} <= set(calls[1][2])


def test_hub_id_base_is_fetched_as_a_snapshot(sharded_base, tmp_path, monkeypatch):
    import huggingface_hub

    adapter = _make_adapter(sharded_base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    asked = []

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, **kw):
        asked.append((repo_id, allow_patterns))
        return str(sharded_base)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    result = merge(adapter, base="Qwen/Qwen2.5-0.5B-Instruct", streaming=True, **QUIET)
    assert asked and asked[0][0] == "Qwen/Qwen2.5-0.5B-Instruct" and "*.safetensors" in asked[0][1]
    assert result.report["base"]["name"] == "Qwen/Qwen2.5-0.5B-Instruct" and result.verified is True


@pytest.mark.slow
def test_newest_merged_finds_the_latest_merge(merged_run, tmp_path):
    assert newest_merged(merged_run.parent) == (merged_run / "merged").resolve()
    with pytest.raises(UsageError, match="no merged model"):
        newest_merged(tmp_path)


def test_merge_help_imports_no_torch():
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from rustcoder.cli import main
        r = CliRunner().invoke(main, ["merge", "--help"])
        assert r.exit_code == 0 and "--streaming" in r.output and "--no-verify" in r.output, r.output
        heavy = [m for m in ("torch", "transformers", "peft", "safetensors") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---- the merged dtype is what eval and serve load ------------------------------------------------

def test_eval_and_serve_load_a_float32_merge_in_float32_and_a_bf16_one_in_bf16(short_run_bf16, tmp_path,
                                                                              monkeypatch):
    """On a GPU, 'auto' is the dtype the merge wrote (a float32 merge must not be rounded back to bf16 on load);
    vLLM's own 'auto' would run float32 in fp16, so serve and the vLLM backend pass float32 explicitly."""
    from rustcoder import serve as srv
    from rustcoder.modeling import load_model, pick_dtype, saved_dtype

    _, adapter = short_run_bf16
    merge(adapter, output_dir=tmp_path / "fp32", dtype="float32", streaming=True, verify=False, **QUIET)
    merge(adapter, output_dir=tmp_path / "bf16", streaming=True, verify=False, **QUIET)  # verified elsewhere
    assert (saved_dtype(tmp_path / "fp32"), saved_dtype(tmp_path / "bf16")) == ("float32", "bfloat16")
    assert pick_dtype("auto", "float32") == torch.float32  # CPU: always float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert load_model(str(tmp_path / "fp32")).dtype == torch.float32
    assert load_model(str(tmp_path / "bf16")).dtype == torch.bfloat16
    assert pick_dtype("auto", None) == torch.bfloat16 and pick_dtype("float16", "float32") == torch.float16

    def vllm_dtype(model):
        argv, _ = srv.engine_command(srv.build_spec(model, engine="vllm", vllm_python="py", check_engine=False))
        return argv[argv.index("--dtype") + 1] if "--dtype" in argv else None
    assert vllm_dtype(tmp_path / "fp32") == "float32" and vllm_dtype(tmp_path / "bf16") is None
    # a dtype the user gives vLLM itself wins: as a flag, or in its --config file (which vLLM reads before the
    # command line, so a --dtype rustcoder added would silently override it)
    mine = tmp_path / "mine.yaml"
    mine.write_text("dtype: bfloat16\nmax-num-seqs: 8\n")
    for extra in (["--dtype", "bfloat16"], ["--dtype=bfloat16"], ["--config", str(mine)], [f"--config={mine}"]):
        argv, _ = srv.engine_command(srv.build_spec(tmp_path / "fp32", engine="vllm", vllm_python="py",
                                                    check_engine=False, engine_args=extra))
        assert "float32" not in argv and argv[-len(extra):] == extra, extra  # rustcoder added no dtype of its own
    # the shipped starting points leave the dtype to rustcoder
    for shipped in ("vllm-cpu.yaml", "vllm-gpu.yaml"):
        argv, _ = srv.engine_command(srv.build_spec(tmp_path / "fp32", engine="vllm", vllm_python="py",
                                                    check_engine=False,
                                                    engine_args=["--config", str(Path(__file__).resolve().parent.parent / "serve" / shipped)]))
        assert argv[argv.index("--dtype") + 1] == "float32", shipped
