"""What a rollout is: :class:`Rollout` (how a task's rows are rolled out) and
:class:`AgentProtocol` (a multi-turn search episode's turn format), plus what every agent protocol
shares — the tags the environment writes, :class:`Action` (one parsed model turn) and the readers
of model text.

A protocol owns: parsing a model turn (:meth:`AgentProtocol.parse_turn`), where a turn stops
(:meth:`~AgentProtocol.stop_strings`), what the environment injects (:meth:`~AgentProtocol.wrap`;
every trainer masks injected segments from the loss), the opening messages
(:meth:`~AgentProtocol.system_prompt`, :meth:`~AgentProtocol.messages`), how the model's next input
is laid out (:attr:`~AgentProtocol.single_message`, :meth:`~AgentProtocol.turn_input`), the final
answer of a finished trajectory (:meth:`~AgentProtocol.final_answer`) and how a policy writes an
action (:meth:`~AgentProtocol.write_search`, :meth:`~AgentProtocol.write_answer`: scripted policies
and tests speak every protocol through them). The registry is
:data:`deepretrieval.core.protocols.ROLLOUTS`.

Pure functions and classes only (stdlib); nothing here searches or generates.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deepretrieval.core.tags import strip_trailing, tag_contents

INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
RECORD_OPEN, RECORD_CLOSE = "<record>", "</record>"

#: Longest query or answer taken from a model turn (characters); longer ones are cut.
MAX_ACTION_CHARS = 2000
SEARCH_TOOL_NAME = "search"
#: verl agent-loop names rows ask for (``agent_name``): ours for single-message protocols
#: (``deepretrieval.train.verl_agent.SearchAgentLoop``), verl's stock tool-call loop.
TAG_AGENT_LOOP = "deepretrieval_agent"
TOOL_AGENT_LOOP = "tool_agent"

_INJECTED = re.compile(r"<information>.*?(?:</information>|\Z)|<tool_response>.*?(?:</tool_response>|\Z)",
                       re.DOTALL)
# (tags in model text are scanned with core.tags: linear in the text, unlike lazy regexes)
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<|end|>", "<end_of_turn>")


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


def strip_end_markers(text: str) -> str:
    return strip_trailing(text, _END_MARKERS)[1]


def cut_environment_text(text: str) -> str:
    """A model turn up to where it starts writing an environment block (``<information>`` or
    ``<tool_response>``): only the environment writes those, so a trajectory's blocks are always
    injected text (a model cannot fake search results, or hide text from the reward)."""
    cut = min((p for p in (text.find(INFO_OPEN), text.find(TOOL_RESPONSE_OPEN)) if p >= 0),
              default=-1)
    return text if cut < 0 else text[:cut]


def records_in(text: str) -> tuple[str, ...]:
    """``<record>`` evidence in ``text``."""
    return tuple(r.strip() for r in tag_contents(text, RECORD_OPEN, RECORD_CLOSE) if r.strip())


def model_text(trajectory: object) -> str:
    """The trajectory without the injected blocks."""
    if not isinstance(trajectory, str):
        return ""
    return _INJECTED.sub(" ", trajectory)


def last_answer_tag(trajectory: object) -> str | None:
    """The last ``<answer>…</answer>`` the model wrote (never one inside injected text); None
    when there is none or when that last one is empty (an earlier answer does not count)."""
    answers = tag_contents(model_text(trajectory), ANSWER_OPEN, ANSWER_CLOSE)
    if not answers:
        return None
    value = answers[-1].strip()
    return value[:MAX_ACTION_CHARS] if value else None


def tool_schema(name: str, description: str, argument: str, argument_description: str
                ) -> dict[str, Any]:
    """A one-string-argument tool in OpenAI function format (what hermes templates list in
    ``<tools>``)."""
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {
            argument: {"type": "string", "description": argument_description}},
            "required": [argument]}}}


def search_tool_schema() -> dict[str, Any]:
    """The search tool in OpenAI function format."""
    return tool_schema(SEARCH_TOOL_NAME, "Search the corpus; returns the top passages for the query.",
                       "query", "the search query")


class Rollout:
    """How a task's rows are rolled out. ``episodic`` False: one completion per row, scored by
    searching its answer (:data:`deepretrieval.core.protocols.answer.SINGLE_SHOT`); True: an
    episode of model turns with searches between them (an :class:`AgentProtocol`)."""

    name: str = ""
    episodic: bool = False
    description: str = ""


class AgentProtocol(Rollout):
    """A multi-turn search episode's format (subclass it, register the instance in
    :data:`deepretrieval.core.protocols.ROLLOUTS`).

    ``single_message``: True when the whole episode is one assistant message that each turn
    continues (the trajectory so far is the assistant prefill of the next turn; injected blocks sit
    inside it); False when each model turn is an assistant message and each injected reply a
    ``tool`` message. Trainers build completions and loss masks by this layout, so a new protocol
    trains on TRL with no change there (ExSearch and our verl agent loop: single message only).

    ``verl_agent_loop``: the verl agent loop its rows name (``agent_name``), or None when no verl
    agent loop speaks it. ``calls_tools``: the model calls tools as ``<tool_call>`` JSON.
    ``invalid_message``: what the model is told after a turn without a valid action.
    """

    episodic = True
    single_message: bool = True
    verl_agent_loop: str | None = None
    calls_tools: bool = False
    #: The environment's reply to a turn without a valid action (rows may set their own).
    invalid_message: str = ("That turn had no action. To search, write the query between the "
                            "search tags; to finish, write the final answer between the answer tags.")

    # ---- a model turn ----------------------------------------------------------------------
    def parse_turn(self, text: object) -> Action:
        raise NotImplementedError

    def stop_strings(self) -> tuple[str, ...]:
        """Where a turn ends besides end-of-turn (kept in the output)."""
        raise NotImplementedError

    # ---- what the environment writes ------------------------------------------------------------
    def wrap(self, content: str) -> str:
        """An injected reply as it appears in the trajectory text."""
        raise NotImplementedError

    # ---- prompts -------------------------------------------------------------------------------
    def system_prompt(self) -> str:
        raise NotImplementedError

    def messages(self, question: str) -> list[dict[str, str]]:
        """Chat messages that start an episode."""
        return [{"role": "system", "content": self.system_prompt()},
                {"role": "user", "content": f"Question: {str(question).strip()}"}]

    def turn_input(self, messages: Sequence[Mapping[str, str]], prefill: str,
                   segments: Sequence[tuple[str, str, bool]]) -> tuple[list[dict[str, str]], str]:
        """(chat messages, assistant prefix) the model is given for its next turn, from the
        episode's opening ``messages``, its ``prefill`` and its segments so far as ``(text,
        content, injected)`` (see :attr:`single_message`)."""
        msgs = [dict(m) for m in messages]
        if self.single_message:
            return msgs, prefill + "".join(text for text, _, _ in segments)
        for _, content, injected in segments:
            msgs.append({"role": "tool" if injected else "assistant", "content": content})
        return msgs, ""

    # ---- writing and reading actions ------------------------------------------------------------
    def write_search(self, queries: Sequence[str]) -> str:
        """A model turn that searches ``queries`` (what :meth:`parse_turn` reads back)."""
        raise NotImplementedError

    def write_answer(self, answer: str) -> str:
        """A model turn that gives the final ``answer``."""
        raise NotImplementedError

    def final_answer(self, trajectory: object) -> str | None:
        """The final answer of a trajectory string (model text only): by default the last
        ``<answer>…</answer>`` outside injected blocks."""
        return last_answer_tag(trajectory)

    # ---- rows ---------------------------------------------------------------------------------
    def row_problem(self, row: Mapping[str, Any]) -> str | None:
        """Why a row cannot run under this protocol (its verl agent loop or its prompt says
        another one), or None."""
        agent_name = row.get("agent_name")
        prompt = row.get("prompt")
        text = " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, Mapping)) \
            if isinstance(prompt, list) else str(prompt or "")
        if not self.calls_tools and (agent_name == TOOL_AGENT_LOOP or TOOL_CALL_OPEN in text):
            return ("the row is written for tool calls (agent_name tool_agent or a <tool_call> "
                    f"prompt) but its settings say the {self.name!r} protocol: run such rows in "
                    "verl's tool_agent with the search tool (docs/agentic.md, verl), or write rows "
                    "whose extra_info.agent.protocol is 'tool' (`deepretrieval prepare closedworld "
                    "--protocol tool`, or agent_rows(..., settings=AgentSettings(protocol='tool')))")
        if agent_name and agent_name != self.verl_agent_loop:
            return (f"the row asks for the verl agent loop {agent_name!r} but its settings say the "
                    f"{self.name!r} protocol (loop {self.verl_agent_loop!r}); write the rows "
                    f"again with one protocol")
        return None
