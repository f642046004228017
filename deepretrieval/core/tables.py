"""Reward tables: how a metric becomes a score, as data. Each task family defines its tables
(the DeepRetrieval paper's tiers) beside its scoring; :data:`deepretrieval.catalog.TABLES` lists
them by name."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class RewardTable:
    """How a metric becomes a score.

    answer score: ``metric`` itself when ``linear``; otherwise the score of the first tier whose
    bound the metric meets (``compare`` ">=": metric >= bound, e.g. recall; "<=": metric <= bound,
    e.g. a rank), else ``otherwise`` (also when the metric is missing, e.g. no relevant rank).
    total: ``format_bad`` when the format is wrong; else ``format_ok`` + answer score, where a
    failed search gives the answer score ``error``; with ``positive_only`` a total whose answer
    score is <= 0 becomes 0. ``bonus_value`` × the metric ``bonus_metric`` is added to a well-formed,
    error-free total (e.g. agentic tasks: a bonus when an answer-bearing passage was retrieved);
    with ``bonus_needs_format`` False also to a malformed one (a good search pays before the
    model has learnt to answer). ``scale_value`` multiplies a well-formed, error-free total when
    the metric ``scale_metric`` is non-zero (verl's answer-spam rule: EM ÷ 4 when the completion
    holds more than 10 answer tags, ``agent_em_verl``).
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
    bonus_metric: str | None = None
    bonus_value: float = 0.0
    bonus_needs_format: bool = True
    scale_metric: str | None = None
    scale_value: float = 1.0

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
        if self.positive_only and not answer_score > 0:  # NaN too
            return 0.0
        return float(self.format_ok + answer_score)

    def score_of(self, metrics: Mapping[str, Any]) -> float:
        """The total for a scored completion's metrics (``format_ok``, ``search_error``, the
        table's metric and bonus metric): the score any task with this table would give it."""
        if metrics.get("search_error"):
            return self.total(True, self.error)
        ok = bool(metrics.get("format_ok"))
        score = self.total(ok, self.answer_score(metrics.get(self.metric)))
        if self.bonus_metric and (ok or not self.bonus_needs_format):
            score += float(self.bonus_value) * float(metrics.get(self.bonus_metric) or 0.0)
        if self.scale_metric and ok and metrics.get(self.scale_metric):
            score *= float(self.scale_value)
        return score


def with_overrides(table: RewardTable, overrides: Mapping[str, Any] | None = None) -> RewardTable:
    """``table`` with field overrides (e.g. from a config: ``{"format_bad": -1}``); an unknown
    field is an error naming the known ones."""
    if not overrides:
        return table
    known = {f.name for f in fields(RewardTable)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown reward table field(s) {sorted(unknown)}; known: {sorted(known)}")
    clean = dict(overrides)
    if "tiers" in clean:
        clean["tiers"] = tuple((float(b), float(s)) for b, s in clean["tiers"])
    return replace(table, **clean)
