"""The evidence search option ``answers`` for backends that return passage texts but rank nothing
themselves (dense, Boolean): search with texts, put the DPR first answer-bearing rank in
``info["first_answer_rank"]``, drop the texts again unless they were asked for, and keep only the
top :data:`ANSWERS_HITS` hits then. BM25 and sharded indexes take the option natively
(:mod:`deepretrieval.search.bm25`, :mod:`.shards`), with the same result shape."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deepretrieval.core import dpr_match
from deepretrieval.core.results import SearchResult

Search = Callable[..., list[SearchResult]]

#: hits a result keeps under the ``answers`` option without ``return_text`` (every backend): the
#: evidence reward reads only the rank, evaluation runs record the top 10 ids
ANSWERS_HITS = 10


def keep_top_hits(result: SearchResult) -> None:
    """Cut ``result`` to the hits the ``answers`` option returns without texts."""
    result.ids = result.ids[:ANSWERS_HITS]
    result.scores = result.scores[:ANSWERS_HITS]
    result.texts = result.titles = None


def search_ranking_answers(search: Search, name: str, queries: list[str], k: int,
                           return_text: bool, options: dict[str, Any] | None
                           ) -> list[SearchResult]:
    """``search(queries, k, return_text=..., options=...)`` with the ``answers`` option taken
    out and applied to its results (see the module docstring)."""
    options = dict(options or {})
    if "answers" not in options:
        return search(queries, k, return_text=return_text, options=options or None)
    answers = options.pop("answers")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{name}: 'answers' must be a list of answer strings")
    keys = dpr_match.answer_keys(answers)
    results = search(queries, k, return_text=True, options=options or None)
    for r in results:
        if r.error is None:
            r.info["first_answer_rank"] = (dpr_match.first_answer_rank(r.texts or [], keys)
                                           if keys else None)
            if not return_text:
                keep_top_hits(r)
    return results
