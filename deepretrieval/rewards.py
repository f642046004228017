"""The reward functions verl and TRL call; the tiers (metric → score) are the families' reward
tables (:data:`TABLES`, :class:`~deepretrieval.core.tables.RewardTable`).

``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw)`` is the verl
contract (``reward.custom_reward_function.path=pkg://deepretrieval.rewards`` and ``compute_score``
— or ``compute_score_async`` — as ``.name``). It returns a dict with ``score`` and the task's
metrics and never raises for anything the model wrote. ``table=NAME`` scores with another of the
task family's reward tables (e.g. ``agent_sub_em``, ``agent_em_verl``); ``profile=`` picks the
scoring profile (:mod:`deepretrieval.paper.profile`).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from deepretrieval.catalog import TABLES, family_entry, get_searcher, get_table, get_task
from deepretrieval.core import per_query
from deepretrieval.core.results import SearchError
from deepretrieval.core.tables import RewardTable, with_overrides
from deepretrieval.paper.engine import score_sample
from deepretrieval.paper.profile import resolve_profile
from deepretrieval.tasks.base import SearchPlan

__all__ = [
    "TABLES",
    "RewardTable",
    "TRLReward",
    "ascore_batch",
    "compute_score",
    "compute_score_async",
    "get_table",
    "score_batch",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# scoring

@dataclass
class _Pending:
    task: Any
    table: RewardTable
    plans: tuple[SearchPlan, ...]     # what the family asked to search (may be empty)
    single: bool                      # the family returned one plan, not a tuple
    ground_truth: Any
    extra_info: dict
    mode: str
    base: dict
    results: list[Any] = field(init=False)  # one slot per plan, filled as the searches finish
    error: BaseException | str | None = None
    record: Any = None                # a plan that is no search (the family's own record)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.plans)


def _mode(extra_info: Mapping[str, Any], kw: Mapping[str, Any]) -> str:
    if kw.get("mode") in ("train", "val"):
        return kw["mode"]
    return "train" if str(extra_info.get("split", "train")) == "train" else "val"


def _table(task, name: str | None) -> RewardTable:
    """The task's own table, or the one a ``table=`` keyword names (verl:
    ``reward.custom_reward_function.reward_kwargs.table``); it must be one of the task family's
    tables."""
    if name is None:
        return task.table()
    tables = family_entry(task.family.name).tables
    if name not in tables:
        raise ValueError(f"reward table {name!r} is not a table of the {task.family.name} family "
                         f"(task {task.name!r}); its tables: {sorted(tables)}")
    return with_overrides(tables[name], task.reward_overrides)


def _prepare(data_source: str, solution_str: Any, ground_truth: Any, extra_info: Any,
             kw: Mapping[str, Any], value: str | None = None) -> dict | _Pending:
    task = get_task(data_source)  # unknown data_source is a configuration error: raises
    extra = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    table = _table(task, kw.get("table"))
    mode = _mode(extra, kw)
    base = {"score": 0.0, "format_ok": False, "search_error": False}
    base.update(task.family.empty_metrics(task))
    if value is None:  # the model's completion: strict format check
        parsed = task.parse(solution_str, extra)
        if not parsed.ok:
            base["score"] = table.total(False, 0.0)
            return base
        value = cast(str, parsed.value)  # a parse that is ok carries its value
    base["format_ok"] = True
    try:
        plan = task.family.plan(task, value, ground_truth, extra, mode)
    except Exception as exc:  # defensive: nothing the model wrote may raise
        log.warning("%s: planning the search failed: %s", data_source, exc)
        pending = _Pending(task, table, (), False, ground_truth, extra, mode, base, error=exc)
        return _finish(pending)
    if isinstance(plan, SearchPlan):
        return _Pending(task, table, (plan,), True, ground_truth, extra, mode, base)
    if isinstance(plan, tuple):
        return _Pending(task, table, plan, False, ground_truth, extra, mode, base)
    # nothing to search: the family's own record (e.g. an agentic trajectory whose searches ran)
    return _Pending(task, table, (), True, ground_truth, extra, mode, base, record=plan)


def _finish(p: _Pending) -> dict:
    """The score of a pending completion once all its searches are in (or one failed)."""
    out = dict(p.base)
    error = p.error
    first = p.results[0] if p.single and p.results else None
    if error is None and first is not None and first.error and first.info.get("query_error"):
        # a malformed query: the writer's fault, when the family says so
        metrics = p.task.family.query_error_metrics(p.task, p.plans[0], first, p.ground_truth,
                                                    p.extra_info, p.mode)
        if metrics is not None:
            out.update(metrics)
            out["score"] = p.table.total(True, p.table.answer_score(out.get(p.table.metric)))
            return out
    if error is None:
        error = next((r.error for r in p.results if r is not None and r.error), None)
    if error is None:
        if p.record is not None:
            plan, result = p.record, None
        else:
            plan = p.plans[0] if p.single else p.plans
            result = p.results[0] if p.single else tuple(p.results)
        try:
            out.update(p.task.family.score(p.task, plan, result, p.ground_truth, p.extra_info, p.mode))
        except Exception as exc:  # defensive
            log.warning("%s: scoring failed: %s", p.task.name, exc)
            error = exc
    if error is not None:  # a family may also report a failed search itself (search_error)
        out["search_error"] = True
    # a family that judges the format while scoring (agentic: no final answer) reports format_ok
    out["score"] = p.table.score_of(out)
    return out


class _Batch:
    """Completions of one scoring call, grouped into one search per (index, k, return_text,
    options) — the evidence option ``answers`` goes per query
    (:mod:`deepretrieval.core.per_query`), so a step's evidence searches share one call; the
    sync and async entry points differ only in how they run the searches."""

    def __init__(self, items, values, kw, searcher=None):
        items = _items(items)
        values = [None] * len(items) if values is None else list(values)
        # _paper unpacks each item first, so every item has its four fields here
        self.out: list[dict | _Pending] = [
            _paper(it, kw, v, searcher) or _prepare(it[0], it[1], it[2], it[3], kw, value=v)
            for it, v in zip(items, values)]
        self.groups: dict[tuple, list[tuple[int, int]]] = {}   # key → [(completion, plan slot)]
        self._waiting: dict[int, int] = {}                       # completion → searches left
        for i, p in enumerate(self.out):
            if not isinstance(p, _Pending):
                continue
            if not p.plans:  # nothing to search: score now
                self.out[i] = _finish(p)
                continue
            self._waiting[i] = len(p.plans)
            for slot, plan in enumerate(p.plans):
                shared, answers = per_query.split(plan.options, 1)
                key = (plan.index, plan.k, plan.return_text,
                       *per_query.shared_key(shared, answers))
                self.groups.setdefault(key, []).append((i, slot))

    def request(self, key, members: list[tuple[int, int]] | None = None) -> tuple[tuple, dict]:
        """(args, kwargs) of the search call for a group (or for some of its ``members``)."""
        index, k, return_text, shared, with_answers = key
        members = self.groups[key] if members is None else members
        plans = [cast(_Pending, self.out[i]).plans[slot] for i, slot in members]
        answers = ([a for plan in plans for a in per_query.split(plan.options, 1)[1] or []]
                   if with_answers else None)
        return ((index, [plan.query for plan in plans], k),
                {"return_text": return_text,
                 "options": per_query.join(json.loads(shared) or None, answers)})

    def finish(self, key, results=None, error: BaseException | None = None,
               members: list[tuple[int, int]] | None = None) -> None:
        members = self.groups[key] if members is None else members
        if error is None and (not isinstance(results, list) or len(results) != len(members)):
            error = SearchError(f"the searcher returned {len(results) if isinstance(results, list) else results!r} "
                                f"results for {len(members)} queries")
        if error is not None:
            log.warning("search on %s failed: %s", key[0], error)
            results = [None] * len(members)
        for (i, slot), result in zip(members, results):
            pending = cast(_Pending, self.out[i])   # a member's searches are not all in yet
            pending.results[slot] = result
            if error is not None and pending.error is None:
                pending.error = error
            self._waiting[i] -= 1
            if self._waiting[i] == 0:
                self.out[i] = _finish(pending)

    def calls(self, key, exc: BaseException) -> list[list[tuple[int, int]]]:
        """After the group's call raised ``exc``: the member lists to search again. A failure of
        the search itself (:class:`SearchError`, a transport ``OSError``) is every member's
        outcome (nothing to retry); anything else may be one query's fault, so each query is
        searched on its own and only the queries that fail again report a search error."""
        members = self.groups[key]
        if isinstance(exc, (SearchError, OSError)) or len(members) == 1:
            self.finish(key, error=exc)
            return []
        log.warning("search on %s failed (%s: %s); searching its %d queries one by one",
                    key[0], type(exc).__name__, exc, len(members))
        return [[m] for m in members]


def _paper(item: tuple, kw: Mapping[str, Any], value: str | None, searcher) -> dict | None:
    """The ``paper`` profile's result for one item, or None when the default profile scores it
    (see :mod:`deepretrieval.paper.profile` for how the profile is chosen)."""

    data_source, solution_str, ground_truth, extra_info = item
    if resolve_profile(data_source, extra_info, kw.get("profile")) != "paper":
        return None
    if kw.get("table") is not None:
        raise ValueError(f"table={kw['table']!r} picks one of our reward tables, but "
                         f"{data_source!r} is scored by the paper profile (the original's own "
                         f"tables); score it with profile='default' or drop table=")

    return score_sample(data_source, solution_str, ground_truth, extra_info,
                        searcher or get_searcher(), value=value)


def _items(items) -> list[tuple]:
    out = []
    for item in items:
        if isinstance(item, Mapping):
            out.append((item["data_source"], item["solution_str"], item["ground_truth"],
                        item.get("extra_info")))
        else:
            out.append(tuple(item) + (None,) * (4 - len(item)))
    return out


def score_batch(items, searcher=None, values=None, **kw) -> list[dict]:
    """Score many completions with one batched search per (index, depth, options) group.
    ``items``: tuples ``(data_source, solution_str, ground_truth, extra_info)`` or dicts.
    ``values``: already-extracted queries (skips the format check; e.g. the original query or a
    leniently extracted one in evaluation). Never raises for anything the model wrote, and one
    completion's failure never changes another's score (see :meth:`_Batch.calls`)."""
    batch = _Batch(items, values, kw, searcher)
    searcher = searcher or (get_searcher() if batch.groups else None)

    def run(key, members=None):
        args, kwargs = batch.request(key, members)
        try:
            results = searcher.search(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see _Batch.calls
            if members is not None:
                batch.finish(key, error=exc, members=members)
                return
            for part in batch.calls(key, exc):
                run(key, part)
            return
        batch.finish(key, results, members=members)

    for key in batch.groups:
        run(key)
    return cast(list[dict], batch.out)  # every completion is finished now


async def ascore_batch(items, searcher=None, values=None, **kw) -> list[dict]:
    """Async :func:`score_batch`: the groups are searched concurrently."""
    batch = await asyncio.to_thread(_Batch, items, values, kw, searcher)  # paper items search here
    searcher = searcher or (get_searcher() if batch.groups else None)

    async def run(key, members=None):
        args, kwargs = batch.request(key, members)
        try:
            results = await searcher.asearch(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see _Batch.calls
            if members is not None:
                batch.finish(key, error=exc, members=members)
                return
            await asyncio.gather(*(run(key, part) for part in batch.calls(key, exc)))
            return
        batch.finish(key, results, members=members)

    await asyncio.gather(*(run(key) for key in batch.groups))
    return cast(list[dict], batch.out)  # every completion is finished now


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw) -> dict:
    """verl reward function (sync). See the module docstring."""
    return score_batch([(data_source, solution_str, ground_truth, extra_info)], **kw)[0]


async def compute_score_async(data_source, solution_str, ground_truth, extra_info=None, **kw) -> dict:
    """verl reward function (async): same result as :func:`compute_score`."""
    return (await ascore_batch([(data_source, solution_str, ground_truth, extra_info)], **kw))[0]


def _completion_text(completion: Any) -> Any:
    # TRL conversational completions: [{"role": "assistant", "content": "..."}]
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return completion[-1].get("content", "")
    return completion


class TRLReward:
    """TRL ``GRPOTrainer`` reward function over :func:`score_batch`.

    Reads the dataset columns ``data_source``, ``reward_model`` and ``extra_info`` that TRL passes
    as keyword arguments; keeps the metrics of the last call in ``last_metrics``.
    """

    __name__ = "deepretrieval_reward"

    def __init__(self, searcher=None, **kw):
        self.searcher = searcher
        self.kw = kw
        self.last_metrics: list[dict] = []

    def __call__(self, prompts=None, completions=None, data_source=None, reward_model=None,
                 extra_info=None, **_: Any) -> list[float]:
        n = len(completions)
        extra_info = extra_info or [None] * n
        items = [(data_source[i], _completion_text(completions[i]),
                  (reward_model[i] or {}).get("ground_truth"), extra_info[i]) for i in range(n)]
        self.last_metrics = score_batch(items, searcher=self.searcher, **self.kw)
        return [m["score"] for m in self.last_metrics]
