"""scifact_boolean task: rows, reward at every tier boundary of the paper's search-engine table,
malformed queries as a defined outcome, the baseline command."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deepretrieval.catalog import bundled_rows, get_task
from deepretrieval.rewards import compute_score, score_batch


def completion(query: str) -> str:
    return "<think>concepts</think>\n<answer>" + json.dumps({"query": query}) + "</answer>"


@pytest.fixture(scope="module")
def top(_index_dir):
    from deepretrieval.catalog import open_index
    ids = open_index("scifact_boolean").search(["cancer"], 1000)[0].ids
    assert len(ids) > 200
    return ids


def gt_with_recall(top_ids, hits: int, total: int = 100) -> dict:
    """Relevant documents: ``hits`` of the query's top 100, the rest ranked beyond 100."""
    return {"target": top_ids[:hits] + top_ids[100:100 + total - hits]}


# recall → the paper's answer score (format_ok = 1 is added)
BOUNDARIES = [(100, 5), (70, 5), (69, 4), (50, 4), (49, 3), (40, 3), (39, 1), (30, 1), (29, 0.5),
              (10, 0.5), (9, 0.1), (5, 0.1), (4, -3.5), (0, -3.5)]


@pytest.mark.parametrize("hits,answer_score", BOUNDARIES)
def test_reward_at_every_tier_boundary(top, hits, answer_score):
    gt = gt_with_recall(top, hits)
    for split in ("train", "test"):
        out = compute_score("scifact_boolean", completion("cancer"), gt, {"split": split})
        assert out["recall"] == hits / 100
        assert out["score"] == 1 + answer_score
        assert out["format_ok"] and not out["search_error"] and out["query_error"] == 0.0
        assert out["num_results"] == 100 and out["recall@1000"] == 1.0


def test_answer_only_variant_and_bad_format(top):
    gt = gt_with_recall(top, 70)
    out = compute_score("scifact_boolean_no_reason", 'cancer"}</answer>', gt, {"split": "train"})
    assert out["score"] == 6 and out["recall"] == 0.7
    bad = compute_score("scifact_boolean", "cancer", gt, {"split": "train"})
    assert bad["score"] == -4 and not bad["format_ok"]
    assert set(bad) == set(out)


def test_shaped_variant_adds_the_match_set_bonus_to_the_paper_tiers(top):
    """scifact_boolean_shaped: the paper's tiers + 0.01 per matching document up to 100."""
    cancer = 'cancer"}</answer>'
    for hits, answer_score in BOUNDARIES:
        out = compute_score("scifact_boolean_shaped", cancer, gt_with_recall(top, hits),
                            {"split": "train"})
        assert out["num_results"] == 100
        assert out["score"] == pytest.approx(1 + answer_score + 1.0)
    rows = bundled_rows("scifact_boolean_shaped", "train")
    claim, gt = rows[0]["extra_info"]["query"], rows[0]["reward_model"]["ground_truth"]
    nothing = compute_score("scifact_boolean_shaped", claim + '"}</answer>', gt, {"split": "train"})
    assert nothing["num_results"] == 0 and nothing["score"] == 1 - 3.5   # no match: no bonus
    few = json.dumps({"query": 'bone[ti] AND "mineral density"'})[len('{"query": "'):] + "</answer>"
    out = compute_score("scifact_boolean_shaped", few, {"target": ["not-a-document"]},
                        {"split": "train"})
    assert 0 < out["num_results"] < 100 and out["recall"] == 0 and not out["query_error"]
    assert out["score"] == pytest.approx(1 - 3.5 + 0.01 * out["num_results"])
    assert compute_score("scifact_boolean_shaped", "cancer", gt, {"split": "train"})["score"] == -4
    malformed = compute_score("scifact_boolean_shaped", '(cancer"}</answer>', gt, {"split": "train"})
    assert malformed["query_error"] == 1.0 and malformed["score"] == 1 - 3.5


def test_malformed_query_is_a_defined_outcome_not_a_search_error(top):
    gt = gt_with_recall(top, 70)
    items = [("scifact_boolean", completion(q), gt, {"split": "train"})
             for q in ["(cancer", "cancer[xyz]", "cancer OR", "cancer"]]
    outs = score_batch(items)
    for out in outs[:3]:
        assert out["score"] == 1 - 3.5 and out["query_error"] == 1.0
        assert out["format_ok"] and not out["search_error"] and out["recall"] == 0.0
    assert outs[3]["score"] == 6  # one malformed query does not touch another's score
    assert all(set(o) == set(outs[3]) for o in outs)


def test_failed_search_is_still_a_search_error(top):
    out = compute_score("scifact_boolean", completion("cancer"), gt_with_recall(top, 70),
                        {"split": "train", "search_index": "no_such_index"})
    assert out["search_error"] and out["score"] == 1 - 4


def test_rows_and_prompt():
    task = get_task("scifact_boolean")
    rows = bundled_rows(task.name, "test")
    assert len(rows) == 300 and rows[0]["data_source"] == "scifact_boolean"
    assert "AND" in rows[0]["prompt"][1]["content"]
    assert rows[0]["extra_info"]["query"] in rows[0]["prompt"][1]["content"]
    assert len(bundled_rows("scifact_boolean_no_reason", "train")) == 809
    assert task.depth("train") == task.depth("val") == 100


@pytest.mark.slow
def test_cli_baseline_on_the_boolean_task(_index_dir):
    import os
    env = dict(os.environ, DEEPRETRIEVAL_INDEX_DIR=str(_index_dir))
    out = subprocess.run([sys.executable, "-m", "deepretrieval.cli", "baseline", "--task",
                          "scifact_boolean", "--split", "test", "--json"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["n"] == 300 and summary["search_error_rate"] == 0.0
    # the claim as an AND query finds almost nothing (measured 0.049; BM25 on the claim: 0.9)
    assert 0.0 < summary["recall"] < 0.15
    assert summary["num_results"] < 1.0


def test_reward_through_the_retrieval_service_equals_in_process(top):
    """The per-query error and its kind travel through the HTTP service; rewards are the same."""
    from deepretrieval.catalog import open_index
    from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
    from deepretrieval.service.client import ServiceSearcher
    app = create_app({"scifact_boolean": open_index("scifact_boolean")}, ServiceConfig(batch_wait_ms=5))
    gt = gt_with_recall(top, 50)
    items = [("scifact_boolean", completion(q), gt, {"split": "train"})
             for q in ["cancer", "(cancer", "cancer[xyz] OR tumor", '"breast cancer" OR canc*']]
    local = score_batch(items)
    with ServerThread(app) as srv:
        remote = score_batch(items, searcher=ServiceSearcher(srv.url, timeout=60))
        result = ServiceSearcher(srv.url).search("scifact_boolean", ["(cancer"], 10)[0]
    assert remote == local
    assert [o["query_error"] for o in local] == [0.0, 1.0, 1.0, 0.0]
    assert result.error.startswith("malformed query") and result.info["query_error"] == "unbalanced_parentheses"


def test_deep_nesting_is_a_query_error_in_the_reward(top):
    """Issue 29 item 3: a nested query that fits the answer cap scored −3.0 (search_error, from a
    RecursionError); it is the writer's fault: −2.5, query_error, and it touches no neighbour."""
    import random
    rng = random.Random(3)
    gt = gt_with_recall(top, 70)
    queries = ["(" * 5000]
    for _ in range(6):
        d = rng.randint(101, 3500)
        queries += ["(" * d + "cancer" + ")" * d, "(" * d + "cancer" + ")" * (d - 1)]
    items = [("scifact_boolean", completion(q), gt, {"split": "train"}) for q in queries]
    items.append(("scifact_boolean", completion("cancer"), gt, {"split": "train"}))
    outs = score_batch(items)
    for q, out in zip(queries, outs):
        assert out["score"] == 1 - 3.5 and out["query_error"] == 1.0, (q[:20], out)
        assert out["format_ok"] and not out["search_error"]
    assert outs[-1]["score"] == 6
    for q in queries[:3]:
        out = compute_score("scifact_boolean_no_reason", q + '"}</answer>', gt, {"split": "train"})
        assert out["query_error"] == 1.0 and not out["search_error"] and out["score"] == 1 - 3.5
