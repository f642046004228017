"""Search-R1 wire compatibility of ``POST /retrieve``, against a real uvicorn service on loopback.

The client below is written from Search-R1's documented protocol (its README and
``search_r1/search/retrieval_request.py``): the request is ``{"queries": [...], "topk": k,
"return_scores": bool}`` posted as JSON to ``/retrieve``; the answer is ``{"result": [...]}`` with,
per query, ``[{"document": {"id", "contents"}, "score"}, ...]`` when ``return_scores`` is true and a
list of documents when it is false; ``contents`` is the title in double quotes, a newline, then
the passage text. Its agent shows each passage as ``Doc i(Title: <first line>) <the rest>``.
Our documents also carry ``url`` (the id; ASearcher's client reads it), which Search-R1 ignores.
It uses ``requests`` (as Search-R1 does), not our httpx client.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from deepretrieval.search.bm25 import BM25Index
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.service.client import ServiceSearcher


# ---- a Search-R1 style client, from the documented format -------------------------------------

def search_r1_retrieve(url: str, queries: list[str], topk: int, return_scores: bool = True):
    payload = {"queries": queries, "topk": topk, "return_scores": return_scores}
    response = requests.post(url + "/retrieve", json=payload, timeout=60)
    response.raise_for_status()
    return response.json()["result"]


def passages_to_string(hits: list[dict]) -> str:
    """What Search-R1's agent injects between <information> tags for one query."""
    out = ""
    for n, hit in enumerate(hits, 1):
        contents = hit["document"]["contents"]
        title, _, text = contents.partition("\n")
        out += f"Doc {n}(Title: {title}) {text}\n"
    return out


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def queries(scifact_queries):
    return [scifact_queries[k] for k in sorted(scifact_queries)[:12]]


@pytest.fixture(scope="module")
def server(scifact_index):
    # one index, so Search-R1's request (which names none) is answered from it
    with ServerThread(create_app({"scifact": scifact_index}, ServiceConfig(batch_wait_ms=2))) as s:
        yield s


@pytest.fixture(scope="module")
def small_cap_server(scifact_index):
    with ServerThread(create_app({"scifact": scifact_index},
                                 ServiceConfig(max_passage_chars=300))) as s:
        yield s


def expected_contents(doc: dict, cap: int) -> str:
    return f'"{doc["title"].strip()}"\n{doc["text"].strip()[:cap]}'


# ---- tests ------------------------------------------------------------------------------------

def test_return_scores_true_is_search_r1_shape(server, scifact_index, scifact_corpus, queries):
    result = search_r1_retrieve(server.url, queries, 5, return_scores=True)
    local = scifact_index.search(queries, 5)
    assert len(result) == len(queries)
    for hits, res in zip(result, local):
        assert len(hits) == 5
        assert [set(h) for h in hits] == [{"document", "score"}] * 5
        # url (ASearcher reads it; our indexes store none): the document id
        assert [set(h["document"]) for h in hits] == [{"id", "contents", "url"}] * 5
        assert [h["document"]["id"] for h in hits] == res.ids
        assert [h["document"]["url"] for h in hits] == res.ids
        assert [h["score"] for h in hits] == res.scores
        for h in hits:
            doc = scifact_corpus[h["document"]["id"]]
            assert h["document"]["contents"] == expected_contents(doc, 4096)
        shown = passages_to_string(hits)
        first = scifact_corpus[res.ids[0]]
        assert shown.startswith(f'Doc 1(Title: "{first["title"].strip()}") '
                                f'{first["text"].strip()[:40]}')
        assert shown.count("\nDoc ") == 4


def test_return_scores_false_is_a_list_of_documents(server, scifact_index, scifact_corpus, queries):
    result = search_r1_retrieve(server.url, queries[:3], 4, return_scores=False)
    local = scifact_index.search(queries[:3], 4)
    for docs, res in zip(result, local):
        assert [set(d) for d in docs] == [{"id", "contents", "url"}] * 4
        assert [d["id"] for d in docs] == [d["url"] for d in docs] == res.ids
        assert [d["contents"] for d in docs] == [expected_contents(scifact_corpus[i], 4096)
                                                 for i in res.ids]


def test_passage_cap(server, small_cap_server, scifact_corpus, queries):
    long_docs = [d for d in scifact_corpus.values() if len(d["text"]) > 3000]
    long_doc = long_docs[0]
    query = long_doc["title"]  # its own title retrieves it
    # the server's setting cuts every passage (the title is kept whole)
    hits = search_r1_retrieve(small_cap_server.url, [query], 10)[0]
    by_id = {h["document"]["id"]: h["document"]["contents"] for h in hits}
    assert long_doc["_id"] in by_id
    assert by_id[long_doc["_id"]] == expected_contents(long_doc, 300)
    for doc_id, contents in by_id.items():
        title, _, text = contents.partition("\n")
        assert title == f'"{scifact_corpus[doc_id]["title"].strip()}"'
        assert len(text) <= 300 and scifact_corpus[doc_id]["text"].strip().startswith(text)
    # a request may ask for less, never for more than the server's maximum
    r = requests.post(small_cap_server.url + "/retrieve", timeout=30,
                      json={"queries": [query], "topk": 3, "max_passage_chars": 50})
    assert r.status_code == 200
    for h in r.json()["result"][0]:
        assert len(h["document"]["contents"].partition("\n")[2]) <= 50
    r = requests.post(small_cap_server.url + "/retrieve", timeout=30,
                      json={"queries": [query], "topk": 3, "max_passage_chars": 301})
    assert r.status_code == 422 and "max_passage_chars=300" in r.json()["error"]
    for bad in (0, -1, "50", True, 2.5):
        r = requests.post(server.url + "/retrieve", timeout=30,
                          json={"queries": [query], "topk": 3, "max_passage_chars": bad})
        assert r.status_code == 422 and "'max_passage_chars'" in r.json()["error"]
    # the cap also applies to a compact format's texts when asked for
    r = requests.post(server.url + "/retrieve", timeout=30,
                      json={"queries": [query], "topk": 3, "format": "columns",
                            "return_text": True, "max_passage_chars": 20}).json()
    assert all(len(t) <= 20 for t in r["contents"][0])


def test_compact_formats_are_unchanged(small_cap_server, scifact_index, queries):
    # the reward path's texts are whole (no default cap), exactly the in-process ones
    client = ServiceSearcher(small_cap_server.url, timeout=60)
    got = client.search("scifact", queries, 20, return_text=True)
    local = scifact_index.search(queries, 20, return_text=True)
    assert [r.ids for r in got] == [r.ids for r in local]
    assert [r.scores for r in got] == [r.scores for r in local]
    assert [r.texts for r in got] == [r.texts for r in local]
    assert max(len(t) for r in got for t in r.texts) > 300  # longer than the server's cap
    url = small_cap_server.url + "/retrieve"
    ids_only = requests.post(url, timeout=30, json={"queries": queries[:2], "topk": 3,
                                                    "return_scores": False,
                                                    "format": "hits"}).json()
    assert ids_only == {"result": [[{"id": i} for i in r.ids[:3]] for r in local[:2]]}
    columns = requests.post(url, timeout=30, json={"queries": queries[:2], "topk": 3,
                                                   "format": "columns"}).json()
    assert columns == {"ids": [r.ids[:3] for r in local[:2]],
                       "scores": [r.scores[:3] for r in local[:2]]}
    # Search-R1's format always has passages: asking it for none is an error naming the fix
    r = requests.post(url, timeout=30, json={"queries": ["x"], "topk": 3, "return_text": False})
    assert r.status_code == 422 and "'format': 'hits'" in r.json()["error"]


def test_retrieve_has_one_implementation(server):
    r = requests.get(server.url + "/retrieve", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "POST only" in r.json()["error"]
    r = requests.post(server.url + "/retrieve", data=b"{nope", timeout=30)
    assert r.status_code == 400 and r.json()["status"] == 400


def test_titles_survive_save_and_load(tmp_path):
    docs = [{"_id": "a", "title": "Aaron", "text": "Aaron was a prophet and high priest."},
            {"_id": "b", "title": "", "text": "Untitled passage about a prophet."},
            {"_id": "c", "title": "Zebra", "text": "Zebras are African equines."}]
    index = BM25Index.load(BM25Index.build(docs, name="t", show_progress=False)
                           .save(tmp_path / "t"))
    res = index.search(["prophet"], 3, return_text=True)[0]
    assert sorted(zip(res.ids, res.titles)) == [("a", "Aaron"), ("b", "")]
    with ServerThread(create_app({"t": index})) as srv:
        docs_out = search_r1_retrieve(srv.url, ["prophet"], 3, return_scores=False)[0]
    assert sorted((d["id"], d["contents"]) for d in docs_out) == [
        ("a", '"Aaron"\nAaron was a prophet and high priest.'),
        ("b", '""\nUntitled passage about a prophet.')]
    # an index without any title stores none and answers an empty title
    plain = BM25Index.build([{"_id": "x", "text": "only text here"}], show_progress=False)
    plain.save(tmp_path / "plain")
    assert not (tmp_path / "plain" / "titles.json").exists()
    assert BM25Index.load(tmp_path / "plain").search(["text"], 1, return_text=True)[0].titles is None


class _SearchR1OnlyServer(BaseHTTPRequestHandler):
    """A server that speaks only Search-R1's answer shape (ignores our extra fields)."""

    index = None

    def do_POST(self):  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        results = self.index.search(req["queries"], req["topk"], return_text=True)
        body = {"result": [[{"document": {"id": i, "contents": t}, "score": s}
                            for i, t, s in zip(r.ids, r.texts, r.scores)] for r in results]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_our_client_reads_a_search_r1_server(scifact_index, queries):
    handler = type("H", (_SearchR1OnlyServer,), {"index": scifact_index})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        got = ServiceSearcher(url, timeout=30, retries=0).search("scifact", queries[:3], 5)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
    local = scifact_index.search(queries[:3], 5, return_text=True)
    assert [r.ids for r in got] == [r.ids for r in local]
    assert [r.scores for r in got] == [r.scores for r in local]
    assert [r.texts for r in got] == [r.texts for r in local]
