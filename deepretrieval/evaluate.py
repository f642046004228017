"""Evaluation: the original-query baseline (and, see ``eval`` command, trained models).

Scores go through the same path as the training reward (:func:`deepretrieval.rewards.score_batch`),
so numbers are comparable across training, evaluation and serving.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .rewards import score_batch


def score_queries(rows: Sequence[dict[str, Any]], queries: Sequence[str | None], mode: str = "val",
                  searcher=None) -> list[dict[str, Any]]:
    """Metrics (and the task's reward) of given query strings on task rows, with no format check.
    A missing or empty query is scored like a completion that broke the format."""
    items = [(row["data_source"], "", (row.get("reward_model") or {}).get("ground_truth"),
              row.get("extra_info")) for row in rows]
    values = [str(q) if q is not None and str(q).strip() else None for q in queries]
    return score_batch(items, searcher=searcher, values=values, mode=mode)


def summarize(metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric metric plus ``format_error_rate`` and ``search_error_rate``."""
    if not metrics:
        return {"n": 0}
    keys = [k for k, v in metrics[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary: dict[str, float] = {"n": len(metrics)}
    for key in keys:
        values = [float(m[key]) for m in metrics if m.get(key) is not None]
        summary[key] = sum(values) / len(values) if values else math.nan
    summary["format_error_rate"] = sum(not m.get("format_ok", True) for m in metrics) / len(metrics)
    summary["search_error_rate"] = sum(bool(m.get("search_error")) for m in metrics) / len(metrics)
    return summary


def original_query_baseline(rows: Sequence[dict[str, Any]], mode: str = "val", searcher=None):
    """Per-row metrics of searching each row's original query (``extra_info.query``)."""
    return score_queries(rows, [(row.get("extra_info") or {}).get("query") for row in rows],
                         mode=mode, searcher=searcher)
