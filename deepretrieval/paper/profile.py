"""Which scoring profile scores a sample: ``default`` (this project's choices,
:mod:`deepretrieval.rewards` with the families' tables) or ``paper`` (the original DeepRetrieval,
:mod:`deepretrieval.paper.engine`). First match wins:

1. an explicit ``profile=`` keyword of ``compute_score`` / ``TRLReward`` (verl:
   ``reward.custom_reward_function.reward_kwargs.profile``);
2. ``extra_info["profile"]`` of the row;
3. the environment variable ``DEEPRETRIEVAL_PROFILE`` (the CLI's ``--profile`` sets it);
4. the name's own profile, :func:`deepretrieval.catalog.resolve_name` (the same function that
   picks the task): ``paper`` for the original's names (``scifact_train``, ``nq_serini``,
   ``spider_train``, ``screening``, ...), ``default`` for defined task names (``pubmed``,
   ``scifact``), agentic spellings (verl's ``searchR1_<set>``, ``agent_*``) and user collections.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deepretrieval.catalog import resolve_name
from deepretrieval.core import settings

__all__ = ["PROFILES", "check_profile", "resolve_profile"]

PROFILES = ("default", "paper")


def check_profile(name: Any) -> str:
    if name not in PROFILES:
        raise ValueError(f"unknown scoring profile {name!r}; known: {list(PROFILES)}")
    return name


def resolve_profile(data_source: str, extra_info: Mapping[str, Any] | None = None,
                    profile: str | None = None) -> str:
    """The profile that scores one sample (see the module docstring for the order)."""
    if profile is not None:
        return check_profile(profile)
    if isinstance(extra_info, Mapping) and extra_info.get("profile") not in (None, ""):
        return check_profile(extra_info["profile"])
    env = settings.get_str("DEEPRETRIEVAL_PROFILE")
    if env:
        return check_profile(env)
    return resolve_name(data_source).profile
