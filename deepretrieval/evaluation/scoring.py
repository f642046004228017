"""Scoring task rows for evaluation: given queries, single-shot completions, reference queries.

Everything goes through the training reward (:func:`deepretrieval.rewards.score_batch`), so the
numbers are comparable across training, evaluation and serving. :func:`summarize` is the mean of
every metric plus the error rates; :func:`record_summary` does the same over evaluation records
(several samples per row, strict format verdicts).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from deepretrieval.catalog import get_searcher, get_task, row_prefill
from deepretrieval.core.answer import (
    extract_answer_lenient,
    extract_reasoning_lenient,
    parse_answer,
)
from deepretrieval.rewards import score_batch

KEEP_IDS = 10  # retrieved ids kept per record (keeps run folders small)
EXTRACT_MODES = ("strict", "lenient")


def score_queries(rows: Sequence[Mapping[str, Any]], queries: Sequence[str | None], mode: str = "val",
                  searcher=None) -> list[dict[str, Any]]:
    """Metrics (and the task's reward) of given query strings on task rows, with no format check.
    A missing or empty query is scored like a completion that broke the format."""
    items = [(row["data_source"], "", (row.get("reward_model") or {}).get("ground_truth"),
              row.get("extra_info")) for row in rows]
    values = [str(q) if q is not None and str(q).strip() else None for q in queries]
    return score_batch(items, searcher=searcher, values=values, mode=mode)


def summarize(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
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


def record_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """:func:`summarize` over every sample of every record, plus the number of rows, the strict
    format error rate and, when there are several samples per row, the best-of-n score."""
    samples = [s for r in records for s in (r.get("samples") or [r])]
    summary = summarize([s["metrics"] for s in samples])
    summary["rows"] = len(records)
    if samples and "format_ok" in samples[0]:
        summary["strict_format_error_rate"] = sum(not s["format_ok"] for s in samples) / len(samples)
    if any(r.get("samples") for r in records):
        best = [max(s["metrics"]["score"] for s in r.get("samples") or [r]) for r in records]
        summary["best_of_n_score"] = sum(best) / len(best)
    return summary


def baseline_queries(rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[str | None]]:
    """(system name, query per row) of the reference system of a task: the original query, or
    for SQL tasks (where the question cannot be executed) the gold SQL, an upper bound."""
    task = get_task(rows[0]["data_source"])
    return task.family.reference_queries(task, list(rows))


def original_query_baseline(rows: Sequence[Mapping[str, Any]], mode: str = "val", searcher=None):
    """Per-row metrics of each row's reference query: the original query (``extra_info.query``;
    SQL tasks: the gold SQL), see :func:`baseline_queries`."""
    return score_queries(rows, baseline_queries(rows)[1], mode=mode, searcher=searcher)


class RecordingSearcher:
    """Wraps the searcher the reward uses and keeps the top ids each query got."""

    def __init__(self, inner, keep: int = KEEP_IDS):
        self.inner, self.keep = inner, keep
        self.ids: dict[str, list[str]] = {}

    def _record(self, queries, results):
        for query, result in zip(queries, results):
            ok = result is not None and not result.error
            self.ids[query] = [str(i) for i in list(result.ids)[: self.keep]] if ok else []
        return results

    def search(self, index, queries, k, *, return_text=False, options=None):
        return self._record(queries, self.inner.search(index, queries, k, return_text=return_text,
                                                       options=options))

    async def asearch(self, index, queries, k, *, return_text=False, options=None):
        return self._record(queries, await self.inner.asearch(index, queries, k, return_text=return_text,
                                                              options=options))


def score_completions(rows: Sequence[Mapping[str, Any]], completions: Sequence[str], *,
                      prefill_used: bool = True, extract: str = "strict", mode: str = "val",
                      searcher=None) -> list[dict[str, Any]]:
    """Score one completion per row and describe it: strict format verdict, reasoning, the query
    searched, the top retrieved ids and the metrics (``score`` = the task's reward).

    ``extract="strict"``: the training reward (bad format → the table's format penalty, nothing
    searched). ``"lenient"``: the query is extracted leniently
    (:func:`deepretrieval.core.answer.extract_answer_lenient`) and searched whatever the format.
    ``prefill_used``: the completion continues the row's prefill (local models, vLLM servers);
    False when the generator could not prefill (plain chat APIs)."""

    if extract not in EXTRACT_MODES:
        raise ValueError(f"extract must be 'strict' or 'lenient', not {extract!r}")
    recorder = RecordingSearcher(searcher or get_searcher())
    items, values, described = [], [], []
    for row, completion in zip(rows, completions):
        task = get_task(row["data_source"])
        completion = completion if isinstance(completion, str) else ""
        prefill = row_prefill(row) if prefill_used else ""
        full = prefill + completion
        parsed = parse_answer(full, task.answer_key, reasoning=task.reasoning)
        extra = dict(row.get("extra_info") or {})
        extra["prefill"] = prefill
        gt = (row.get("reward_model") or {}).get("ground_truth")
        items.append((row["data_source"], completion, gt, extra))
        query = parsed.value if parsed.ok else None
        how = "strict" if parsed.ok else None
        if extract == "lenient" and not parsed.ok:
            query = extract_answer_lenient(full, task.answer_key)
            how = "lenient" if query else None
        values.append(query)
        described.append({"completion": completion, "prefill": prefill,
                          "reasoning": parsed.reasoning if parsed.ok else extract_reasoning_lenient(full),
                          "query": query, "extracted": how, "format_ok": parsed.ok,
                          "format_error": parsed.error})
    metrics = score_batch(items, searcher=recorder, values=values if extract == "lenient" else None,
                          mode=mode)
    for desc, m in zip(described, metrics):
        desc["retrieved"] = recorder.ids.get(desc["query"], []) if desc["query"] and m.get("format_ok") else []
        desc["metrics"] = m
    return described
