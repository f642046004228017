"""Retrieval metrics.

Standard definitions follow trec_eval (``recall_k``, ``ndcg_cut_k``: linear gains, log2 discount,
ideal ranking = all judged documents sorted by grade). The DeepRetrieval paper's nDCG variants are
parameters of :func:`ndcg_at_k` (``ideal="listed"``; ``dedup=False`` for the original reward
modules' arithmetic). ``relevant`` arguments are mappings doc id → grade (grades <= 0 count as
non-relevant), (doc id, grade) pairs in their listed order, or any iterable of relevant ids (grade 1).

trec_eval does not take a run's order as given: it sorts each query's documents by score
descending and breaks ties by document id **descending** (string comparison). :func:`trec_order`
puts a ranked list with scores into that order, so metrics on tied scores equal trec_eval's.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def _judgments(relevant) -> list[tuple[str, Any]]:
    """``relevant`` as (doc id, grade) pairs in their listed order, repeats kept, grades as given."""
    if isinstance(relevant, Mapping):
        return [(str(doc), grade) for doc, grade in relevant.items()]
    return [(str(item[0]), item[1]) if isinstance(item, tuple) else (str(item), 1.0)
            for item in relevant]


def as_qrels(relevant: Mapping[str, float] | Iterable[str] | Iterable[tuple[str, float]]
             ) -> dict[str, float]:
    """doc id → grade (a document listed twice keeps its last grade)."""
    return {doc: float(grade) for doc, grade in _judgments(relevant)}


def trec_order(ranked: Sequence[str], scores: Sequence[float] | None) -> list[str]:
    """``ranked`` in trec_eval's order: score descending, ties by document id descending. Without
    scores (or when their number differs from the ids') the given order is kept."""
    ids = [str(doc) for doc in ranked]
    if scores is None or len(scores) != len(ids):
        return ids
    order = sorted(range(len(ids)), key=lambda i: ids[i], reverse=True)   # id descending ...
    order.sort(key=lambda i: float(scores[i]), reverse=True)              # ... then score (stable)
    return [ids[i] for i in order]


def _dedup(ranked: Sequence[str], k: int) -> list[str]:
    """The first ``k`` distinct ids (as strings), in rank order. ``dict.fromkeys`` keeps first
    occurrences at C speed: the reward path scores 2,560 rankings of 1,000 ids per step. When the
    first ``k`` are already distinct (search results are), only they are looked at."""
    head = list(map(str, ranked[:k]))
    if len(set(head)) == len(head):
        return head
    return list(dict.fromkeys(map(str, ranked)))[:k]


def recall_at_k(ranked: Sequence[str], relevant, k: int) -> float:
    """Share of relevant documents among the first ``k`` retrieved (0.0 when nothing is relevant)."""
    qrels = as_qrels(relevant)
    positives = {d for d, g in qrels.items() if g > 0}
    if not positives:
        return 0.0
    return len(positives.intersection(_dedup(ranked, k))) / len(positives)


def _dcg(gains: Iterable[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def _ranked_dcg(docs: list[str], qrels: Mapping[str, float]) -> float:
    """DCG of a deduplicated ranking: only the judged relevant documents found in it contribute,
    so only they are visited (a few per query, against 1,000 ranks). The terms are added in rank
    order, so the sum equals ``_dcg`` over every rank's gain bit for bit."""
    present = set(docs)
    hits = sorted((docs.index(d), g) for d, g in qrels.items() if g > 0 and d in present)
    return sum(g / math.log2(rank + 2) for rank, g in hits)


def ndcg_at_k(ranked: Sequence[str], relevant, k: int, *, ideal: str = "sorted",
              dedup: bool = True) -> float:
    """nDCG@k with linear gains and a log2 discount.

    ``ideal``: ``"sorted"`` (trec_eval ``ndcg_cut_k``) takes the ideal DCG from the judged grades
    sorted descending; ``"listed"`` (the DeepRetrieval variant) takes them in the order they are
    listed, so nDCG can exceed 1 (equal to ``"sorted"`` for binary judgments).
    ``dedup``: True counts a document once (its first rank) and only positive grades; False is the
    original DeepRetrieval reward modules' arithmetic (``ideal="listed"`` only): both lists are
    taken as given — a document retrieved twice gains twice, the ideal DCG takes the first ``k``
    listed judgments (a repeated one again, every grade with its document's last grade)."""
    if ideal not in ("sorted", "listed"):
        raise ValueError(f"unknown ideal ranking {ideal!r}; known: ['listed', 'sorted']")
    if not dedup:
        if ideal != "listed":
            raise ValueError("dedup=False is the original reward modules' arithmetic, which "
                             "takes the ideal DCG in listed order: use ideal='listed'")
        listed = _judgments(relevant)
        grade = dict(listed)
        best = _dcg([grade[doc] for doc, _ in listed[:k]])
        if not best > 0:  # NaN too, as the original's ``ideal > 0`` test
            return 0.0
        return _dcg([grade.get(str(doc), 0) for doc in ranked[:k]]) / best
    qrels = as_qrels(relevant)
    positive = [g for g in qrels.values() if g > 0]
    best = _dcg((sorted(positive, reverse=True) if ideal == "sorted" else positive)[:k])
    if best <= 0:
        return 0.0
    return _ranked_dcg(_dedup(ranked, k), qrels) / best
