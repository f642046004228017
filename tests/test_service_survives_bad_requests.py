"""Issue 29, service items: one request can no longer kill or stall the service.

* the answer size is bounded (413 naming ``max_answer_bytes``, before searching or while encoding);
* one query's backend failure is that query's error (never the request's), through the reward;
* large answers are encoded off the event loop; a compute deadline stops backend work;
* the heap is given back after large answers;
* the head limit holds for the chunk that completes the head; unparsable requests get the JSON
  error shape; a lone-surrogate query is that query's error.
All on loopback; hostile inputs are generated (seeded).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from deepretrieval.core import deadline
from deepretrieval.core.results import SearchResult
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.service.client import AsyncServiceClient, ServiceSearcher

WORDS = ("vitamin cancer cell protein gene risk patients study disease treatment blood brain "
         "stem aspirin mice tumor").split()


def rand_queries(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) + f" {i}"
            for i in range(n)]


class Poisoned:
    """The SciFact BM25 index, except that a call holding a query with ``POISON`` raises (as the
    Boolean backend did on deep nesting): a test double independent of any backend's fix."""

    POISON = "☠"
    name = "poisoned"

    def __init__(self, inner, exc=RuntimeError):
        self.inner, self.exc = inner, exc
        self.calls = 0

    def search(self, queries, k, *, return_text=False, options=None):
        self.calls += 1
        if any(self.POISON in q for q in queries):
            raise self.exc(f"backend failed on purpose ({len(queries)} queries in the call)")
        return self.inner.search(queries, k, return_text=return_text, options=options)

    def info(self):
        return {"type": "test"}


# ---- 1. the answer size ---------------------------------------------------------------------

def test_the_probes_request_is_refused_before_searching(scifact_index):
    """512 queries x topk 10,000 (Search-R1's shape, all inside the other limits): a 1.33 GB
    answer before; now a 413 naming the limit and the numbers, and the backend never called."""
    counting = Poisoned(scifact_index)
    with ServerThread(create_app({"scifact": counting})) as srv:
        rng = random.Random(1)
        r = httpx.post(srv.url + "/retrieve", json={"queries": rand_queries(rng, 512),
                                                    "topk": 10000}, timeout=60)
        assert r.status_code == 413, r.text[:200]
        body = r.json()
        assert body["limit"] == "max_answer_bytes" and body["status"] == 413
        assert "512 queries x k=10000" in body["error"] and "268,435,456" in body["error"]
        assert counting.calls == 0


def test_every_answer_is_bounded_generated_requests(scifact_index):
    """Random shapes, formats, query counts and k against a 1 MB bound: every answer is either
    within it (200) or a 413 naming it; none is larger."""
    limit = 1 << 20
    rng = random.Random(7)
    with ServerThread(create_app({"scifact": scifact_index},
                                 ServiceConfig(max_answer_bytes=limit))) as srv:
        seen = set()
        for _ in range(60):
            n, k = rng.choice([1, 2, 8, 32, 64]), rng.choice([1, 10, 100, 1000, 5000])
            qs = rand_queries(rng, n)
            route, body = rng.choice([
                ("/retrieve", {"queries": qs, "topk": k, "return_scores": rng.random() < .5}),
                ("/retrieve", {"queries": qs, "topk": k, "format": rng.choice(
                    ["hits", "columns", "packed"]), "return_text": rng.random() < .5}),
                ("/retrieve", {"query": qs[0], "top_k": k}),
                ("/queries", {"queries": qs, "k": k}),
                ("/search", {"query": qs[0], "top_n": k, "return_score": True}),
                ("/batch_search", {"query": qs, "top_n": k, "return_score": False}),
            ])
            r = httpx.post(srv.url + route, json=body, timeout=60)
            seen.add(r.status_code)
            if r.status_code == 413:
                assert r.json()["limit"] == "max_answer_bytes"
                assert f"max_answer_bytes={limit:,}" in r.json()["error"]
            else:
                assert r.status_code == 200, r.text[:300]
                assert len(r.content) <= limit
        assert seen == {200, 413}  # the generated mix hits both sides of the bound


def test_the_encoding_stops_at_the_bound(scifact_index):
    """Few hits estimated, but long texts: refused while encoding (the early stop)."""
    with ServerThread(create_app({"scifact": scifact_index},
                                 ServiceConfig(max_answer_bytes=200_000))) as srv:
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["stem cells"] * 1 + ["cancer"],
                                                    "topk": 300}, timeout=60)
        assert r.status_code == 413
        assert "the answer passed" in r.json()["error"]


def test_client_splits_a_chunk_whose_answer_is_too_large(scifact_index):
    rng = random.Random(3)
    qs = rand_queries(rng, 40)
    with ServerThread(create_app({"scifact": scifact_index},
                                 ServiceConfig(max_answer_bytes=1_000_000))) as srv:
        got = ServiceSearcher(srv.url).search("scifact", qs, 300, return_text=True)
        got_async = asyncio.run(ServiceSearcher(srv.url).asearch("scifact", qs, 300,
                                                                 return_text=True))
        # one query whose answer alone is over the limit: that query's error, the rest answered
        few = ["qwertyuiop", "zebrafish", "thalidomide"]
        big = ServiceSearcher(srv.url).search("scifact", ["cell"] + few, 2000, return_text=True)
    expected = scifact_index.search(qs, 300, return_text=True)
    for a, b, c in zip(got, got_async, expected):
        assert a.ids == b.ids == c.ids and a.texts == b.texts == c.texts
    assert "max_answer_bytes=1,000,000" in big[0].error and big[0].ids == []
    assert [r.ids for r in big[1:]] == [r.ids for r in scifact_index.search(few, 2000)]
    assert all(r.error is None for r in big[1:])


# ---- 2. per-query isolation -----------------------------------------------------------------

def test_one_querys_backend_failure_is_its_own_error_generated(scifact_index):
    rng = random.Random(11)
    backend = Poisoned(scifact_index)
    with ServerThread(create_app({"p": backend}, ServiceConfig(batch_wait_ms=5))) as srv:
        searcher = ServiceSearcher(srv.url, retries=0)
        for _trial in range(15):
            qs = rand_queries(rng, rng.randint(1, 80))
            bad = set(rng.sample(range(len(qs)), rng.randint(1, min(3, len(qs)))))
            qs = [q + Poisoned.POISON if i in bad else q for i, q in enumerate(qs)]
            got = searcher.search("p", qs, 5)
            good = [q for i, q in enumerate(qs) if i not in bad]
            expected = iter(scifact_index.search(good, 5))
            for i, res in enumerate(got):
                if i in bad:
                    assert "backend failed on purpose" in res.error and res.ids == []
                else:
                    ref = next(expected)
                    assert res.error is None and res.ids == ref.ids and res.scores == ref.scores

        # concurrent requests sharing one batch: only the poisoned request's query fails
        async def go():
            async with AsyncServiceClient(srv.url, retries=0) as client:
                return await asyncio.gather(*(client.search(None, [q], 3) for q in
                                              ["stem cells", "x" + Poisoned.POISON, "aspirin"]))
        ok1, bad1, ok2 = asyncio.run(go())
        assert ok1[0].ids == scifact_index.search(["stem cells"], 3)[0].ids
        assert ok2[0].ids == scifact_index.search(["aspirin"], 3)[0].ids
        assert "backend failed on purpose" in bad1[0].error
        # the shapes without an "errors" slot: empty list, errors named in the headers
        r = httpx.post(srv.url + "/batch_search", json={"query": ["stem cells", "y" +
                                                                  Poisoned.POISON], "top_n": 2},
                       timeout=60)
        assert r.status_code == 200 and r.json()[1] == [] and len(r.json()[0]) == 2
        assert r.headers["x-deepretrieval-query-errors"] == "1"
        assert "backend failed on purpose" in r.headers["x-deepretrieval-first-error"]
        r = httpx.post(srv.url + "/queries", json={"queries": ["z" + Poisoned.POISON], "k": 2},
                       timeout=60)
        assert r.status_code == 200 and r.json()["answers"] == [[]]
        assert "backend failed on purpose" in r.json()["errors"][0]


def test_a_value_error_rejects_the_request_only_when_every_query_has_it(scifact_index):
    backend = Poisoned(scifact_index, exc=ValueError)
    with ServerThread(create_app({"p": backend})) as srv:
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["stem cells", "a" +
                                                                Poisoned.POISON], "topk": 2},
                       timeout=60)
        assert r.status_code == 200 and r.json()["errors"][0] is None
        assert "ValueError" in r.json()["errors"][1]
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["b" + Poisoned.POISON], "topk": 2},
                       timeout=60)
        assert r.status_code == 422 and "rejected the request" in r.json()["error"]


@pytest.fixture
def boolean_service(monkeypatch):
    from deepretrieval.catalog import open_index, set_searcher
    with ServerThread(create_app({"scifact_boolean": open_index("scifact_boolean")})) as srv:
        monkeypatch.setenv("DEEPRETRIEVAL_SEARCH_URL", srv.url)
        set_searcher(None)
        yield srv
    set_searcher(None)


def test_the_probes_group_is_scored_like_in_process(boolean_service, monkeypatch):
    """reliability-probes.md §1: a nested Boolean query beside good ones. In process only the
    culprit is hit; through the service every member was search_error (a 6.0 became -3.0)."""
    from deepretrieval.catalog import bundled_rows, set_searcher
    from deepretrieval.rewards import score_batch

    row = bundled_rows("scifact_boolean", "test")[0]

    def item(q):
        return ("scifact_boolean", "<think>x</think><answer>" + json.dumps({"query": q}) +
                "</answer>", row["reward_model"]["ground_truth"], row["extra_info"])

    rng = random.Random(5)
    nested = ["(" * d + "cell" + ")" * d for d in (600, rng.randint(500, 1500))]
    items = [item("stem cells"), item(nested[0]), item("vitamin"), item(nested[1]),
             item("cell AND (stem OR blood)")]
    served = [(o["score"], o["search_error"]) for o in score_batch(items)]
    monkeypatch.delenv("DEEPRETRIEVAL_SEARCH_URL")
    set_searcher(None)
    local = [(o["score"], o["search_error"]) for o in score_batch(items)]
    assert served == local
    assert not served[0][1] and not served[2][1] and not served[4][1]


# ---- 5. encoding off the event loop, the compute deadline, memory -------------------------------

def test_large_answers_are_encoded_off_the_event_loop(scifact_index, monkeypatch):
    import deepretrieval.service.app as app_module
    threads: list[str] = []
    real = app_module.encode

    def spy(req, results, limit):
        threads.append((sum(len(r.ids) for r in results), threading.current_thread().name))
        return real(req, results, limit)

    monkeypatch.setattr(app_module, "encode", spy)
    with ServerThread(create_app({"a": scifact_index, "b": scifact_index})) as srv:
        qs = rand_queries(random.Random(2), 48)
        light: list[float] = []
        done = threading.Event()

        def heavy():
            httpx.post(srv.url + "/retrieve", json={"queries": qs, "topk": 1000, "index": "a"},
                       timeout=120)
            done.set()

        worker = threading.Thread(target=heavy)
        worker.start()
        with httpx.Client(timeout=120) as client:
            while not light or not done.is_set():
                s = time.monotonic()
                r = client.post(srv.url + "/retrieve", json={"queries": ["stem cells"],
                                                             "topk": 3, "index": "b"})
                assert r.status_code == 200
                light.append(time.monotonic() - s)
                time.sleep(0.01)
        worker.join()
    hits, thread = max(threads)
    assert hits > 20000 and thread.startswith("encode")  # the big answer: a worker thread
    assert all(t == "deepretrieval-service" for h, t in threads if h <= 2048)  # small: the loop
    # requests to another index were answered meanwhile (their latency is measured, not
    # asserted: benchmarks/bench_service_isolation.py)
    assert light


class Slow:
    """A backend that works 50 ms per query, checking the compute deadline between steps (as
    the Boolean evaluator does)."""

    name = "slow"

    def __init__(self):
        self.searched = 0

    def search(self, queries, k, *, return_text=False, options=None):
        out = []
        for q in queries:
            for _ in range(5):
                deadline.check()
                time.sleep(0.01)
            self.searched += 1
            out.append(SearchResult(ids=[q], scores=[1.0]))
        return out

    def info(self):
        return {"type": "slow"}


def test_the_compute_deadline_stops_backend_work():
    slow = Slow()
    with ServerThread(create_app({"slow": slow}, ServiceConfig(request_deadline_s=0.6))) as srv:
        qs = [f"q{i}" for i in range(100)]  # 5 s of work
        r = httpx.post(srv.url + "/retrieve", json={"queries": qs, "topk": 1, "format": "hits"},
                       timeout=60)
        assert r.status_code == 200
        errors = r.json()["errors"]
        answered = [i for i, e in enumerate(errors) if e is None]
        assert answered and len(answered) < 100
        assert all("request_deadline_s=0.6" in errors[i] for i in range(len(answered), 100))
        time.sleep(0.3)
        searched = slow.searched
        time.sleep(0.5)
        assert slow.searched == searched < 100  # the backend stopped, nothing runs on
        stats = httpx.get(srv.url + "/health", timeout=60).json()["backends"]["slow"]["stats"]
        assert stats["deadline_misses"] == 100 - len(answered)


def test_the_boolean_evaluator_checks_the_deadline():
    from deepretrieval.catalog import open_index
    index = open_index("scifact_boolean")
    with deadline.deadline_scope(time.monotonic() - 1):
        with pytest.raises(deadline.DeadlineExceeded):
            index.search(["cell* OR stem*"], 10)
    assert index.search(["cell* OR stem*"], 10)[0].ids  # outside a scope: no deadline


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_is_given_back_after_a_large_answer(tmp_path):
    from deepretrieval.core.memory import can_release
    if not can_release():
        pytest.skip("malloc_trim needs glibc")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "deepretrieval.cli", "serve", "--index",
                             "scifact", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        words = "vitamin cancer cell protein gene risk patients study disease treatment".split()
        qs = [f"{words[i % 10]} {words[i * 7 % 10]} {i}" for i in range(1024)]
        httpx.post(url + "/retrieve", json={"queries": qs[:2], "topk": 10}, timeout=60)
        before = _rss_mb(proc.pid)
        # measured: without the trim the service kept +190 to +295 MB after these (before and
        # after this change's encoding); with it +10 to +50 MB
        for body, least in [({"queries": qs[:64], "topk": 10000}, 150e6),
                            ({"queries": qs, "topk": 3000, "format": "hits"}, 50e6)]:
            r = httpx.post(url + "/retrieve", json=body, timeout=600)
            assert r.status_code == 200 and len(r.content) > least
            del r
        time.sleep(1.0)
        after = _rss_mb(proc.pid)
        assert after - before < 120, (before, after)
    finally:
        proc.terminate()
        proc.wait(30)


# ---- 10. head limit, unparsable requests, lone surrogates ---------------------------------------

def _exchange(port: int, data: bytes, pieces: int = 1) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        step = max(1, len(data) // pieces)
        try:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
                if pieces > 1:
                    time.sleep(0.01)
        except OSError:
            pass  # the server may close as soon as the head is over the limit
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]
                    if length and len(body) >= length[0]:
                        break
        except OSError:
            pass
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _head(size: int, body: bytes) -> bytes:
    start = (f"POST /retrieve HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
             f"content-length: {len(body)}\r\nx-pad: ").encode()
    pad = size - len(start) - 4
    return start + b"a" * pad + b"\r\n\r\n"


def test_head_limit_holds_for_the_completing_chunk(scifact_index):
    limit = 8192
    body = json.dumps({"queries": ["stem cells"], "topk": 2}).encode()
    rng = random.Random(4)
    with ServerThread(create_app({"scifact": scifact_index},
                                 ServiceConfig(max_header_bytes=limit))) as srv:
        sizes = [limit - 1, limit, limit + 1, 2 * limit - 100, 2 * limit] + [
            rng.randint(limit // 2, 3 * limit) for _ in range(10)]
        for size in sizes:
            head = _head(size, body)
            assert len(head) == size
            for pieces in (1, 3):
                status, answer = _exchange(srv.port, head + body, pieces)
                assert status == (200 if size <= limit else 431), (size, pieces, answer[:200])
                if status == 431:
                    assert json.loads(answer)["status"] == 431


def test_unparsable_requests_get_the_json_error_shape(scifact_index):
    with ServerThread(create_app({"scifact": scifact_index})) as srv:
        for bad in [b"POST /retrieve HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
                    b"POST /retrieve HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n",
                    b"POST /retrieve HTTP/1.1\r\nbad header\r\n\r\n",
                    b"\x00\x01 garbage\r\n\r\n"]:
            status, body = _exchange(srv.port, bad)
            assert status == 400, bad
            answer = json.loads(body)
            assert answer["status"] == 400 and "invalid HTTP request" in answer["error"]


def test_a_lone_surrogate_is_that_querys_error(scifact_index):
    rng = random.Random(8)
    with ServerThread(create_app({"scifact": scifact_index})) as srv:
        for _trial in range(12):
            qs = rand_queries(rng, rng.randint(2, 8))
            bad = rng.randrange(len(qs))
            escape = rng.choice(["\\ud800", "\\udfff", "x\\ud800\\ud800", "\\udc00 y"])
            parts = [json.dumps(q) for q in qs]
            parts[bad] = '"' + escape + '"'
            route, body = rng.choice([
                ("/retrieve", '{"queries": [%s], "topk": 3}'),
                ("/queries", '{"queries": [%s], "k": 3}')])
            r = httpx.post(srv.url + route, content=(body % ", ".join(parts)).encode(),
                           headers={"content-type": "application/json"}, timeout=30)
            assert r.status_code == 200, r.text
            errors = r.json()["errors"]
            assert "lone surrogate" in errors[bad]
            assert all(e is None for i, e in enumerate(errors) if i != bad)
            hits = r.json()["result" if route == "/retrieve" else "answers"]
            good = [q for i, q in enumerate(qs) if i != bad]
            ids = [[h["document"]["id"] for h in row] if route == "/retrieve" else len(row)
                   for i, row in enumerate(hits) if i != bad]
            expected = scifact_index.search(good, 3)
            assert ids == [r.ids if route == "/retrieve" else len(r.ids) for r in expected]
        # anything else orjson refuses is still a 400
        r = httpx.post(srv.url + "/retrieve", content=b'{"queries": ["a"', timeout=30)
        assert r.status_code == 400


def test_an_error_message_holding_a_lone_surrogate_is_still_json():
    class Odd:
        name = "odd"

        def search(self, queries, k, *, return_text=False, options=None):
            return [SearchResult(error="cannot read \ud800 here") for _ in queries]

        def info(self):
            return {}

    with ServerThread(create_app({"odd": Odd()})) as srv:
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["a"], "topk": 1}, timeout=30)
    assert r.status_code == 200 and r.json()["errors"] == ["cannot read \ud800 here"]
