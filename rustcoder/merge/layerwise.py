"""A qwen2/qwen3 model run one decoder layer at a time from its safetensors files, with an adapter
applied on the fly as PEFT runs it unmerged, or its merge rounded to a dtype: verification in about
one layer of memory.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import read_json
from ..errors import RustcoderError
from ..modeling import END_OF_TURN
from .checks import common_prefix, finite_max
from .plan import MergePlan, Update
from .probes import effect_stats, encode, finish_reference, probe_messages, render_prompt, token_id
from .sources import skeleton
from .tensors import LAYER_OF, Meter, Reader, ST_DTYPES, rows_per_block, tensor_shapes, torch_dtype, weight_files

# Layerwise verification runs the model one decoder layer at a time. It is implemented for the
# architectures whose forward is embed_tokens -> layers[i] (causal mask, rotary embeddings) -> norm ->
# lm_head, and tested against their transformers forward: Qwen2 (Qwen2.5) and Qwen3.
LAYERWISE_MODEL_TYPES = ("qwen2", "qwen3")


LAYERWISE_GREEDY_TOKENS = 8  # each generated token re-reads every layer from disk: kept small


def layerwise_unsupported(merged_dir: Path, base_dir: Path, plan: MergePlan) -> str | None:
    """Why layerwise verification cannot run on these inputs (None when it can)."""
    for d in (merged_dir, base_dir):
        mt = read_json(d / "config.json").get("model_type")
        if mt not in LAYERWISE_MODEL_TYPES:
            return (f"model_type {mt!r}; the layer-by-layer forward is implemented for "
                    f"{', '.join(LAYERWISE_MODEL_TYPES)}")
        if not weight_files(d):
            return f"{d} has no safetensors weights"
    if plan.unsupported:
        return "the adapter uses " + "; ".join(plan.unsupported)
    if any(u.kind == "embedding" and u.magnitude is not None for u in plan.updates.values()):
        return "DoRA on an embedding"
    return None


def _lora_output(x, out, weight, bias, u: Update, cache: dict):
    """PEFT's unmerged LoRA forward added to the base layer's output (peft.tuners.lora.layer.Linear.forward):
    out + B(A(x)) * scale; with DoRA, k = m / ||W + scale * B @ A||_row and
    out + (k - 1) * (out - bias) + k * B(A(x)) * scale."""
    import torch.nn.functional as F

    lora = F.linear(F.linear(x, u.A.float()), u.B.float())
    if u.magnitude is None:
        return out + lora * u.scale
    if "norm" not in cache:
        cache["norm"] = _dora_weight_norm(weight, u)
    mag = (u.magnitude.float() / cache["norm"]).view(1, -1)
    base = out if bias is None else out - bias
    return out + ((mag - 1) * base + mag * lora * u.scale)


def _dora_weight_norm(weight, u: Update):
    """||W + scale * B @ A|| per output row (PEFT's DoraLinearLayer.get_weight_norm), in blocks of rows."""
    import torch

    step = rows_per_block(list(weight.shape))
    return torch.cat([torch.linalg.norm(weight[r0:r0 + step].float()
                                        + u.scale * (u.B[r0:r0 + step].float() @ u.A.float()), dim=1)
                      for r0 in range(0, weight.shape[0], step)])


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc malloc_trim). A layer's float32 copies are freed when it
    goes back to meta, but glibc keeps the blocks under its mmap threshold in its heap, fragmented by what
    lives on (KV caches, logits): measured on a 2.5 GB model, RSS grew by 1.5 GB over one pass without this."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to do
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


@dataclass
class _Stream:
    """One probe sequence going through the layers: its hidden states, KV cache, mask and positions.

    mode: "adapter" (base + adapter, unmerged, as PEFT runs it), "base" (adapter off) or "rounded" (the
    exact merge rounded once to the output dtype, run in float32)."""

    mode: str
    probe: int
    hidden: Any
    cache: Any
    masks: dict
    rotary: Any
    positions: Any


class _Layerwise:
    """A qwen2/qwen3 causal LM run one decoder layer at a time from its safetensors files.

    The module tree is built on the meta device with transformers' own classes; a layer's tensors are
    read (and upcast to float32) only while that layer runs, then the layer goes back to meta. The
    embedding matrix, lm_head (one matrix when tied) and final norm are read once and kept: lm_head in
    float32, an untied input embedding in its stored dtype. With a plan, the adapter is
    applied on the fly the way PEFT runs it unmerged: forward hooks add B(A(x)) * scale to each target
    linear's output (DoRA: PEFT's magnitude rescaling), an embedding LoRA adds A^T[ids] B^T * scale, and
    modules_to_save tensors replace the base's. With round_to, a third mode runs the merge as the merge
    computes it (W + scale * B @ A in float32) rounded once to round_to. Modes are switches, so every
    mode runs from the same loaded layer."""

    def __init__(self, model_dir: Path, meter: Meter, plan: MergePlan | None = None, round_to: str | None = None,
                 device: str = "cpu"):
        import torch

        self.dir = model_dir
        self.device = torch.device(device)
        self.model = skeleton(model_dir)
        decoder = self.model.get_decoder()
        for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(decoder, attr):
                raise RustcoderError(f"{model_dir}: layerwise verification needs model.{attr}")
        names = {id(m): n for n, m in self.model.named_modules()}
        self.decoder = decoder
        self.prefix = names[id(decoder)] + "."
        self.config = decoder.config
        self.layer_types = list(getattr(self.config, "layer_types", None) or
                                ["full_attention"] * len(decoder.layers))
        out_emb = self.model.get_output_embeddings()
        self.lm_key = names[id(out_emb)] + ".weight"
        self.embed_key = self.prefix + "embed_tokens.weight"
        self.tied = out_emb.weight is decoder.embed_tokens.weight
        self.rotary = type(decoder.rotary_emb)(config=self.config).to(self.device)
        self.plan = (plan or MergePlan()).to(self.device)
        self.round_to = None if round_to is None else torch_dtype(round_to)
        self.reader = Reader(model_dir, meter)
        self.mode = "adapter"
        self._head_cache: dict = {}
        self._rounded_matrices: dict = {}
        # lm_head in float32 for the whole pass (upcasting a 16-bit one on every call would cost more time
        # than the extra copy costs memory); an untied input embedding stays as stored (rows are looked up)
        self.embed = self._read(self.embed_key, torch.float32 if self.tied else None)
        self.lm = None if self.tied else self._read(self.lm_key, torch.float32)
        rep = self.plan.replacements.get(self.lm_key)
        self.lm_replacement = None if rep is None else rep.float()
        self.norm_swaps, _ = self._materialize(decoder.norm, self.prefix + "norm.")

    def close(self) -> None:
        self.reader.close()
        self.embed = self.lm = self.lm_replacement = None
        self.norm_swaps = {}
        self._rounded_matrices.clear()
        self.decoder.norm.to("meta")

    def _read(self, name: str, dtype=None):
        if name not in self.reader:
            why = (": tie_word_embeddings=false but lm_head.weight is not saved (it would load as random weights)"
                   if name == self.lm_key else "")
            raise RustcoderError(f"{self.dir} has no tensor {name}{why}")
        if self.device.type == "cpu":
            return self.reader.read(name, dtype)
        # another device: the stored bytes travel (half a float32 copy's for 16-bit weights), converted there
        t = self.reader.read(name).to(self.device)
        return t if dtype is None else t.to(dtype)

    def _rounded(self, key: str, stored, base):
        """The tensor as the merge saves it, in float32: (replacement, then update) rounded to round_to;
        None when that is base itself (an untouched tensor already stored in round_to)."""
        u, rep = self.plan.updates.get(key), self.plan.replacements.get(key)
        if u is None and rep is None and stored == self.round_to:
            return None
        w = rep.float() if rep is not None else base.float()
        if u is not None:
            w = u.apply(w)
        return w.to(self.round_to).float()

    def _materialize(self, module, prefix: str):
        """Load module's tensors (float32) from the files; returns (mode swaps, LoRA hook handles)."""
        import torch

        keys = list(module.state_dict().keys())
        state = {k: self._read(prefix + k, torch.float32) for k in keys}
        module.load_state_dict(state, strict=True, assign=True)
        del state
        swaps: dict[str, dict] = {}
        for k in keys:
            base = module.get_parameter(k).data
            alt = {}
            if prefix + k in self.plan.replacements:
                alt["adapter"] = self.plan.replacements[prefix + k].float()
            if self.round_to is not None:
                rounded = self._rounded(prefix + k, self.reader.dtype(prefix + k), base)
                if rounded is not None:
                    alt["rounded"] = rounded
            if alt:
                swaps[k] = {"base": base, **alt}
        hooks = []
        for k in keys:
            u = self.plan.updates.get(prefix + k)
            if u is not None:
                if u.kind != "linear" or not k.endswith(".weight"):
                    raise RustcoderError(f"layerwise verification cannot apply a {u.kind} LoRA to {prefix + k}")
                hooks.append(module.get_submodule(k.removesuffix(".weight")).register_forward_hook(self._hook(u)))
        return swaps, hooks

    def _hook(self, u: Update):
        cache: dict = {}

        def hook(module, args, out):
            return _lora_output(args[0], out, module.weight, module.bias, u, cache) if self.mode == "adapter" else None
        return hook

    def _switch(self, mode: str, module, swaps: dict) -> None:
        self.mode = mode
        for k, alt in swaps.items():
            module.get_parameter(k).data = alt.get(mode, alt["base"])

    def _rounded_matrix(self, key: str, stored_key: str, source):
        """The matrix as the merge saves it: ``source`` itself where the merge leaves it as stored (no copy:
        a float32 copy of an untied 7B's input embedding is 2.2 GB), else the float32 of its rounded merge,
        computed once."""
        if key not in self._rounded_matrices:
            r = self._rounded(key, self.reader.dtype(stored_key), source)
            self._rounded_matrices[key] = source if r is None else r
        return self._rounded_matrices[key]

    def embed_ids(self, ids, mode: str):
        import torch.nn.functional as F

        if mode == "rounded":
            return F.embedding(ids, self._rounded_matrix(self.embed_key, self.embed_key, self.embed)).float()
        rep = self.plan.replacements.get(self.embed_key) if mode == "adapter" else None
        h = F.embedding(ids, rep if rep is not None else self.embed).float()
        u = self.plan.updates.get(self.embed_key) if mode == "adapter" else None
        if u is not None:  # peft.tuners.lora.layer.Embedding.forward
            h = h + (F.embedding(ids, u.A.float().T) @ u.B.float().T) * u.scale
        return h

    def masks(self, h, cache, positions) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kw = dict(config=self.config, inputs_embeds=h, attention_mask=None, past_key_values=cache,
                  position_ids=positions)
        out = {"full_attention": create_causal_mask(**kw)}
        if "sliding_attention" in self.layer_types:
            out["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        return out

    def layers(self, streams: list[_Stream]) -> None:
        """Run every stream through every decoder layer, loading each layer once."""
        for i, layer in enumerate(self.decoder.layers):
            swaps, hooks = self._materialize(layer, f"{self.prefix}layers.{i}.")
            try:
                for s in streams:
                    self._switch(s.mode, layer, swaps)
                    s.hidden = layer(s.hidden, attention_mask=s.masks[self.layer_types[i]],
                                     position_embeddings=s.rotary, position_ids=s.positions,
                                     past_key_values=s.cache, use_cache=True)
            finally:
                for h in hooks:
                    h.remove()
                swaps.clear()
                layer.to("meta")
                release_freed_memory()

    def head(self, hidden, mode: str):
        """Final norm and lm_head: float32 logits [positions, vocab] of one sequence's hidden states."""
        import torch.nn.functional as F

        self._switch(mode, self.decoder.norm, self.norm_swaps)
        h = self.decoder.norm(hidden)[0]
        source = self.embed if self.tied else self.lm
        if mode == "rounded":  # an untied merge computes lm_head from the (tied) embedding matrix
            return F.linear(h, self._rounded_matrix(self.lm_key, self.embed_key if self.tied else self.lm_key,
                                                    source))
        weight = self.lm_replacement if mode == "adapter" and self.lm_replacement is not None else source
        logits = F.linear(h, weight)
        u = self.plan.updates.get(self.lm_key) if mode == "adapter" else None
        if u is not None:
            if u.kind != "linear":
                raise RustcoderError(f"layerwise verification cannot apply a {u.kind} LoRA to {self.lm_key}")
            logits = _lora_output(h, logits, weight, None, u, self._head_cache)
        return logits


def layerwise_probe_outputs(model_dir: str | Path, tokenizer, *, plan: MergePlan | None = None,
                            base_logits: bool = False, round_to: str | None = None,
                            reference: list[dict] | None = None,
                            greedy_tokens: int = LAYERWISE_GREEDY_TOKENS, prompts: list[list[int]] | None = None,
                            meter: Meter | None = None, device: str = "cpu") -> list[dict]:
    """probe_outputs computed one decoder layer at a time from model_dir's safetensors files (+ plan's
    adapter applied on the fly): memory of about one layer plus the embeddings, whatever the model size.

    Greedy decoding runs for real, all probes in lockstep with a KV cache per probe: each generated token
    is one more pass over the layers (re-reading every layer), so greedy_tokens is kept small. With
    reference, the model instead reads the reference's prompt and continuation in one pass (teacher
    forcing): its argmax at each continuation position is its greedy token given the same prefix, so its
    greedy output equals the reference's up to their first difference, found at the same token with the
    same margins; past it the tokens are the argmaxes after the reference's prefix, which the greedy check
    does not use. One pass instead of one per token, and every position is compared on the same inputs. Returns,
    per probe, prompt_ids, greedy and margins (top-1 minus top-2 logit at each step) and the float32
    logits of every position fed (the prompt and the generated tokens but the last). With base_logits and
    round_to (a reference pass), the adapter-off model and the merge rounded to round_to run alongside on
    the same tokens: the probe gets rounded_logits and the per-position effect and floor numbers of
    finish_reference. With reference (the output of such a pass), logits are not kept but compared on the
    fly, where the tokens fed are the reference's: max_abs_diff, rounded_diff, diff_sq, positions
    (compared) and not_compared instead of logits (so the merged model's logits are never held).

    device: where the layers run (each layer's stored tensors are moved there and upcast there; matmuls in
    full float32, TF32 off); what is returned is on the CPU.
    """
    import torch
    from transformers import DynamicCache

    if base_logits != (round_to is not None):
        raise ValueError("a reference pass needs both base_logits and round_to")
    meter = meter or Meter()
    lw = _Layerwise(Path(model_dir), meter, plan, round_to, device)
    dev = lw.device
    if prompts is None:
        prompts = [encode(tokenizer, render_prompt(tokenizer, m)) for m in probe_messages()]
    im_end = token_id(tokenizer, END_OF_TURN)
    modes = ("adapter", "base", "rounded") if base_logits else ("adapter",)
    caches = {(a, p): DynamicCache(config=lw.config) for a in modes for p in range(len(prompts))}
    out = [{"prompt_ids": list(ids), "greedy": [], "margins": []} for ids in prompts]
    kept: dict[str, list[list]] = {m: [[] for _ in prompts] for m in modes}
    diff, rdiff, sq = [0.0] * len(prompts), [0.0] * len(prompts), [0.0] * len(prompts)
    seen, compared, agree = [0] * len(prompts), [0] * len(prompts), [True] * len(prompts)
    feed = {p: list(ids) for p, ids in enumerate(prompts)}
    if reference is not None:  # teacher forcing (see above): the reference's tokens, all in one pass
        feed = {p: r["prompt_ids"] + r["greedy"][:-1] for p, r in enumerate(reference)}
        for p, r in enumerate(reference):
            out[p]["prompt_ids"] = list(r["prompt_ids"])
    try:
        with torch.no_grad(), full_float32(device):
            while feed:
                streams = []
                for a in modes:
                    for p, ids in feed.items():
                        h = lw.embed_ids(torch.tensor([ids], device=dev), a)
                        cache = caches[a, p]
                        past = cache.get_seq_length()
                        pos = torch.arange(past, past + len(ids), device=dev).unsqueeze(0)
                        streams.append(_Stream(a, p, h, cache, lw.masks(h, cache, pos), lw.rotary(h, pos), pos))
                lw.layers(streams)
                hidden = {(s.mode, s.probe): s.hidden for s in streams}
                del streams
                for p in list(feed):
                    ids = feed[p]
                    x = lw.head(hidden["adapter", p], "adapter")
                    n = x.shape[0]
                    if reference is None:
                        kept["adapter"][p].append(x)
                        if base_logits:  # the base's logits are needed only for the adapter's effect
                            kept["base"][p].append(effect_stats(x, lw.head(hidden["base", p], "base")))
                            kept["rounded"][p].append(lw.head(hidden["rounded", p], "rounded"))
                    elif agree[p]:  # compare while the inputs are the reference's tokens (see output_checks)
                        ref, rounded = reference[p]["logits"].to(dev), reference[p]["rounded_logits"].to(dev)
                        ref_ids = reference[p]["prompt_ids"] + reference[p]["greedy"]
                        k = min(common_prefix(ids, ref_ids[seen[p]:]), len(ref) - seen[p])
                        agree[p] = k == n
                        if k > 0:
                            delta = x[:k] - ref[seen[p]:seen[p] + k]
                            diff[p] = max(diff[p], finite_max(delta.abs()))
                            sq[p] += float(torch.linalg.vector_norm(delta).double() ** 2)
                            rdiff[p] = max(rdiff[p], finite_max((x[:k] - rounded[seen[p]:seen[p] + k]).abs()))
                            compared[p] += k
                    seen[p] += n
                    if reference is not None:
                        cont = x[len(reference[p]["prompt_ids"]) - 1:]
                        top = cont.topk(2, dim=-1).values
                        out[p]["margins"] = (top[:, 0] - top[:, 1]).tolist()
                        out[p]["greedy"] = cont.argmax(-1).tolist()
                        del feed[p], x
                        continue
                    top = x[-1].topk(2).values
                    out[p]["margins"].append(float(top[0] - top[1]))
                    token = int(x[-1].argmax())
                    out[p]["greedy"].append(token)
                    if token == im_end or len(out[p]["greedy"]) >= greedy_tokens:
                        del feed[p]
                    else:
                        feed[p] = [token]
                    del x
                del hidden
    finally:
        lw.close()
    for p, item in enumerate(out):
        if reference is None:
            item["logits"] = torch.cat(kept["adapter"][p])
            if base_logits:
                item["effect_sq"] = torch.cat([e for e, _ in kept["base"][p]])
                item["effect_max"] = torch.cat([m for _, m in kept["base"][p]])
                finish_reference(item, torch.cat(kept["rounded"][p]))
        else:
            item["max_abs_diff"], item["rounded_diff"], item["diff_sq"] = diff[p], rdiff[p], sq[p]
            item["positions"] = compared[p]
            item["not_compared"] = min(seen[p], len(reference[p]["logits"])) - compared[p]
        for k, v in item.items():
            if isinstance(v, torch.Tensor):
                item[k] = v.cpu()
    return out


@contextmanager
def full_float32(device: str = "cpu"):
    """float32 matmuls in IEEE float32 (no TF32, whatever the process set before, restored after); on a GPU
    also attention through SDPA's math kernel (plain float32 matmuls and softmax: the fused kernels may
    compute float32 with reduced-precision tricks, and probe sequences are short)."""
    import torch

    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: per-backend setting (reading the legacy one after
        before = matmul.fp32_precision      # something set this one raises "mix of the legacy and new APIs")
        matmul.fp32_precision = "ieee"

        def restore():
            matmul.fp32_precision = before
    else:
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")

        def restore():
            torch.set_float32_matmul_precision(before)
    try:
        if torch.device(device).type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield
    finally:
        restore()


def weight_sizes(model_dir: Path) -> dict[str, int]:
    """Largest decoder layer in float32 and the embedding matrices as stored, in bytes (from headers)."""
    import torch

    layers: dict[str, int] = {}
    embed = 0
    for name, (shape, code) in tensor_shapes(model_dir).items():
        m = LAYER_OF.search(name)
        if m:
            layers[m.group(1)] = layers.get(m.group(1), 0) + 4 * math.prod(shape)
        elif "embed_tokens" in name or "lm_head" in name:
            embed += math.prod(shape) * torch.empty((), dtype=torch_dtype(ST_DTYPES[code])).element_size()
    return {"largest_layer_fp32": max(layers.values(), default=0), "embeddings": embed, "layers": len(layers)}
