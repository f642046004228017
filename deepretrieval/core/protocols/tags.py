"""The tag protocol (default; Search-R1 / ExSearch style, works with any chat template): the whole
episode is one assistant message. The model may think in ``<think>…</think>``, note evidence in
``<record>…</record>``, and ends a turn with either ``<search>query</search>`` or
``<answer>…</answer>``. The environment appends its reply inside ``<information>…</information>``
(search results, the invalid-action message, the last-turn refusal, a search failure) and the model
continues after it. (Search-R1's own tags and ``\\n\\n<information>…</information>\\n\\n`` spacing;
the prompt is ours, with a system message.)"""
from __future__ import annotations

from collections.abc import Sequence

from deepretrieval.core.protocols.base import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    INFO_CLOSE,
    INFO_OPEN,
    MAX_ACTION_CHARS,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    TAG_AGENT_LOOP,
    Action,
    AgentProtocol,
    cut_environment_text,
    records_in,
    strip_end_markers,
)
from deepretrieval.core.tags import first_block

TAG_SYSTEM = (
    "You answer questions by searching a corpus. Think inside <think> </think> whenever you get "
    "new information. To search, write <search> your query </search>; the top passages come back "
    "between <information> and </information>. You may note the evidence you rely on inside "
    "<record> </record>. Search as often as you need, then give only the short final answer "
    "inside <answer> </answer>, for example <answer> Paris </answer>.")


def parse_tag_turn(text: object) -> Action:
    """The first complete ``<search>…</search>`` or ``<answer>…</answer>`` of the turn is its
    action (everything after it is dropped, as a stop string would); an empty query or answer, or
    no action at all, is ``invalid``."""
    if not isinstance(text, str):
        return Action("invalid", "", error="turn is not a string")
    text = cut_environment_text(text)
    match = first_block(text, ("search", "answer"))
    if match is None:
        return Action("invalid", strip_end_markers(text), records=records_in(text), error="no action")
    kind, start, stop, end = match
    kept = text[:end]
    value = text[start:stop].strip()[:MAX_ACTION_CHARS]
    records = records_in(kept)
    if not value:
        return Action("invalid", kept, records=records, error=f"empty {kind}")
    if kind == "search":
        return Action("search", kept, queries=(value,), records=records)
    return Action("answer", kept, answer=value, records=records)


def information(content: str) -> str:
    """The tag protocol's injected block (with the blank lines around it)."""
    return f"\n\n{INFO_OPEN}{content}{INFO_CLOSE}\n\n"


class TagProtocol(AgentProtocol):
    name = "tags"
    description = "one assistant message: <search>…</search>, <information> replies, <answer>…</answer>"
    single_message = True
    verl_agent_loop = TAG_AGENT_LOOP

    def parse_turn(self, text: object) -> Action:
        return parse_tag_turn(text)

    def stop_strings(self) -> tuple[str, ...]:
        # after the action's closing tag, or where the model starts writing an environment block
        return (SEARCH_CLOSE, ANSWER_CLOSE, INFO_OPEN)

    def wrap(self, content: str) -> str:
        return information(content)

    def system_prompt(self) -> str:
        return TAG_SYSTEM

    def write_search(self, queries: Sequence[str]) -> str:
        (query,) = queries  # one search per turn
        return f"{SEARCH_OPEN}{query}{SEARCH_CLOSE}"

    def write_answer(self, answer: str) -> str:
        return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


TAGS = TagProtocol()
