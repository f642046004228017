"""Task registry keyed by ``data_source``.

A task is one training/evaluation/serving setting: prompt (chat messages, reasoning or answer-only),
answer key, the index it searches, the metric, training and validation depth, and the reward
table. Families (``beir``, ``search_engine``, ``evidence``, ``sql``) implement planning the
search and scoring its result; tasks are instances registered under their name.

Names that are not registered exactly go through resolvers (e.g. the original DeepRetrieval
``data_source`` names), added with :func:`register_resolver`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from deepretrieval.core.answer import ParsedAnswer, parse_answer

FORMAT_REASONING = (
    "Think about the request first, inside <think> </think>. Then give your final answer inside "
    "<answer> </answer> as JSON with the key \"{key}\", for example: "
    "<think>...</think>\n<answer>{{\"{key}\": \"...\"}}</answer>")
FORMAT_ANSWER_ONLY = (
    "Give only your final answer inside <answer> </answer> as JSON with the key \"{key}\", for "
    "example: <answer>{{\"{key}\": \"...\"}}</answer>")


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

    def empty_metrics(self, task: "Task") -> dict[str, float]:
        """Metrics reported when nothing was searched (bad format): zeros by default."""
        return {key: 0.0 for key in self.metric_keys(task)}

    def plan(self, task: "Task", value: str, ground_truth: Any, extra_info: dict, mode: str) -> SearchPlan:
        raise NotImplementedError

    def score(self, task: "Task", plan: SearchPlan, result, ground_truth: Any, extra_info: dict,
              mode: str) -> dict[str, float]:
        raise NotImplementedError

    def query_error_metrics(self, task: "Task", plan: SearchPlan, result, ground_truth: Any,
                            extra_info: dict, mode: str) -> dict[str, float] | None:
        """Metrics for a result the backend rejected as a malformed query (``result.error`` with
        ``result.info["query_error"]``): the query writer's fault, scored through the reward
        table like any result. None (the default): treat it as a search error."""
        return None

    def user_message(self, task: "Task", fields: Mapping[str, Any]) -> str:
        return task.instruction.format(**fields)

    def bundled_rows(self, task: "Task", split: str) -> list[dict[str, Any]]:
        """Rows of the task's data bundled with the package; ValueError when there is none."""
        raise ValueError(f"no bundled rows for task {task.name!r}; write rows with "
                         f"`deepretrieval prepare ...` and pass --rows FILE.parquet")

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
    system: str = "You are a helpful assistant that writes search queries."
    answer_key: str = "query"
    reward: str = "beir"
    reward_overrides: Mapping[str, Any] = field(default_factory=dict)
    train_depth: int = 1000
    val_depth: int = 10
    reasoning: bool = True
    prefill: str = ""                 # assistant-turn prefix given to the model before generating
    options: Mapping[str, Any] = field(default_factory=dict)  # family-specific settings
    description: str = ""

    def depth(self, mode: str) -> int:
        return self.train_depth if mode == "train" else self.val_depth

    def table(self):
        from deepretrieval.rewards import get_table
        return get_table(self.reward, self.reward_overrides)

    def messages(self, **fields: Any) -> list[dict[str, str]]:
        """Chat messages for one example (system + user). Render them with the tokenizer's chat
        template; the assistant ``prefill`` (if any) is appended by the generator."""
        fmt = (FORMAT_REASONING if self.reasoning else FORMAT_ANSWER_ONLY).format(key=self.answer_key)
        return [{"role": "system", "content": f"{self.system} {fmt}"},
                {"role": "user", "content": self.family.user_message(self, fields)}]

    def parse(self, completion: Any, extra_info: Mapping[str, Any] | None = None) -> ParsedAnswer:
        """Strict format check of a completion; the row's (or task's) prefill is put back first."""
        prefill = (extra_info or {}).get("prefill")
        prefill = self.prefill if prefill is None else str(prefill)
        if not isinstance(completion, str):
            return ParsedAnswer(False, error="completion is not a string")
        return parse_answer(prefill + completion, self.answer_key, reasoning=self.reasoning)

    def variant(self, **changes: Any) -> "Task":
        return replace(self, **changes)


_TASKS: dict[str, Task] = {}
_RESOLVERS: list[Callable[[str], Task | None]] = []


def register_task(task: Task, *, replace_existing: bool = False) -> Task:
    if task.name in _TASKS and not replace_existing:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def register_resolver(resolver: Callable[[str], Task | None]) -> None:
    """Add a function mapping other ``data_source`` spellings onto registered tasks."""
    _RESOLVERS.append(resolver)


class UnknownTask(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def get_task(data_source: str) -> Task:
    if data_source in _TASKS:
        return _TASKS[data_source]
    for resolver in _RESOLVERS:
        task = resolver(data_source)
        if task is not None:
            return task
    raise UnknownTask(f"unknown task / data_source {data_source!r}; registered: {sorted(_TASKS)}")


def list_tasks() -> list[str]:
    return sorted(_TASKS)


# Families register their tasks on import.
from deepretrieval.tasks import beir  # noqa: E402,F401
from deepretrieval.tasks import sql  # noqa: E402,F401
from deepretrieval.tasks import search_engine  # noqa: E402,F401
from deepretrieval.tasks import evidence  # noqa: E402,F401
from deepretrieval.tasks import boolean  # noqa: E402,F401
from deepretrieval.data import original as _original  # noqa: E402,F401  (original data_source names)
