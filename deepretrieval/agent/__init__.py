"""Agentic search: the agent protocol (:mod:`.protocol`), the episode runner (:mod:`.runner`),
evaluation (:mod:`.evaluate`) and serving (:class:`SearchAgent`, ``deepretrieval ask``).

Importing this package is cheap: the protocol is pure stdlib, and :class:`SearchAgent` is loaded
on first use."""
from __future__ import annotations

from deepretrieval.agent.serve import SearchAgent

__all__ = ["SearchAgent"]


def __getattr__(name):
    if name == "SearchAgent":
        return SearchAgent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
