"""SQL scoring through the retrieval service (a real uvicorn server on a loopback port): the same
metrics as in-process, SQL errors stay mismatches, the gold query also goes through the service."""
from __future__ import annotations

import asyncio
import json

import pytest

from deepretrieval.rewards import ascore_batch, score_batch
from deepretrieval.catalog import local_searcher, open_index, set_searcher
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.service.client import ServiceSearcher
from deepretrieval.catalog import bundled_rows as bundled_sql_rows
from deepretrieval.tasks.sql import clear_gold_cache


def _answer(sql):
    return "<think>t</think><answer>" + json.dumps({"sql": sql}) + "</answer>"


@pytest.fixture(scope="module")
def service_url():
    app = create_app({name: open_index(name) for name in ("spider/flight_2", "spider/singer")},
                     ServiceConfig(batch_wait_ms=2))
    with ServerThread(app) as srv:
        yield srv.url


def test_scores_through_service_equal_in_process(service_url, monkeypatch):
    rows = bundled_sql_rows("spider", "test")
    preds = [r["reward_model"]["ground_truth"]["target"][0] for r in rows]
    preds[0] = "SELECT Country FROM airlines"                 # mismatch
    preds[1] = "SELECT nothing FROM nowhere"                  # SQL error → mismatch, not search error
    preds[2] = "DROP TABLE flights"                           # denied → mismatch
    items = [(r["data_source"], _answer(p), r["reward_model"]["ground_truth"], r["extra_info"])
             for r, p in zip(rows, preds)]
    clear_gold_cache()
    local = score_batch(items, searcher=local_searcher())
    monkeypatch.setenv("DEEPRETRIEVAL_SEARCH_URL", service_url)  # the gold SQL goes there too
    set_searcher(None)
    try:
        clear_gold_cache()
        remote = score_batch(items, searcher=ServiceSearcher(service_url))
        clear_gold_cache()
        remote_async = asyncio.run(ascore_batch(items))
    finally:
        monkeypatch.delenv("DEEPRETRIEVAL_SEARCH_URL")
        set_searcher(None)
        clear_gold_cache()
    assert remote == local == remote_async
    assert [m["exec_match"] for m in local[:3]] == [0.0, 0.0, 0.0]
    assert local[1]["exec_ok"] == 0.0 and not any(m["search_error"] for m in local)
    assert sum(m["exec_match"] for m in local) == len(rows) - 3
