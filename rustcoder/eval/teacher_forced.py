"""Teacher-forced scores on the reference answers: loss and token accuracy, in flat memory.

Examples are tokenized exactly as in training (``data.tokenize.tokenize_examples``: the loss mask
covers the answer and its <|im_end|>), a batch at a time. The decoder runs on the batch and the LM
head only on the positions whose next token is an answer token (``answer_loss.answer_token_nll``, the
loss training computes), so the largest logits tensor is (answer tokens in one batch) x vocab, or a
tile of it; per-example sums are accumulated as Python numbers.
Memory therefore does not grow with the number of examples.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenStats:
    """Summed negative log-likelihood, answer-token count and correctly predicted tokens of one example."""

    nll_sum: float
    tokens: int
    correct: int

    @property
    def loss(self) -> float | None:
        """Mean token NLL (None without answer tokens)."""
        return self.nll_sum / self.tokens if self.tokens else None


def aggregate(stats: list[TokenStats]) -> dict:
    """Token-weighted loss and accuracy over examples: {"loss", "accuracy", "tokens", "examples"}."""
    tokens = sum(s.tokens for s in stats)
    if not tokens:
        return {"loss": None, "accuracy": None, "tokens": 0, "examples": len(stats)}
    return {"loss": sum(s.nll_sum for s in stats) / tokens, "accuracy": sum(s.correct for s in stats) / tokens,
            "tokens": tokens, "examples": len(stats)}


def teacher_forced_stats(model, tokenizer, conversations: list[list[dict]], *, batch_size: int = 8,
                         max_length: int = 2048, on_batch=None) -> list[TokenStats]:
    """Per-example TokenStats of reference answers (conversations end with the assistant answer).

    Batches are formed from length-sorted examples and right-padded; ``on_batch(batch_indices)`` is
    called after each batch (progress, tests). The model is used as is (a PEFT model with or
    without its adapter enabled), in eval mode and without a KV cache.
    """
    import torch

    from ..answer_loss import answer_token_nll
    from ..data.tokenize import pad_batch, tokenize_examples

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    head = base.get_output_embeddings()
    device = next(model.parameters()).device
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    was_training = model.training
    model.eval()
    # rough lengths (characters) for batching similar examples together; exact ids come per batch
    order = sorted(range(len(conversations)), key=lambda i: -sum(len(m["content"]) for m in conversations[i]))
    results: list[TokenStats | None] = [None] * len(conversations)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            feats = tokenize_examples(tokenizer, [conversations[i] for i in idx], max_length)
            batch = pad_batch(feats, pad_id)
            ids, labels, mask = (batch[k].to(device) for k in ("input_ids", "labels", "attention_mask"))
            with torch.inference_mode():
                hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                nll, correct, keep = answer_token_nll(hidden, labels, head)
                owner = torch.arange(len(feats), device=device).unsqueeze(1).expand_as(keep)[keep]
                nll_sum = torch.zeros(len(feats), device=device, dtype=torch.float64).index_add_(0, owner, nll.double())
                ok_sum = torch.zeros(len(feats), device=device, dtype=torch.long).index_add_(0, owner, correct)
                counts = keep.sum(dim=1)
            for row, i in enumerate(idx):
                results[i] = TokenStats(float(nll_sum[row]), int(counts[row]), int(ok_sum[row]))
            del hidden, nll
            if on_batch is not None:
                on_batch(idx)
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]
