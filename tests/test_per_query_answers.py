"""The evidence option ``answers`` given one list per query (``deepretrieval.core.per_query``):
every path that dedups or slices a call's queries keeps each query with its own answers, and the
ranks equal the one-query-at-a-time searches — in process, through the shards, through the
reward's batching, through the clients and through the service's batcher, which now coalesces
concurrent requests with different answers into one backend call."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from deepretrieval.core import per_query
from deepretrieval.core.results import SearchResult
from deepretrieval.search import LocalSearcher, load_index_dir
from deepretrieval.search.bm25_build import build_index
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.service.client import AsyncServiceClient, ServiceClient

#: answer lists that take the rule's branches on SciFact: common words, two-word answers, a
#: stopword, an answer found nowhere, an empty list (no answers: rank None)
ANSWERS = [["cancer"], ["vitamin D", "bone"], ["The"], ["zzzz qqqq"], [], ["T cells"],
           ["mice"], ["p53"]]
DEPTH = 300


def _alone(index, queries, answers, k=DEPTH):
    """Each query searched on its own with its own answers (the reference)."""
    return [index.search([q], k, options={"answers": a})[0] for q, a in zip(queries, answers)]


def _same(got: list[SearchResult], want: list[SearchResult]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.error is None and w.error is None
        assert (g.ids, g.info["first_answer_rank"]) == (w.ids, w.info["first_answer_rank"])
        assert g.scores == pytest.approx(w.scores)


def test_split_join_and_dedup():
    assert per_query.answers_per_query(None, 3) is None
    assert per_query.answers_per_query({"answers": ["a", "b"]}, 2) == [["a", "b"], ["a", "b"]]
    assert per_query.answers_per_query({"answers": [["a"], []]}, 2) == [["a"], []]
    assert per_query.answers_per_query({"answers": []}, 2) == [[], []]   # no answers, for all
    shared, per = per_query.split({"answers": [["a"], ["b"]], "answer_hits": 0}, 2)
    assert shared == {"answer_hits": 0} and per == [["a"], ["b"]]
    # a client keeps the short form of answers common to every query
    assert per_query.split({"answers": ["a"]}, 5, keep_common=True) == ({"answers": ["a"]}, None)
    # answers that are the same for every query are sent once
    assert per_query.join(None, [["a"], ["a"]]) == {"answers": ["a"]}
    assert per_query.join({"answer_hits": 3}, [["a"], ["b"]]) == {"answer_hits": 3,
                                                                  "answers": [["a"], ["b"]]}
    assert per_query.join(None, None) is None
    # the same query with two answer lists is two searches; the same pair is one
    unique, answers, keys = per_query.unique_items(["q", "q", "r", "q"],
                                                   [["a"], ["b"], ["a"], ["a"]])
    assert unique == ["q", "q", "r"] and answers == [["a"], ["b"], ["a"]]
    assert keys[0] == keys[3] != keys[1]


@pytest.mark.parametrize("value, message", [
    ([["a"], ["b"], ["c"]], "3 answer lists for 2 queries"),
    ([["a"], "b"], "list of answer strings"),
    ([["a"], [1]], r"'answers'\[1\]"),
    ("Paris", "list of answer strings"),
])
def test_malformed_answers_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        per_query.answers_per_query({"answers": value}, 2)


def test_bm25_per_query_answers_equal_one_query_at_a_time(scifact_index, scifact_claims):
    queries = scifact_claims[:len(ANSWERS)]
    got = scifact_index.search(queries, DEPTH, options={"answers": ANSWERS})
    want = _alone(scifact_index, queries, ANSWERS)
    _same(got, want)
    ranks = [r.info["first_answer_rank"] for r in got]
    assert ranks[4] is None and any(r is not None and r > 1 for r in ranks)
    with pytest.raises(ValueError, match="answer lists for"):
        scifact_index.search(queries, DEPTH, options={"answers": ANSWERS[:3]})


def test_in_process_searcher_keeps_a_query_with_each_of_its_answers(scifact_index,
                                                                    scifact_claims):
    """The in-process searcher dedups identical searches: the same query with two answer lists
    must stay two searches (a dedup by query alone would give both the first one's rank)."""
    searcher = LocalSearcher({"sf": scifact_index}.__getitem__)
    q = scifact_claims[0]
    queries = [q, q, q, scifact_claims[1], "\ud800 lone surrogate"]
    answers = [["cancer"], ["zzzz qqqq"], ["cancer"], ["cancer"], ["cancer"]]
    got = searcher.search("sf", queries, DEPTH, options={"answers": answers})
    _same(got[:4], _alone(scifact_index, queries[:4], answers[:4]))
    assert got[0].info["first_answer_rank"] != got[1].info["first_answer_rank"]
    assert got[4].error is not None   # never sent, its own error


def test_shards_merge_per_query_answers_like_one_index(tmp_path, scifact_corpus,
                                                       scifact_claims):
    docs = list(scifact_corpus.values())[:1500]
    build_index(docs, tmp_path / "one", name="one", show_progress=False)
    build_index(docs, tmp_path / "three", name="three", shards=3, workers=1,
                show_progress=False)
    one, three = load_index_dir(tmp_path / "one"), load_index_dir(tmp_path / "three")
    queries = scifact_claims[:len(ANSWERS)]
    got = three.search(queries, 200, options={"answers": ANSWERS})
    _same(got, _alone(one, queries, ANSWERS, k=200))


class Counting:
    """An index that counts its calls; with ``hold`` set, the first call waits for it."""

    def __init__(self, inner, hold: threading.Event | None = None):
        self.inner, self.name, self.hold = inner, "counting", hold
        self.calls: list[tuple[list[str], object]] = []

    def search(self, queries, k, *, return_text=False, options=None):
        self.calls.append((list(queries), (options or {}).get("answers")))
        if self.hold is not None and len(self.calls) == 1:
            assert self.hold.wait(60)
        return self.inner.search(queries, k, return_text=return_text, options=options)

    def info(self):
        return self.inner.info()


def test_reward_batch_sends_a_steps_evidence_searches_in_one_call(scifact_index):
    """score_batch groups a step's evidence samples with different answers into one search
    call (before: one call per answer list); the scores equal the one-sample path's."""
    from deepretrieval.rewards import compute_score, score_batch
    from deepretrieval.tasks.evidence import nq_examples

    counting = Counting(scifact_index)
    searcher = LocalSearcher({"sf": counting}.__getitem__)
    exs = nq_examples("dev")[:12]
    extra = {"split": "dev", "search_index": "sf"}
    items = [("nq", f'<think>x</think><answer>{{"query": {json.dumps(q)}}}</answer>',
              {"target": ex["answers"]}, extra)
             for ex in exs for q in (ex["question"], ex["question"].split()[-1])]
    batched = score_batch(items, searcher=searcher)
    assert len(counting.calls) == 1 and len(counting.calls[0][0]) == len(items)
    alone = [compute_score(*item, searcher=LocalSearcher({"sf": scifact_index}.__getitem__))
             for item in items]
    assert batched == alone
    assert len({r["first_hit_rank"] for r in batched}) > 2


def test_clients_slice_per_query_answers_with_their_chunks(scifact_index, scifact_claims):
    queries = scifact_claims[:len(ANSWERS)] + [scifact_claims[0]]
    answers = ANSWERS + [["zzzz qqqq"]]
    want = _alone(scifact_index, queries, answers)
    with ServerThread(create_app({"sf": scifact_index}, ServiceConfig())) as server:
        with ServiceClient(server.url, chunk_size=3) as client:
            _same(client.search("sf", queries, DEPTH, options={"answers": answers}), want)

        async def run():
            client = AsyncServiceClient(server.url, chunk_size=2)
            try:
                return await client.search("sf", queries, DEPTH, options={"answers": answers})
            finally:
                await client.aclose()

        _same(asyncio.run(run()), want)
        bad = httpx.post(server.url + "/retrieve", timeout=30, content=json.dumps(
            {"queries": ["a", "b"], "topk": 3, "options": {"answers": [["x"]]}}).encode())
        assert bad.status_code == 422 and "1 answer lists for 2 queries" in bad.text


def test_service_coalesces_requests_with_different_answers(scifact_index, scifact_claims):
    """One request per sample, each with its own answers (verl's per-sample reward): they wait
    behind a busy worker and then go to the backend as ONE call, each keeping its own rank."""
    hold = threading.Event()
    counting = Counting(scifact_index, hold)
    queries = scifact_claims[:len(ANSWERS)]
    want = _alone(scifact_index, queries, ANSWERS)
    config = ServiceConfig(workers=1)
    with ServerThread(create_app({"sf": counting}, config)) as server:

        async def run():
            client = AsyncServiceClient(server.url)
            try:
                first = asyncio.ensure_future(
                    client.search("sf", ["warm up"], 10, options={"answers": ["x"]}))
                deadline = time.monotonic() + 30
                while not counting.calls and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                rest = [asyncio.ensure_future(client.search("sf", [q], DEPTH,
                                                            options={"answers": a}))
                        for q, a in zip(queries, ANSWERS)]
                while time.monotonic() < deadline:   # every request has reached the batcher
                    health = httpx.get(server.url + "/health", timeout=30).json()
                    if health["backends"]["sf"]["stats"]["queries"] == 1 + len(queries):
                        break
                    await asyncio.sleep(0.01)
                hold.set()
                await first
                return [(await r)[0] for r in rest]
            finally:
                hold.set()
                await client.aclose()

        got = asyncio.run(run())
        stats = httpx.get(server.url + "/health", timeout=30).json()["backends"]["sf"]["stats"]
    _same(got, want)
    # two batches: the held first request, then all the others (the batcher may still send a
    # batch to the backend in several chunks, sized from the measured time per query)
    assert (stats["batches"], stats["backend_queries"]) == (2, 1 + len(queries))
    sent = [(q, a) for qs, answers in counting.calls[1:]
            for q, a in zip(qs, per_query.answers_per_query({"answers": answers}, len(qs)))]
    assert sorted(sent) == sorted(zip(queries, ANSWERS))


def test_backends_that_rank_returned_texts_take_per_query_answers(scifact_corpus):
    """Boolean (and dense) rank the texts they return (answer_ranks.search_ranking_answers)."""
    from deepretrieval.search.boolean import BooleanIndex
    from deepretrieval.tasks.evidence import first_answer_rank

    index = BooleanIndex.build(list(scifact_corpus.values())[:600], name="b")
    queries = ["cell OR protein", "cancer OR risk", "cell OR protein", "mice OR rats",
               "gene OR expression"]
    answers = [["p53"], ["mice"], ["zzzz qqqq"], ["T cells"], ["cancer"]]
    with_text = index.search(queries, 200, return_text=True)
    got = index.search(queries, 200, options={"answers": answers})
    ranks = [r.info["first_answer_rank"] for r in got]
    assert ranks == [first_answer_rank(r.texts, a) for r, a in zip(with_text, answers)]
    assert ranks[2] is None and len({r for r in ranks if r is not None}) > 1
    assert [r.ids for r in got] == [r.ids[:10] for r in with_text]
    with pytest.raises(ValueError, match="b: 'answers' has 1 answer lists for 5 queries"):
        index.search(queries, 200, options={"answers": [["x"]]})
