"""Every common retriever wire shape on one service, each spoken as that peer's client speaks it.

The small clients below are written from the request/response formats (docs/service.md, the
peer table), not from the peers' code: what they send and the keys they read are exactly what
those clients send and read. Answers are checked against the in-process SciFact BM25 index.
"""
from __future__ import annotations


import httpx
import pytest

from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.service.client import ServiceSearcher, base_url

TOKEN = "peer-token"


@pytest.fixture(scope="module")
def queries(scifact_test_claims):
    return scifact_test_claims[:6]


@pytest.fixture(scope="module")
def server(scifact_index):
    with ServerThread(create_app({"scifact": scifact_index}, ServiceConfig(max_k=500))) as srv:
        yield srv


def stored(corpus, doc_id: str, cap: int = 4096) -> tuple[str, str]:
    doc = corpus[doc_id]
    return doc["title"].strip(), doc["text"].strip()[:cap]


# ---- the peers' clients, from their formats ----------------------------------------------------

def asearcher_query(base: str, query: str, topk: int) -> list[dict]:
    """ASearcher: POST <base>/retrieve {"queries": [q], "topk", "return_scores": false}; reads
    result[0][j]["contents"] and ["url"]."""
    r = httpx.post(base + "/retrieve",
                   json={"queries": [query], "topk": topk, "return_scores": False}, timeout=30)
    return [{"contents": d["contents"], "url": d["url"]} for d in r.json()["result"][0]]


def asearcher_access(base: str, urls: list[str]) -> list:
    """ASearcher: POST <base>/access {"urls": [...]}; reads result[k]["contents"]."""
    r = httpx.post(base + "/access", json={"urls": urls}, timeout=30)
    return r.json()["result"]


def zerosearch_retrieve(url: str, query: str, top_k: int) -> list[str]:
    """ZeroSearch: POST <url> {"query": q, "top_k": k} → a JSON list; reads item["text"]."""
    r = httpx.post(url, json={"query": query, "top_k": top_k}, timeout=30)
    return [item["text"] for item in r.json()]


def r1_searcher(base: str, queries: list[str], k: int) -> list[list[str]]:
    """R1-Searcher: POST <base>/queries {"queries", "k"}; reads ["answers"]."""
    r = httpx.post(base + "/queries", json={"queries": queries, "k": k}, timeout=30)
    return r.json()["answers"]


def flashrag_search(base: str, query: str, top_n: int, return_score: bool):
    r = httpx.post(base + "/search", json={"query": query, "top_n": top_n,
                                           "return_score": return_score}, timeout=30)
    return r.json()


def flashrag_batch_search(base: str, queries: list[str], top_n: int, return_score: bool):
    r = httpx.post(base + "/batch_search", json={"query": queries, "top_n": top_n,
                                                 "return_score": return_score}, timeout=30)
    return r.json()


# ---- each shape ---------------------------------------------------------------------------------

def test_asearcher_search_then_access(server, scifact_index, scifact_corpus, queries):
    for q in queries[:3]:
        local = scifact_index.search([q], 5)[0]
        hits = asearcher_query(server.url, q, 5)
        assert [h["url"] for h in hits] == local.ids  # url = the document id
        for h, doc_id in zip(hits, local.ids):
            title, text = stored(scifact_corpus, doc_id)
            assert h["contents"] == f'"{title}"\n{text}'
        pages = asearcher_access(server.url, [h["url"] for h in hits])
        for page, doc_id in zip(pages, local.ids):
            title, text = stored(scifact_corpus, doc_id, cap=10 ** 9)  # the whole document
            assert page["contents"] == f'"{title}"\n{text}'
            assert page["url"] == page["id"] == doc_id


def test_access_unknown_urls_are_null_with_their_error(server, scifact_corpus):
    known = next(iter(scifact_corpus))
    r = httpx.post(server.url + "/access", json={"urls": ["no-such-doc", known]}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["result"][0] is None and body["result"][1]["id"] == known
    assert body["errors"] == ["no document with id 'no-such-doc' in this index", None]
    # index named, bad fields
    assert httpx.post(server.url + "/access", json={"urls": [known], "index": "scifact"},
                      timeout=30).json()["result"][0]["id"] == known
    r = httpx.post(server.url + "/access", json={"urls": [1]}, timeout=30)
    assert r.status_code == 422 and "'urls'" in r.json()["error"]


def test_access_needs_a_document_store(scifact_index):
    class NoDocs:
        name = "nodocs"

        def search(self, queries, k, *, return_text=False, options=None):
            return scifact_index.search(queries, k, return_text=return_text)

        def info(self):
            return {"type": "test"}

    with ServerThread(create_app({"nodocs": NoDocs()})) as srv:
        r = httpx.post(srv.url + "/access", json={"urls": ["x"]}, timeout=30)
    assert r.status_code == 422 and "keeps no documents" in r.json()["error"]


def test_zerosearch_query_top_k_gets_a_list_of_texts(server, scifact_index, scifact_corpus, queries):
    for q in queries[:3]:
        local = scifact_index.search([q], 4)[0]
        texts = zerosearch_retrieve(server.url + "/retrieve", q, 4)
        assert texts == ['"%s"\n%s' % stored(scifact_corpus, i) for i in local.ids]
    r = httpx.post(server.url + "/retrieve", json={"query": ["a list"], "top_k": 3}, timeout=30)
    assert r.status_code == 422 and "'query' must be a string" in r.json()["error"]
    r = httpx.post(server.url + "/retrieve", json={"query": "x", "top_k": 0}, timeout=30)
    assert r.status_code == 422 and "top_k" in r.json()["error"]


def test_r1_searcher_queries(server, scifact_index, scifact_corpus, queries):
    answers = r1_searcher(server.url, queries, 3)
    local = scifact_index.search(queries, 3)
    assert len(answers) == len(queries)
    for texts, res in zip(answers, local):
        assert texts == ['"%s"\n%s' % stored(scifact_corpus, i) for i in res.ids]


@pytest.mark.parametrize("return_score", [False, True])
def test_flashrag_search_and_batch_search(server, scifact_index, scifact_corpus, queries, return_score):
    local = scifact_index.search(queries, 5)

    def check_docs(docs, res):
        assert [d["id"] for d in docs] == res.ids
        for d in docs:
            title, text = stored(scifact_corpus, d["id"])
            assert (d["title"], d["text"], d["contents"]) == (title, text, f'"{title}"\n{text}')

    single = flashrag_search(server.url, queries[0], 5, return_score)
    batch = flashrag_batch_search(server.url, queries, 5, return_score)
    if return_score:
        docs, scores = single
        check_docs(docs, local[0])
        assert scores == local[0].scores
        docs_lists, score_lists = batch
        assert score_lists == [r.scores for r in local]
    else:
        check_docs(single, local[0])
        docs_lists = batch
    assert len(docs_lists) == len(queries)
    for docs, res in zip(docs_lists, local):
        check_docs(docs, res)


def test_every_shape_shares_the_limits(server):
    for route, body in [("/queries", {"queries": ["q"], "k": 501}),
                        ("/search", {"query": "q", "top_n": 501}),
                        ("/batch_search", {"query": ["q"], "top_n": 501}),
                        ("/retrieve", {"query": "q", "top_k": 501})]:
        r = httpx.post(server.url + route, json=body, timeout=30)
        assert r.status_code == 422 and "max_k=500" in r.json()["error"], (route, r.text)
        assert httpx.get(server.url + route, timeout=30).status_code == 405
    r = httpx.post(server.url + "/nope", json={}, timeout=30)
    assert r.status_code == 404 and "POST /batch_search" in r.json()["error"]


# ---- auth and URLs ---------------------------------------------------------------------------

def test_open_routes_let_peer_clients_in_without_the_token(scifact_index, queries):
    config = ServiceConfig(token=TOKEN, open_routes=("/retrieve", "/access"))
    with ServerThread(create_app({"scifact": scifact_index}, config)) as srv:
        hits = asearcher_query(srv.url, queries[0], 3)
        assert [h["url"] for h in hits] == scifact_index.search(queries[:1], 3)[0].ids
        assert asearcher_access(srv.url, [hits[0]["url"]])[0]["id"] == hits[0]["url"]
        r = httpx.post(srv.url + "/queries", json={"queries": ["q"], "k": 1}, timeout=30)
        assert r.status_code == 401  # not opened
        r = httpx.post(srv.url + "/queries", json={"queries": ["q"], "k": 1}, timeout=30,
                       headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
    with pytest.raises(ValueError, match="unknown route"):
        create_app({"scifact": scifact_index}, ServiceConfig(token=TOKEN, open_routes=("/x",)))


def test_trusted_networks_need_no_token(scifact_index, queries):
    for networks, status in [(("127.0.0.0/8",), 200), (("10.0.0.0/8", "::1/128"), 401)]:
        config = ServiceConfig(token=TOKEN, trusted_networks=networks)
        with ServerThread(create_app({"scifact": scifact_index}, config)) as srv:
            r = httpx.post(srv.url + "/queries", json={"queries": queries[:1], "k": 2},
                           timeout=30)
            assert r.status_code == status, (networks, r.text)
            health = httpx.get(srv.url + "/health", timeout=30).json()
            assert ("backends" in health) == (status == 200)
    with pytest.raises(ValueError, match="trusted_networks"):
        create_app({"scifact": scifact_index}, ServiceConfig(trusted_networks=("nonsense",)))


def test_client_takes_the_base_or_the_retrieve_url(server, scifact_index, queries):
    assert base_url("http://h:8000/retrieve") == base_url("h:8000/") == "http://h:8000"
    assert base_url("http://h:8000/api/retrieve/") == "http://h:8000/api"
    expected = scifact_index.search(queries, 5)
    for url in (server.url, server.url + "/", server.url + "/retrieve"):
        got = ServiceSearcher(url).search("scifact", queries, 5)
        assert [r.ids for r in got] == [r.ids for r in expected]


def test_access_on_a_sharded_index(scifact_corpus):
    from deepretrieval.search.bm25 import BM25Index
    from deepretrieval.search.shards import ShardedBackend
    docs = list(scifact_corpus.values())[:40]
    shards = [BM25Index.build(docs[:20], name="s0"), BM25Index.build(docs[20:], name="s1")]
    with ServerThread(create_app({"sh": ShardedBackend(shards, name="sh")})) as srv:
        urls = [docs[3]["_id"], docs[33]["_id"], "missing"]
        r = httpx.post(srv.url + "/access", json={"urls": urls}, timeout=30).json()
    assert [d and d["id"] for d in r["result"]] == [urls[0], urls[1], None]
    assert r["result"][1]["contents"] == '"%s"\n%s' % (docs[33]["title"].strip(),
                                                       docs[33]["text"].strip())
