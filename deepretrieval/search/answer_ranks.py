"""The evidence search option ``answers`` (the gold answers: each result carries
``info["first_answer_rank"]``, DPR's first answer-bearing rank within k) — what every backend
shares: the result's shape, the option ``answer_hits``, and the rank over merged shards. The
answers are one list for every query of the call or one list per query
(:mod:`deepretrieval.core.per_query`).

* Without ``return_text``, a result under ``answers`` keeps only its top ``answer_hits`` hits
  (default :data:`ANSWERS_HITS`; ``0``: all k) — the reward reads only the rank.
* :func:`search_ranking_answers`: for backends that return passage texts but rank nothing
  themselves (dense, Boolean): search with texts, rank, drop the texts again unless asked for.
  BM25 takes the option natively (:mod:`deepretrieval.search.bm25`).
* :func:`merge_answer_ranks`: shards (in process, :mod:`.shards`, or Ray Serve deployments) each
  rank their own top k, sent with all k scores (``answer_hits: 0``); the merged list's first
  answer-bearing hit is the first, in merged order, of the shards' first ones that made the merged
  top k (a shard's hits keep their order in the merge), so no text travels here either.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from deepretrieval.core import dpr_match, per_query
from deepretrieval.core.results import SearchResult

Search = Callable[..., list[SearchResult]]

#: hits a result keeps under the ``answers`` option without ``return_text`` (every backend): the
#: evidence reward reads only the rank, evaluation runs record the top 10 ids
ANSWERS_HITS = 10


def answer_hits(options: dict[str, Any]) -> int:
    """The ``answer_hits`` option (hits kept with the rank; 0: all k); ValueError when it comes
    without ``answers`` or is not an integer >= 0."""
    if "answer_hits" not in options:
        return ANSWERS_HITS
    hits = options["answer_hits"]
    if "answers" not in options:
        raise ValueError("'answer_hits' goes with the 'answers' option")
    if isinstance(hits, bool) or not isinstance(hits, int) or hits < 0:
        raise ValueError("'answer_hits' must be an integer >= 0 (0: all k hits)")
    return hits


def keep_top_hits(result: SearchResult, hits: int = ANSWERS_HITS) -> None:
    """Cut ``result`` to the hits the ``answers`` option returns without texts (0: all)."""
    if hits:
        result.ids = result.ids[:hits]
        result.scores = result.scores[:hits]
    result.texts = result.titles = None


def merge_answer_ranks(per_shard: Sequence[Sequence[SearchResult]], merged: list[SearchResult],
                       k: int) -> None:
    """Put the merged first answer-bearing rank into each merged result's info (replacing the
    shards' infos), from each shard's own rank and all its scores (see the module docstring;
    the order is :func:`~deepretrieval.search.shards.merge_results`'s: score descending, then
    shard, then the shard's order)."""
    for q, out in enumerate(merged):
        if out.error is not None:
            continue
        parts = [results[q] for results in per_shard]
        scores = [np.asarray(r.scores, dtype=np.float64) for r in parts]
        best = None
        for s, r in enumerate(parts):
            rank = r.info["first_answer_rank"]
            if rank is None:
                continue
            score = scores[s][rank - 1]
            # hits of the other shards ranked before this one: higher scores, and equal scores
            # of the shards before it
            ahead = rank - 1 + sum(int(np.count_nonzero(scores[t] >= score if t < s
                                                        else scores[t] > score))
                                   for t in range(len(parts)) if t != s)
            if ahead < k and (best is None or ahead + 1 < best):
                best = ahead + 1
        out.info = {"first_answer_rank": best}


def search_ranking_answers(search: Search, name: str, queries: list[str], k: int,
                           return_text: bool, options: dict[str, Any] | None
                           ) -> list[SearchResult]:
    """``search(queries, k, return_text=..., options=...)`` with the ``answers`` option taken
    out and applied to its results (see the module docstring)."""
    options = dict(options or {})
    try:
        keys = per_query.answer_keys_per_query(options, len(queries))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if keys is None:
        return search(queries, k, return_text=return_text, options=options or None)
    hits = answer_hits(options)
    del options["answers"]
    options.pop("answer_hits", None)
    results = search(queries, k, return_text=True, options=options or None)
    for r, answers in zip(results, keys):
        if r.error is None:
            r.info["first_answer_rank"] = (dpr_match.first_answer_rank(r.texts or [], answers)
                                           if answers else None)
            if not return_text:
                keep_top_hits(r, hits)
    return results
