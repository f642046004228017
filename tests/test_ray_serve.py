"""The retrieval service as a Ray Serve application, on a local Ray cluster on 127.0.0.1.

One module-scoped cluster: two BM25 shards over the two halves of the bundled SciFact corpus
served as the sharded index ``sf2`` (two replicas per shard), the first half alone as the plain
index ``half``, and a copy of the shards as ``broken`` (one replica each).
The single-process service (``create_app`` over a ``ShardedBackend`` of the same shard
directories) is the reference: every wire format must answer the same bytes.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install "
                                        "'deepretrieval[scale]' (part of the dev extra)")

from deepretrieval.core.beir_files import load_corpus  # noqa: E402
from deepretrieval.core.bundled import collection_dir  # noqa: E402
from deepretrieval.core.results import SearchError  # noqa: E402
from deepretrieval.search import load_index_dir  # noqa: E402
from deepretrieval.search.answer_ranks import ANSWERS_HITS  # noqa: E402
from deepretrieval.search.bm25 import BM25Index  # noqa: E402
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app  # noqa: E402
from deepretrieval.service.client import ServiceClient, ServiceSearcher  # noqa: E402
from deepretrieval.service.ray_client import RaySearcher  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

APP = "drtest"
QUERIES = ["cell biology", "protein folding in the endoplasmic reticulum",
           "vitamin D deficiency and bone density", "tumor suppressor gene p53 mutations",
           "cell biology"]  # a repeated query


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_shards(root: Path) -> None:
    docs = list(load_corpus(collection_dir("scifact")))
    half = len(docs) // 2
    for i, part in enumerate([docs[:half], docs[half:]]):
        BM25Index.build(part, name=f"scifact-{i}", show_progress=False).save(root / f"shard{i}")
    (root / "meta.json").write_text(json.dumps({"type": "sharded", "name": "scifact2",
                                                "shards": ["shard0", "shard1"]}))


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_shards")
    _build_shards(root / "sf2")
    shutil.copytree(root / "sf2", root / "broken")
    return {"sf2": root / "sf2", "half": root / "sf2" / "shard0", "broken": root / "broken"}


@pytest.fixture(scope="module")
def config():
    return ServiceConfig(batch_wait_ms=2.0, max_queries=64, max_k=200, max_passage_chars=300)


@pytest.fixture(scope="module")
def cluster(indexes, config, scifact_index):
    """A local Ray cluster with the application deployed; removed (and Ray stopped) after."""
    import ray

    from deepretrieval import catalog
    from deepretrieval.service import ray_serve

    temp = tempfile.mkdtemp(prefix="drray")  # short: Ray's socket paths must stay < 108 chars
    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 << 20, _temp_dir=temp)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")  # conftest.py
    try:
        options = ray_serve.RayOptions(app_name=APP, replicas=2, ingress_replicas=1,
                                       index_replicas={"broken": 1, "half": 1,
                                                       "scifact": 1},
                                       port=port, replica_cpus=0, call_timeout_s=60)
        t0 = time.monotonic()
        specs = {**{name: str(path) for name, path in indexes.items()}, "scifact": "scifact"}
        url = ray_serve.start(specs, config,
                              options, open_index=catalog.open_index,
                              locate=catalog.index_directory)
        print(f"Ray Serve application deployed in {time.monotonic() - t0:.1f}s")
        yield url
    finally:
        try:
            ray_serve.stop(APP)
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(indexes, config, scifact_index):
    """The single-process service over the same shard directories."""
    backends = {**{name: load_index_dir(path) for name, path in indexes.items()},
                "scifact": scifact_index}
    with ServerThread(create_app(backends, config)) as server:
        yield server.url


def _post(url: str, body) -> tuple[int, bytes]:
    r = httpx.post(url + "/retrieve", content=json.dumps(body).encode(),
                   headers={"content-type": "application/json"}, timeout=60)
    return r.status_code, r.content


BODIES = [
    {"queries": QUERIES, "topk": 5, "index": "sf2"},                                 # search_r1
    {"queries": QUERIES, "topk": 3, "index": "sf2", "return_scores": False},
    {"queries": QUERIES, "topk": 4, "index": "sf2", "max_passage_chars": 40},
    {"queries": QUERIES, "topk": 10, "index": "sf2", "format": "hits"},
    {"queries": QUERIES, "topk": 7, "index": "sf2", "format": "hits", "return_text": True},
    {"queries": QUERIES, "topk": 50, "index": "sf2", "format": "columns"},
    {"queries": QUERIES, "topk": 5, "index": "sf2", "format": "columns", "return_text": True,
     "max_passage_chars": 25},
    {"queries": QUERIES, "topk": 200, "index": "sf2", "format": "packed"},
    {"queries": QUERIES[:2], "topk": 5, "index": "half", "format": "packed",
     "return_text": True},
    {"queries": QUERIES, "topk": 5, "index": "half"},
    {"queries": ["ok query", "\ud800 lone surrogate"], "topk": 3, "index": "sf2",
     "format": "hits"},                                          # a lone surrogate: the same answer
    {"queries": [], "topk": 3, "index": "sf2"},
    # the limits answer the same errors
    {"queries": QUERIES, "topk": 201, "index": "sf2"},
    {"queries": ["q"] * 65, "topk": 3, "index": "sf2"},
    {"queries": QUERIES, "topk": 3, "index": "nope"},
    {"queries": QUERIES, "topk": 3},
    {"queries": QUERIES, "topk": 3, "index": "sf2", "format": "xml"},
    {"queries": QUERIES, "topk": 3, "index": "sf2", "max_passage_chars": 301},
    {"queries": QUERIES, "topk": 3, "index": "sf2", "options": {"maxdate": "2020"}},  # rejected
]


@pytest.mark.parametrize("body", BODIES, ids=[f"body{i}" for i in range(len(BODIES))])
def test_every_wire_format_and_limit_answers_like_the_single_process_service(
        cluster, reference, body):
    ray_status, ray_body = _post(cluster, body)
    ref_status, ref_body = _post(reference, body)
    assert ray_status == ref_status, (ray_body, ref_body)
    assert json.loads(ray_body) == json.loads(ref_body)
    if ref_status == 200 and body["queries"]:
        assert ray_body == ref_body  # byte for byte


def test_sharded_answers_are_the_merge_of_both_halves(cluster, indexes):
    """Not a tautology of the equality above: the sharded index really holds both halves."""
    one, two = (load_index_dir(indexes["sf2"] / d) for d in ("shard0", "shard1"))
    ids = set(one.doc_ids) | set(two.doc_ids)
    status, body = _post(cluster, {"queries": QUERIES, "topk": 50, "index": "sf2",
                                   "format": "columns"})
    assert status == 200
    got = json.loads(body)["ids"]
    assert all(set(row) <= ids for row in got)
    assert any(set(row) & set(one.doc_ids) for row in got)
    assert any(set(row) & set(two.doc_ids) for row in got)


def test_evidence_ranks_through_the_shard_router_equal_the_rule_on_the_merged_texts(cluster):
    """The answers option on Ray shard deployments: each shard ranks its own hits, the router
    merges the ranks (answer_ranks.merge_answer_ranks) — DPR's rule over the merged list's
    texts, and the merged list's top hits."""
    from deepretrieval.tasks.evidence import first_answer_rank

    status, body = _post(cluster, {"queries": QUERIES, "topk": 200, "index": "sf2",
                                   "format": "columns", "return_text": True})
    assert status == 200, body
    merged = json.loads(body)
    for answers in (["cell"], ["T cells"], ["zzqx"], ["2"], ["p53"]):  # max_k here: 200
        status, body = _post(cluster, {"queries": QUERIES, "topk": 200, "index": "sf2",
                                       "format": "columns", "options": {"answers": answers}})
        assert status == 200, body
        got = json.loads(body)
        assert [i["first_answer_rank"] for i in got["info"]] == [
            first_answer_rank(texts, answers) for texts in merged["contents"]]
        assert got["ids"] == [ids[:ANSWERS_HITS] for ids in merged["ids"]]
    # one answer list per query (core.per_query): through the router, the replicas' batching
    # and the shards, each query keeps its own answers
    per = [[["cell"], ["T cells"], ["zzqx"], ["2"], ["p53"]][i % 5] for i in range(len(QUERIES))]
    status, body = _post(cluster, {"queries": QUERIES, "topk": 200, "index": "sf2",
                                   "format": "columns", "options": {"answers": per}})
    assert status == 200, body
    assert [i["first_answer_rank"] for i in json.loads(body)["info"]] == [
        first_answer_rank(texts, answers) for texts, answers in zip(merged["contents"], per)]


def test_health_names_every_index_and_the_shards(cluster):
    health = httpx.get(cluster + "/health", timeout=30).json()
    assert health["indexes"] == ["broken", "half", "scifact", "sf2"]
    sf2 = health["backends"]["sf2"]["info"]
    assert sf2["type"] == "sharded" and sf2["shards"] == 2
    assert [s["num_docs"] for s in sf2["shard_info"]] == [2591, 2592]
    assert health["limits"]["batching"] is False


def test_the_handle_path_equals_the_http_path(cluster):
    http = ServiceSearcher(cluster)
    handle = RaySearcher(APP)
    for index, k, text in [("sf2", 10, False), ("sf2", 3, True), ("half", 5, True)]:
        a = http.search(index, QUERIES, k, return_text=text)
        b = handle.search(index, QUERIES, k, return_text=text)
        c = asyncio.run(handle.asearch(index, QUERIES, k, return_text=text))
        for x, y, z in zip(a, b, c):
            assert x.ids == y.ids == z.ids and x.scores == y.scores == z.scores
            assert x.texts == y.texts == z.texts and x.error is y.error is z.error is None
    assert handle.search("sf2", ["\ud800"], 3)[0].error.startswith("query is not valid Unicode")
    with pytest.raises(SearchError, match=r"unknown index 'nope'.*serves: \['broken', 'half', "
                                          r"'scifact', 'sf2'\]"):
        handle.search("nope", ["q"], 3)
    with pytest.raises(ValueError, match="maxdate"):  # the backend's own error, as in process
        handle.search("sf2", ["q"], 3, options={"maxdate": "2020"})
    http.close()


def test_get_searcher_resolves_ray_urls(cluster, monkeypatch):
    from deepretrieval import catalog

    monkeypatch.setenv("DEEPRETRIEVAL_SEARCH_URL", f"ray://{APP}")
    searcher = catalog.get_searcher()
    assert isinstance(searcher, RaySearcher) and searcher.app == APP
    assert searcher.search("half", ["cell biology"], 2)[0].ids
    monkeypatch.setenv("DEEPRETRIEVAL_SEARCH_URL", "ray://head:10001")
    with pytest.raises(ValueError, match="Ray Client address"):
        catalog.get_searcher()
    catalog.set_searcher(None)


def test_a_reward_worker_scores_through_the_handle(cluster):
    """verl's reward workers get ``DEEPRETRIEVAL_SEARCH_URL`` through Ray's runtime env
    (``train/verl.py``): a Ray task with ``ray://APP`` scores exactly as in process."""
    import ray

    from deepretrieval.catalog import bundled_rows
    from deepretrieval.rewards import compute_score

    rows = bundled_rows("scifact", "test")[:4]
    items = [(r["data_source"], "<think>t</think>\n<answer>" + json.dumps(
        {"query": r["extra_info"]["query"]}) + "</answer>", r["reward_model"]["ground_truth"],
        r["extra_info"]) for r in rows]

    @ray.remote(num_cpus=0, runtime_env={"env_vars": {"DEEPRETRIEVAL_SEARCH_URL": f"ray://{APP}"}})
    def reward_worker(items):
        from deepretrieval.catalog import get_searcher
        from deepretrieval.rewards import compute_score

        return repr(get_searcher()), [compute_score(*item) for item in items]

    searcher, remote = ray.get(reward_worker.remote(items), timeout=300)
    assert searcher == f"RaySearcher('ray://{APP}')"
    local = [compute_score(*item) for item in items]  # in process (no search URL in this process)
    assert remote == local
    assert any(r["ndcg@10"] > 0 for r in local)


def test_an_agent_loop_actor_searches_through_the_handle_on_its_own_loop(cluster):
    """verl's agent loops are async Ray actors that ``await searcher.asearch`` (train/verl_agent.py):
    the same results as in process, from the actor's event loop."""
    import ray

    @ray.remote(num_cpus=0, runtime_env={"env_vars": {"DEEPRETRIEVAL_SEARCH_URL": f"ray://{APP}"}})
    class AgentLoopWorker:
        async def search(self, queries):
            from deepretrieval.catalog import get_searcher

            results = await get_searcher().asearch("sf2", queries, 3, return_text=True)
            return [(r.ids, r.scores, r.texts) for r in results]

    worker = AgentLoopWorker.remote()
    try:
        got = ray.get(worker.search.remote(QUERIES), timeout=300)
    finally:
        ray.kill(worker)
    http = ServiceSearcher(cluster)
    want = http.search("sf2", QUERIES, 3, return_text=True)
    http.close()
    assert got == [(r.ids, r.scores, r.texts) for r in want]


def test_a_process_outside_ray_joins_the_cluster_to_search(cluster):
    """``ray://APP`` in a plain process (not a Ray worker): it connects with RAY_ADDRESS."""
    import subprocess
    import sys

    import ray

    code = ("from deepretrieval.catalog import get_searcher; "
            "r = get_searcher().search('half', ['cell biology'], 3)[0]; print(r.ids)")
    env = {**os.environ, "DEEPRETRIEVAL_SEARCH_URL": f"ray://{APP}",
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    http = ServiceSearcher(cluster)
    assert out.stdout.strip().splitlines()[-1] == str(http.search("half", ["cell biology"], 3)[0].ids)
    http.close()


def test_a_replica_killed_under_load_fails_no_request(cluster):
    """SIGKILL one of the two replicas of shard 0 while 4 HTTP callers and 2 handle callers
    search: every request succeeds (HTTP callers with the client's retries), and Serve replaces
    the replica."""
    from deepretrieval.service import ray_serve

    deployment = "shard-0-0-sf2"
    before = ray_serve.replica_pids(deployment, 2, APP)
    assert len(before) == 2
    victim = min(before)
    stats = {"ok": 0, "failed": [], "after_kill": 0}
    lock = threading.Lock()
    killed = threading.Event()
    stop_at = time.monotonic() + 60  # bounded in time and count

    def caller(kind: str, n: int) -> None:
        client = ServiceClient(cluster, retries=3) if kind == "http" else RaySearcher(APP)
        for i in range(n):
            if time.monotonic() > stop_at:
                break
            q = QUERIES[i % len(QUERIES)] + f" {i}"
            try:
                res = client.search("sf2", [q], 10)
                assert res[0].error is None and len(res[0].ids) == 10
                with lock:
                    stats["ok"] += 1
                    stats["after_kill"] += killed.is_set()
            except Exception as exc:  # noqa: BLE001 - counted, then asserted on
                with lock:
                    stats["failed"].append(f"{kind}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=caller, args=("http", 60)) for _ in range(4)]
    threads += [threading.Thread(target=caller, args=("handle", 60)) for _ in range(2)]
    for t in threads:
        t.start()
    while stats["ok"] < 40 and time.monotonic() < stop_at:
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    killed.set()
    for t in threads:
        t.join(90)
    assert not stats["failed"], stats["failed"][:5]
    assert stats["after_kill"] > 0, stats  # the load went on after the kill
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    after = ray_serve.replica_pids(deployment, 2, APP)  # Serve started a replacement
    assert len(after) == 2 and victim not in after
