"""The agent protocol: how a model turn becomes an action and how search results go back in.

Two protocols share the settings and the scoring rules:

* **tags** (default; Search-R1 / ExSearch style, works with any chat template): the whole episode
  is one assistant message. The model may think in ``<think>…</think>``, note evidence in
  ``<record>…</record>``, and ends a turn with either ``<search>query</search>`` or
  ``<answer>…</answer>``. The environment appends its reply inside
  ``<information>…</information>`` (search results, the invalid-action message, the
  last-turn refusal, a search failure) and the model continues after it.
* **tool** (chat templates with tool support; the hermes format verl's ``tool_agent`` speaks):
  the model calls ``<tool_call>{"name": "search", "arguments": {"query": "..."}}</tool_call>``
  (several per turn allowed); each call is answered by a ``tool`` message, which hermes chat
  templates render inside ``<tool_response>…</tool_response>``. A turn without a tool call ends
  the episode; its final answer is written inside ``<answer>…</answer>``.

Everything the environment writes is inside ``<information>`` or ``<tool_response>`` blocks, so a
trajectory string alone — as verl's reward path passes it to ``compute_score`` — tells model text
from injected text: :func:`final_answer` reads the last ``<answer>`` *outside* those blocks, and
:func:`trajectory_stats` counts searches, turns and failures from the blocks.

Pure functions and dataclasses only (stdlib); nothing here searches or generates.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
RECORD_OPEN, RECORD_CLOSE = "<record>", "</record>"

PROTOCOLS = ("tags", "tool")
#: Prefix of the environment's reply when a search failed (the episode ends there).
SEARCH_ERROR_PREFIX = "Search failed:"
#: Longest query or answer taken from a model turn (characters); longer ones are cut.
MAX_ACTION_CHARS = 2000
SEARCH_TOOL_NAME = "search"

_INJECTED = re.compile(r"<information>.*?(?:</information>|\Z)|<tool_response>.*?(?:</tool_response>|\Z)",
                       re.DOTALL)
_BLOCK = re.compile(r"<(information|tool_response)>(.*?)(?:</\1>|\Z)", re.DOTALL)
_TAG_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_RECORD = re.compile(r"<record>(.*?)</record>", re.DOTALL)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<|end|>", "<end_of_turn>")


@dataclass(frozen=True)
class AgentSettings:
    """Protocol settings (the same in training, evaluation and serving; rows carry them in
    ``extra_info``: ``max_turns``, ``top_k``, ``agent`` = the rest).

    ``max_turns``: model turns per episode (searches are refused on the last one, so at most
    ``max_turns - 1`` searches). ``top_k``: passages per search. ``max_result_chars``: the rendered
    passages of one search are cut to this many characters. ``max_action_chars``: longest query.
    """

    protocol: str = "tags"
    max_turns: int = 4
    top_k: int = 3
    max_result_chars: int = 2000
    invalid_message: str = ("That turn had no action. To search, write the query between the "
                            "search tags; to finish, write the final answer between the answer "
                            "tags.")
    refusal_message: str = "No searches are left. The episode ends without an answer."
    last_turn_note: str = "This is your last turn: give your final answer now."
    no_results_message: str = "No passages found."
    budget_message: str = "The search results do not fit in the token budget. The episode ends."

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown agent protocol {self.protocol!r}; known: {list(PROTOCOLS)}")
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.max_result_chars < 1:
            raise ValueError("max_result_chars must be >= 1")

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


@dataclass(frozen=True)
class Action:
    """One parsed model turn. ``kind``: ``search``, ``answer`` or ``invalid``. ``text``: the turn
    as kept in the trajectory (cut right after the action). ``queries``: the search queries (tag
    protocol: one). ``records``: ``<record>`` evidence the model wrote in this turn."""

    kind: str
    text: str
    queries: tuple[str, ...] = ()
    answer: str | None = None
    records: tuple[str, ...] = ()
    error: str | None = None


def _strip_end_markers(text: str) -> str:
    changed = True
    while changed:
        changed = False
        stripped = text.rstrip()
        for marker in _END_MARKERS:
            if stripped.endswith(marker):
                text = stripped[: -len(marker)]
                changed = True
    return text


_TEMPLATE_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>(?:system|user|assistant|tool)?")


def _visible(text: str) -> str:
    """Text without chat-template tokens (as left in a decoded verl response)."""
    return _TEMPLATE_TOKEN.sub("", text).strip()


def _records(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in _RECORD.findall(text) if r.strip())


def parse_tag_turn(text: object) -> Action:
    """Tag protocol: the first complete ``<search>…</search>`` or ``<answer>…</answer>`` of the
    turn is its action (everything after it is dropped, as a stop string would); an empty query or
    answer, or no action at all, is ``invalid``."""
    if not isinstance(text, str):
        return Action("invalid", "", error="turn is not a string")
    text = cut_environment_text(text)
    match = _TAG_ACTION.search(text)
    if match is None:
        return Action("invalid", _strip_end_markers(text), records=_records(text), error="no action")
    kept = text[: match.end()]
    value = match.group(2).strip()[:MAX_ACTION_CHARS]
    records = _records(kept)
    if not value:
        return Action("invalid", kept, records=records, error=f"empty {match.group(1)}")
    if match.group(1) == "search":
        return Action("search", kept, queries=(value,), records=records)
    return Action("answer", kept, answer=value, records=records)


def cut_environment_text(text: str) -> str:
    """A model turn up to where it starts writing an environment block (``<information>`` or
    ``<tool_response>``): only the environment writes those, so a trajectory's blocks are always
    injected text (a model cannot fake search results, or hide text from the reward)."""
    cut = min((p for p in (text.find(INFO_OPEN), text.find(TOOL_RESPONSE_OPEN)) if p >= 0),
              default=-1)
    return text if cut < 0 else text[:cut]


def parse_tool_turn(text: object) -> Action:
    """Tool protocol: every ``<tool_call>`` JSON ``{"name": "search", "arguments": {"query":
    str}}`` is a search; a malformed call makes the turn ``invalid`` (the model is told so); a turn
    without tool calls is its final turn: ``answer`` with the last ``<answer>`` (None if absent)."""
    if not isinstance(text, str):
        return Action("invalid", "", error="turn is not a string")
    text = _strip_end_markers(cut_environment_text(text))
    calls = _TOOL_CALL.findall(text)
    records = _records(text)
    if not calls:
        if TOOL_CALL_OPEN in text:
            return Action("invalid", text, records=records, error="unclosed tool call")
        answers = _ANSWER.findall(text)
        answer = answers[-1].strip()[:MAX_ACTION_CHARS] if answers else None
        return Action("answer", text, answer=answer or None, records=records)
    queries = []
    for raw in calls:
        try:
            call = json.loads(raw.strip())
        except (ValueError, RecursionError):
            return Action("invalid", text, records=records, error="tool call is not valid JSON")
        if not isinstance(call, dict) or call.get("name") != SEARCH_TOOL_NAME:
            return Action("invalid", text, records=records,
                          error=f"unknown tool (only {SEARCH_TOOL_NAME!r} exists)")
        args = call.get("arguments")
        if isinstance(args, str):  # some templates send the arguments as a JSON string
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                args = None
        query = args.get("query") if isinstance(args, dict) else None
        if not isinstance(query, str) or not query.strip():
            return Action("invalid", text, records=records, error="search needs a non-empty 'query'")
        queries.append(query.strip()[:MAX_ACTION_CHARS])
    return Action("search", text, queries=tuple(queries), records=records)


def parse_turn(text: object, protocol: str = "tags") -> Action:
    if protocol == "tags":
        return parse_tag_turn(text)
    if protocol == "tool":
        return parse_tool_turn(text)
    raise ValueError(f"unknown agent protocol {protocol!r}; known: {list(PROTOCOLS)}")


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


def information(content: str) -> str:
    """The tag protocol's injected block (with the blank lines around it)."""
    return f"\n\n{INFO_OPEN}{content}{INFO_CLOSE}\n\n"


def tool_response(content: str) -> str:
    """A tool response as hermes templates render it (for trajectory text)."""
    return f"\n{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}\n"


def search_error_content(reason: str) -> str:
    return f"{SEARCH_ERROR_PREFIX} {' '.join(str(reason).split())[:300]}"


def stop_strings(protocol: str) -> tuple[str, ...]:
    """Where a turn ends (besides end-of-turn): after the action's closing tag, or where the
    model starts writing an environment block (cut off by :func:`cut_environment_text`)."""
    return (SEARCH_CLOSE, ANSWER_CLOSE, INFO_OPEN) if protocol == "tags" else (ANSWER_CLOSE, TOOL_RESPONSE_OPEN)


# ---------------------------------------------------------------------------------------------
# prompts

def search_tool_schema() -> dict[str, Any]:
    """The search tool in OpenAI function format (what hermes templates list in ``<tools>``)."""
    return {"type": "function", "function": {
        "name": SEARCH_TOOL_NAME,
        "description": "Search the corpus; returns the top passages for the query.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "the search query"}},
            "required": ["query"]}}}


TAG_SYSTEM = (
    "You answer questions by searching a corpus. Think inside <think> </think> whenever you get "
    "new information. To search, write <search> your query </search>; the top passages come back "
    "between <information> and </information>. You may note the evidence you rely on inside "
    "<record> </record>. Search as often as you need, then give only the short final answer "
    "inside <answer> </answer>, for example <answer> Paris </answer>.")

TOOL_SYSTEM = (
    "You answer questions by searching a corpus with the search tool. Call it as often as you "
    "need, then give only the short final answer inside <answer> </answer>, for example "
    "<answer> Paris </answer>.\n\n# Tools\n\nYou may call one or more functions.\n<tools>\n{tools}\n"
    "</tools>\n\nFor each call, return a JSON object with the function name and arguments inside "
    "<tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": \"search\", \"arguments\": "
    "{{\"query\": \"...\"}}}}\n</tool_call>")


def system_prompt(protocol: str = "tags") -> str:
    if protocol == "tags":
        return TAG_SYSTEM
    if protocol == "tool":
        return TOOL_SYSTEM.format(tools=json.dumps(search_tool_schema()))
    raise ValueError(f"unknown agent protocol {protocol!r}; known: {list(PROTOCOLS)}")


def messages(question: str, protocol: str = "tags") -> list[dict[str, str]]:
    """Chat messages that start an episode."""
    return [{"role": "system", "content": system_prompt(protocol)},
            {"role": "user", "content": f"Question: {str(question).strip()}"}]


# ---------------------------------------------------------------------------------------------
# reading a finished trajectory (the reward's view)

def model_text(trajectory: object) -> str:
    """The trajectory without the injected blocks."""
    if not isinstance(trajectory, str):
        return ""
    return _INJECTED.sub(" ", trajectory)


def final_answer(trajectory: object) -> str | None:
    """The last ``<answer>…</answer>`` the model wrote (never one inside injected text); None
    when there is none or when that last one is empty (an earlier answer does not count)."""
    answers = _ANSWER.findall(model_text(trajectory))
    if not answers:
        return None
    value = answers[-1].strip()
    return value[:MAX_ACTION_CHARS] if value else None


def records(trajectory: object) -> list[str]:
    """``<record>`` evidence written by the model (injected text excluded)."""
    return list(_records(model_text(trajectory)))


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
    if content.startswith(settings.invalid_message.strip()):
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
    # failed or refused search) has no model turn after it. Tool protocol: the responses to one
    # turn's several calls follow each other with no model text between them.
    groups = len(blocks)
    if settings.protocol == "tool" and blocks:
        gaps = [text[a.end():b.start()] for a, b in itertools.pairwise(blocks)]
        groups = 1 + sum(1 for g in gaps if _visible(g))
    ends = bool(kinds) and kinds[-1] in ("search_error", "refused", "budget")
    turns = groups + (0 if ends else 1) if isinstance(trajectory, str) else 0
    n_results = sum(k == "results" for k in kinds)
    return TrajectoryStats(
        answer=final_answer(text), n_search=n_results, turns=turns,
        n_invalid=sum(k == "invalid" for k in kinds), search_error="search_error" in kinds,
        refused="refused" in kinds, budget="budget" in kinds,
        passages=tuple(m.group(2) for m, k in zip(blocks, kinds) if k == "results"))
