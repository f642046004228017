"""The single-shot rollout: one completion per row, ``<think>…</think><answer>{"query": …}</answer>``
(or answer-only), scored by searching the answer (:mod:`deepretrieval.core.answer` is its
contract). Nothing is injected; the completion stops after ``</answer>``."""
from __future__ import annotations

from deepretrieval.core.answer import ParsedAnswer, parse_answer
from deepretrieval.core.protocols.base import ANSWER_CLOSE, Rollout

FORMAT_REASONING = (
    "Think about the request first, inside <think> </think>. Then give your final answer inside "
    "<answer> </answer> as JSON with the key \"{key}\", for example: "
    "<think>...</think>\n<answer>{{\"{key}\": \"...\"}}</answer>")
FORMAT_ANSWER_ONLY = (
    "Give only your final answer inside <answer> </answer> as JSON with the key \"{key}\", for "
    "example: <answer>{{\"{key}\": \"...\"}}</answer>")


class SingleShot(Rollout):
    name = "answer"
    episodic = False
    description = "one completion: <think>…</think><answer>{\"query\": …}</answer>"

    def system_prompt(self, system: str, answer_key: str, reasoning: bool) -> str:
        """The task's system text with the answer-format instruction."""
        fmt = FORMAT_REASONING if reasoning else FORMAT_ANSWER_ONLY
        return f"{system} {fmt.format(key=answer_key)}"

    def parse_turn(self, text: str, answer_key: str, reasoning: bool) -> ParsedAnswer:
        """Strict format check of a completion (prefill already put back)."""
        return parse_answer(text, answer_key, reasoning=reasoning)

    def stop_strings(self) -> tuple[str, ...]:
        return (ANSWER_CLOSE,)


SINGLE_SHOT = SingleShot()
