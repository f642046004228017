"""The tool-call protocol (chat templates with tool support; the hermes format verl's
``tool_agent`` speaks): the model calls ``<tool_call>{"name": "search", "arguments": {"query":
"..."}}</tool_call>`` (several per turn allowed); each call is answered by a ``tool`` message, which
hermes chat templates render inside ``<tool_response>…</tool_response>``. A turn without a tool call
ends the episode; its final answer is written inside ``<answer>…</answer>``."""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from deepretrieval.core.protocols.base import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    MAX_ACTION_CHARS,
    SEARCH_TOOL_NAME,
    TOOL_AGENT_LOOP,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    Action,
    AgentProtocol,
    cut_environment_text,
    records_in,
    search_tool_schema,
    strip_end_markers,
)
from deepretrieval.core.tags import tag_contents

TOOL_SYSTEM = (
    "You answer questions by searching a corpus with the search tool. Call it as often as you "
    "need, then give only the short final answer inside <answer> </answer>, for example "
    "<answer> Paris </answer>.\n\n# Tools\n\nYou may call one or more functions.\n<tools>\n{tools}\n"
    "</tools>\n\nFor each call, return a JSON object with the function name and arguments inside "
    "<tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": \"search\", \"arguments\": "
    "{{\"query\": \"...\"}}}}\n</tool_call>")


def decode_call(raw: str) -> Any:
    """One ``<tool_call>`` body decoded (arguments sent as a JSON string decoded too; arguments
    that do not decode become None), or ``ValueError`` when it is not JSON."""
    try:
        call = json.loads(raw.strip())
    except RecursionError:
        raise ValueError("too deeply nested") from None
    if isinstance(call, dict) and isinstance(call.get("arguments"), str):
        try:  # some templates send the arguments as a JSON string
            call = {**call, "arguments": json.loads(call["arguments"])}
        except (ValueError, RecursionError):
            call = {**call, "arguments": None}
    return call


def string_argument(call: Any, name: str) -> str | None:
    """The non-empty string argument ``name`` of a decoded call (cut to the action length), or
    None."""
    args = call.get("arguments") if isinstance(call, dict) else None
    value = args.get(name) if isinstance(args, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:MAX_ACTION_CHARS]


def write_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


def parse_tool_turn(text: object) -> Action:
    """Every ``<tool_call>`` JSON ``{"name": "search", "arguments": {"query": str}}`` is a search;
    a malformed call makes the turn ``invalid`` (the model is told so); a turn without tool calls
    is its final turn: ``answer`` with the last ``<answer>`` (None if absent)."""
    if not isinstance(text, str):
        return Action("invalid", "", error="turn is not a string")
    text = strip_end_markers(cut_environment_text(text))
    records = records_in(text)
    calls = tag_contents(text, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
    if not calls:
        if TOOL_CALL_OPEN in text:
            return Action("invalid", text, records=records, error="unclosed tool call")
        answers = tag_contents(text, ANSWER_OPEN, ANSWER_CLOSE)
        answer = answers[-1].strip()[:MAX_ACTION_CHARS] if answers else None
        return Action("answer", text, answer=answer or None, records=records)
    queries = []
    for raw in calls:
        try:
            call = decode_call(raw)
        except ValueError:
            return Action("invalid", text, records=records, error="tool call is not valid JSON")
        if not isinstance(call, dict) or call.get("name") != SEARCH_TOOL_NAME:
            return Action("invalid", text, records=records,
                          error=f"unknown tool (only {SEARCH_TOOL_NAME!r} exists)")
        query = string_argument(call, "query")
        if query is None:
            return Action("invalid", text, records=records, error="search needs a non-empty 'query'")
        queries.append(query)
    return Action("search", text, queries=tuple(queries), records=records)


def tool_response(content: str) -> str:
    """A tool response as hermes templates render it (for trajectory text)."""
    return f"\n{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}\n"


class ToolProtocol(AgentProtocol):
    name = "tool"
    description = "hermes <tool_call> search calls, tool messages, final <answer>…</answer>"
    single_message = False
    verl_agent_loop = TOOL_AGENT_LOOP
    calls_tools = True

    def parse_turn(self, text: object) -> Action:
        return parse_tool_turn(text)

    def stop_strings(self) -> tuple[str, ...]:
        return (ANSWER_CLOSE, TOOL_RESPONSE_OPEN)

    def wrap(self, content: str) -> str:
        return tool_response(content)

    def system_prompt(self) -> str:
        return TOOL_SYSTEM.format(tools=json.dumps(search_tool_schema()))

    def write_search(self, queries: Sequence[str]) -> str:
        return "\n".join(write_call(SEARCH_TOOL_NAME, {"query": q}) for q in queries)

    def write_answer(self, answer: str) -> str:
        return f"{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


TOOL = ToolProtocol()
