"""Reward tables at every boundary, overrides, and compute_score end to end on SciFact."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepretrieval.rewards import TABLES, RewardTable, TRLReward, compute_score, compute_score_async, get_table

SE, EV, BEIR, SPIDER, BIRD = (TABLES[n] for n in ("search_engine", "evidence", "beir", "spider", "bird"))


@pytest.mark.parametrize("recall,answer", [
    (1.0, 5), (0.7, 5), (0.6999, 4), (0.5, 4), (0.4999, 3), (0.4, 3), (0.3999, 1), (0.3, 1),
    (0.2999, 0.5), (0.1, 0.5), (0.0999, 0.1), (0.05, 0.1), (0.0499, -3.5), (0.0, -3.5)])
def test_search_engine_tiers(recall, answer):
    assert SE.answer_score(recall) == answer
    assert SE.total(True, SE.answer_score(recall)) == pytest.approx(1 + answer)  # format +1
    assert SE.total(False, SE.answer_score(recall)) == -4
    assert SE.total(True, SE.error) == pytest.approx(1 - 4)


@pytest.mark.parametrize("rank,answer", [
    (1, 5), (5, 5), (6, 4), (20, 4), (21, 2), (50, 2), (51, 1), (100, 1), (101, 0.5), (1000, 0.5),
    (1001, 0.1), (3000, 0.1), (3001, -3.5), (None, -3.5)])
def test_evidence_tiers(rank, answer):
    assert EV.answer_score(rank) == answer
    assert EV.total(False, 0) == -4


@pytest.mark.parametrize("ndcg,total", [(0.0, 0.0), (1e-9, 0.1 + 1e-9), (0.5, 0.6), (1.0, 1.1)])
def test_beir_table(ndcg, total):
    assert BEIR.total(True, BEIR.answer_score(ndcg)) == pytest.approx(total)
    assert BEIR.total(False, BEIR.answer_score(ndcg)) == -2


@pytest.mark.parametrize("table,match,total", [(SPIDER, 1.0, 1.1), (SPIDER, 0.0, 0.0), (BIRD, 1.0, 1.1),
                                               (BIRD, 0.0, 0.4)])
def test_sql_tables(table, match, total):
    assert table.total(True, table.answer_score(match)) == pytest.approx(total)
    assert table.total(False, 0.0) == -2


def test_overrides():
    t = get_table("search_engine", {"format_bad": -1, "tiers": [[0.9, 10]], "otherwise": 0})
    assert t.format_bad == -1 and t.answer_score(0.95) == 10 and t.answer_score(0.8) == 0
    assert TABLES["search_engine"].format_bad == -4  # the shared table is untouched
    with pytest.raises(ValueError, match="unknown reward table field"):
        get_table("beir", {"bonus": 1})
    assert isinstance(t, RewardTable)


# ---- compute_score end to end on real SciFact rows --------------------------------------------

@pytest.fixture(scope="module")
def rows():
    from deepretrieval.catalog import bundled_rows
    return {split: bundled_rows("scifact", split) for split in ("train", "test")}


def answer(query, think="I will keep the key terms."):
    return f"<think>{think}</think>\n<answer>{json.dumps({'query': query})}</answer>"


def score(row, completion, **kw):
    return compute_score(row["data_source"], completion, row["reward_model"]["ground_truth"],
                         row["extra_info"], **kw)


def test_good_bad_and_malformed_completions(rows):
    row = rows["test"][1]  # claim id 3: "1,000 genomes project enables mapping ..."
    assert row["extra_info"]["query_id"] == "3"
    claim = row["extra_info"]["query"]
    good = score(row, answer(claim))
    assert good["format_ok"] and not good["search_error"]
    assert good["ndcg"] > 0.5 and good["score"] == pytest.approx(0.1 + good["ndcg"])
    assert good["ndcg"] == good["ndcg@10"]  # validation depth 10 on the test split
    bad = score(row, answer("zebra migration patterns in the serengeti"))
    assert bad["format_ok"] and bad["ndcg"] == 0 and bad["score"] == 0.0
    broken = score(row, f"<answer>{json.dumps({'query': claim})}</answer>")  # no reasoning
    assert not broken["format_ok"] and broken["score"] == -2
    assert set(good) == set(bad) == set(broken)  # same keys for every sample (verl aggregates them)


def test_training_split_uses_training_depth(rows):
    row = rows["train"][0]
    result = score(row, answer(row["extra_info"]["query"]))
    # nDCG@1000 >= nDCG@10 for the same ranking
    assert result["ndcg"] >= result["ndcg@10"]
    assert score(row, answer(row["extra_info"]["query"]), mode="val")["ndcg"] == result["ndcg@10"]


def test_original_claims_reach_published_bm25_quality(rows):
    from deepretrieval.rewards import score_batch
    items = [(r["data_source"], answer(r["extra_info"]["query"]), r["reward_model"]["ground_truth"],
              r["extra_info"]) for r in rows["test"]]
    results = score_batch(items)
    mean_ndcg = sum(r["ndcg@10"] for r in results) / len(results)
    assert 0.645 <= mean_ndcg <= 0.704


def test_async_equals_sync(rows):
    import asyncio
    row = rows["test"][3]
    completion = answer(row["extra_info"]["query"])
    assert asyncio.run(compute_score_async(row["data_source"], completion, row["reward_model"]["ground_truth"],
                                           row["extra_info"])) == score(row, completion)


def test_answer_only_task_with_prefill(rows):
    row = rows["test"][1]
    gt, extra = row["reward_model"]["ground_truth"], dict(row["extra_info"], prefill='<answer>{"query": "')
    completion = row["extra_info"]["query"].replace('"', "") + '"}</answer>'
    result = compute_score("scifact_no_reason", completion, gt, extra)
    assert result["format_ok"] and result["ndcg"] > 0


def test_unknown_data_source_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown task"):
        compute_score("no_such_task", "x", {"target": ["1"]})


def test_search_error_is_reported_not_zero(rows):
    from deepretrieval.core.results import SearchError

    class Down:
        def search(self, *a, **k):
            raise SearchError("service unreachable")

    from deepretrieval.rewards import score_batch
    row = rows["test"][0]
    result = score_batch([(row["data_source"], answer("vitamin"), row["reward_model"]["ground_truth"],
                           row["extra_info"])], searcher=Down())[0]
    assert result["search_error"] is True and result["format_ok"] is True
    assert result["score"] == TABLES["beir"].total(True, TABLES["beir"].error)


def test_trl_adapter(rows):
    batch = rows["test"][:4]
    reward = TRLReward()
    completions = [[{"role": "assistant", "content": answer(r["extra_info"]["query"])}] for r in batch]
    scores = reward(prompts=[r["prompt"] for r in batch], completions=completions,
                    data_source=[r["data_source"] for r in batch],
                    reward_model=[r["reward_model"] for r in batch],
                    extra_info=[r["extra_info"] for r in batch])
    assert scores == [score(r, answer(r["extra_info"]["query"]))["score"] for r in batch]
    assert len(reward.last_metrics) == 4 and "ndcg@10" in reward.last_metrics[0]


_TAGS = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", '{"query": ', '"', "}", "{",
                         "\\", "\x00", "AND", "<|im_end|>", " ", "é", "\n"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=300), st.lists(_TAGS | st.text(max_size=20), max_size=40).map("".join),
                 st.builds(lambda q: answer(q), st.text(max_size=200))))
def test_no_string_makes_compute_score_raise(rows, text):
    row = rows["test"][1]
    result = score(row, text)
    assert isinstance(result["score"], float)
    assert result["format_ok"] in (True, False)
