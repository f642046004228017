"""Metrics against trec_eval (pytrec_eval) on a real SciFact BM25 run, and the paper variant."""
import math

import pytest

from deepretrieval.core.beir_files import load_qrels, load_queries
from deepretrieval.core.bundled import collection_dir
from deepretrieval.core.metrics import ndcg_at_k, recall_at_k

pytrec_eval = pytest.importorskip("pytrec_eval")


@pytest.fixture(scope="module")
def scifact_run(scifact_index):
    folder = collection_dir("scifact")
    queries, qrels = load_queries(folder), load_qrels(folder, "test")
    qids = list(qrels)
    results = scifact_index.search([queries[q] for q in qids], 1000)
    return qids, qrels, results


def test_metrics_equal_trec_eval_on_all_300_scifact_queries(scifact_run):
    qids, qrels, results = scifact_run
    assert len(qids) == 300
    # trec_eval sorts by score (ties by doc id); give it strictly decreasing scores in our order
    run = {q: {doc: float(len(r.ids) - i) for i, doc in enumerate(r.ids)} for q, r in zip(qids, results)}
    measures = {"ndcg_cut_10", "ndcg_cut_100", "ndcg_cut_1000", "recall_10", "recall_100", "recall_1000"}
    trec = pytrec_eval.RelevanceEvaluator({q: dict(v) for q, v in qrels.items()}, measures).evaluate(run)
    for q, r in zip(qids, results):
        for k in (10, 100, 1000):
            assert ndcg_at_k(r.ids, qrels[q], k) == pytest.approx(trec[q][f"ndcg_cut_{k}"], abs=1e-6)
            assert recall_at_k(r.ids, qrels[q], k) == pytest.approx(trec[q][f"recall_{k}"], abs=1e-6)


def test_graded_ndcg_equals_trec_eval_and_paper_variant_differs():
    ranked = ["d3", "x", "d1", "d2", "y"]
    qrels = {"d1": 1, "d2": 2, "d3": 3}  # listed in ascending grade
    trec = pytrec_eval.RelevanceEvaluator({"q": qrels}, {"ndcg_cut_5"}).evaluate(
        {"q": {d: float(10 - i) for i, d in enumerate(ranked)}})
    assert ndcg_at_k(ranked, qrels, 5) == pytest.approx(trec["q"]["ndcg_cut_5"], abs=1e-9)
    # paper variant: ideal DCG in qrel order (1, 2, 3), not sorted (3, 2, 1)
    dcg = 3 / math.log2(2) + 1 / math.log2(4) + 2 / math.log2(5)
    ideal_listed = 1 / math.log2(2) + 2 / math.log2(3) + 3 / math.log2(4)
    assert ndcg_at_k(ranked, qrels, 5, ideal="listed") == pytest.approx(dcg / ideal_listed)
    assert ndcg_at_k(ranked, qrels, 5, ideal="listed") != pytest.approx(ndcg_at_k(ranked, qrels, 5))


def test_binary_paper_variant_equals_standard(scifact_run):
    qids, qrels, results = scifact_run
    for q, r in list(zip(qids, results))[:50]:
        assert ndcg_at_k(r.ids, qrels[q], 10, ideal="listed") == pytest.approx(ndcg_at_k(r.ids, qrels[q], 10))


def test_edge_cases():
    assert recall_at_k(["a"], {}, 10) == 0.0
    assert ndcg_at_k(["a"], {"b": 0}, 10) == 0.0
    assert recall_at_k([], {"a"}, 10) == 0.0
    # a repeated document counts once and does not take a rank position
    assert recall_at_k(["a", "a", "b"], {"a", "b"}, 1) == 0.5
    assert recall_at_k(["a", "a", "b"], {"a", "b"}, 2) == 1.0


# --- tied scores: trec_eval's order (score descending, then doc id descending) ------------------

def test_trec_order_breaks_ties_by_doc_id_descending_like_trec_eval():
    from deepretrieval.core.metrics import trec_order
    qrels = {"a": 1, "c": 2, "e": 3}
    ranked = ["a", "b", "c", "d", "e", "f"]          # the engine's order
    scores = [2.0, 2.0, 2.0, 1.0, 1.0, 0.5]          # a, b, c tie; d, e tie
    assert trec_order(ranked, scores) == ["c", "b", "a", "e", "d", "f"]
    run = {"q": dict(zip(ranked, scores))}
    measures = {f"ndcg_cut_{k}" for k in (1, 2, 3, 4, 5)} | {"recall_1", "recall_4"}
    trec = pytrec_eval.RelevanceEvaluator({"q": qrels}, measures).evaluate(run)["q"]
    ordered = trec_order(ranked, scores)
    for k in (1, 2, 3, 4, 5):
        assert ndcg_at_k(ordered, qrels, k) == pytest.approx(trec[f"ndcg_cut_{k}"], abs=1e-9)
    assert recall_at_k(ordered, qrels, 1) == pytest.approx(trec["recall_1"])
    assert recall_at_k(ordered, qrels, 4) == pytest.approx(trec["recall_4"])
    # the engine's order differs from trec_eval here, so the test can fail
    assert ndcg_at_k(ranked, qrels, 1) != pytest.approx(trec["ndcg_cut_1"])
    assert trec_order(ranked, None) == ranked and trec_order(ranked, [1.0]) == ranked


def test_beir_reward_uses_trec_eval_tie_order(scifact_run):
    """The BEIR family's reward metrics on a result with tied scores equal trec_eval's (and on the
    real SciFact BM25 results with their real scores too)."""
    from deepretrieval.catalog import get_task
    from deepretrieval.core.results import SearchResult
    task = get_task("scifact")
    qrels = {"d1": 1, "d3": 2}
    result = SearchResult(ids=["d1", "d2", "d3", "d4"], scores=[5.0, 5.0, 5.0, 1.0])
    trec = pytrec_eval.RelevanceEvaluator({"q": qrels}, {"ndcg_cut_10", "ndcg_cut_1"}).evaluate(
        {"q": dict(zip(result.ids, result.scores))})["q"]
    got = task.family.score(task, None, result, {"target": list(qrels), "grades": [1, 2]}, {}, "val")
    assert got["ndcg@10"] == pytest.approx(trec["ndcg_cut_10"], abs=1e-9)
    assert got["ndcg"] == pytest.approx(trec["ndcg_cut_10"], abs=1e-9)      # val depth 10
    assert ndcg_at_k(result.ids, qrels, 10) != pytest.approx(trec["ndcg_cut_10"])  # engine order
    qids, judged, results = scifact_run
    run = {q: {d: float(s) for d, s in zip(r.ids, r.scores)} for q, r in zip(qids, results)}
    trec = pytrec_eval.RelevanceEvaluator({q: dict(v) for q, v in judged.items()},
                                          {"ndcg_cut_10", "recall_100"}).evaluate(run)
    for q, r in zip(qids, results):
        gt = {"target": list(judged[q]), "grades": list(judged[q].values())}
        got = task.family.score(task, None, r, gt, {}, "val")
        assert got["ndcg@10"] == pytest.approx(trec[q]["ndcg_cut_10"], abs=1e-6)
        assert got["recall@100"] == pytest.approx(trec[q]["recall_100"], abs=1e-6)
