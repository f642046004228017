"""ExSearch training sequences: a trajectory as model / injected / gold-answer pieces, tokenised
piece by piece after the prompt, with labels -100 on the prompt and on injected tokens and the
positions of the gold answer's tokens marked (``log p(y|x,z)`` is read there)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepretrieval.agent.runner import Episode
from deepretrieval.agent.seeds import gold_answers
from deepretrieval.core import agent_protocol as P

IGNORE = -100


@dataclass
class Example:
    """One training sequence: ids, labels (-100 on prompt and injected tokens), the positions of
    the gold answer's tokens, the question it belongs to and its weight."""

    input_ids: list[int]
    labels: list[int]
    answer_mask: list[int]
    group: str
    weight: float = 1.0
    loglik: float | None = None
    record: dict[str, Any] = field(default_factory=dict)
    final_turn: int | None = None   # index in ``input_ids`` where the last model turn begins


def answered_early(episode: Episode) -> bool:
    """Did the episode stop on its own — answer before its last allowed turn, i.e. without the
    environment's last-turn note? That is the policy's stop decision (docs/agentic.md, ExSearch,
    ``--stop-guard``)."""
    return episode.finish == "answer" and episode.turns < episode.settings.max_turns


def mask_final_turn(example: Example) -> None:
    """No loss on the example's last model turn (its think, the ``<answer>`` tag, the answer and
    the end of the sequence): the M-step then learns the turns before the stop decision only.
    ``log p(y|x,z)`` reads ``answer_mask`` through the labels, so compute it before masking."""
    if example.final_turn is None:
        raise ValueError("the example does not know where its last turn begins (a seed example?)")
    example.labels[example.final_turn:] = [IGNORE] * (len(example.labels) - example.final_turn)


def _cut_final_action(text: str) -> str:
    """A model turn up to (not including) its last action tag (``<answer>`` / ``<search>``)."""
    cut = max(text.rfind(P.ANSWER_OPEN), text.rfind(P.SEARCH_OPEN))
    return text if cut < 0 else text[:cut]


def gold_pieces(episode: Episode, gold: str) -> list[tuple[str, str]]:
    """The episode as ``(text, kind)`` pieces with its final answer replaced by ``gold``; kinds:
    ``model``, ``injected``, ``answer`` (the gold answer's text, scored for ``log p(y|x,z)``).
    Everything after the last model turn (a refusal, say) is dropped, the last turn's action is
    cut, and ``<answer>gold</answer>`` follows."""
    segments = list(episode.segments)
    while segments and segments[-1].injected:
        segments.pop()
    pieces: list[tuple[str, str]] = [(s.text, "injected" if s.injected else "model")
                                     for s in segments[:-1]]
    last = _cut_final_action(segments[-1].text) if segments else ""
    pieces.append((last + P.ANSWER_OPEN, "model"))
    pieces.append((gold, "answer"))
    pieces.append((P.ANSWER_CLOSE, "model"))
    return [(t, k) for t, k in pieces if t]


def trajectory_pieces(episode: Episode) -> list[tuple[str, str]]:
    """A seed episode as it is (its own final answer kept): model / injected pieces."""
    return [(s.text, "injected" if s.injected else "model") for s in episode.segments if s.text]


def prompt_text(tokenizer, episode: Episode) -> str:
    """The chat template's rendering of the episode's messages + generation prompt + prefill:
    exactly what the generator showed the model."""
    if not episode.rollout.single_message:
        raise ValueError(f"ExSearch trains episodes that are one assistant message (the tag "
                         f"protocol), not the {episode.settings.protocol!r} protocol's messages; "
                         f"prepare the rows with --protocol tags")
    return tokenizer.apply_chat_template([dict(m) for m in episode.messages], tokenize=False,
                                         add_generation_prompt=True) + episode.prefill


def encode(tokenizer, prompt: str, pieces: Sequence[tuple[str, str]], *, eos: bool = True,
           starts: list[int] | None = None) -> tuple[list[int], list[int], list[int]]:
    """``(input_ids, labels, answer_mask)``: the prompt and every piece tokenised on their own
    (as :meth:`Episode.token_ids` does), labels -100 on prompt and ``injected`` tokens, the
    tokenizer's end-of-sequence token (the end of the assistant turn) appended as a label.
    ``starts``: a list that receives the index in ``input_ids`` where each piece begins."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    labels = [IGNORE] * len(ids)
    answer = [0] * len(ids)
    for text, kind in pieces:
        if starts is not None:
            starts.append(len(ids))
        if kind not in ("model", "injected", "answer"):
            raise ValueError(f"unknown piece kind {kind!r}")
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += [IGNORE] * len(seg) if kind == "injected" else seg
        answer += [1 if kind == "answer" else 0] * len(seg)
    if eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
        answer.append(0)
    return ids, labels, answer


def question_key(row: Mapping[str, Any] | None) -> str:
    info = (row or {}).get("extra_info") or {}
    return str(info.get("query_id") or info.get("index") or info.get("query"))


def make_examples(tokenizer, episodes: Sequence[Episode], *, replace_answer: bool,
                  max_length: int) -> tuple[list[Example], int]:
    """Examples of episodes (gold answer in place when ``replace_answer``); returns the examples
    and how many were skipped for being longer than ``max_length`` tokens."""
    out, skipped = [], 0
    for ep in episodes:
        gold = gold_answers(ep.row)[0]
        pieces = gold_pieces(ep, gold) if replace_answer else trajectory_pieces(ep)
        starts: list[int] = []
        ids, labels, answer = encode(tokenizer, prompt_text(tokenizer, ep), pieces, starts=starts)
        if len(ids) > max_length:
            skipped += 1
            continue
        # the last turn: gold_pieces ends with (turn + <answer>, gold, </answer>)
        final = starts[-3] if replace_answer else None
        out.append(Example(ids, labels, answer, question_key(ep.row), final_turn=final, record={
            "question": ((ep.row or {}).get("extra_info") or {}).get("query"), "gold": gold,
            "trajectory": ep.text, "answer": ep.answer, "finish": ep.finish,
            "n_search": ep.n_search, "queries": [s["query"] for s in ep.searches],
            "turns": ep.turns, "answered_early": answered_early(ep)}))
    return out, skipped
