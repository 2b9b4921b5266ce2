"""Step packing: grouping, collation, the dry run's schedule, isolation per attention path, memory decisions."""

from __future__ import annotations

import random

import pytest
import torch

from rustcoder.packing import (IGNORE, StepCollator, StepSampler, collate_forward, forward_cost, group_forwards,
                               process_forwards, schedule)


def _lengths(n, seed=0):
    rng = random.Random(seed)
    return [max(4, int(rng.lognormvariate(4.5, 0.7))) for _ in range(n)]


@pytest.mark.parametrize("layout", ["grouped", "padding-free"])
@pytest.mark.parametrize("budget", [64, 300, 4096])
def test_grouping_keeps_every_example_once_within_the_budget(layout, budget):
    lengths = _lengths(16)
    groups = group_forwards(lengths, layout, budget, batch_size=4)
    assert sorted(i for g in groups for i in g) == list(range(16))
    for g in groups:  # only an example longer than the budget may exceed it, alone
        assert forward_cost([lengths[i] for i in g], layout) <= budget or len(g) == 1
    if budget >= forward_cost(lengths, layout):
        assert len(groups) == 1


@pytest.mark.parametrize("layout", ["grouped", "padding-free"])
def test_evaluation_counts_every_row_once_when_processes_have_different_budgets(layout):
    """The token budget comes from each GPU's free memory, so processes can differ; grouping the whole set with
    one's own budget and taking every world-th forward would count some rows twice and others never."""
    lengths = _lengths(40, seed=3)
    for budgets in ([300, 300], [300, 900], [128, 4096, 700]):
        world = len(budgets)
        seen = [i for rank, budget in enumerate(budgets)
                for g in process_forwards(lengths, rank, world, layout, budget, batch_size=4) for i in g]
        assert sorted(seen) == list(range(40)), budgets
        for rank, budget in enumerate(budgets):
            for g in process_forwards(lengths, rank, world, layout, budget, batch_size=4):
                assert forward_cost([lengths[i] for i in g], layout) <= budget or len(g) == 1


def test_padded_layout_is_the_presets_micro_batches():
    assert group_forwards([5, 9, 3, 7, 2], "padded", 10**6, batch_size=2) == [[0, 1], [2, 3], [4]]


def test_padding_free_collation_resets_positions_and_masks_boundaries():
    feats = [{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]}, {"input_ids": [9, 10, 11], "labels": [9, 10, 11]}]
    b = collate_forward(feats, "padding-free", pad_id=0, varlen_kwargs=True)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert b["labels"][0, 4].item() == IGNORE          # nothing learns to follow another example
    assert b["cu_seq_lens_q"].tolist() == [0, 4, 7] and b["max_length_q"] == 4
    p = collate_forward(feats, "grouped", pad_id=0)
    assert p["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]] and p["labels"][1, 0].item() == IGNORE


@pytest.mark.parametrize("layout,grouped", [("padded", False), ("grouped", True), ("padding-free", False)])
def test_schedule_replays_what_sampler_and_collator_produce(layout, grouped):
    """The dry run's forwards per step are those the dataloader (sampler + collator) yields, epoch by epoch."""
    lengths = _lengths(37, seed=1)
    per_step, budget, steps = 6, 400, 14  # 7 steps per epoch (the last partial), two epochs
    sched = schedule(lengths, batch_size=3, accum_per_process=2, num_processes=1, total_steps=steps,
                     layout=layout, budget=budget, seed=42, grouped=grouped)
    sampler = StepSampler(lengths, per_step, seed=42, grouped=grouped)
    collator = StepCollator(pad_id=0, layout=layout, budget=budget, batch_size=3)
    seen, tokens = [], []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for s in range(0, len(order), per_step):
            feats = [{"input_ids": [1] * lengths[i], "labels": [1] * lengths[i]} for i in order[s:s + per_step]]
            forwards = collator(feats)["forwards"]
            seen.append(len(forwards))
            tokens.extend(f["input_ids"].numel() for f in forwards)
    assert sched.forwards_per_step == seen
    assert sched.tokens_per_forward == tokens
    assert sorted(StepSampler(lengths, per_step, 42, grouped)) == list(range(37))


def test_sampler_order_depends_on_seed_and_epoch_only():
    lengths = _lengths(50)
    a, b = StepSampler(lengths, 8, 42, True), StepSampler(lengths, 8, 42, True)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


# ---- isolation: each example's logits in a packed forward equal its logits alone -----------------------------------

def _model(tiny_qwen2, impl):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen2, attn_implementation=impl, dtype=torch.float32).eval()


def _features():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(3, 900, (n,), generator=g).tolist(), "labels": [1] * n} for n in (9, 4, 13, 6)]


def _assert_isolated(model, feats, layout, varlen_kwargs=False):
    # float32 on CPU: the same math in a different reduction order differs by a few ulps of logits of size ~1;
    # 1e-5 absolute is ~100 ulps, far below the change one attended foreign token makes (checked below).
    batch = collate_forward(feats, layout, pad_id=0, varlen_kwargs=varlen_kwargs)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        offset = 0
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0]
            got = packed[0, offset:offset + n] if layout == "padding-free" else packed[i, :n]
            offset += n
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["padding-free", "grouped"])
def test_sdpa_packed_examples_do_not_attend_to_each_other(tiny_qwen2, layout):
    model = _model(tiny_qwen2, "sdpa")
    feats = _features()
    _assert_isolated(model, feats, layout)
    # the check can fail: without per-example positions the flattened row is one causal sequence
    batch = collate_forward(feats, "padding-free", pad_id=0)
    with torch.no_grad():
        mixed = model(input_ids=batch["input_ids"], use_cache=False).logits[0, 9:13]
        alone = model(input_ids=torch.tensor([feats[1]["input_ids"]]), use_cache=False).logits[0]
    assert (mixed - alone).abs().max() > 1e-3


@pytest.mark.slow
def test_flex_attention_packed_examples_do_not_attend_to_each_other(tiny_qwen2):
    """FlexAttention runs on CPU too (compiled on first use, ~30 s here)."""
    _assert_isolated(_model(tiny_qwen2, "flex_attention"), _features(), "padding-free")


@pytest.mark.parametrize("api", ["torch-2.13", "torch-2.11", "torch-2.9"])
@pytest.mark.parametrize("scaling", [None, 0.2])
def test_torch_varlen_wrapper_passes_segments_to_the_kernel(tiny_qwen2, monkeypatch, api, scaling):
    """torch's varlen_attn runs on CUDA only; on CPU a per-segment SDPA stands in for the kernel, so the wrapper's
    layout, GQA, scale and cu_seq_lens plumbing are checked here, against each signature torch has shipped
    (2.9: positional is_causal and no scale; 2.11: scale and window_size, no GQA; 2.13: enable_gqa). The real
    kernel: tests/test_gpu_training.py."""
    import torch.nn.functional as F
    from torch.nn.attention import varlen

    from rustcoder.attention import TORCH_VARLEN, register_torch_varlen

    calls = []

    def reference(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False, **kw):
        assert window_size == (-1, 0) and cu_q.dtype == torch.int32
        calls.append(cu_q.tolist())
        out = torch.empty_like(q)
        for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            o = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
                                               is_causal=True, scale=scale, enable_gqa=enable_gqa)
            out[s:e] = o.transpose(0, 1)
        return out

    def torch_2_11(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)):
        assert k.shape[1] == q.shape[1]  # no enable_gqa: the wrapper must repeat the kv heads
        return reference(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)

    def torch_2_9(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):  # no scale, no GQA
        assert is_causal and k.shape[1] == q.shape[1]
        return reference(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, 0))

    kernel = {"torch-2.13": reference, "torch-2.11": torch_2_11, "torch-2.9": torch_2_9}[api]
    monkeypatch.setattr(varlen, "varlen_attn", kernel)
    register_torch_varlen()
    sdpa = _model(tiny_qwen2, "sdpa")
    model = _model(tiny_qwen2, "sdpa")
    model.set_attn_implementation(TORCH_VARLEN)
    if scaling is not None:  # a non-default softmax scale (Qwen's is head_dim ** -0.5) must reach the kernel
        for m in (sdpa, model):
            for layer in m.model.layers:
                layer.self_attn.scaling = scaling
    _assert_isolated(model, _features(), "padding-free", varlen_kwargs=True)
    assert calls and calls[0] == [0, 9, 13, 26, 32]
    batch = collate_forward(_features(), "padding-free", pad_id=0, varlen_kwargs=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        want = sdpa(**{k: v for k, v in inputs.items() if not k.startswith(("cu_seq", "max_length"))},
                    use_cache=False).logits
        got = model(**inputs, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_attention_choice_per_device(monkeypatch):
    from rustcoder import attention

    assert attention.choose_attention("cpu", "grouped").attn_implementation == "sdpa"
    assert attention.choose_attention("cpu", "padding-free").name == "SDPA block-diagonal mask"
    monkeypatch.setattr(attention, "has_module", lambda m: m in ("flash_attn", "torch.nn.attention.varlen"))
    assert attention.choose_attention("cuda", "padding-free").attn_implementation == "flash_attention_2"
    monkeypatch.setattr(attention, "has_module", lambda m: m == "torch.nn.attention.varlen")
    chosen = attention.choose_attention("cuda", "padding-free")
    assert chosen.attn_implementation == attention.TORCH_VARLEN and chosen.varlen_kwargs
    monkeypatch.setattr(attention, "has_module", lambda m: False)
    assert attention.choose_attention("cuda", "padding-free").attn_implementation == "flex_attention"


# ---- memory: tokens per forward and gradient checkpointing by need -------------------------------------------------

QWEN2_7B = dict(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064, tied=False)


def test_checkpointing_off_when_a_forward_fits_on_when_it_does_not():
    from rustcoder.memory import GIB, ModelShape, plan_memory

    shape = ModelShape(**QWEN2_7B)
    assert abs(shape.parameters / 1e9 - 7.6) < 0.1
    common = dict(device="cuda", shape=shape, dtype_bytes=2, lora_r=16, max_length=1024, gradient_checkpointing=None)
    roomy = plan_memory(free_bytes=79 * GIB, tokens_per_forward=None, **common)
    assert not roomy.gradient_checkpointing and roomy.reason.startswith("gradient checkpointing off")
    assert roomy.tokens_per_forward >= 16 * 136  # a baseline step of Strandset examples in one forward
    tight = plan_memory(free_bytes=24 * GIB, tokens_per_forward=None, **common)
    assert tight.gradient_checkpointing and tight.reason.startswith("gradient checkpointing on")
    assert "GiB" in tight.reason and tight.tokens_per_forward >= 1024
    # a budget the user asks for that does not fit turns it on; one that fits leaves it off
    assert plan_memory(free_bytes=40 * GIB, tokens_per_forward=8192, **common).gradient_checkpointing
    assert not plan_memory(free_bytes=40 * GIB, tokens_per_forward=1024, **common).gradient_checkpointing
    # the flag still forces either way
    forced = plan_memory(free_bytes=79 * GIB, tokens_per_forward=None, **{**common, "gradient_checkpointing": True})
    assert forced.gradient_checkpointing and "forced" in forced.reason
    assert not plan_memory(free_bytes=10 * GIB, tokens_per_forward=None,
                           **{**common, "gradient_checkpointing": False}).gradient_checkpointing


def test_plan_decides_checkpointing_from_mocked_free_memory(rows_file, tiny_qwen2, monkeypatch, tmp_path):
    from rustcoder import memory
    from rustcoder.config import resolve_config
    from rustcoder.memory import ModelShape
    from rustcoder.train import plan_training
    from rustcoder.trainer import sft_args

    cfg = resolve_config("baseline", overrides=dict(model="tiny-qwen2", dataset=str(rows_file), num_examples=40))
    shape = ModelShape(**QWEN2_7B)
    for free_gib, expect in ((79, False), (20, True)):
        monkeypatch.setattr(memory, "device_free_bytes", lambda device, g=free_gib: g * memory.GIB)
        plan = plan_training(cfg, device="cuda", shape=shape)
        assert plan.gradient_checkpointing is expect
        assert plan.checkpointing_reason.startswith(f"gradient checkpointing {'on' if expect else 'off'}")
        assert plan.checkpointing_reason in plan.render()
        assert sft_args(plan, tmp_path, progress=False).activation_checkpointing is expect


def test_float32_training_on_a_gpu_never_gets_a_bf16_only_kernel(rows_file, tiny_qwen2):
    """flash-attn and torch's varlen_attn refuse float32 inputs: --dtype float32 on a GPU packs with SDPA's mask."""
    from rustcoder import attention
    from rustcoder.config import resolve_config
    from rustcoder.memory import GIB, ModelShape, dense_mask_tokens
    from rustcoder.train import plan_training

    def plan(dtype):
        cfg = resolve_config("baseline", overrides=dict(model="tiny-qwen2", dataset=str(rows_file), num_examples=40,
                                                        dtype=dtype))
        return plan_training(cfg, device="cuda", shape=ModelShape(**QWEN2_7B), free_bytes=79 * GIB,
                             count_forwards=False)

    assert plan("float32").attn_implementation == "sdpa"
    # SDPA's block mask attends over the whole forward: its budget is capped where that waste stays small
    small = ModelShape(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, tied=True)

    def plan_small(dtype):
        cfg = resolve_config("baseline", overrides=dict(model="tiny-qwen2", dataset=str(rows_file), num_examples=40,
                                                        dtype=dtype))
        return plan_training(cfg, device="cuda", shape=small, free_bytes=79 * GIB, count_forwards=False)

    fp32 = plan_small("float32")
    assert fp32.attn_implementation == "sdpa" and dense_mask_tokens(small) == 2048
    assert fp32.tokens_per_forward == max(2048, fp32.config.max_length)
    if attention.torch_varlen_available():  # a varlen kernel: no cap, the budget is what memory holds
        assert plan_small("bfloat16").tokens_per_forward > 10 * 2048
    if attention.torch_varlen_available():
        assert plan("auto").attn_implementation == attention.TORCH_VARLEN
        assert plan("bfloat16").attn_implementation == attention.TORCH_VARLEN


def test_free_memory_is_read_on_each_launched_ranks_own_gpu(monkeypatch):
    from rustcoder import memory

    asked = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (70 * 2**30, 80 * 2**30))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert memory.device_free_bytes("cuda") == 70 * 2**30
    monkeypatch.setenv("LOCAL_RANK", "2")
    memory.device_free_bytes("cuda")
    monkeypatch.setenv("LOCAL_RANK", "5")  # more ranks than GPUs here (CUDA_VISIBLE_DEVICES per rank): the current one
    memory.device_free_bytes("cuda")
    assert asked == [None, 2, None]


def test_evaluation_never_dominates_a_short_run():
    from rustcoder.train import auto_eval_steps

    assert auto_eval_steps(562, 9000 * 136, 1000 * 136)[0] == 562 // 5   # 5 evaluations: 20% of the compute
    assert auto_eval_steps(562, 90000 * 136, 1000 * 136) == (56, "")      # plenty of training: about 10
    every, note = auto_eval_steps(20, 80 * 136, 1000 * 136)               # a short run, a large eval split
    assert every == 20 and "1 evaluations" in note


def test_mfu_counts_the_decoder_per_token_and_the_lm_head_only_at_answers():
    """Model FLOPs of a LoRA step: 4 per decoder weight per token (forward + backward through activations), the
    LM head only at answer positions, no matmul for the embedding lookup; checked by hand on the 7B shape."""
    from rustcoder.memory import ModelShape, data_answer_share, train_flops_per_token

    s = ModelShape(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064, tied=False)
    per_layer = 2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944  # q, o; k, v (4 kv heads x 128); gate, up, down
    attention = 3 * 2 * 2 * 28 * 3584 * 100 / 2
    assert train_flops_per_token(s, 100, answer_share=0.5) == 4 * 28 * per_layer + 4 * 152064 * 3584 * 0.5 + attention
    # the embedding never counts; the head counts in full only when every token is an answer token
    assert train_flops_per_token(s, 100, 1.0) - train_flops_per_token(s, 100, 0.0) == 4 * 152064 * 3584
    assert data_answer_share([[-100, -100, 5, 6], [-100, 7]]) == 3 / 6


def test_a_qwen3_shape_counts_its_own_head_dim():
    """Qwen3 sets head_dim (128) apart from hidden / heads: Qwen3-0.6B (hidden 1024, 16 heads, 8 kv heads) has
    596M parameters (0.44B outside the embedding, as its model card says) and a KV cache of 2 x 28 x 8 x 128
    values per token; hidden / heads (64) would halve the cache and miss 88M weights."""
    from transformers import Qwen3Config

    from rustcoder.memory import ModelShape, kv_bytes_per_token, lora_parameters

    c = Qwen3Config(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                    intermediate_size=3072, vocab_size=151936, tie_word_embeddings=True, head_dim=128)
    s = ModelShape.from_config(c)
    assert s.head_dim == 128 and s.q_dim == 2048
    assert s.parameters == 28 * (2 * 1024 * 2048 + 2 * 1024 * 1024 + 3 * 1024 * 3072) + 151936 * 1024
    assert abs(s.parameters - 596e6) / 596e6 < 0.01
    assert kv_bytes_per_token(s, 2) == 2 * 28 * 8 * 128 * 2
    dims = [(1024, 2048), (1024, 1024), (1024, 1024), (2048, 1024), (1024, 3072), (1024, 3072), (3072, 1024)]
    assert lora_parameters(s, 16) == 28 * sum(16 * (a + b) for a, b in dims)
    # Qwen2 configs set no head_dim: hidden / heads, as before
    q2 = ModelShape(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064, tied=False)
    assert q2.head_dim == 128 and q2.q_dim == 3584


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_isolation_check_passes_packed_forwards_and_catches_a_leak(tiny_qwen2, monkeypatch, dtype):
    """The benchmark's isolation check (tolerance from the first example's kernel noise, at least 2 ulps of the
    dtype): passes a correct packed forward in float32 and bf16, fails one whose examples see each other."""
    from transformers import AutoModelForCausalLM

    from rustcoder import packing

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, attn_implementation="sdpa", dtype=dtype).eval()
    feats = _features()
    good = packing.isolation_errors(model, feats, "padding-free", pad_id=0)
    assert all(r["isolated"] for r in good), good
    real = packing.collate_forward
    monkeypatch.setattr(packing, "collate_forward", lambda *a, **k: {  # no per-example positions: one causal row
        key: v for key, v in real(*a, **k).items() if key != "position_ids"})
    leaked = packing.isolation_errors(model, feats, "padding-free", pad_id=0)
    assert leaked[0]["isolated"] and not any(r["isolated"] for r in leaked[1:]), leaked
