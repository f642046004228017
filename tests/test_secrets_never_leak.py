"""Secrets (the NCBI ``api_key``) never reach an error text that can leave the process, even when
the upstream echoes the request in a 4xx body: ``SearchResult.error``, the service's ``errors``,
the reward's logs."""
from __future__ import annotations

import logging

import httpx
import pytest

from deepretrieval.search.live.governor import Backoff
from deepretrieval.search.live.pubmed import PubMedBackend
from deepretrieval.service.app import ServerThread, create_app
from deepretrieval.testing.fake_engines import FakePubMed

KEY = "k3y+S3CRET/value=42"   # characters that URL-encoding changes


@pytest.fixture
def echoing():
    with FakePubMed() as fake:
        fake.fail("echo", None)
        yield fake


def backend(fake):
    return PubMedBackend(fake.url, api_key=KEY, rate=100, backoff=Backoff(retries=1, base=0.01, cap=0.02),
                         timeout=5)


def _leaks(text: str) -> bool:
    from urllib.parse import quote, quote_plus
    return any(form in text for form in (KEY, quote(KEY, safe=""), quote_plus(KEY), "S3CRET"))


def test_echoed_key_is_redacted_in_results_and_logs(echoing, caplog):
    caplog.set_level(logging.DEBUG)
    out = backend(echoing).search(["cancer therapy", "heart attack"], 10)
    assert all(r.error and "HTTP 400" in r.error for r in out)
    assert "esearch" in out[0].error or "bad request" in out[0].error    # the body is still shown
    assert echoing.requests and any(KEY in str(r.params) for r in echoing.requests)  # it was sent
    assert not any(_leaks(r.error) for r in out)
    assert not _leaks(caplog.text)


def test_echoed_key_is_redacted_through_the_service(echoing, caplog):
    caplog.set_level(logging.DEBUG)
    with ServerThread(create_app({"pubmed": backend(echoing)})) as srv:
        answer = httpx.post(srv.url + "/retrieve", json={"queries": ["cancer"], "topk": 5,
                                                          "format": "hits"}).json()
    assert answer["errors"][0] and not _leaks(str(answer))
    assert not _leaks(caplog.text)


def test_reward_search_error_carries_no_key(echoing, caplog, monkeypatch):
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.rewards import compute_score
    from deepretrieval.catalog import set_searcher
    monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_URL", echoing.url)
    monkeypatch.setenv("NCBI_API_KEY", KEY)
    monkeypatch.setenv("DEEPRETRIEVAL_LIVE_RETRIES", "0")
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", "off")
    set_searcher(None)
    caplog.set_level(logging.DEBUG)
    try:
        row = bundled_rows("pubmed", "test")[0]
        out = compute_score(row["data_source"], '<think>x</think><answer>{"query": "cancer"}</answer>',
                            row["reward_model"]["ground_truth"], row["extra_info"])
    finally:
        set_searcher(None)
    assert out["search_error"] is True
    assert not _leaks(caplog.text)
