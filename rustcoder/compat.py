"""The one place rustcoder leans on internals of TRL, transformers, accelerate or tokenizers that they do not
promise to keep. Each function below names what it relies on; tests/test_compat.py checks every one of those
names against the installed versions, so an upgrade that moves one fails there, by name, before a run does.

Everything else in the package uses public APIs (the transformers engine of ``serve`` has its own adapter,
``serve/transformers_engine.py``, checked by tests/test_serve_adaptation.py). Importing this module is cheap:
each function imports what it adapts.
"""

from __future__ import annotations

# What each function relies on, as tests/test_compat.py checks it (the private names are the ones with "_").
RELIES_ON = {
    "chunked_answer_logprobs": "trl.kernels.ChunkedLogProbFunction: forward(hidden, weight, bias, targets, "
                               "temperature, chunk_size, final_logit_softcapping, logit_scale, outputs) -> "
                               "(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1)",
    "tied_embedding_keys": "transformers model classes' _tied_weights_keys ({target: source} in transformers 5)",
    "train_on_one_device": "transformers TrainingArguments._n_gpu (what n_gpu reads; transformers sets it "
                           "itself for a model split over devices)",
    "record_train_metrics": "trl SFTTrainer._metrics['train'] (averaged into each log) and "
                            "SFTTrainer._total_train_tokens (the num_tokens TRL logs)",
    "encode_without_state": "tokenizers.Tokenizer padding / truncation / no_padding / no_truncation / "
                            "enable_padding / enable_truncation / encode_batch_fast (public, but shared mutable "
                            "state of a fast tokenizer's backend)",
    "reset_backend_padding": "tokenizers.Tokenizer padding / no_padding",
}

# Vocabulary columns per tile of the chunked log-probabilities: TRL's own default tile width (it keeps it in a
# private constant; rustcoder owns the number instead of importing it).
VOCAB_CHUNK = 32768


def chunked_answer_logprobs(hidden, weight, bias, targets):
    """(log-probabilities of ``targets``, top-1 hits) for hidden states [n, hidden] through an LM head's weight
    [vocab, hidden] (and bias), tiled over the vocabulary by TRL's ``ChunkedLogProbFunction``: the [n, vocab]
    logits are never materialised and the backward recomputes each tile. Differentiable in ``hidden``."""
    from trl.kernels import ChunkedLogProbFunction

    # autograd.Function.apply takes keywords for every argument after the tensors (no defaults are filled in)
    log_probs, _, _, _, top1 = ChunkedLogProbFunction.apply(
        hidden, weight, bias, targets, temperature=1.0, chunk_size=VOCAB_CHUNK, final_logit_softcapping=None,
        logit_scale=1.0, outputs=("is_top1",))
    return log_probs, top1


def tied_embedding_keys(architectures: list[str]) -> tuple[str, str] | None:
    """(output embedding key, input embedding key) that an architecture ties when ``tie_word_embeddings`` is on,
    from the transformers class named in a config's ``architectures``; None when no class says."""
    import transformers

    for arch in architectures or []:
        cls = getattr(transformers, arch, None)
        keys = getattr(cls, "_tied_weights_keys", None)
        if isinstance(keys, dict) and keys:  # transformers 5: {target: source}
            target, source = next(iter(keys.items()))
            return target, source
        if isinstance(keys, (list, tuple)) and keys:  # transformers 4: [target]
            return keys[0], "model.embed_tokens.weight"
    return None


def train_on_one_device(args) -> None:
    """Make a TrainingArguments that sees several GPUs in one process train on one (``args.device``) instead of
    wrapping the model in nn.DataParallel, as transformers itself does for a model split over devices. There is
    no public setter for ``n_gpu``."""
    args._n_gpu = 1


def record_train_metrics(trainer, token_accuracy: float, tokens: int) -> None:
    """Add one optimizer step's answer-token accuracy and non-pad token count to what TRL's SFTTrainer logs
    (``mean_token_accuracy`` averaged over the steps of a logging window, ``num_tokens`` cumulative), for a trainer
    whose ``training_step`` replaces TRL's ``compute_loss`` (which records them otherwise)."""
    trainer._metrics["train"]["mean_token_accuracy"].append(token_accuracy)
    trainer._total_train_tokens += int(tokens)
    trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]


def encode_without_state(tokenizer, texts: list[str]) -> list[list[int]] | None:
    """Token ids of each text, no special tokens, through a fast tokenizer's Rust backend (``encode_batch_fast``:
    no offsets, no attention masks); None when the tokenizer has no such backend.

    A padded call elsewhere (generation: ``tok(texts, padding=True)``) leaves padding and truncation switched on
    in the backend: both are switched off for this call and put back as they were."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding()
    backend.no_truncation()
    try:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    finally:
        if padding:
            backend.enable_padding(**padding)
        if truncation:
            backend.enable_truncation(**truncation)


def reset_backend_padding(tokenizer) -> None:
    """Switch a fast tokenizer's Rust backend back to no padding (``tok(texts, padding=True)`` leaves it on, and
    whatever encodes with the backend directly afterwards would pad every text of a batch to the longest)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(backend, "padding", None) is not None:
        backend.no_padding()
