"""The reward contract under hostile input: ``compute_score``, ``compute_score_async``,
``score_batch`` and ``TRLReward`` never raise for anything a model wrote, in-process and through
the service; a query that cannot be encoded (lone surrogate) is that sample's own outcome; one bad
sample never changes another sample's score. Ends with a seeded fuzz of every task family through a
real uvicorn service on loopback."""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import random

import pytest

from deepretrieval.catalog import bundled_rows
from deepretrieval.rewards import TRLReward, ascore_batch, compute_score, compute_score_async, score_batch
from deepretrieval.catalog import local_searcher, open_index, set_searcher
from deepretrieval.search import LocalSearcher
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.search.live.pubmed import PubMedBackend
from deepretrieval.search.live.governor import Backoff
from deepretrieval.service.app import ServerThread, create_app
from deepretrieval.service.client import ServiceClient, ServiceSearcher

SURROGATE = '<think>x</think>\n<answer>{"query": "x \\ud800"}</answer>'   # plain ASCII


def answer(query: str, think: str = "keep the key terms") -> str:
    return f"<think>{think}</think>\n<answer>{json.dumps({'query': query})}</answer>"


def item(row, completion):
    return (row["data_source"], completion, row["reward_model"]["ground_truth"], row["extra_info"])


@pytest.fixture(scope="module")
def scifact_rows():
    return bundled_rows("scifact", "test")[:11]


def _pubmed(fake):
    return PubMedBackend(fake.url, rate=1000, burst=50, backoff=Backoff(retries=1, base=0.01, cap=0.02),
                         timeout=5, name="pubmed")


@pytest.fixture(scope="module")
def passages(tmp_path_factory):
    """A small passage index (300 SciFact abstracts) for the evidence family."""
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.core.bundled import collection_dir
    docs = list(itertools.islice(load_corpus(collection_dir("scifact")), 300))
    index = BM25Index.build(docs, name="fuzz_passages")
    index.save(tmp_path_factory.mktemp("idx") / "fuzz_passages")
    return index


@pytest.fixture(scope="module")
def indexes(scifact_index, pubmed_fake, passages):
    return {"scifact": scifact_index, "pubmed": _pubmed(pubmed_fake), "fuzz_passages": passages,
            "spider/flight_2": open_index("spider/flight_2"), "spider/singer": open_index("spider/singer")}


class Local(LocalSearcher):
    """The in-process searcher over the very backends the service serves."""

    def __init__(self, indexes):
        super().__init__(open_index)
        self.served = indexes

    def backend(self, index):
        return self.served[index]


@pytest.fixture(scope="module")
def service(indexes):
    with ServerThread(create_app(indexes)) as server:
        yield server


@pytest.fixture
def via_service(service):
    old = {k: os.environ.get(k) for k in ("DEEPRETRIEVAL_SEARCH_URL", "DEEPRETRIEVAL_SEARCH_RETRIES")}
    os.environ["DEEPRETRIEVAL_SEARCH_URL"] = service.url
    os.environ["DEEPRETRIEVAL_SEARCH_RETRIES"] = "0"
    set_searcher(None)
    yield service
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    set_searcher(None)


# ---- lone surrogates ---------------------------------------------------------------------------

def _check_surrogate_outcome(rows, out):
    good = score_batch([item(r, answer(r["extra_info"]["query"])) for r in rows], searcher=local_searcher())
    assert out[:len(rows)] == good                      # the bad sample changed nobody's score
    bad = out[len(rows)]
    assert bad["format_ok"] is False and bad["score"] == -2.0   # the defined outcome: bad format
    assert set(bad) == set(good[0])


def test_lone_surrogate_in_process_and_through_service(scifact_rows, via_service):
    rows = scifact_rows[:10]
    items = [item(r, answer(r["extra_info"]["query"])) for r in rows] + [item(rows[0], SURROGATE)]
    local = score_batch(items, searcher=local_searcher())
    _check_surrogate_outcome(rows, local)
    # through the service (found by DEEPRETRIEVAL_SEARCH_URL), every entry point
    assert score_batch(items) == local
    assert asyncio.run(ascore_batch(items)) == local
    assert compute_score(*items[-1]) == local[-1]
    assert asyncio.run(compute_score_async(*items[-1])) == local[-1]
    reward = TRLReward()
    scores = reward(completions=[[{"role": "assistant", "content": it[1]}] for it in items],
                    data_source=[it[0] for it in items],
                    reward_model=[{"ground_truth": it[2]} for it in items],
                    extra_info=[it[3] for it in items])
    assert scores == [m["score"] for m in local]


def test_unencodable_extracted_value_is_its_own_search_error(scifact_rows, via_service):
    """``values=`` skips the format check (evaluation): the surrogate query reaches the searchers,
    which answer it with its own error and search the others."""
    rows = scifact_rows[:10]
    values = [r["extra_info"]["query"] for r in rows] + ["x \ud800"]
    items = [item(r, "") for r in rows] + [item(rows[0], "")]
    for searcher in (local_searcher(), ServiceSearcher(via_service.url), None):
        out = score_batch(items, searcher=searcher, values=values)
        assert not any(m["search_error"] for m in out[:10])
        assert sum(m["score"] for m in out[:10]) > 0
        assert out[10]["search_error"] is True and out[10]["format_ok"] is True
    direct = ServiceClient(via_service.url).search("scifact", ["stem cells", "x \ud800"], 5)
    assert direct[0].ids and direct[0].error is None
    assert "lone surrogate" in direct[1].error and direct[1].ids == []


def test_live_engine_encodes_per_query(pubmed_fake):
    """10 good PubMed queries + 1 unencodable one: 10 results and one error, not 11 failures."""
    backend = _pubmed(pubmed_fake)
    queries = [f"cancer therapy {i}" for i in range(10)] + ["x \ud800"]
    out = backend.search(queries, 20)
    assert all(r.error is None for r in out[:10]) and any(r.ids for r in out[:10])
    assert "lone surrogate" in out[10].error
    alone = backend.search(["x \udfff"], 20)
    assert "lone surrogate" in alone[0].error


class _Picky:
    """A searcher whose backend raises (not a SearchError) when one particular query is in the
    call, like a codec or parser failing on one input."""

    def __init__(self, poison: str):
        self.poison = poison
        self.inner = local_searcher()
        self.calls = 0

    def search(self, index, queries, k, **kw):
        self.calls += 1
        if self.poison in queries:
            raise TypeError("cannot handle this input")
        return self.inner.search(index, queries, k, **kw)

    async def asearch(self, index, queries, k, **kw):
        return self.search(index, queries, k, **kw)


def test_one_poisonous_query_does_not_fail_its_batch(scifact_rows):
    rows = scifact_rows[:10]
    items = [item(r, answer(r["extra_info"]["query"])) for r in rows] + [item(rows[0], answer("poison"))]
    good = score_batch(items[:10], searcher=local_searcher())
    for run in (lambda s: score_batch(items, searcher=s), lambda s: asyncio.run(ascore_batch(items, searcher=s))):
        out = run(_Picky("poison"))
        assert out[:10] == good
        assert out[10]["search_error"] is True


def test_searcher_returning_wrong_count_is_a_search_error(scifact_rows):
    class Short(LocalSearcher):
        def search(self, index, queries, k, **kw):
            return super().search(index, queries, k, **kw)[:-1]
    rows = scifact_rows[:3]
    out = score_batch([item(r, answer(r["extra_info"]["query"])) for r in rows], searcher=Short(open_index))
    assert all(m["search_error"] for m in out)


@pytest.mark.parametrize("answer_body", [
    {"ids": [None]}, {"ids": [[None]]}, {"ids": [["1"]], "scores": [["a"]]},
    {"ids": [["1"]], "errors": [7]}, {"ids": [["1"]], "info": ["x"]}, {"ids": "1"},
    {"ids": [["1", "2"]], "scores": [[1.0]]}, {"result": [[{"id": None}]]}])
def test_client_rejects_malformed_answers(answer_body):
    from deepretrieval.core.results import SearchError
    from deepretrieval.service.client import _Base
    with pytest.raises(SearchError, match="malformed"):
        _Base._parse(answer_body, 1)


# ---- fuzz through the service ----------------------------------------------------------------

_PIECES = ["<think>", "</think>", "<answer>", "</answer>", '{"query": ', '{"sql": ', '"', "}", "{",
           "\\", "\\u", "\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "\ud800", "\x00", "AND",
           "OR", "NOT", "(", ")", "[mh]", "*", "<|im_end|>", " ", "\n", "é", "\u202e", "😀", "null",
           "[", "]", "1e999", "SELECT", "FROM", "singer", "WHERE", "'", ";", "--", "/*", "ATTACH",
           "PRAGMA", "WITH RECURSIVE", "x" * 50]
_VALUES = ["", " ", "\ud800", "x \ud800", "\udfff y", "a\x00b", "(((((", "\"", "\\", "AND OR",
           "SELECT * FROM singer", "SELECT name FROM singer ORDER BY age", "SELECT 1; SELECT 2",
           "ATTACH DATABASE 'x' AS y", "DROP TABLE singer", "PRAGMA writable_schema=1",
           "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 100000) SELECT count(*) FROM c",
           "SELECT char(55296)", "SELECT randomblob(1000)", "select zeroblob(10)",
           "cancer[mh] AND therapy", "\"heart attack\" OR myocard*", "x" * 9000, "🧬" * 100,
           "stem cells", "vitamin d", "\u202e\u200b", "1e999", "NaN"]
_NON_STRINGS = [None, 0, 1.5, [], {}, [{"role": "assistant"}], b"bytes", ["a", "b"]]


def hostile(rng: random.Random, key: str) -> object:
    kind = rng.random()
    if kind < 0.05:
        return rng.choice(_NON_STRINGS)
    if kind < 0.35:
        return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 25)))
    if kind < 0.45:
        return "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 40)))
    value = rng.choice(_VALUES) if rng.random() < 0.7 else "".join(rng.choice(_PIECES) for _ in range(5))
    payload = json.dumps({key: value}) if rng.random() < 0.8 else '{"%s": "%s"}' % (key, value)
    think = "" if rng.random() < 0.2 else "<think>" + rng.choice(_PIECES) + "</think>\n"
    return think + "<answer>" + payload + "</answer>" + rng.choice(["", "<|im_end|>", " ", "x"])


def _family_items(family, passages):
    if family == "beir":
        rows = bundled_rows("scifact", "test")[:20] + bundled_rows("scifact", "train")[:5]
        return rows, "query"
    if family == "search_engine":
        return bundled_rows("pubmed", "test")[:10], "query"
    if family == "evidence":
        rows = bundled_rows("nq", "test")[:10]
        return [{**r, "extra_info": {**r["extra_info"], "search_index": "fuzz_passages"}} for r in rows], "query"
    rows = bundled_rows("spider", "test")
    return rows[:10] + rows[-10:], "sql"


N_PER_FAMILY = 2000


@pytest.mark.parametrize("family", ["beir", "search_engine", "evidence", "sql"])
def test_fuzz_through_the_service(family, via_service, passages, indexes):
    rows, key = _family_items(family, passages)
    rng = random.Random(f"fuzz-{family}")
    completions = [hostile(rng, key) for _ in range(N_PER_FAMILY)]
    items = [item(rows[i % len(rows)], c) for i, c in enumerate(completions)]
    keys = None
    exceptions = []
    out: list[dict] = []
    for start in range(0, len(items), 250):
        chunk = items[start:start + 250]
        try:
            if start % 500 == 0:
                got = score_batch(chunk)
            else:
                reward = TRLReward()
                reward(completions=[it[1] for it in chunk], data_source=[it[0] for it in chunk],
                       reward_model=[{"ground_truth": it[2]} for it in chunk],
                       extra_info=[it[3] for it in chunk])
                got = reward.last_metrics
        except Exception as exc:  # noqa: BLE001 - counted: the contract says there are none
            exceptions.append(f"{type(exc).__name__}: {exc}")
            continue
        out += got
    for it in items[:40]:  # the single-call entry points, sync and async
        try:
            out.append(compute_score(*it))
            out.append(asyncio.run(compute_score_async(*it)))
        except Exception as exc:  # noqa: BLE001
            exceptions.append(f"{type(exc).__name__}: {exc}")
    assert exceptions == []
    assert len(out) == N_PER_FAMILY + 80
    for m in out:
        keys = keys or set(m)
        assert set(m) == keys
        assert isinstance(m["score"], float)
    assert any(m["format_ok"] for m in out) and not all(m["format_ok"] for m in out)
    # the service found nothing to fail on: search errors only for unencodable/refused queries
    errors = sum(m["search_error"] for m in out)
    assert errors < len(out) / 2
    # same scores as in-process for a slice (the contract: the searcher is interchangeable)
    assert score_batch(items[:200], searcher=Local(indexes)) == out[:200]
