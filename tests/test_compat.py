"""rustcoder.compat adapts the few internals of TRL, transformers, accelerate and tokenizers that rustcoder needs and
that are not promised to stay. Each test names one of them: an upgrade that moves or reshapes one fails here, by
name, instead of in the middle of a training run."""

from __future__ import annotations

import inspect

import pytest
import torch

from rustcoder import compat


def test_every_adapted_name_has_a_test_here():
    source = open(__file__).read()
    for name in compat.RELIES_ON:
        assert f"compat.{name}(" in source, f"tests/test_compat.py does not exercise compat.{name}"


def test_trl_chunked_logprob_kernel_signature_and_outputs():
    """trl.kernels.ChunkedLogProbFunction: the parameters passed by name, and (log_probs, ..., is_top1) back."""
    from trl.kernels import ChunkedLogProbFunction

    params = list(inspect.signature(ChunkedLogProbFunction.forward).parameters)[1:]  # after ctx
    assert params[:9] == ["hidden", "weight", "bias", "targets", "temperature", "chunk_size",
                          "final_logit_softcapping", "logit_scale", "outputs"], params
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, requires_grad=True)
    weight, targets = torch.randn(40000, 16), torch.randint(0, 40000, (7,))  # more than one vocabulary tile
    log_probs, top1 = compat.chunked_answer_logprobs(hidden, weight, None, targets)
    logits = hidden @ weight.T
    want = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(log_probs.float(), want, atol=1e-4, rtol=1e-4)
    assert torch.equal(top1.bool(), logits.argmax(-1) == targets)
    log_probs.sum().backward()  # the backward recomputes the tiles
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_transformers_tied_weights_keys_of_the_qwen_classes():
    """transformers' class attribute _tied_weights_keys names the output embedding tied to the input one."""
    import transformers

    assert isinstance(transformers.Qwen2ForCausalLM._tied_weights_keys, dict)
    for arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert compat.tied_embedding_keys([arch]) == ("lm_head.weight", "model.embed_tokens.weight")
    assert compat.tied_embedding_keys(["NoSuchArchitecture"]) is None


def test_training_arguments_n_gpu_is_what_one_device_training_sets(tmp_path):
    """TrainingArguments._n_gpu is what the public n_gpu reads (the Trainer wraps nn.DataParallel when > 1)."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert args.n_gpu in (0, 1) and hasattr(args, "_n_gpu")
    args._n_gpu = 4  # what a process seeing 4 GPUs computes
    assert args.n_gpu == 4
    compat.train_on_one_device(args)
    assert args.n_gpu == 1


def test_accelerate_sync_gradients_has_a_public_setter():
    """The trainer's step marks only its last backward as syncing gradients through Accelerator.sync_gradients
    (public; DeepSpeed steps its optimizer inside the backward that syncs)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    acc.sync_gradients = False
    assert acc.gradient_state.sync_gradients is False
    acc.sync_gradients = True
    assert acc.gradient_state.sync_gradients is True


def test_trl_metrics_recorded_by_a_custom_training_step_are_logged(tiny_qwen2, tmp_path):
    """SFTTrainer._metrics['train'] is averaged into the next log, and _total_train_tokens is the num_tokens logged."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from rustcoder.modeling import load_tokenizer

    tok, _ = load_tokenizer(str(tiny_qwen2), model_type="qwen2")
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, bf16=False,
                     dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_qwen2), args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"input_ids": [1, 2, 3]}]))
    trainer.model.train()  # TRL logs the "train" metrics while the model is in training mode
    compat.record_train_metrics(trainer, 0.25, 100)
    compat.record_train_metrics(trainer, 0.75, 50)
    trainer.log({"loss": 1.0})
    logged = trainer.state.log_history[-1]
    assert logged["mean_token_accuracy"] == pytest.approx(0.5)
    assert logged["num_tokens"] == 150


def test_fast_tokenizer_backend_state_is_left_as_found(tiny_qwen2):
    """A padded call leaves padding on in the Rust backend: encoding without it gives the unpadded ids of the slow
    path and puts the padding back; resetting it switches it off."""
    from rustcoder.modeling import load_tokenizer

    tok, _ = load_tokenizer(str(tiny_qwen2), model_type="qwen2")
    texts = ["fn main() {}", "let x: u32 = 1;\nlet y = x + 2;"]
    want = tok(texts, add_special_tokens=False)["input_ids"]
    tok(texts, padding=True)
    assert tok.backend_tokenizer.padding is not None  # what generation leaves behind
    assert compat.encode_without_state(tok, texts) == want
    assert tok.backend_tokenizer.padding is not None  # put back as found
    compat.reset_backend_padding(tok)
    assert tok.backend_tokenizer.padding is None
    assert compat.encode_without_state(object(), texts) is None  # no fast backend: the caller's slow path


def test_rustcoders_trainer_overrides_no_private_method_of_trl_or_transformers():
    """The trainer (rustcoder/trainer.py) customises TRL's SFTTrainer through public methods only (the step
    sampler through get_train_dataloader, not Trainer._get_train_sampler): a private method it defines is its
    own, never one a TRL or transformers release may rename under it."""
    from trl import SFTTrainer

    from rustcoder.trainer import RustcoderSFTTrainer

    own = [n for n in vars(RustcoderSFTTrainer) if n.startswith("_") and not n.startswith("__")]
    assert own, "the scan sees the class"
    assert [n for n in own if hasattr(SFTTrainer, n)] == []
    public = [n for n in vars(RustcoderSFTTrainer) if not n.startswith("_") and callable(getattr(SFTTrainer, n, None))]
    assert {"get_train_dataloader", "training_step", "evaluation_loop", "log"} <= set(public)
