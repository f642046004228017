"""Agent episodes: the settings every protocol shares, what the environment writes into a
trajectory, and the reward's reading of a finished trajectory.

The protocols themselves — how a model turn becomes an action, where a turn stops, how the
environment's reply is wrapped, the system prompt — are registered objects in
:mod:`deepretrieval.core.protocols` (``tags``: Search-R1-style tags in one assistant message;
``tool``: hermes tool calls; see each module). ``AgentSettings.protocol`` names one and
``AgentSettings.rollout`` is the object.

Everything the environment writes is inside ``<information>`` or ``<tool_response>`` blocks, so a
trajectory string alone — as verl's reward path passes it to ``compute_score`` — tells model text
from injected text: :func:`final_answer` reads the answer *outside* those blocks, and
:func:`trajectory_stats` counts searches, turns and failures from the blocks.

Pure functions and dataclasses only (stdlib); nothing here searches or generates.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from deepretrieval.core.protocols import agent_protocol, protocol_names  # noqa: F401 - re-exported
from deepretrieval.core.protocols.base import (  # noqa: F401 - the protocol vocabulary, one import
    ANSWER_CLOSE,
    ANSWER_OPEN,
    INFO_CLOSE,
    INFO_OPEN,
    MAX_ACTION_CHARS,
    RECORD_CLOSE,
    RECORD_OPEN,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    SEARCH_TOOL_NAME,
    TAG_AGENT_LOOP,
    TOOL_AGENT_LOOP,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    Action,
    AgentProtocol,
    cut_environment_text,
    model_text,
    records_in,
    search_tool_schema,
)
from deepretrieval.core.protocols.tags import TAG_SYSTEM, information, parse_tag_turn  # noqa: F401
from deepretrieval.core.protocols.tool import TOOL_SYSTEM, parse_tool_turn, tool_response  # noqa: F401

#: Prefix of the environment's reply when a search failed (the episode ends there).
SEARCH_ERROR_PREFIX = "Search failed:"
#: ``extra_info`` key of the record of real searches: the contents of the result blocks the
#: environment injected (the runner, the verl agent loop and ``search`` tool write it). The ``hit``
#: metric reads it, never the trajectory text, which a model can fake blocks into.
RETRIEVED_KEY = "agent_passages"
#: How an episode ends (``Episode.finish``, verl's ``agent_finish``, TRL's ``finish_<reason>``
#: logs). ``budget``: the trajectory reached the token budget
#: (:class:`deepretrieval.agent.runner.TokenBudget`, one rule for every rollout loop). verl
#: agent-loop runs before the rule was shared wrote ``length`` there; nothing reads it back.
FINISH_REASONS = ("answer", "no_answer", "max_turns", "search_error", "budget")

_BLOCK = re.compile(r"<(information|tool_response)>(.*?)(?:</\1>|\Z)", re.DOTALL)
_TEMPLATE_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>(?:system|user|assistant|tool)?")


@dataclass(frozen=True)
class AgentSettings:
    """Protocol settings (the same in training, evaluation and serving; rows carry them in
    ``extra_info``: ``max_turns``, ``top_k``, ``agent`` = the rest).

    ``max_turns``: model turns per episode (searches are refused on the last one, so at most
    ``max_turns - 1`` searches). ``top_k``: passages per search. ``max_result_chars``: the rendered
    passages of one search are cut to this many characters. ``max_action_chars``: longest query.
    ``max_calls_per_turn``: tool protocol, searches run for one turn (the first ones; later calls
    of the turn get no response). ``invalid_message``: the reply to a turn without a valid action
    (None: the protocol's own, :attr:`invalid_text`).
    """

    protocol: str = "tags"
    max_turns: int = 4
    top_k: int = 3
    max_result_chars: int = 2000
    invalid_message: str | None = None  # None: the protocol's (AgentProtocol.invalid_message)
    refusal_message: str = "No searches are left. The episode ends without an answer."
    last_turn_note: str = "This is your last turn: give your final answer now."
    no_results_message: str = "No passages found."
    budget_message: str = "The search results do not fit in the token budget. The episode ends."
    max_calls_per_turn: int = 8

    def __post_init__(self):
        agent_protocol(self.protocol)  # an unknown name raises with the known ones
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.max_result_chars < 1:
            raise ValueError("max_result_chars must be >= 1")
        if self.max_calls_per_turn < 1:
            raise ValueError("max_calls_per_turn must be >= 1")

    @property
    def rollout(self) -> AgentProtocol:
        """The protocol object :attr:`protocol` names."""
        return agent_protocol(self.protocol)

    @property
    def invalid_text(self) -> str:
        """The reply to an invalid turn: :attr:`invalid_message`, else the protocol's."""
        return self.rollout.invalid_message if self.invalid_message is None else self.invalid_message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_extra_info(cls, extra_info: Mapping[str, Any] | None,
                        base: AgentSettings | None = None) -> AgentSettings:
        """Settings of a row: ``extra_info.max_turns``/``top_k`` and ``extra_info.agent`` (a dict
        of any other field) over ``base`` (default: the defaults)."""
        base = base or cls()
        info = extra_info or {}
        # (rows read back from parquet carry None for the fields other rows set)
        changes: dict[str, Any] = {k: v for k, v in dict(info.get("agent") or {}).items()
                                   if v is not None}
        for key in ("max_turns", "top_k"):
            if info.get(key) is not None:
                changes[key] = int(info[key])
        known = {f.name for f in fields(cls)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown agent setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(base, **changes) if changes else base


def _visible(text: str) -> str:
    """Text without chat-template tokens (as left in a decoded verl response)."""
    return _TEMPLATE_TOKEN.sub("", text).strip()


def parse_turn(text: object, protocol: str = "tags") -> Action:
    """A model turn parsed by the protocol named ``protocol``."""
    return agent_protocol(protocol).parse_turn(text)


# ---------------------------------------------------------------------------------------------
# what the environment writes

def _clean_passage(text: str) -> str:
    # a passage may not close (or open) the block it is shown in
    for tag in (INFO_OPEN, INFO_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE):
        text = text.replace(tag, tag.replace("<", "(").replace(">", ")"))
    return " ".join(text.split())


def render_passages(texts: Sequence[str | None], settings: AgentSettings) -> str:
    """``Doc 1: …`` lines of one search, cut to ``settings.max_result_chars`` characters (a cut
    passage ends with ``…``)."""
    lines = [f"Doc {i}: {_clean_passage(t or '')}" for i, t in enumerate(texts, start=1)]
    if not lines:
        return settings.no_results_message
    body = "\n".join(lines)
    if len(body) > settings.max_result_chars:
        body = body[: max(0, settings.max_result_chars - 1)].rstrip() + "…"
    return body


def search_error_content(reason: str) -> str:
    return f"{SEARCH_ERROR_PREFIX} {' '.join(str(reason).split())[:300]}"


def stop_strings(protocol: str) -> tuple[str, ...]:
    """Where a turn of the protocol named ``protocol`` ends (besides end-of-turn)."""
    return agent_protocol(protocol).stop_strings()


# ---------------------------------------------------------------------------------------------
# prompts

def system_prompt(protocol: str = "tags") -> str:
    return agent_protocol(protocol).system_prompt()


def messages(question: str, protocol: str = "tags") -> list[dict[str, str]]:
    """Chat messages that start an episode of the protocol named ``protocol``."""
    return agent_protocol(protocol).messages(question)


# ---------------------------------------------------------------------------------------------
# reading a finished trajectory (the reward's view)

def final_answer(trajectory: object, protocol: str = "tags") -> str | None:
    """The final answer the model wrote in a trajectory (never one inside injected text), as the
    protocol named ``protocol`` reads it; None when there is none."""
    return agent_protocol(protocol).final_answer(trajectory)


def records(trajectory: object) -> list[str]:
    """``<record>`` evidence written by the model (injected text excluded)."""
    return list(records_in(model_text(trajectory)))


def injected_blocks(trajectory: object) -> list[str]:
    """Contents of the injected blocks, in order."""
    if not isinstance(trajectory, str):
        return []
    return [m.group(2).strip() for m in _BLOCK.finditer(trajectory)]


def classify_block(content: str, settings: AgentSettings) -> str:
    """``results``, ``search_error``, ``invalid``, ``refused`` or ``budget`` for an injected
    block (a cut ``budget`` block included)."""
    content = content.strip()
    if content.startswith(SEARCH_ERROR_PREFIX):
        return "search_error"
    if content and settings.budget_message.startswith(content):
        return "budget"
    if content.startswith(settings.invalid_text.strip()):
        return "invalid"
    if content.startswith(settings.refusal_message.strip()):
        return "refused"
    return "results"


@dataclass(frozen=True)
class TrajectoryStats:
    answer: str | None
    n_search: int            # searches answered with results
    turns: int               # model turns
    n_invalid: int
    search_error: bool
    refused: bool
    passages: tuple[str, ...] = field(default=())  # contents of the result blocks
    budget: bool = False     # the episode ended on the token budget


def trajectory_stats(trajectory: object, settings: AgentSettings | None = None) -> TrajectoryStats:
    """What a trajectory string says about its episode (see the comments for how turns are
    counted from the text)."""
    settings = settings or AgentSettings()
    text = trajectory if isinstance(trajectory, str) else ""
    blocks = list(_BLOCK.finditer(text))
    kinds = [classify_block(m.group(2), settings) for m in blocks]
    # model turns alternate with the environment's replies; a reply that ends the episode (a
    # failed or refused search) has no model turn after it. Protocols with a message per turn:
    # the responses to one turn's several calls follow each other with no model text between them.
    rollout = settings.rollout
    groups = len(blocks)
    if not rollout.single_message and blocks:
        gaps = [text[a.end():b.start()] for a, b in itertools.pairwise(blocks)]
        groups = 1 + sum(1 for g in gaps if _visible(g))
    ends = bool(kinds) and kinds[-1] in ("search_error", "refused", "budget")
    turns = groups + (0 if ends else 1) if isinstance(trajectory, str) else 0
    n_results = sum(k == "results" for k in kinds)
    return TrajectoryStats(
        answer=rollout.final_answer(text), n_search=n_results, turns=turns,
        n_invalid=sum(k == "invalid" for k in kinds), search_error="search_error" in kinds,
        refused="refused" in kinds, budget="budget" in kinds,
        passages=tuple(m.group(2) for m, k in zip(blocks, kinds) if k == "results"))
