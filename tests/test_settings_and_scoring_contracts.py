"""Bugs found while untangling the layers, one test each (each failed before its fix)."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from deepretrieval.catalog import bundled_rows, local_searcher, set_searcher
from deepretrieval.core import settings
from deepretrieval.core.results import SearchError
from deepretrieval.rewards import ascore_batch, score_batch
from deepretrieval.tasks.sql import clear_gold_cache


# --- DEEPRETRIEVAL_CACHE: one name per meaning ---------------------------------------------------

def test_cache_file_and_cache_folder_are_separate_settings(tmp_path, monkeypatch):
    """``DEEPRETRIEVAL_CACHE`` is the live-cache *file* (its documented value is
    ``…/live_cache.sqlite``); the folder of the LLM-API cache, tiny models and exported models is
    ``DEEPRETRIEVAL_CACHE_DIR``. Before, the LLM-API cache tried to mkdir inside the file."""
    from deepretrieval.generation.api import default_cache_dir
    from deepretrieval.search.live.cache import default_cache_path
    from deepretrieval.generation.models import cache_root

    live = tmp_path / "live_cache.sqlite"
    live.write_bytes(b"")
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(live))
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE_DIR", str(tmp_path / "folder"))
    assert default_cache_path() == live
    assert default_cache_dir() == tmp_path / "folder" / "llm_api"
    assert cache_root() == tmp_path / "folder"
    default_cache_dir().mkdir(parents=True)       # works: not inside the file
    monkeypatch.delenv("DEEPRETRIEVAL_CACHE_DIR")
    assert not str(default_cache_dir()).startswith(str(live))
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", "off")
    assert settings.live_cache_file() is None


def test_settings_parse_one_way_and_name_the_variable(monkeypatch):
    monkeypatch.setenv("DEEPRETRIEVAL_BM25_THREADS", "many")
    with pytest.raises(settings.SettingError, match="DEEPRETRIEVAL_BM25_THREADS"):
        settings.get_int("DEEPRETRIEVAL_BM25_THREADS", 1)
    monkeypatch.setenv("DEEPRETRIEVAL_PROGRESS", "maybe")
    with pytest.raises(settings.SettingError, match="DEEPRETRIEVAL_PROGRESS"):
        settings.progress_enabled()
    with pytest.raises(KeyError, match="known"):
        settings.get_str("DEEPRETRIEVAL_NO_SUCH_SETTING")
    monkeypatch.setenv("DEEPRETRIEVAL_INDEXES", "a=/x,broken")
    with pytest.raises(settings.SettingError, match="name=path"):
        settings.named_indexes()


# --- SQL: the gold query through the same searcher and batching, never blocking ----------------

class Recording:
    """A searcher that records every call (sync or async) and forwards to a local searcher."""

    def __init__(self):
        self.inner = local_searcher()
        self.calls: list[tuple[str, str, int]] = []

    def search(self, index, queries, k, *, return_text=False, options=None):
        self.calls.append(("sync", index, len(queries)))
        return self.inner.search(index, queries, k, return_text=return_text, options=options)

    async def asearch(self, index, queries, k, *, return_text=False, options=None):
        self.calls.append(("async", index, len(queries)))
        return self.inner.search(index, queries, k, return_text=return_text, options=options)


class Failing:
    def search(self, *a, **kw):
        raise SearchError("the process-wide searcher must not be used")

    async def asearch(self, *a, **kw):
        raise SearchError("the process-wide searcher must not be used")


def _items(rows):
    return [(r["data_source"],
             "<think>t</think><answer>" + json.dumps({"sql": r["reward_model"]["ground_truth"]["target"][0]})
             + "</answer>", r["reward_model"]["ground_truth"], r["extra_info"]) for r in rows]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gold_sql_uses_the_callers_searcher_in_one_batch(mode):
    rows = bundled_rows("spider", "test")
    rows = [r for r in rows if r["extra_info"]["db_id"] == "singer"][:6]
    items = _items(rows)
    recording = Recording()
    set_searcher(Failing())          # before the fix the gold query went here
    clear_gold_cache()
    try:
        if mode == "sync":
            out = score_batch(items, searcher=recording)
        else:
            out = asyncio.run(ascore_batch(items, searcher=recording))
    finally:
        set_searcher(None)
        clear_gold_cache()
    assert [m["exec_match"] for m in out] == [1.0] * len(rows)
    assert not any(m["search_error"] for m in out)
    # model SQL and gold SQL: two batched calls (their time limits differ), async on the async path
    assert sorted(recording.calls) == [(mode, "spider/singer", len(rows))] * 2


def test_cached_gold_is_not_searched_again():
    rows = [r for r in bundled_rows("spider", "test") if r["extra_info"]["db_id"] == "singer"][:3]
    recording = Recording()
    clear_gold_cache()
    try:
        first = score_batch(_items(rows), searcher=recording)
        second = score_batch(_items(rows), searcher=recording)
    finally:
        clear_gold_cache()
    assert first == second
    assert len(recording.calls) == 3         # 2 for the first call, 1 (model SQL only) after


# --- compute_score for a family that searches nothing ------------------------------------------

def test_a_plan_with_no_search_is_scored_without_a_searcher():
    from deepretrieval import catalog
    from deepretrieval.core.tables import RewardTable
    from deepretrieval.tasks.base import Family, Task

    class NoSearch(Family):
        name = "nosearch"

        def metric_keys(self, task):
            return ["length"]

        def plan(self, task, value, ground_truth, extra_info, mode):
            return ()

        def score(self, task, plan, result, ground_truth, extra_info, mode):
            assert plan == () and result == ()
            return {"length": float(len(extra_info["value"]))}

    task = Task(name="zz_nosearch", family=NoSearch(), index="none", instruction="{query}",
                reward=RewardTable(metric="length", linear=True))
    catalog.register_task(task, replace_existing=True)
    out = score_batch([("zz_nosearch", '<think>t</think><answer>{"query": "abc"}</answer>', {},
                        {"value": "abcd"})], searcher=Failing())
    assert out == [{"score": 4.0, "format_ok": True, "search_error": False, "length": 4.0}]


# --- quickstart: no guessing at our own result keys ----------------------------------------------

def test_copy_rate_reads_the_query_not_the_extraction_label():
    from deepretrieval.train.quickstart import copy_rate

    records = [
        {"format_ok": True, "query": "Vitamin D prevents fractures", "extracted": "strict",
         "original_query": "vitamin d prevents fractures."},                     # a copy
        {"format_ok": True, "query": "vitamin d bone density", "extracted": "strict",
         "original_query": "vitamin d prevents fractures."},                     # not a copy
        {"format_ok": False, "query": None, "extracted": None,
         "original_query": "strict"},                                            # bad format
    ]
    assert copy_rate(records) == pytest.approx(1 / 3)
    with pytest.raises(KeyError):
        copy_rate([{"format_ok": True, "value": "x"}])


def test_paths_of_bundled_data_have_one_home():
    from deepretrieval.core.bundled import BUNDLED_DIR

    for name in ("scifact", "nq_open", "spider", "clef_tar", "trialmind_slr"):
        assert (BUNDLED_DIR / name).is_dir()
    assert Path(BUNDLED_DIR).parent.name == "deepretrieval"


# --- verl: the family config is found from the family, never a silent fallback -----------------

def test_every_family_has_its_verl_config_and_an_unknown_one_is_an_error():
    from deepretrieval import catalog
    from deepretrieval.tasks.base import Family
    from deepretrieval.train.verl import family_for

    for entry in catalog.FAMILIES:
        assert family_for(entry.tasks[0]) == entry.family.name

    class Other(Family):
        name = "other"

    task = catalog.TASKS["scifact"].variant(name="zz_other", family=Other())
    with pytest.raises(ValueError, match="has no verl config.*beir"):
        family_for(task)
