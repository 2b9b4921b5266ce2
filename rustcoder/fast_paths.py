"""Moved: the answer-only loss is ``rustcoder.answer_loss``, the fast LoRA dropout ``rustcoder.lora_dropout``.
(Kept until train.py imports them from there.)"""

from .answer_loss import add_answer_head, answer_nll  # noqa: F401
from .lora_dropout import FastDropout, use_fast_dropout  # noqa: F401
