"""The retrieval service over a real uvicorn server on a loopback port."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from deepretrieval.catalog import local_searcher, set_searcher

from deepretrieval.core.results import SearchError, SearchResult
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.service.client import AsyncServiceClient, ServiceSearcher


class Wrapped:
    """A real backend (the SciFact BM25 index) with failure modes driven by the query text, and
    a log of the batches it was called with."""

    def __init__(self, inner, name="wrapped", delay=0.0):
        self.inner, self.name, self.delay = inner, name, delay
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def search(self, queries, k, *, return_text=False, options=None):
        with self.lock:
            self.calls.append(list(queries))
        if self.delay:
            time.sleep(self.delay)
        if "__crash__" in queries:
            raise RuntimeError("backend crashed on purpose")
        if options and options.get("weird"):
            return [SearchResult(ids=["a\nb", "", "c", "d"], scores=[1e-300, 2.5, -0.0, 1 / 3])
                    if q != "plain" else SearchResult(ids=["x", "y"], scores=[0.1, 0.2])
                    for q in queries]
        if options and options.get("rows"):
            return [SearchResult(ids=["r1"], scores=[1.0], rows=[[q, len(q)], [None, 2.5]])
                    for q in queries]
        out = []
        clean = [q for q in queries if not q.startswith("__err__")]
        found = dict(zip(clean, self.inner.search(clean, k, return_text=return_text,
                                                   options=options)))
        for q in queries:
            out.append(SearchResult(error=f"cannot search {q!r}") if q.startswith("__err__")
                       else found[q])
        return out

    def info(self):
        return {"type": "test", "wraps": self.inner.name, "calls": len(self.calls)}


TOKEN = "s3cret-token"
LIMITS = dict(max_queries=400, max_query_chars=1000, max_k=2000)


@pytest.fixture(scope="module")
def server(scifact_index):
    """Two indexes, no token."""
    app = create_app({"scifact": scifact_index, "wrapped": Wrapped(scifact_index)},
                     ServiceConfig(batch_wait_ms=5, **LIMITS))
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def token_server(scifact_index):
    """One index, bearer token required."""
    with ServerThread(create_app({"scifact": scifact_index},
                                 ServiceConfig(token=TOKEN, **LIMITS))) as srv:
        yield srv


def same(a: list[SearchResult], b: list[SearchResult]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.ids == y.ids
        assert x.scores == y.scores  # exact: float32 scores survive the JSON round trip
        assert x.texts == y.texts
        assert x.error == y.error


def post(srv, body, token=None, raw=False):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if raw:
        return httpx.post(srv.url + "/retrieve", content=body, headers=headers, timeout=30)
    return httpx.post(srv.url + "/retrieve", json=body, headers=headers, timeout=30)


# ---- results ---------------------------------------------------------------------------------

def test_all_scifact_test_queries_equal_in_process(server, scifact_index, scifact_test_claims):
    assert len(scifact_test_claims) == 300
    client = ServiceSearcher(server.url, timeout=60)
    for k in (10, 1000):
        same(client.search("scifact", scifact_test_claims, k), scifact_index.search(scifact_test_claims, k))
    sub = scifact_test_claims[:20]
    same(client.search("scifact", sub, 5, return_text=True),
         scifact_index.search(sub, 5, return_text=True))


def test_hits_format(server, scifact_index, scifact_test_claims):
    # Search-R1's own format is tested in test_search_r1_wire.py
    qs = scifact_test_claims[:5]
    r = post(server, {"queries": qs, "topk": 7, "return_scores": True, "index": "scifact",
                      "format": "hits"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"result"}
    local = scifact_index.search(qs, 7)
    assert body["result"] == [res.to_hits(True) for res in local]
    r = post(server, {"queries": qs[:1], "topk": 3, "return_scores": False, "index": "scifact",
                      "return_text": True, "format": "hits"})
    assert r.json()["result"] == [scifact_index.search(qs[:1], 3, return_text=True)[0]
                                  .to_hits(False)]


def test_async_client_and_duplicates(server, scifact_index, scifact_test_claims):
    qs = scifact_test_claims[:30]
    queries = qs + qs[:10]  # duplicates are searched once but answered in place

    async def go():
        async with AsyncServiceClient(server.url, timeout=30, chunk_size=7) as client:
            return await client.search("scifact", queries, 20)

    same(asyncio.run(go()), scifact_index.search(queries, 20))
    searcher = ServiceSearcher(server.url)
    same(asyncio.run(searcher.asearch("scifact", qs[:3], 4)), scifact_index.search(qs[:3], 4))
    same(asyncio.run(searcher.asearch("scifact", qs[:3], 4)), scifact_index.search(qs[:3], 4))


def test_many_simultaneous_callers_get_their_own_results(server, scifact_index, scifact_test_claims):
    jobs = [(scifact_test_claims[i % 300], 1 + (i % 3) * 25) for i in range(240)]
    expected = {(q, k): scifact_index.search([q], k)[0] for q, k in set(jobs)}
    # /health reports an index's stats once it has been searched (its batcher exists): one search
    # first, so that this test also runs alone (it failed with KeyError: 'queries' then)
    ServiceSearcher(server.url, timeout=60).search("scifact", [jobs[0][0]], 1)
    before = httpx.get(server.url + "/health").json()["backends"]["scifact"]["stats"]

    async def go():
        async with AsyncServiceClient(server.url, timeout=60) as client:
            return await asyncio.gather(*(client.search("scifact", [q], k) for q, k in jobs))

    results = asyncio.run(go())
    for (q, k), res in zip(jobs, results):
        same(res, [expected[(q, k)]])
    # sync callers from threads
    searcher = ServiceSearcher(server.url, timeout=60)
    out: dict[int, list] = {}

    def call(i):
        q, k = jobs[i]
        out[i] = searcher.search("scifact", [q], k)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(64):
        same(out[i], [expected[jobs[i]]])
    after = httpx.get(server.url + "/health").json()["backends"]["scifact"]["stats"]
    assert after["queries"] - before["queries"] == 240 + 64


def test_concurrent_requests_are_coalesced(scifact_index, scifact_test_claims):
    slow = Wrapped(scifact_index, delay=0.05)
    app = create_app({"slow": slow}, ServiceConfig(workers=1, batch_wait_ms=5))
    qs = scifact_test_claims[:40]
    with ServerThread(app) as srv:
        async def go():
            async with AsyncServiceClient(srv.url, timeout=60) as client:
                return await asyncio.gather(*(client.search(None, [q], 10) for q in qs + qs))
        results = asyncio.run(go())
        stats = httpx.get(srv.url + "/health").json()["backends"]["slow"]["stats"]
    for q, res in zip(qs + qs, results):
        same(res, scifact_index.search([q], 10))
    # 80 requests while the backend is busy 50 ms per call: far fewer backend calls than requests,
    # and each query searched once per batch
    assert len(slow.calls) < 40
    assert all(len(set(batch)) == len(batch) for batch in slow.calls)
    assert stats["queries"] == 80 and stats["backend_queries"] < 80


# ---- errors and limits -----------------------------------------------------------------------

@pytest.mark.parametrize("body, status, words", [
    ({"queries": ["q"] * 401, "topk": 5, "index": "scifact"}, 413, "max_queries=400"),
    ({"queries": ["x" * 1001], "topk": 5, "index": "scifact"}, 413, "max_query_chars=1000"),
    ({"queries": ["q"], "topk": 2001, "index": "scifact"}, 422, "max_k=2000"),
    ({"queries": ["q"], "topk": 0, "index": "scifact"}, 422, "topk"),
    ({"queries": ["q"], "topk": "ten", "index": "scifact"}, 422, "topk"),
    ({"queries": "q", "topk": 3, "index": "nope"}, 404, "unknown index 'nope'"),
    ({"queries": ["q"], "topk": 3}, 422, "'index' is required"),
    ({"topk": 3, "index": "scifact"}, 422, "'queries' must be a list of strings"),
    ({"queries": [1, 2], "topk": 3, "index": "scifact"}, 422, "'queries'"),
    ({"queries": ["q"], "topk": 3, "index": "scifact", "options": [1]}, 422, "'options'"),
    ({"queries": ["q"], "topk": 3, "index": "scifact", "options": {"maxdate": "2020"}}, 422,
     "BM25 takes only the search option"),
    ({"queries": ["q"], "topk": 3, "index": "scifact", "format": "xml"}, 422, "'format'"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests(server, body, status, words):
    r = post(server, body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_bad_json(server):
    r = post(server, b'{"queries": ["a"', raw=True)
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]


def test_client_raises_server_message(server):
    with pytest.raises(SearchError, match="max_k=2000"):
        ServiceSearcher(server.url).search("scifact", ["q"], 5000)
    with pytest.raises(SearchError, match="unknown index 'nope'"):
        ServiceSearcher(server.url).search("nope", ["q"], 5)


def test_token(token_server, scifact_index):
    body = {"queries": ["vitamin d"], "topk": 3, "return_scores": True,  # index omitted: one served
            "format": "hits"}
    r = post(token_server, body)
    assert r.status_code == 401 and "missing bearer token" in r.json()["error"]
    r = post(token_server, body, token="wrong")
    assert r.status_code == 403 and "invalid bearer token" in r.json()["error"]
    r = post(token_server, body, token=TOKEN)
    assert r.status_code == 200
    assert r.json()["result"][0] == scifact_index.search(["vitamin d"], 3)[0].to_hits()
    # liveness is public, details need the token
    assert set(httpx.get(token_server.url + "/health").json()) == {"status", "version", "indexes"}
    with pytest.raises(SearchError, match="403"):
        ServiceSearcher(token_server.url, token="wrong").search("scifact", ["x"], 3)
    same(ServiceSearcher(token_server.url, token=TOKEN).search("scifact", ["vitamin d"], 3),
         scifact_index.search(["vitamin d"], 3))


def test_backend_failure_is_that_querys_error_and_service_keeps_serving(server, scifact_index):
    # the backend raises for the whole call: the service searches the rest and gives only the
    # culprit its error (was: a 500 for the request)
    r = post(server, {"queries": ["stem cells", "__crash__", "vitamin d"], "topk": 3,
                      "index": "wrapped"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"][0] is None and body["errors"][2] is None
    assert "backend crashed on purpose" in body["errors"][1] and body["result"][1] == []
    res = ServiceSearcher(server.url, retries=1, timeout=10).search(
        "wrapped", ["__crash__", "stem cells"], 3)
    assert "backend crashed on purpose" in res[0].error and res[0].ids == []
    same(res[1:], scifact_index.search(["stem cells"], 3))
    same(ServiceSearcher(server.url).search("wrapped", ["stem cells"], 3),
         scifact_index.search(["stem cells"], 3))


def test_one_bad_request_does_not_fail_its_batch(scifact_index):
    slow = Wrapped(scifact_index, delay=0.05)
    with ServerThread(create_app({"slow": slow}, ServiceConfig(workers=1))) as srv:
        async def go():
            async with AsyncServiceClient(srv.url, timeout=30, retries=0) as client:
                return await asyncio.gather(client.search(None, ["stem cells"], 3),
                                            client.search(None, ["__crash__"], 3),
                                            client.search(None, ["vitamin d"], 3),
                                            client.search(None, ["aspirin"], 3),
                                            return_exceptions=True)
        good1, bad, good2, good3 = asyncio.run(go())
    assert "backend crashed on purpose" in bad[0].error and bad[0].ids == []
    same(good1, scifact_index.search(["stem cells"], 3))
    same(good2, scifact_index.search(["vitamin d"], 3))
    same(good3, scifact_index.search(["aspirin"], 3))


def test_per_query_errors_and_rows(server, scifact_index):
    r = post(server, {"queries": ["stem cells", "__err__x"], "topk": 3, "index": "wrapped"})
    body = r.json()
    assert r.status_code == 200
    assert body["errors"] == [None, "cannot search '__err__x'"]
    assert body["result"][1] == []
    res = ServiceSearcher(server.url).search("wrapped", ["__err__y", "stem cells"], 3)
    assert res[0].error == "cannot search '__err__y'" and res[0].ids == []
    same(res[1:], scifact_index.search(["stem cells"], 3))
    res = ServiceSearcher(server.url).search("wrapped", ["select 1"], 3, options={"rows": True})
    assert res[0].rows == [["select 1", 8], [None, 2.5]]
    r = post(server, {"queries": ["a"], "topk": 3, "index": "wrapped", "options": {"rows": True}})
    assert r.json()["rows"] == [[["a", 1], [None, 2.5]]]


def test_packed_format_is_exact_for_awkward_ids_and_scores(server):
    client = ServiceSearcher(server.url)
    weird, plain = client.search("wrapped", ["odd", "plain"], 4, options={"weird": True})
    assert weird.ids == ["a\nb", "", "c", "d"]
    assert weird.scores == [1e-300, 2.5, -0.0, 1 / 3]
    assert plain.ids == ["x", "y"] and plain.scores == [0.1, 0.2]
    body = post(server, {"queries": ["odd", "plain"], "topk": 4, "index": "wrapped",
                         "options": {"weird": True}, "format": "packed"}).json()
    assert body["ids"][0] == ["a\nb", "", "c", "d"]  # ambiguous: sent as a list
    assert body["ids"][1] == "x\ny" and isinstance(body["scores"][1], str)
    for fmt in ("columns", "hits"):
        r = post(server, {"queries": ["plain"], "topk": 2, "index": "wrapped",
                          "options": {"weird": True}, "format": fmt}).json()
        assert r == ({"ids": [["x", "y"]], "scores": [[0.1, 0.2]]} if fmt == "columns" else
                     {"result": [[{"id": "x", "score": 0.1}, {"id": "y", "score": 0.2}]]})


def test_health(server):
    h = httpx.get(server.url + "/health").json()
    from deepretrieval import __version__
    assert h["status"] == "ok" and h["version"] == __version__
    assert h["indexes"] == ["scifact", "wrapped"]
    assert h["backends"]["scifact"]["info"]["num_docs"] == 5183
    assert h["backends"]["wrapped"]["info"]["type"] == "test"
    assert h["limits"]["max_queries"] == 400 and h["limits"]["token"] is False


# ---- client retries and dead servers ---------------------------------------------------------

class _FlakyHandler(BaseHTTPRequestHandler):
    fail_first = 2
    attempts = 0

    def do_POST(self):  # noqa: N802
        type(self).attempts += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if type(self).attempts <= self.fail_first:
            body, status = b'{"error": "warming up"}', 503
        else:
            body, status = json.dumps({"ids": [["d1", "d2"]], "scores": [[2.5, 1.25]]}).encode(), 200
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    _FlakyHandler.attempts = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_client_retries_on_5xx(flaky_server):
    res = ServiceSearcher(flaky_server, retries=3, timeout=10, backoff=0.01).search("x", ["q"], 2)
    assert res[0].ids == ["d1", "d2"] and res[0].scores == [2.5, 1.25]
    assert _FlakyHandler.attempts == 3
    _FlakyHandler.attempts = 0
    res = asyncio.run(ServiceSearcher(flaky_server, retries=3, backoff=0.01).asearch("x", ["q"], 2))
    assert res[0].ids == ["d1", "d2"] and _FlakyHandler.attempts == 3
    _FlakyHandler.attempts = 0
    with pytest.raises(SearchError, match=r"after 2 attempt\(s\).*warming up"):
        ServiceSearcher(flaky_server, retries=1, backoff=0.01).search("x", ["q"], 2)


class _ChunkedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, chunked answers, and it drops every connection after one answer without saying
    so: the client's second request on a kept-alive connection must reconnect transparently."""
    protocol_version = "HTTP/1.1"
    requests = 0

    def do_POST(self):  # noqa: N802
        type(self).requests += 1
        n = len(json.loads(self.rfile.read(int(self.headers["content-length"])))["queries"])
        body = json.dumps({"ids": [["a", "b"]] * n, "scores": [[1.5, 0.5]] * n,
                           "errors": [None] * n}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 7):
            part = body[i:i + 7]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_async_transport_chunked_and_stale_connections():
    _ChunkedHandler.requests = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"

    async def go():
        async with AsyncServiceClient(url, retries=0, timeout=10) as client:
            first = await client.search("x", ["q1", "q2"], 2)
            await asyncio.sleep(0.05)  # let the server drop the connection
            second = await client.search("x", ["q3"], 2)
            return first, second
    try:
        first, second = asyncio.run(go())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert [r.ids for r in first + second] == [["a", "b"]] * 3
    assert second[0].scores == [1.5, 0.5]
    assert _ChunkedHandler.requests == 2  # no retry was spent on the stale connection


def test_httpx_transport_equals_asyncio_transport(server, scifact_index, scifact_test_claims):
    qs = scifact_test_claims[:25]

    async def go(transport):
        async with AsyncServiceClient(server.url, transport=transport) as client:
            return await asyncio.gather(*(client.search("scifact", [q], 50) for q in qs))
    for transport in ("asyncio", "httpx"):
        results = asyncio.run(go(transport))
        same([r[0] for r in results], scifact_index.search(qs, 50))
    with pytest.raises(ValueError, match="transport"):
        AsyncServiceClient(server.url, transport="carrier-pigeon")


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_dead_server_clear_error_within_timeout():
    url = _dead_url()
    t0 = time.monotonic()
    with pytest.raises(SearchError) as err:
        ServiceSearcher(url, timeout=2.0, retries=3, backoff=0.05).search("scifact", ["q"], 10)
    assert time.monotonic() - t0 < 4.0
    assert url in str(err.value) and "attempt" in str(err.value)
    with pytest.raises(SearchError, match=url):
        asyncio.run(ServiceSearcher(url, timeout=2.0, retries=1).asearch("scifact", ["q"], 10))


def _completion(query: str) -> str:
    return f"<think>reformulate</think>\n<answer>{json.dumps({'query': query})}</answer>"


@pytest.fixture
def search_url_env():
    old = {k: os.environ.get(k) for k in ("DEEPRETRIEVAL_SEARCH_URL", "DEEPRETRIEVAL_SEARCH_TIMEOUT",
                                          "DEEPRETRIEVAL_SEARCH_RETRIES")}

    def setenv(url):
        os.environ["DEEPRETRIEVAL_SEARCH_URL"] = url
        os.environ["DEEPRETRIEVAL_SEARCH_TIMEOUT"] = "2"
        os.environ["DEEPRETRIEVAL_SEARCH_RETRIES"] = "1"
    yield setenv
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    set_searcher(None)


def test_reward_reports_search_error_on_dead_server(search_url_env):
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.rewards import compute_score, compute_score_async
    from deepretrieval.catalog import get_task
    row = bundled_rows("scifact", "test")[0]
    args = (row["data_source"], _completion(row["extra_info"]["query"]),
            row["reward_model"]["ground_truth"], row["extra_info"])
    ok = compute_score(*args)
    assert not ok["search_error"]
    search_url_env(_dead_url())
    t0 = time.monotonic()
    out = compute_score(*args)
    assert time.monotonic() - t0 < 5.0
    assert out["search_error"] is True and out["format_ok"] is True
    table = get_task(row["data_source"]).table()
    assert out["score"] == table.total(True, table.error)
    assert asyncio.run(compute_score_async(*args))["search_error"] is True


def test_reward_through_service_equals_in_process(server, search_url_env):
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.rewards import ascore_batch, compute_score, score_batch
    rows = bundled_rows("scifact", "test")[:40] + bundled_rows("scifact", "train")[:20]
    items = [(r["data_source"], _completion(r["extra_info"]["query"] if i % 4 else "stem cell"),
              r["reward_model"]["ground_truth"], r["extra_info"]) for i, r in enumerate(rows)]
    items.append((rows[0]["data_source"], "no answer tags", rows[0]["reward_model"]["ground_truth"],
                  rows[0]["extra_info"]))
    local = score_batch(items, searcher=local_searcher())
    assert any(m["score"] > 0 for m in local)
    assert score_batch(items, searcher=ServiceSearcher(server.url)) == local
    search_url_env(server.url)  # the reward function finds the service by itself
    assert score_batch(items) == local
    assert asyncio.run(ascore_batch(items)) == local
    assert [compute_score(*it) for it in items[:5]] == local[:5]


# ---- command line ----------------------------------------------------------------------------

def test_parse_index_specs():
    from deepretrieval.cli.serve import parse_index_specs
    assert parse_index_specs(["scifact", "sf=/data/x", "p = pubmed"]) == {
        "scifact": "scifact", "sf": "/data/x", "p": "pubmed"}
    for bad in (["=x"], ["a="], ["a", "a=b"]):
        with pytest.raises(ValueError):
            parse_index_specs(bad)


@pytest.mark.slow
def test_serve_command(scifact_index, tmp_path):
    """``deepretrieval serve`` as the training scripts start it: poll /health, search, stop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DEEPRETRIEVAL_SEARCH_TOKEN="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepretrieval.cli", "serve", "--index", "scifact",
         "--index", f"copy={scifact_index.path}", "--port", str(port), "--token", "tok"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        searcher = ServiceSearcher(url, token="tok")
        info = searcher.health()
        assert sorted(info["backends"]) == ["copy", "scifact"]
        for name in ("scifact", "copy"):
            same(searcher.search(name, ["stem cells", "vitamin d"], 10),
                 scifact_index.search(["stem cells", "vitamin d"], 10))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode is not None


def test_serve_rejects_unknown_index(capsys):
    from deepretrieval.cli import main
    assert main(["serve", "--index", "no_such_index_xyz", "--port", "1"]) == 2
    assert "no_such_index_xyz" in capsys.readouterr().err


def test_packed_ids_and_scores_round_trip():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from deepretrieval.service.app import pack_ids, pack_scores
    from deepretrieval.service.client import _unpack_ids, _unpack_scores

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(alphabet="ab\n", max_size=3), max_size=6),
           st.lists(st.floats(allow_nan=False), max_size=6))
    def check(ids, scores):
        assert _unpack_ids(pack_ids(ids)) == ids
        assert _unpack_scores(pack_scores(scores)) == scores

    check()


def test_works_without_orjson(server, scifact_index, scifact_test_claims, monkeypatch):
    import deepretrieval.service.wire as wire
    monkeypatch.setattr(wire, "_orjson", None)  # the stdlib json fallback, both sides
    qs = scifact_test_claims[:10]
    same(ServiceSearcher(server.url).search("scifact", qs, 100), scifact_index.search(qs, 100))
    r = post(server, {"queries": qs[:2], "topk": 3, "index": "scifact", "format": "hits"})
    assert r.json()["result"] == [res.to_hits() for res in scifact_index.search(qs[:2], 3)]
    assert post(server, b"{nope", raw=True).status_code == 400
