"""Retrieval metrics.

Standard definitions follow trec_eval (``recall_k``, ``ndcg_cut_k``: linear gains, log2 discount,
ideal ranking = all judged documents sorted by grade). The DeepRetrieval paper's nDCG variant is
offered separately as :func:`ndcg_paper_at_k`. ``relevant`` arguments are mappings doc id → grade
(grades <= 0 count as non-relevant) or any iterable of relevant ids (grade 1).

trec_eval does not take a run's order as given: it sorts each query's documents by score
descending and breaks ties by document id **descending** (string comparison). :func:`trec_order`
puts a ranked list with scores into that order, so metrics on tied scores equal trec_eval's.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def as_qrels(relevant: Mapping[str, float] | Iterable[str]) -> dict[str, float]:
    if isinstance(relevant, Mapping):
        return {str(doc): float(grade) for doc, grade in relevant.items()}
    return {str(doc): 1.0 for doc in relevant}


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


def ndcg_at_k(ranked: Sequence[str], relevant, k: int) -> float:
    """trec_eval ``ndcg_cut_k``: linear gains, ideal DCG from all judged grades sorted descending."""
    qrels = as_qrels(relevant)
    ideal = _dcg(sorted((g for g in qrels.values() if g > 0), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return _ranked_dcg(_dedup(ranked, k), qrels) / ideal


def ndcg_paper_at_k(ranked: Sequence[str], relevant, k: int) -> float:
    """The DeepRetrieval variant: linear gains, ideal DCG taken in the order the qrels are listed
    (not sorted by grade). Equals :func:`ndcg_at_k` for binary judgments."""
    qrels = as_qrels(relevant)
    ideal = _dcg([g for g in qrels.values() if g > 0][:k])
    if ideal <= 0:
        return 0.0
    return _ranked_dcg(_dedup(ranked, k), qrels) / ideal


def first_relevant_rank(ranked: Sequence[str], relevant, k: int | None = None) -> int | None:
    """1-based rank of the first relevant document within the first ``k``; None when absent."""
    positives = {d for d, g in as_qrels(relevant).items() if g > 0}
    for rank, doc in enumerate(ranked if k is None else ranked[:k], start=1):
        if str(doc) in positives:
            return rank
    return None


def hit_at_k(ranked: Sequence[str], relevant, k: int) -> float:
    return 1.0 if first_relevant_rank(ranked, relevant, k) is not None else 0.0


def first_hit_rank(flags: Iterable[bool]) -> int | None:
    """1-based position of the first true flag (e.g. 'passage contains an answer'); None if none."""
    for rank, flag in enumerate(flags, start=1):
        if flag:
            return rank
    return None
