"""The function-calling protocol with two tools (``functions``): OpenAI-style function calling in
the hermes ``<tool_call>`` format that chat models with tool templates (Qwen2.5/3, Hermes, Llama 3.1
tool use) are tuned on, with a ``search`` tool and an ``answer`` tool that ends the episode —
the shape of most function-calling agents, where finishing is itself a call (no free-text answer
tag).

A turn is one or more calls: ``{"name": "search", "arguments": {"query": "..."}}`` (several per
turn allowed, each answered by a ``tool`` message rendered inside ``<tool_response>``), or one
``{"name": "answer", "arguments": {"answer": "..."}}`` (alone in its turn: the final answer). A
turn without a call, an unknown tool, a call that is not JSON or lacks its argument, or an answer
next to other calls is ``invalid`` (the model is told so and goes on). The reward reads the last
``answer`` call of the model's text (:meth:`FunctionsProtocol.final_answer`; calls inside injected
blocks never count).

Rows have no verl agent loop (verl's ``tool_agent`` would run ``answer`` as a tool): train them on
TRL (the tool-call completion mask) and evaluate or serve them with the episode runner.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from deepretrieval.core.protocols.base import (
    SEARCH_TOOL_NAME,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_OPEN,
    Action,
    AgentProtocol,
    cut_environment_text,
    model_text,
    records_in,
    search_tool_schema,
    strip_end_markers,
    tool_schema,
)
from deepretrieval.core.protocols.tool import decode_call, string_argument, tool_response, write_call
from deepretrieval.core.tags import tag_contents

ANSWER_TOOL_NAME = "answer"

FUNCTIONS_SYSTEM = (
    "Answer the user's question using the tools. Search the corpus as many times as you need; "
    "when you know the answer, call the answer tool once with only the short final answer, for "
    "example Paris.\n\n# Tools\n\nYou may call one or more functions.\n<tools>\n{tools}\n</tools>\n\n"
    "For each call, return a JSON object with the function name and arguments inside "
    "<tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>")


def answer_tool_schema() -> dict:
    return tool_schema(ANSWER_TOOL_NAME, "Give the final answer; ends the conversation.",
                       ANSWER_TOOL_NAME, "the short final answer")


class FunctionsProtocol(AgentProtocol):
    name = "functions"
    description = "function calling with two tools: search(query) and answer(answer)"
    single_message = False
    verl_agent_loop = None
    calls_tools = True
    tools = (SEARCH_TOOL_NAME, ANSWER_TOOL_NAME)
    invalid_message = ("That turn made no valid tool call. To search, call the search tool with a "
                       "query; to finish, call the answer tool, alone, with the final answer.")

    def parse_turn(self, text: object) -> Action:
        if not isinstance(text, str):
            return Action("invalid", "", error="turn is not a string")
        text = strip_end_markers(cut_environment_text(text))
        records = records_in(text)
        raws = tag_contents(text, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
        if not raws:
            error = "unclosed tool call" if TOOL_CALL_OPEN in text else "no tool call"
            return Action("invalid", text, records=records, error=error)
        queries: list[str] = []
        answers: list[str] = []
        for raw in raws:
            try:
                call = decode_call(raw)
            except ValueError:
                return Action("invalid", text, records=records, error="tool call is not valid JSON")
            name = call.get("name") if isinstance(call, dict) else None
            if name not in self.tools:
                return Action("invalid", text, records=records,
                              error=f"unknown tool (known: {list(self.tools)})")
            argument = "query" if name == SEARCH_TOOL_NAME else ANSWER_TOOL_NAME
            value = string_argument(call, argument)
            if value is None:
                return Action("invalid", text, records=records,
                              error=f"{name} needs a non-empty {argument!r}")
            (queries if name == SEARCH_TOOL_NAME else answers).append(value)
        if answers:
            if len(raws) > 1:
                return Action("invalid", text, records=records,
                              error="the answer call must be the only call of its turn")
            return Action("answer", text, answer=answers[0], records=records)
        return Action("search", text, queries=tuple(queries), records=records)

    def stop_strings(self) -> tuple[str, ...]:
        # a turn ends at end-of-turn, or where the model starts writing the tool's response
        return (TOOL_RESPONSE_OPEN,)

    def wrap(self, content: str) -> str:
        return tool_response(content)

    def system_prompt(self) -> str:
        tools = "\n".join(json.dumps(s) for s in (search_tool_schema(), answer_tool_schema()))
        return FUNCTIONS_SYSTEM.format(tools=tools)

    def write_search(self, queries: Sequence[str]) -> str:
        return "\n".join(write_call(SEARCH_TOOL_NAME, {"query": q}) for q in queries)

    def write_answer(self, answer: str) -> str:
        return write_call(ANSWER_TOOL_NAME, {ANSWER_TOOL_NAME: answer})

    def final_answer(self, trajectory: object) -> str | None:
        """The argument of the last ``answer`` call in the model's text; None when there is none
        (or it is empty or malformed)."""
        last = None
        for raw in tag_contents(model_text(trajectory), TOOL_CALL_OPEN, TOOL_CALL_CLOSE):
            try:
                call = decode_call(raw)
            except ValueError:
                continue
            if isinstance(call, dict) and call.get("name") == ANSWER_TOOL_NAME:
                last = call
        return string_argument(last, ANSWER_TOOL_NAME) if last is not None else None


FUNCTIONS = FunctionsProtocol()
