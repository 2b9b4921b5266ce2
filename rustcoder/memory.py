"""Memory and compute budgets: a training forward's tokens, checkpointing by need, FLOPs and MFU; a generation
batch's token budget.

Estimates, not measurements: a forward's activation memory is counted from the model's shape (what
autograd keeps per token and layer for LoRA on every linear layer), with a safety margin. They
decide two things before the model is loaded, the same way for the dry run and the trainer:

- the default ``--tokens-per-forward`` (the largest forward that fits the device's free memory,
  without gradient checkpointing if one example of ``--max-length`` fits that way);
- gradient checkpointing: off when a forward's activations fit, on (with a one-line reason) when not.

Importing this module is cheap (no torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024 ** 3
SAFETY = 1.3            # measured peaks ran about this far above the per-token count (allocator, temporaries)
USABLE_SHARE = 0.85     # of the free memory, for weights + activations; the rest for fragmentation and spikes
# On CPU a flattened forward's block-diagonal SDPA computes attention over the whole forward (quadratic in its
# length) and bigger forwards only amortise Python overhead: one --max-length's worth (1024) keeps both small.
CPU_TOKENS_PER_FORWARD = 1024
TOKEN_ROUNDING = 256
# Generation on CPU: batches past this many KV tokens (rows x (longest prompt + new tokens)) gain nothing here.
GEN_CPU_BATCH_TOKENS = 16384

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for the MFU estimate.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0,
               "L4": 121.0, "RTX 4090": 165.0, "A6000": 155.0, "V100": 125.0, "T4": 65.0}


@dataclass
class ModelShape:
    """What the estimates need from a causal LM config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_size: int = 0  # the config's head_dim where it sets one (Qwen3: 128 whatever the width); 0: hidden / heads

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of the queries (and the attention output): heads x head_dim, the hidden size only for Qwen2."""
        return self.heads * self.head_dim

    @property
    def parameters(self) -> int:
        h, q, kv = self.hidden, self.q_dim, self.kv_heads * self.head_dim
        per_layer = 2 * h * q + 2 * h * kv + 3 * h * self.intermediate
        return self.layers * per_layer + self.vocab * h * (1 if self.tied else 2)

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        return cls(hidden=c.hidden_size, layers=c.num_hidden_layers, heads=c.num_attention_heads,
                   kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                   intermediate=c.intermediate_size, vocab=c.vocab_size,
                   tied=bool(getattr(c, "tie_word_embeddings", False)), head_size=getattr(c, "head_dim", None) or 0)


def lora_parameters(shape: ModelShape, r: int) -> int:
    """Adapter parameters with LoRA rank r on all seven linear projections of every layer."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    dims = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    return shape.layers * sum(r * (a + b) for a, b in dims)


def activation_bytes_per_token(shape: ModelShape, dtype_bytes: int, checkpointing: bool) -> float:
    """Bytes autograd keeps per token of a forward (LoRA on all linear layers, dropout on the adapter inputs).

    Per layer: about 16 hidden-sized tensors (norm inputs/outputs, q/k/v/attention outputs, residuals
    and each adapter's dropped input; the queries, the attention output and the o adapter's input are
    heads x head_dim wide, which Qwen3 sets apart from the hidden size) and 5 intermediate-sized ones
    (gate, up, activation, product, the down adapter's input). With checkpointing only each layer's input is kept, plus one layer
    recomputed at a time.
    """
    per_layer = (13 * shape.hidden + 3 * shape.q_dim + 5 * shape.intermediate) * dtype_bytes  # q, attn out, o input
    if checkpointing:
        kept = shape.layers * shape.hidden * dtype_bytes + per_layer
    else:
        kept = shape.layers * per_layer
    return kept * SAFETY


def fixed_bytes(shape: ModelShape, dtype_bytes: int, lora_r: int) -> int:
    """Weights, plus the adapter with its gradient and two fp32 Adam moments."""
    return shape.parameters * dtype_bytes + lora_parameters(shape, lora_r) * (4 + 4 + 4 + 4)


def device_free_bytes(device: str) -> int | None:
    """Free memory of the device now: the GPU's (torch.cuda.mem_get_info) or the machine's available RAM."""
    if device == "cuda":
        import torch

        # a launched rank's own GPU (LOCAL_RANK): the trainer has not selected it yet, and the current device (0)
        # would be every rank's, each opening a context on GPU 0 and reading what the others left of it
        local = int(os.environ.get("LOCAL_RANK", "-1"))
        return int(torch.cuda.mem_get_info(local if 0 <= local < torch.cuda.device_count() else None)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MemoryPlan:
    """The forward budget and the checkpointing decision, with why."""

    tokens_per_forward: int
    gradient_checkpointing: bool
    reason: str
    activation_gib_per_forward: float | None = None
    free_gib: float | None = None


def dense_mask_tokens(shape: ModelShape) -> int:
    """The most tokens a flattened forward should hold when its attention runs over the whole forward through a
    block mask (SDPA without a varlen kernel: T x T scores however short the examples): where that attention,
    4 x T x heads x head_dim FLOPs per token and layer, stays within a quarter of the layer's linear work (2 per
    weight)."""
    per_layer = (shape.parameters - shape.vocab * shape.hidden * (1 if shape.tied else 2)) / shape.layers
    return max(TOKEN_ROUNDING, int(0.25 * 2 * per_layer / (4 * shape.q_dim)) // TOKEN_ROUNDING * TOKEN_ROUNDING)


def plan_memory(*, device: str, shape: ModelShape | None, free_bytes: int | None, dtype_bytes: int, lora_r: int,
                max_length: int, tokens_per_forward: int | None, gradient_checkpointing: bool | None,
                dense_mask: bool = False) -> MemoryPlan:
    """Choose tokens per forward (unless given) and gradient checkpointing (unless forced).

    With ``dense_mask`` (packed forwards attend through a block mask over the whole forward), the chosen
    budget is also capped at ``dense_mask_tokens``: past it the wasted attention outgrows what a bigger
    forward saves.

    Checkpointing is off when the estimated activations of the largest forward fit what is left of
    the device's free memory after the weights; on, with the reason, when they do not. A budget is
    chosen here is never below ``max_length``; a smaller one the user sets runs longer examples alone.
    """
    def done(tokens: int, ckpt: bool, reason: str, act: float | None = None) -> MemoryPlan:
        return MemoryPlan(tokens, ckpt, reason,
                          None if act is None else round(act / GIB, 2),
                          None if free_bytes is None else round(free_bytes / GIB, 2))

    if shape is None or free_bytes is None:
        tokens = tokens_per_forward or max(CPU_TOKENS_PER_FORWARD if device == "cpu" else 4 * max_length, max_length)
        ckpt = bool(gradient_checkpointing)
        why = "forced by --gradient-checkpointing" if gradient_checkpointing else "no memory estimate available"
        return done(tokens, ckpt, f"gradient checkpointing {'on' if ckpt else 'off'}: {why}")
    room = free_bytes * USABLE_SHARE - fixed_bytes(shape, dtype_bytes, lora_r)
    per_token = {c: activation_bytes_per_token(shape, dtype_bytes, c) for c in (False, True)}

    def fit(ckpt: bool) -> int:
        n = int(room // per_token[ckpt]) if room > 0 else 0
        return n // TOKEN_ROUNDING * TOKEN_ROUNDING if n >= TOKEN_ROUNDING else n

    if tokens_per_forward is None:
        if device == "cpu":
            tokens = CPU_TOKENS_PER_FORWARD
        else:
            tokens = fit(False) if fit(False) >= max_length else fit(True)
            if dense_mask:
                tokens = min(tokens, dense_mask_tokens(shape))
        tokens = max(tokens, max_length)
    else:
        tokens = tokens_per_forward
    largest = max(tokens, max_length)  # an example longer than the budget runs in a forward of its own
    need = per_token[False] * largest
    if gradient_checkpointing is not None:
        return done(tokens, gradient_checkpointing,
                    f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}: forced by "
                    f"--{'' if gradient_checkpointing else 'no-'}gradient-checkpointing "
                    f"(estimated {need / GIB:.1f} GiB of activations per forward of {largest} tokens without it, "
                    f"{max(room, 0) / GIB:.1f} GiB free after the weights)", need)
    if need <= room:
        return done(tokens, False, f"gradient checkpointing off: a forward of {largest} tokens needs about "
                    f"{need / GIB:.1f} GiB of activations, {room / GIB:.1f} GiB free after the weights", need)
    return done(tokens, True, f"gradient checkpointing on: a forward of {largest} tokens needs about "
                f"{need / GIB:.1f} GiB of activations without it, only {max(room, 0) / GIB:.1f} GiB free after "
                "the weights", per_token[True] * largest)


def train_flops_per_token(shape: ModelShape, mean_example_tokens: float, answer_share: float = 1.0) -> float:
    """Model FLOPs per trained (non-pad) token for LoRA, the work the step needs however it is laid out.

    Decoder layers: forward (2 per weight) + backward through activations (2; the frozen weights get no
    gradient), causal attention (QK^T and AV at half the mean example length, three passes). The LM head
    (vocab x hidden) only at answer positions, ``answer_share`` of the tokens: the loss needs no logits
    elsewhere (TRL's defaults compute them anyway; that is their overhead, not model work). The embedding
    is a lookup, no matmul. Recomputation is not counted.
    """
    decoder = shape.parameters - shape.vocab * shape.hidden * (1 if shape.tied else 2)
    attention = 3 * 2 * 2 * shape.layers * shape.q_dim * mean_example_tokens / 2
    return 4 * decoder + 4 * shape.vocab * shape.hidden * answer_share + attention


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """KV cache of one token over every layer: keys and values of the kv heads."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes


def prefill_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    """One decoder layer's transient activations per prompt token while a batch's prompts are read (layers run
    one after another): the MLP's gate, up and their product, and about six hidden-sized tensors."""
    return (3 * shape.intermediate + 6 * shape.hidden) * dtype_bytes


def generation_batch_tokens(shape: ModelShape, dtype_bytes: int, free_bytes: int) -> int:
    """The token budget of a generation batch, rows x (longest prompt + max new tokens), that fits ``free_bytes``
    (the device's free memory with the model loaded): each budget token may hold its KV cache in every layer
    plus one layer's prefill activations, with the training estimate's margin and usable share."""
    per_token = (kv_bytes_per_token(shape, dtype_bytes) + prefill_bytes_per_token(shape, dtype_bytes)) * SAFETY
    return max(TOKEN_ROUNDING, int(free_bytes * USABLE_SHARE / per_token) // TOKEN_ROUNDING * TOKEN_ROUNDING)


def data_answer_share(labels: list[list[int]], ignore: int = -100) -> float:
    """The share of tokens that are answer tokens (labels not ``ignore``) over the examples."""
    total = sum(len(lab) for lab in labels)
    return sum(sum(1 for t in lab if t != ignore) for lab in labels) / total if total else 1.0


def peak_flops(device: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s: ``RUSTCODER_PEAK_TFLOPS`` if set, else known GPU names, else None."""
    env = os.environ.get("RUSTCODER_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    for fragment, tflops in PEAK_TFLOPS.items():
        if fragment in name:
            return tflops * 1e12
    return None



# Host memory of a dry run (`rustcoder train --dry-run`), per row, per byte of the rows' text and per token, from
# what it holds. It keeps every parsed row (Example: messages dicts, strings, id; ~1.5 KB of Python objects) and one
# int length per row; the text itself at most three times over (raw cells being parsed, parsed fields, chat
# messages). Token ids exist only for one chunk of rows at a time (rustcoder.train.TOKENIZE_CHUNK), as Python lists:
# the encoder's ids, input_ids and labels at 8 bytes a pointer each, plus int objects and the tokenizer's Encoding,
# at most about 80 bytes a token. Holding every row's tokens that way (what the dry run did: 6.8 GB at 191,008 rows)
# is what this budget is there to catch.
DRY_RUN_BASE_BYTES = 512 * 2**20  # the interpreter with torch, transformers and a tokenizer loaded (430 MB here)
DRY_RUN_ROW_BYTES = 2048
DRY_RUN_TEXT_COPIES = 3
TOKEN_LIST_BYTES = 80


def dry_run_rss_budget(rows: int, text_bytes: int, tokens: int, chunk_rows: int) -> int:
    """Bytes a dry run over ``rows`` rows holding ``text_bytes`` of message text and ``tokens`` tokens, tokenized
    ``chunk_rows`` at a time, may add to the process's fixed cost (DRY_RUN_BASE_BYTES), per the constants above."""
    chunk_tokens = tokens * min(1.0, chunk_rows / rows) if rows else 0
    return int(rows * DRY_RUN_ROW_BYTES + DRY_RUN_TEXT_COPIES * text_bytes + TOKEN_LIST_BYTES * chunk_tokens)
