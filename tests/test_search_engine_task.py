"""Search-engine task family (pubmed, ctgov): prompts, bundled rows, reward through the live
backends against the loopback fakes (date cap, search errors, hostile completions), baseline."""
from __future__ import annotations

import json

import pytest

from deepretrieval.rewards import compute_score, score_batch
from deepretrieval.catalog import local_searcher, set_searcher
from deepretrieval.catalog import get_task
from deepretrieval.catalog import bundled_rows
from deepretrieval.tasks.search_engine import load_trialmind
from deepretrieval.testing.fake_engines import FakeCTGov, FakePubMed

# a PICO-style Boolean query for review 32306958 (irAEs and efficacy of immune checkpoint
# inhibitors); its included trials are in the fake PubMed's collection
GOOD = ('(immune-related adverse events OR irAEs OR "adverse events") AND '
        '(nivolumab OR pembrolizumab OR ipilimumab OR "immune checkpoint" OR PD-1 OR anti-PD-1)')


@pytest.fixture(scope="module")
def fakes():
    with FakePubMed() as pm, FakeCTGov() as ct:
        yield pm, ct


@pytest.fixture
def live_env(fakes, tmp_path, monkeypatch):
    pm, ct = fakes
    for fake in fakes:
        fake.clear_faults()
        fake.reset_log()
    monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_URL", pm.url)
    monkeypatch.setenv("DEEPRETRIEVAL_CTGOV_URL", ct.url)
    monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_RPS", "200")
    monkeypatch.setenv("DEEPRETRIEVAL_CTGOV_RPS", "200")
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.setenv("DEEPRETRIEVAL_LIVE_RETRIES", "2")
    monkeypatch.setenv("DEEPRETRIEVAL_LIVE_BACKOFF", "0.01")
    monkeypatch.delenv("DEEPRETRIEVAL_CACHE_FROZEN", raising=False)
    monkeypatch.delenv("NCBI_API_KEY", raising=False)
    searcher = local_searcher()
    set_searcher(searcher)
    yield pm, ct
    set_searcher(None)


def test_tasks_are_registered_with_the_paper_settings():
    for name in ("pubmed", "pubmed_no_reason", "ctgov", "ctgov_no_reason"):
        task = get_task(name)
        assert task.family.name == "search_engine"
        assert task.depth("train") == task.depth("val") == 3000
        assert task.table().metric == "recall"
        assert task.table().tiers[0] == (0.7, 5)
    assert get_task("pubmed").options["date_cap"] and not get_task("ctgov").options["date_cap"]
    assert get_task("pubmed_no_reason").prefill.startswith("<answer>")


def test_bundled_rows_are_real_and_complete():
    test = bundled_rows("pubmed", "test")
    train = bundled_rows("pubmed", "train")
    ct = bundled_rows("ctgov", "test")
    assert (len(test), len(train), len(ct)) == (25, 30, 3)
    reviews = {r["pmid"]: r for r in load_trialmind()}
    row = test[0]
    review = reviews[row["extra_info"]["query_id"]]
    assert row["reward_model"]["ground_truth"]["target"] == [t["pmid"] for t in review["trials"]]
    assert row["extra_info"]["query"] == review["title"]
    assert row["extra_info"]["pub_date"] == review["date"]
    user = row["prompt"][1]["content"]
    for key in "PICO":
        assert f"{key} (" in user and review["pico"][key] in user
    assert "AND" in user and "OR" in user and "parentheses" in user
    assert sum(len(r["reward_model"]["ground_truth"]["target"]) for r in train) == 3964
    assert all(t.isdigit() for r in train for t in r["reward_model"]["ground_truth"]["target"])
    assert all(t.startswith("NCT") for r in ct for t in r["reward_model"]["ground_truth"]["target"])
    assert "Review title:" in train[0]["prompt"][1]["content"]
    with pytest.raises(ValueError, match="no bundled"):
        bundled_rows("ctgov", "train")


def test_prepare_command_writes_parquet(tmp_path, capsys):
    from deepretrieval.cli import main
    from deepretrieval.catalog import read_rows
    assert main(["prepare", "pubmed", "--out", str(tmp_path / "pm")]) == 0
    assert main(["prepare", "ctgov", "--out", str(tmp_path / "ct"), "--task", "ctgov_no_reason"]) == 0
    rows = read_rows(tmp_path / "pm" / "test.parquet")
    assert len(rows) == 25 and rows[0]["data_source"] == "pubmed"
    assert len(read_rows(tmp_path / "pm" / "train.parquet")) == 30
    ct = read_rows(tmp_path / "ct" / "test.parquet")
    assert ct[0]["extra_info"]["prefill"].startswith("<answer>")


def _row(task="pubmed", split="test", i=0):
    return bundled_rows(task, split)[i]


def _expected_recall(fake, query, target, maxyear=None):
    top = set(fake.match(query, maxyear=maxyear)[:3000])
    return len(top & set(target)) / len(target)


def test_reward_recall_with_date_cap(live_env):
    pm, _ = live_env
    row = _row()
    gt, extra = row["reward_model"]["ground_truth"], row["extra_info"]
    completion = f'<think>PICO concepts joined</think>\n<answer>{json.dumps({"query": GOOD})}</answer>'
    out = compute_score("pubmed", completion, gt, extra)
    assert out["format_ok"] and not out["search_error"]
    expected = _expected_recall(pm, GOOD, gt["target"], maxyear=2020)
    assert out["recall"] == pytest.approx(expected) and expected > 0.1
    assert out["score"] == get_task("pubmed").table().total(True, get_task("pubmed").table().answer_score(expected))
    assert 0 < out["num_results"] <= 3000
    assert set(out) == {"score", "format_ok", "search_error", "recall", "recall@100", "recall@1000", "num_results"}
    assert all(isinstance(v, (int, float)) for v in out.values())
    req = pm.requests[-1]
    assert (req.param("maxdate"), req.param("datetype"), req.param("retmax")) == ("2020/04", "pdat", "3000")


def test_ctgov_reward(live_env):
    _, ct = live_env
    row = _row("ctgov")
    gt = row["reward_model"]["ground_truth"]
    out = compute_score("ctgov", '<think>x</think><answer>{"query": "cancer OR trial"}</answer>', gt, row["extra_info"])
    assert out["format_ok"] and not out["search_error"]
    assert out["recall"] == pytest.approx(_expected_recall(ct, "cancer OR trial", gt["target"]))
    assert ct.requests and ct.requests[0].param("query.term") == "cancer OR trial"


def test_exhausted_retries_are_reported_as_search_error(live_env):
    pm, ct = live_env
    pm.fail("503", times=None)
    ct.fail("500", times=None)
    pm.retry_after = ct.retry_after = "0"
    try:
        for task in ("pubmed", "ctgov"):
            row = _row(task)
            out = compute_score(task, '<think>t</think><answer>{"query": "cancer"}</answer>',
                                row["reward_model"]["ground_truth"], row["extra_info"])
            assert out["search_error"] is True and out["format_ok"] is True
            table = get_task(task).table()
            assert out["score"] == table.total(True, table.error) == -3.0
            assert out["recall"] == 0.0
    finally:
        pm.retry_after = ct.retry_after = "1"


def test_nothing_the_model_writes_crashes_the_reward(live_env):
    row = _row()
    gt, extra = row["reward_model"]["ground_truth"], row["extra_info"]
    completions = [
        "", None, 42, "<think></think><answer>{}</answer>",
        '<think>x</think><answer>{"query": ""}</answer>',
        '<think>x</think><answer>{"query": "((((("}</answer>',
        '<think>x</think><answer>{"query": "a & b # c % d \\" e"}</answer>',
        '<think>x</think><answer>{"query": "' + "x" * 30000 + '"}</answer>',
        '<think>x</think><answer>{"query": ["list"]}</answer>',
        '<think>x</think><answer>{"query": "NOT NOT AND OR ) ("}</answer>',
    ]
    items = [("pubmed", c, gt, extra) for c in completions] + [("ctgov", c, gt, extra) for c in completions]
    results = score_batch(items)
    assert len(results) == len(items)
    for out in results:
        assert isinstance(out["score"], float)
        assert set(out) >= {"recall", "recall@100", "recall@1000", "num_results", "search_error"}


def test_baseline_command_against_the_fake(live_env, tmp_path, capsys):
    from deepretrieval.cli import main
    pm, _ = live_env
    assert main(["prepare", "pubmed", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["baseline", "--task", "pubmed", "--rows", str(tmp_path / "test.parquet"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 25 and summary["search_error_rate"] == 0.0
    assert 0.0 <= summary["recall"] <= 1.0
    terms = {r.param("term") for r in pm.requests}
    assert {r["title"] for r in load_trialmind()} <= terms  # the original query is the title


def test_recalls_at_matches_the_metric_module():
    import random

    from deepretrieval.core.metrics import recall_at_k
    from deepretrieval.tasks.search_engine import recalls_at
    rng = random.Random(0)
    for _ in range(50):
        ranked = list(dict.fromkeys(str(rng.randrange(5000)) for _ in range(rng.randrange(0, 4000))))
        qrels = {str(rng.randrange(5000)): rng.choice([0, 1, 2]) for _ in range(rng.randrange(0, 40))}
        depths = {"a": 100, "b": 1000, "c": 3000, "d": 1}
        got = recalls_at(ranked, qrels, depths)
        assert got == {k: recall_at_k(ranked, qrels, d) for k, d in depths.items()}


def test_through_the_retrieval_service_one_bucket_and_health(live_env):
    """Reward workers reach PubMed through the service: one backend (one token bucket, one
    cache) for all of them; /health shows the cache and rate counters."""
    import asyncio
    import threading

    import httpx

    from deepretrieval.rewards import compute_score_async
    from deepretrieval.search.live import pubmed_from_env
    from deepretrieval.service.app import ServerThread, create_app
    from deepretrieval.service.client import ServiceSearcher
    pm, _ = live_env
    pm.rate_limit = 25
    try:
        backend = pubmed_from_env()
        rows = bundled_rows("pubmed", "test")
        with ServerThread(create_app({"pubmed": backend})) as srv:
            searcher = ServiceSearcher(srv.url)
            outs: list = []

            def worker(i):
                row = rows[i % len(rows)]
                query = f"(cancer OR tumor) AND term{i % 12}"
                outs.append(compute_score("pubmed", f'<think>t</think><answer>{{"query": "{query}"}}</answer>',
                                          row["reward_model"]["ground_truth"], row["extra_info"],
                                          searcher=searcher))
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

            async def async_rewards():
                row = rows[0]
                return await asyncio.gather(*(compute_score_async(
                    "pubmed", '<think>t</think><answer>{"query": "melanoma OR nivolumab"}</answer>',
                    row["reward_model"]["ground_truth"], row["extra_info"], searcher=searcher)
                    for _ in range(5)))
            async_outs = asyncio.run(async_rewards())
            health = httpx.get(f"{srv.url}/health").json()
        assert len(outs) == 24 and not any(o["search_error"] for o in outs + async_outs)
        assert pm.count_429 == 0 and pm.max_in_window <= 25
        info = json.dumps(health)
        assert '"hits"' in info and '"misses"' in info and '"rate_rps"' in info
        cache = backend.info()["cache"]
        # 24 rewards over 12 distinct (query, date cap) pairs at most + 1 async query searched once
        assert cache["writes"] == len({r.param("term") + str(r.param("maxdate")) for r in pm.requests})
        assert cache["hits"] + cache["misses"] >= 13
    finally:
        pm.rate_limit = None
