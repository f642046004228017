"""The registered rollouts: how a task's rows are rolled out (see :mod:`.base`).

Adding an agent protocol: one module here defining an :class:`~.base.AgentProtocol` instance, one
entry in :data:`ROLLOUTS` below, and its tests (``tests/test_protocol_<name>.py``). Every consumer —
the episode runner, TRL / verl / ExSearch training, evaluation, ``SearchAgent``, the CLI's
``--protocol`` choices — asks the row's settings (``AgentSettings.rollout``) or the task
(``Task.rollout``) for the object, never for a name.
"""
from __future__ import annotations

from deepretrieval.core.protocols.answer import SINGLE_SHOT
from deepretrieval.core.protocols.base import AgentProtocol, Rollout
from deepretrieval.core.protocols.functions import FUNCTIONS
from deepretrieval.core.protocols.tags import TAGS
from deepretrieval.core.protocols.tool import TOOL

#: Name → rollout. The single-shot rollout first, then the agent protocols (the first is the default).
ROLLOUTS: dict[str, Rollout] = {r.name: r for r in (SINGLE_SHOT, TAGS, TOOL, FUNCTIONS)}


def protocol_names() -> tuple[str, ...]:
    """The agent protocols' names (the default first)."""
    return tuple(name for name, r in ROLLOUTS.items() if isinstance(r, AgentProtocol))


def agent_protocol(name: str) -> AgentProtocol:
    """The agent protocol named ``name``; an unknown name raises with the known ones."""
    rollout = ROLLOUTS.get(name)
    if not isinstance(rollout, AgentProtocol):
        raise ValueError(f"unknown agent protocol {name!r}; known: {list(protocol_names())}")
    return rollout
