"""The visit-only-the-relevant nDCG equals the every-rank definition bit for bit, and matches
trec_eval (pytrec_eval) on random graded judgments and rankings with repeated ids."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepretrieval.core.metrics import ndcg_at_k, recall_at_k


def reference_ndcg(ranked, qrels, k, paper=False):
    seen, docs = set(), []
    for d in map(str, ranked):
        if d not in seen:
            seen.add(d)
            docs.append(d)
    docs = docs[:k]
    grades = [g for g in qrels.values() if g > 0]
    ideal_gains = grades[:k] if paper else sorted(grades, reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(ideal_gains))
    if ideal <= 0:
        return 0.0
    return sum(max(qrels.get(d, 0.0), 0.0) / math.log2(i + 2) for i, d in enumerate(docs)) / ideal


ids = st.integers(0, 40).map(lambda i: f"d{i}")


@settings(max_examples=150, deadline=None)
@given(ranked=st.lists(ids, max_size=80),
       qrels=st.dictionaries(ids, st.sampled_from([-1.0, 0.0, 1.0, 2.0, 3.0]), max_size=12),
       k=st.integers(1, 100))
def test_ndcg_equals_the_every_rank_definition_exactly(ranked, qrels, k):
    assert ndcg_at_k(ranked, qrels, k) == reference_ndcg(ranked, qrels, k)
    assert ndcg_at_k(ranked, qrels, k, ideal="listed") == reference_ndcg(ranked, qrels, k, paper=True)
    positives = {d for d, g in qrels.items() if g > 0}
    if positives:
        head = list(dict.fromkeys(ranked))[:k]
        assert recall_at_k(ranked, qrels, k) == len(positives & set(head)) / len(positives)


def test_matches_trec_eval_on_a_thousand_deep_ranking():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    import random

    rng = random.Random(0)
    ranked = [f"d{i}" for i in rng.sample(range(5000), 1000)]
    qrels = {f"d{i}": rng.choice([1, 2]) for i in rng.sample(range(5000), 30)}
    qrels[ranked[3]] = 2
    qrels[ranked[999]] = 1
    run = {"q": {d: float(1000 - r) for r, d in enumerate(ranked)}}
    ev = pytrec_eval.RelevanceEvaluator({"q": qrels}, {"ndcg_cut.10", "ndcg_cut.1000"})
    want = ev.evaluate(run)["q"]
    assert ndcg_at_k(ranked, qrels, 10) == pytest.approx(want["ndcg_cut_10"], abs=1e-12)
    assert ndcg_at_k(ranked, qrels, 1000) == pytest.approx(want["ndcg_cut_1000"], abs=1e-12)


def original_reward_ndcg(ranked, judgments, k):
    """The original reward modules' nDCG as its README describes it: gains from the judgments (a
    repeated id keeps its last grade), every retrieved entry counts, the ideal DCG takes the
    first ``k`` judgments as listed."""
    grade = {doc: g for doc, g in judgments}
    dcg = sum(grade.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sum(grade[doc] / math.log2(i + 2) for i, (doc, _) in enumerate(judgments[:k]))
    return dcg / ideal if ideal > 0 else 0.0


@settings(max_examples=150, deadline=None)
@given(ranked=st.lists(ids, max_size=60),
       judgments=st.lists(st.tuples(ids, st.sampled_from([0, 1, 2, 3, 0.5])), max_size=12),
       k=st.integers(0, 80))
def test_the_original_variant_is_a_parameter(ranked, judgments, k):
    got = ndcg_at_k(ranked, judgments, k, ideal="listed", dedup=False)
    assert got == pytest.approx(original_reward_ndcg(ranked, judgments, k), rel=1e-12, abs=1e-15)


def test_the_original_variant_counts_what_the_standard_one_drops():
    # retrieved twice: gains twice (nDCG 1.63 > 1), where the deduplicated variants say 1.0
    assert ndcg_at_k(["a", "a"], {"a": 1}, 10, ideal="listed", dedup=False) == pytest.approx(
        1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "a"], {"a": 1}, 10, ideal="listed") == 1.0
    # a judgment of grade 0 listed first takes the ideal's first rank
    listed = [("z", 0), ("a", 1)]
    assert ndcg_at_k(["a"], listed, 10, ideal="listed", dedup=False) == pytest.approx(math.log2(3))
    assert ndcg_at_k(["a"], listed, 10, ideal="listed") == 1.0
    with pytest.raises(ValueError, match="ideal='listed'"):
        ndcg_at_k(["a"], listed, 10, dedup=False)
    with pytest.raises(ValueError, match="known"):
        ndcg_at_k(["a"], listed, 10, ideal="best")
