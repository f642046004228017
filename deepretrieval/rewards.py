"""Tiered rewards: metric → score, as data, plus the reward functions verl and TRL call.

``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw)`` is the verl
contract (pass this file as ``reward.custom_reward_function.path`` and ``compute_score`` — or
``compute_score_async`` — as ``.name``). It returns a dict with ``score`` and the task's metrics and
never raises for anything the model wrote.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from deepretrieval.search import SearchError, SearchResult, get_searcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardTable:
    """How a metric becomes a score.

    answer score: ``metric`` itself when ``linear``; otherwise the score of the first tier whose
    bound the metric meets (``compare`` ">=": metric >= bound, e.g. recall; "<=": metric <= bound,
    e.g. a rank), else ``otherwise`` (also when the metric is missing, e.g. no relevant rank).
    total: ``format_bad`` when the format is wrong; else ``format_ok`` + answer score, where a
    failed search gives the answer score ``error``; with ``positive_only`` a total whose answer
    score is <= 0 becomes 0.
    """

    metric: str
    tiers: tuple[tuple[float, float], ...] = ()
    compare: str = ">="
    otherwise: float = 0.0
    linear: bool = False
    format_ok: float = 0.0
    format_bad: float = 0.0
    error: float = 0.0
    positive_only: bool = False

    def answer_score(self, value: float | None) -> float:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.otherwise
        if self.linear:
            return float(value)
        for bound, score in self.tiers:
            if (value >= bound) if self.compare == ">=" else (value <= bound):
                return float(score)
        return self.otherwise

    def total(self, format_ok: bool, answer_score: float) -> float:
        if not format_ok:
            return float(self.format_bad)
        if self.positive_only and answer_score <= 0:
            return 0.0
        return float(self.format_ok + answer_score)


#: The DeepRetrieval paper's tables.
TABLES: dict[str, RewardTable] = {
    # PubMed / ClinicalTrials.gov: recall@3000 of the review's included studies.
    "search_engine": RewardTable(
        metric="recall", tiers=((0.7, 5), (0.5, 4), (0.4, 3), (0.3, 1), (0.1, 0.5), (0.05, 0.1)),
        otherwise=-3.5, format_ok=1, format_bad=-4, error=-4),
    # NQ / TriviaQA / SQuAD: rank of the first answer-bearing passage.
    "evidence": RewardTable(
        metric="first_hit_rank", compare="<=",
        tiers=((5, 5), (20, 4), (50, 2), (100, 1), (1000, 0.5), (3000, 0.1)),
        otherwise=-3.5, format_ok=1, format_bad=-4, error=-4),
    # BEIR: 0.1 + nDCG when nDCG > 0, else 0; bad format -2.
    "beir": RewardTable(metric="ndcg", linear=True, format_ok=0.1, format_bad=-2, error=0.0,
                        positive_only=True),
    # Spider: execution match 1.1, else 0; bad format -2.
    "spider": RewardTable(metric="exec_match", tiers=((1.0, 1.1),), otherwise=0.0, format_bad=-2),
    # BIRD: execution match 1.1, mismatch 0.4; bad format -2.
    "bird": RewardTable(metric="exec_match", tiers=((1.0, 1.1),), otherwise=0.4, format_bad=-2),
}


def get_table(name_or_table: str | RewardTable, overrides: Mapping[str, Any] | None = None) -> RewardTable:
    """A table by name, with field overrides (e.g. from a config: ``{"format_bad": -1}``)."""
    table = TABLES[name_or_table] if isinstance(name_or_table, str) else name_or_table
    if overrides:
        known = {f.name for f in fields(RewardTable)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown reward table field(s) {sorted(unknown)}; known: {sorted(known)}")
        clean = dict(overrides)
        if "tiers" in clean:
            clean["tiers"] = tuple((float(b), float(s)) for b, s in clean["tiers"])
        table = replace(table, **clean)
    return table


# ---------------------------------------------------------------------------------------------
# scoring

@dataclass
class _Pending:
    task: Any
    table: RewardTable
    plan: Any
    ground_truth: Any
    extra_info: dict
    mode: str
    base: dict


def _mode(extra_info: Mapping[str, Any], kw: Mapping[str, Any]) -> str:
    if kw.get("mode") in ("train", "val"):
        return kw["mode"]
    return "train" if str(extra_info.get("split", "train")) == "train" else "val"


def _prepare(data_source: str, solution_str: Any, ground_truth: Any, extra_info: Any,
             kw: Mapping[str, Any], value: str | None = None) -> dict | _Pending:
    from deepretrieval.tasks import get_task

    task = get_task(data_source)  # unknown data_source is a configuration error: raises
    extra = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    table = task.table()
    mode = _mode(extra, kw)
    base = {"score": 0.0, "format_ok": False, "search_error": False}
    base.update(task.family.empty_metrics(task))
    if value is None:  # the model's completion: strict format check
        parsed = task.parse(solution_str, extra)
        if not parsed.ok:
            base["score"] = table.total(False, 0.0)
            return base
        value = parsed.value
    base["format_ok"] = True
    try:
        plan = task.family.plan(task, value, ground_truth, extra, mode)
    except Exception as exc:  # defensive: nothing the model wrote may raise
        log.warning("%s: planning the search failed: %s", data_source, exc)
        return _finish(_Pending(task, table, None, ground_truth, extra, mode, base), None, exc)
    return _Pending(task, table, plan, ground_truth, extra, mode, base)


def _finish(p: _Pending, result: SearchResult | None, error: BaseException | str | None) -> dict:
    out = dict(p.base)
    if error is None and result is not None and result.error:
        if result.info.get("query_error"):  # a malformed query: the writer's fault, if the family says so
            metrics = p.task.family.query_error_metrics(p.task, p.plan, result, p.ground_truth,
                                                        p.extra_info, p.mode)
            if metrics is not None:
                out.update(metrics)
                out["score"] = p.table.total(True, p.table.answer_score(out.get(p.table.metric)))
                return out
        error = result.error
    if error is None:
        try:
            out.update(p.task.family.score(p.task, p.plan, result, p.ground_truth, p.extra_info, p.mode))
        except Exception as exc:  # defensive
            log.warning("%s: scoring failed: %s", p.task.name, exc)
            error = exc
    if error is not None:
        out["search_error"] = True
        out["score"] = p.table.total(True, p.table.error)
        return out
    out["score"] = p.table.total(True, p.table.answer_score(out.get(p.table.metric)))
    return out


class _Batch:
    """Completions of one scoring call, grouped into one search per (index, k, return_text,
    options); the sync and async entry points differ only in how they run the searches."""

    def __init__(self, items, values, kw):
        items = _items(items)
        values = [None] * len(items) if values is None else list(values)
        self.out = [_prepare(*it, kw, value=v) for it, v in zip(items, values)]
        self.groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(self.out):
            if isinstance(p, _Pending) and p.plan:
                plan = p.plan
                key = (plan.index, plan.k, plan.return_text,
                       json.dumps(plan.options or {}, sort_keys=True))
                self.groups.setdefault(key, []).append(i)

    def request(self, key) -> tuple[tuple, dict]:
        """(args, kwargs) of the search call for a group."""
        index, k, return_text, options = key
        queries = [self.out[i].plan.query for i in self.groups[key]]
        return (index, queries, k), {"return_text": return_text, "options": json.loads(options) or None}

    def finish(self, key, results=None, error: BaseException | None = None) -> None:
        members = self.groups[key]
        if error is not None:
            log.warning("search on %s failed: %s", key[0], error)
            results = [None] * len(members)
        for i, result in zip(members, results):
            self.out[i] = _finish(self.out[i], result, error)


SEARCH_FAILURES = (SearchError, ValueError, OSError)


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
    leniently extracted one in evaluation)."""
    batch = _Batch(items, values, kw)
    searcher = searcher or (get_searcher() if batch.groups else None)
    for key in batch.groups:
        args, kwargs = batch.request(key)
        try:
            batch.finish(key, searcher.search(*args, **kwargs))
        except SEARCH_FAILURES as exc:
            batch.finish(key, error=exc)
    return batch.out


async def ascore_batch(items, searcher=None, values=None, **kw) -> list[dict]:
    """Async :func:`score_batch`: the groups are searched concurrently."""
    batch = _Batch(items, values, kw)
    searcher = searcher or (get_searcher() if batch.groups else None)

    async def run(key):
        args, kwargs = batch.request(key)
        try:
            batch.finish(key, await searcher.asearch(*args, **kwargs))
        except SEARCH_FAILURES as exc:
            batch.finish(key, error=exc)

    await asyncio.gather(*(run(key) for key in batch.groups))
    return batch.out


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
