"""The shard merge rule: score descending, ties in shard then in-shard order, failures named."""
import pytest

from deepretrieval.core.results import SearchError, SearchResult
from deepretrieval.search.shards import ShardedBackend, merge_results


def test_merge_orders_by_score_then_shard_then_rank():
    a = [SearchResult(ids=["a1", "a2"], scores=[3.0, 1.0])]
    b = [SearchResult(ids=["b1", "b2"], scores=[3.0, 2.0])]
    out = merge_results([a, b], 3)
    assert out[0].ids == ["a1", "b1", "b2"]
    assert out[0].scores == [3.0, 3.0, 2.0]


def test_merge_keeps_texts_and_names_the_failed_shard():
    a = [SearchResult(ids=["a1"], scores=[1.0], texts=["ta"], titles=["A"]),
         SearchResult(ids=["x"], scores=[1.0], texts=["tx"], titles=["X"])]
    b = [SearchResult(ids=["b1"], scores=[2.0], texts=["tb"], titles=["B"]),
         SearchResult(error="bad query")]
    out = merge_results([a, b], 5, ["s0", "s1"])
    assert out[0].ids == ["b1", "a1"] and out[0].texts == ["tb", "ta"] and out[0].titles == ["B", "A"]
    assert out[1].ids == [] and out[1].error == "s1: bad query"


def test_merge_refuses_mismatched_answers():
    with pytest.raises(ValueError):
        merge_results([[SearchResult()], []], 1)


class _Fixed:
    name = "fixed"

    def __init__(self, results=None, fail=False):
        self.results, self.fail = results, fail

    def search(self, queries, k, *, return_text=False, options=None):
        if self.fail:
            raise RuntimeError("disk gone")
        return [SearchResult(ids=list(r[0][:k]), scores=list(r[1][:k])) for r in self.results]

    def info(self):
        return {}


def test_sharded_backend_fans_out_and_a_down_shard_is_a_named_search_error():
    ok = _Fixed([(["d1", "d2"], [2.0, 0.5])])
    other = _Fixed([(["e1"], [1.0])])
    backend = ShardedBackend([ok, other], name="two", shard_names=["s0", "s1"])
    assert backend.search(["q"], 2)[0].ids == ["d1", "e1"]
    down = ShardedBackend([ok, _Fixed(fail=True)], name="two", shard_names=["s0", "s1"])
    with pytest.raises(SearchError, match="s1 failed: RuntimeError: disk gone"):
        down.search(["q"], 2)
