"""What a task is: ``Task`` (one training/evaluation/serving setting), ``Family`` (how a kind of
task plans its search and scores the result), ``SearchPlan``, and the task row builder.

A task: prompt (chat messages, reasoning or answer-only), answer key, the index it searches, the
metric, training and validation depth, and the reward table. Families live one per module beside
this one; which tasks exist and how names resolve is decided in :mod:`deepretrieval.catalog`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deepretrieval.core.answer import ParsedAnswer
from deepretrieval.core.protocols import SINGLE_SHOT, Rollout
from deepretrieval.core.protocols.answer import FORMAT_ANSWER_ONLY, FORMAT_REASONING  # noqa: F401
from deepretrieval.core.tables import RewardTable, with_overrides

#: Name of the default reference system (each row's original query) in reports.
ORIGINAL_QUERY = "original query"


@dataclass(frozen=True)
class SearchPlan:
    index: str
    query: str
    k: int
    return_text: bool = False
    options: dict[str, Any] | None = None


class Family:
    """Base for task families. Subclasses set ``name`` and implement ``plan`` and ``score``."""

    name = "base"

    def metric_keys(self, task: "Task") -> list[str]:
        raise NotImplementedError

    def rollout(self, task: "Task") -> Rollout:
        """How the task's rows are rolled out: the single-shot answer by default (the agentic
        family: the agent protocol of the task's settings)."""
        return SINGLE_SHOT

    def empty_metrics(self, task: "Task") -> dict[str, float]:
        """Metrics reported when nothing was searched (bad format): zeros by default."""
        return {key: 0.0 for key in self.metric_keys(task)}

    def plan(self, task: "Task", value: str, ground_truth: Any, extra_info: dict,
             mode: str) -> SearchPlan | tuple[SearchPlan, ...]:
        """The search(es) that score ``value``: one plan, or a tuple of plans (each batched with
        the other completions' plans of the same index and options; an empty tuple: nothing to
        search, ``score`` gets an empty tuple of results)."""
        raise NotImplementedError

    def score(self, task: "Task", plan, result, ground_truth: Any, extra_info: dict,
              mode: str) -> dict[str, float]:
        """Metrics from the search result(s): ``plan``/``result`` are what ``plan`` returned and
        the matching result (tuples when ``plan`` returned a tuple)."""
        raise NotImplementedError

    def query_error_metrics(self, task: "Task", plan: SearchPlan, result, ground_truth: Any,
                            extra_info: dict, mode: str) -> dict[str, float] | None:
        """Metrics for a result the backend rejected as a malformed query (``result.error`` with
        ``result.info["query_error"]``): the query writer's fault, scored through the reward
        table like any result. None (the default): treat it as a search error."""
        return None

    def user_message(self, task: "Task", fields: Mapping[str, Any]) -> str:
        return task.instruction.format(**fields)

    def messages(self, task: "Task", fields: Mapping[str, Any]) -> list[dict[str, str]]:
        """Chat messages of one example: the task's system text with the answer-format
        instruction, then the user message."""
        system = SINGLE_SHOT.system_prompt(task.system, task.answer_key, task.reasoning)
        return [{"role": "system", "content": system},
                {"role": "user", "content": self.user_message(task, fields)}]

    def parse(self, task: "Task", text: str) -> ParsedAnswer:
        """Strict format check of a completion (prefill already put back)."""
        return SINGLE_SHOT.parse_turn(text, task.answer_key, task.reasoning)

    def reference_queries(self, task: "Task", rows: list[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        """(name, query per row) of the reference system evaluated next to a model: by default
        the original query (``extra_info.query``)."""
        return ORIGINAL_QUERY, [(r.get("extra_info") or {}).get("query") for r in rows]


@dataclass(frozen=True)
class Task:
    name: str
    family: Family
    index: str
    instruction: str                  # user message template, formatted with the row's fields
    reward: RewardTable               # the family's table (overridable per task below)
    system: str = "You are a helpful assistant that writes search queries."
    answer_key: str = "query"
    reward_overrides: Mapping[str, Any] = field(default_factory=dict)
    train_depth: int = 1000
    val_depth: int = 10
    reasoning: bool = True
    prefill: str = ""                 # assistant-turn prefix given to the model before generating
    options: Mapping[str, Any] = field(default_factory=dict)  # family-specific settings
    description: str = ""

    @property
    def rollout(self) -> Rollout:
        """How this task's rows are rolled out (:mod:`deepretrieval.core.protocols`):
        ``task.rollout.episodic`` tells an agentic task from a single-shot one."""
        return self.family.rollout(self)

    def depth(self, mode: str) -> int:
        return self.train_depth if mode == "train" else self.val_depth

    def table(self) -> RewardTable:
        """The reward table with this task's overrides applied."""
        return with_overrides(self.reward, self.reward_overrides)

    def prefill_for(self, extra_info: Mapping[str, Any] | None = None) -> str:
        """The assistant-turn prefix of a row: the row's ``extra_info.prefill`` when it has one,
        else the task's."""
        prefill = (extra_info or {}).get("prefill")
        return self.prefill if prefill is None else str(prefill)

    def messages(self, **fields: Any) -> list[dict[str, str]]:
        """Chat messages for one example (system + user). Render them with the tokenizer's chat
        template; the assistant ``prefill`` (if any) is appended by the generator."""
        return self.family.messages(self, fields)

    def parse(self, completion: Any, extra_info: Mapping[str, Any] | None = None) -> ParsedAnswer:
        """Strict format check of a completion; the row's (or task's) prefill is put back first."""
        if not isinstance(completion, str):
            return ParsedAnswer(False, error="completion is not a string")
        return self.family.parse(self, self.prefill_for(extra_info) + completion)

    def variant(self, **changes: Any) -> "Task":
        return replace(self, **changes)

    def row(self, split: str, index: int, fields: Mapping[str, Any], ground_truth: Mapping[str, Any],
            **extra: Any) -> dict[str, Any]:
        """A task row in verl's schema: ``data_source``, ``prompt`` (chat messages), ``ability``,
        ``reward_model`` and ``extra_info`` (split, row number, the task's prefill, ``extra``)."""
        info = {"split": split, "index": index, **extra}
        if self.prefill:
            info.setdefault("prefill", self.prefill)
        return {"data_source": self.name, "prompt": self.messages(**fields),
                "ability": self.family.name,
                "reward_model": {"style": "rule", "ground_truth": dict(ground_truth)},
                "extra_info": info}


class UnknownTask(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def tasks_by_name(tasks: Sequence[Task]) -> dict[str, Task]:
    """Name → task; a name given twice is an error."""
    out: dict[str, Task] = {}
    for task in tasks:
        if task.name in out:
            raise ValueError(f"task {task.name!r} is defined twice")
        out[task.name] = task
    return out
