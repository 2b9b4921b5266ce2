"""Step packing: the examples of one optimizer step grouped into as few forward passes as a token budget allows.

An optimizer step is the preset's: ``batch_size x grad_accum x processes`` examples, in the order the
step sampler gives. Packing changes only how a process's share of a step is laid out in forward
passes, never which examples a step holds, nor the loss (normalised over the answer tokens of the
whole step by the trainer). Three layouts:

- ``padded``: the preset's micro-batches as they are (``batch_size`` examples each, right-padded):
  the unpacked reference, what TRL does.
- ``grouped``: the step's examples sorted by length and cut into padded forwards whose rows x longest
  stays within the budget (little padding; no example attends to another).
- ``padding-free``: the step's examples packed first-fit-decreasing into flattened forwards of at
  most the budget tokens, with per-example position ids and ``cu_seq_lens`` for varlen kernels.

The dry run replays the same sampler and grouping (``schedule``), so its forwards per step are the
trainer's. Importing this module is cheap (torch is imported where tensors are built).
"""

from __future__ import annotations

from dataclasses import dataclass

from .data.tokenize import IGNORE  # the loss mask's 'not trained' label, defined once
LAYOUTS = ("padded", "grouped", "padding-free")


MEGABATCH_STEPS = 50  # grouped order: steps are formed from sorted windows of this many steps' examples


def step_order(lengths: list[int], examples_per_step: int, seed: int, epoch: int, grouped: bool) -> list[int]:
    """The example order of one epoch: a seeded permutation, or length-grouped steps in random order.

    Grouped: a random permutation cut into windows of MEGABATCH_STEPS steps, each sorted by length
    and cut into steps (examples of similar length share a step, as transformers' length grouping
    does), then the steps of the whole epoch shuffled. transformers keeps each window long-first,
    which makes a short run train on long examples first and evaluate worse; shuffled steps do not.
    """
    import torch

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    if not grouped:
        return perm
    window = MEGABATCH_STEPS * examples_per_step
    steps: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: lengths[i], reverse=True)
        steps.extend(chunk[k:k + examples_per_step] for k in range(0, len(chunk), examples_per_step))
    # the partial step (if any) stays last, so every other step keeps exactly examples_per_step examples
    full = [st for st in steps if len(st) == examples_per_step]
    partial = [st for st in steps if len(st) < examples_per_step]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
    return [i for st in shuffled + partial for i in st]


class StepSampler:
    """Sampler yielding `step_order` for the current epoch (``set_epoch``); deterministic, so resume and the
    dry run see the same steps."""

    def __init__(self, lengths: list[int], examples_per_step: int, seed: int, grouped: bool):
        self.lengths = list(lengths)
        self.examples_per_step = examples_per_step
        self.seed = seed
        self.grouped = grouped
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(step_order(self.lengths, self.examples_per_step, self.seed, self.epoch, self.grouped))


def forward_cost(lengths: list[int], layout: str) -> int:
    """Tokens a forward of these examples computes on: rows x longest when padded, the sum when flattened."""
    if not lengths:
        return 0
    return sum(lengths) if layout == "padding-free" else len(lengths) * max(lengths)


def process_forwards(lengths: list[int], rank: int, world: int, layout: str, budget: int,
                     batch_size: int) -> list[list[int]]:
    """Indices (into ``lengths``) of the forwards process ``rank`` of ``world`` runs over a whole set (evaluation).

    The rows are dealt out first (``rank::world``), then each process groups its own rows by its own budget:
    the budget comes from each GPU's free memory and can differ between processes, and every row must still be
    counted exactly once.
    """
    mine = list(range(rank, len(lengths), world))
    return [[mine[i] for i in g] for g in group_forwards([lengths[i] for i in mine], layout, budget, batch_size)]


def group_forwards(lengths: list[int], layout: str, budget: int, batch_size: int) -> list[list[int]]:
    """Indices (into ``lengths``) of each forward of one process's share of a step.

    An example longer than the budget gets a forward of its own; no example is ever split.
    """
    idx = list(range(len(lengths)))
    if layout == "padded":
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    order = sorted(idx, key=lambda i: (-lengths[i], i))
    if layout == "grouped":  # descending lengths: the first row of a forward is its longest
        forwards: list[list[int]] = []
        for i in order:
            if forwards and (len(forwards[-1]) + 1) * lengths[forwards[-1][0]] <= budget:
                forwards[-1].append(i)
            else:
                forwards.append([i])
        return forwards
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:  # first-fit decreasing
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


def collate_forward(features: list[dict], layout: str, pad_id: int, varlen_kwargs: bool = False) -> dict:
    """Tensors for one forward: right-padded rows, or one flattened row with per-example position ids.

    The first label of every example is -100, so no token is ever trained to follow another
    example's last token.
    """
    import torch

    if layout != "padding-free":
        from .data.tokenize import pad_batch

        batch = pad_batch(features, pad_id)
        batch["labels"][:, 0] = IGNORE
        return batch
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    bounds = [0]
    for f in features:
        n = len(f["input_ids"])
        ids.extend(f["input_ids"])
        labels.extend([IGNORE] + list(f["labels"][1:]))
        pos.extend(range(n))
        bounds.append(bounds[-1] + n)
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos])}
    if varlen_kwargs:  # what flash-attn / torch varlen read directly (transformers' FlashAttentionKwargs)
        cu = torch.tensor(bounds, dtype=torch.int32)
        longest = max(len(f["input_ids"]) for f in features)
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return batch


class StepCollator:
    """Collates one process's share of an optimizer step into its forwards: ``{"forwards": [batch, ...]}``."""

    def __init__(self, pad_id: int, layout: str, budget: int, batch_size: int, varlen_kwargs: bool = False):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
        self.pad_id = pad_id
        self.layout = layout
        self.budget = budget
        self.batch_size = batch_size
        self.varlen_kwargs = varlen_kwargs

    def __call__(self, features: list[dict]) -> dict:
        lengths = [len(f["input_ids"]) for f in features]
        groups = group_forwards(lengths, self.layout, self.budget, self.batch_size)
        return {"forwards": [collate_forward([features[i] for i in g], self.layout, self.pad_id, self.varlen_kwargs)
                             for g in groups]}


@dataclass
class Schedule:
    """Forwards of every optimizer step (per process, the busiest process counted) as the trainer will run them."""

    forwards_per_step: list[int]
    tokens_per_forward: list[int]   # tokens computed on (padding included for padded layouts)
    real_tokens: int                # non-pad tokens over the run
    computed_tokens: int            # tokens computed on over the run (padding included)

    def summary(self) -> dict:
        f, t = self.forwards_per_step, self.tokens_per_forward
        return {
            "steps": len(f),
            "forwards": sum(f),
            "forwards_per_step_mean": round(sum(f) / max(len(f), 1), 3),
            "forwards_per_step_max": max(f, default=0),
            "tokens_per_forward_mean": round(sum(t) / max(len(t), 1), 1),
            "tokens_per_forward_max": max(t, default=0),
            "padding_share": round(1 - self.real_tokens / max(self.computed_tokens, 1), 4),
        }


def schedule(lengths: list[int], *, batch_size: int, accum_per_process: int, num_processes: int, total_steps: int,
             layout: str, budget: int, seed: int, grouped: bool) -> Schedule:
    """Replay the trainer's steps: the sampler's order per epoch, each step split over processes, then grouped.

    Mirrors how the dataloader is built: each process takes ``batch_size x accum_per_process``
    consecutive examples of the step (accelerate shards whole per-process batches in rank order).
    """
    per_process = batch_size * accum_per_process
    per_step = per_process * num_processes
    n = len(lengths)
    steps_per_epoch = max(1, -(-n // per_step))
    forwards, tokens = [], []
    real = computed = 0
    epoch = 0
    while len(forwards) < total_steps:
        order = step_order(lengths, per_step, seed, epoch, grouped)
        for s in range(steps_per_epoch):
            if len(forwards) >= total_steps:
                break
            step = order[s * per_step:(s + 1) * per_step]
            if num_processes > 1 and len(step) < per_step:  # accelerate's even_batches refills from the start
                step = step + order[:per_step - len(step)]
            busiest = 0
            for p in range(num_processes):
                share = [lengths[i] for i in step[p * per_process:(p + 1) * per_process]]
                if not share:
                    continue
                groups = group_forwards(share, layout, budget, batch_size)
                busiest = max(busiest, len(groups))
                for g in groups:
                    cost = forward_cost([share[i] for i in g], layout)
                    tokens.append(cost)
                    computed += cost
                    real += sum(share[i] for i in g)
            forwards.append(busiest)
        epoch += 1
    return Schedule(forwards, tokens, real, computed)


def isolation_errors(model, features: list[dict], layout: str, pad_id: int, varlen_kwargs: bool = False) -> list[dict]:
    """Whether each example of one packed forward sees only itself: its logits there against its logits alone.

    Per example: ``max_diff`` (max |packed - alone|), ``tolerance`` and ``isolated``. The tolerance comes
    from the run itself, not from a constant: the first example of a flattened row has nothing before it
    to attend to, so its difference is pure kernel noise of this model, dtype and path (other shapes, other
    tilings); every example may differ by 8 times that, and at least by 2 units in the last place of the
    dtype at its largest logit (a bf16 7B's logits of ~5 differ by a few ulps of 2**-6). A foreign token
    attended moves logits by a sizeable share of their scale, far above either.
    """
    import torch

    batch = collate_forward(features, layout, pad_id, varlen_kwargs)
    device = next(model.parameters()).device
    with torch.no_grad():
        packed = model(**{k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items() if k != "labels"},
                       use_cache=False).logits.float()
        out, offset = [], 0
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]], device=device), use_cache=False).logits[0].float()
            got = packed[0, offset:offset + n] if layout == "padding-free" else packed[i, :n]
            offset += n
            out.append({"max_diff": float((got - alone).abs().max()), "scale": float(alone.abs().max())})
    eps = torch.finfo(next(model.parameters()).dtype).eps
    floor = out[0]["max_diff"] if layout == "padding-free" else 0.0
    for r in out:
        r["tolerance"] = max(8 * floor, 2 * eps * r["scale"], 1e-6)
        r["isolated"] = r["max_diff"] <= r["tolerance"]
    return out
