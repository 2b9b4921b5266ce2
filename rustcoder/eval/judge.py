"""An optional LLM judge for prose answers, through any OpenAI-compatible endpoint.

The judge sees the task, the reference answer and the candidate answer and replies with
"Score: N" (1-10). It complements chrF (which only counts shared character n-grams) for
summaries, explanations, doc comments, review comments and rationales. Standard library only.
"""

from __future__ import annotations

import re

from .backends import EndpointBackend, GenParams

JUDGE_SYSTEM = (
    "You grade answers to Rust programming tasks. Compare the candidate answer with the reference answer: "
    "is it correct, complete and specific to the code? Reply on the first line with 'Score: N', N an integer "
    "from 1 (wrong or unrelated) to 10 (as good as the reference), then one sentence of justification."
)
_SCORE = re.compile(r"score\s*[:=]?\s*(\d{1,2})(?:\s*/\s*10)?", re.IGNORECASE)


def judge_messages(task_prompt: str, reference: str, answer: str) -> list[dict]:
    """The chat messages sent to the judge for one answer."""
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Task:\n{task_prompt}\n\nReference answer:\n{reference}\n\n"
                                        f"Candidate answer:\n{answer}"}]


def parse_score(text: str) -> int | None:
    """The 1-10 score in a judge reply ("Score: 7", "7/10", or a lone number); None when absent."""
    m = _SCORE.search(text or "")
    if not m:
        m = re.match(r"\s*(\d{1,2})\b", text or "")
    if not m:
        return None
    value = int(m.group(1))
    return value if 1 <= value <= 10 else None


def judge_answer(client: EndpointBackend, model: str | None, task_prompt: str, reference: str, answer: str) -> dict:
    """{"score": 1-10 or None, "raw": the judge's reply or error}."""
    gen = client.complete(judge_messages(task_prompt, reference, answer),
                          GenParams(max_new_tokens=128, temperature=0.0), model)
    if gen.finish_reason == "error":
        return {"score": None, "raw": "", "error": gen.error}
    return {"score": parse_score(gen.text), "raw": gen.text[:500]}
