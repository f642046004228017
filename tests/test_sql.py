"""SQL family and SQLite backend on the bundled Spider subset (flight_2, singer: 110 dev questions)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepretrieval.rewards import compute_score, compute_score_async, score_batch
from deepretrieval.catalog import open_index, register_index
from deepretrieval.core.results import SearchError
from deepretrieval.search.sql import (BUNDLED_DIR, SqliteBackend, execute_readonly, file_sha256,
                                      has_top_level_order_by, split_statements, write_sqlite_index)
from deepretrieval.catalog import get_task, register_task
from deepretrieval.tasks.sql import exec_match, exec_match_ordered, exec_match_set, normalize_value

pytestmark = pytest.mark.rows("spider", "test")

LIMIT = 0.5   # wall-clock limit for hostile SQL (seconds)
SLACK = 1.5   # allowed overshoot (interpreter, connection set-up, a loaded CI machine)


def answer(sql: str) -> str:
    return f"<think>I look at the schema.</think>\n<answer>{json.dumps({'sql': sql})}</answer>"


@pytest.fixture(scope="module")
def fast_task():
    """The spider task with a short time limit (registered under its own name)."""
    task = get_task("spider").variant(name="spider_test_fast",
                                      options={**get_task("spider").options, "timeout_s": LIMIT})
    return register_task(task, replace_existing=True)


@pytest.fixture()
def db_copy(tmp_path):
    """A writable copy of flight_2 in a writable folder, registered as index ``test/flight_2``."""
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "flight_2.sqlite"
    shutil.copyfile(BUNDLED_DIR / "database" / "flight_2" / "flight_2.sqlite", path)
    os.chmod(path, 0o644)
    write_sqlite_index(tmp_path / "index", path, "test/flight_2")
    register_index(f"test/flight_2/{tmp_path.name}", tmp_path / "index")
    return path, f"test/flight_2/{tmp_path.name}"


def test_bundled_rows_shape(rows):
    assert len(rows) == 110
    assert sum(r["extra_info"]["db_id"] == "flight_2" for r in rows) == 80
    assert sum(r["extra_info"]["db_id"] == "singer" for r in rows) == 30
    row = rows[0]
    assert row["data_source"] == "spider" and row["ability"] == "sql"
    assert row["reward_model"]["ground_truth"]["target"] == [
        'SELECT Country FROM AIRLINES WHERE Airline  =  "JetBlue Airways"']
    assert row["extra_info"]["query"] == 'Which country does Airline "JetBlue Airways" belong to?'
    user = row["prompt"][1]["content"]
    assert "CREATE TABLE 'airlines'" in user and "CREATE TABLE 'flights'" in user
    assert user.rstrip().endswith('Question: Which country does Airline "JetBlue Airways" belong to?')
    assert '"sql"' in row["prompt"][0]["content"]


def test_every_gold_query_matches_itself(rows):
    started = time.monotonic()
    for row in rows:
        gt = row["reward_model"]["ground_truth"]
        out = compute_score("spider", answer(gt["target"][0]), gt, row["extra_info"])
        assert out["format_ok"] and not out["search_error"], (row["extra_info"], out)
        assert out["exec_match"] == out["exec_match_set"] == out["exec_match_ordered"] == 1.0, gt
        assert out["score"] == pytest.approx(1.1)
    assert time.monotonic() - started < 60


def test_answer_only_variant_with_prefill(rows):
    row = rows[5]
    gt = row["reward_model"]["ground_truth"]
    task = get_task("spider_no_reason")
    completion = json.dumps(gt["target"][0])[1:] + "}</answer>"  # after '<answer>{"sql": "'
    out = compute_score("spider_no_reason", completion, gt, {**row["extra_info"], "prefill": task.prefill})
    assert out["exec_match"] == 1.0 and out["score"] == pytest.approx(1.1)


def test_wrong_sql_mismatch_and_tables(rows):
    row = next(r for r in rows if r["extra_info"]["db_id"] == "singer"
               and r["reward_model"]["ground_truth"]["target"][0] == "SELECT count(*) FROM singer")
    gt, extra = row["reward_model"]["ground_truth"], row["extra_info"]
    wrong = compute_score("spider", answer("SELECT count(*) FROM singer WHERE Birth_Year > 1950"), gt, extra)
    assert wrong["exec_ok"] == 1.0 and wrong["exec_match"] == 0.0 and wrong["score"] == 0.0
    broken = compute_score("spider", answer("SELEC count(*) FROM singer"), gt, extra)
    assert broken["exec_ok"] == 0.0 and not broken["search_error"] and broken["score"] == 0.0
    assert compute_score("spider", "no tags here", gt, extra)["score"] == -2.0
    # BIRD table (same data, index given explicitly): mismatch 0.4, match 1.1
    bird_extra = {**extra, "search_index": "spider/singer"}
    assert compute_score("bird", answer("SELECT count(*) FROM song WHERE Sales > 1e9"), gt, bird_extra)["score"] == pytest.approx(0.4)
    assert compute_score("bird", answer("SELECT COUNT(*) FROM Singer;"), gt, bird_extra)["score"] == pytest.approx(1.1)


def test_order_by_variant(rows):
    gold = "SELECT Name FROM singer ORDER BY Net_Worth_Millions DESC"
    gt, extra = {"target": [gold]}, {"db_id": "singer", "split": "test"}
    same_order = compute_score("spider", answer("SELECT name FROM singer ORDER BY net_worth_millions DESC"), gt, extra)
    reversed_order = compute_score("spider", answer("SELECT Name FROM singer ORDER BY Net_Worth_Millions ASC"), gt, extra)
    assert same_order["exec_match_ordered"] == 1.0 and same_order["exec_match"] == 1.0
    assert reversed_order["exec_match"] == 1.0 and reversed_order["exec_match_ordered"] == 0.0
    # default Spider reward: order-aware because the gold has ORDER BY (Spider's evaluator)
    assert reversed_order["score"] == 0.0 and same_order["score"] == pytest.approx(1.1)
    # (answer-only: the completion continues the prefill `<answer>{"sql": "`)
    no_reason = compute_score("spider_no_reason", 'SELECT Name FROM singer ORDER BY '
                              'Net_Worth_Millions ASC"}</answer>', gt, extra)
    assert no_reason["format_ok"] and no_reason["exec_match"] == 1.0 and no_reason["score"] == 0.0
    # BIRD's evaluator ignores order; so does the BIRD reward
    assert compute_score("bird", answer("SELECT Name FROM singer ORDER BY Net_Worth_Millions ASC"),
                         gt, {**extra, "search_index": "spider/singer"})["score"] == pytest.approx(1.1)
    unordered = register_task(get_task("spider").variant(name="spider_test_unordered",
                                                         reward_overrides={"metric": "exec_match"}),
                              replace_existing=True)
    assert compute_score(unordered.name, answer("SELECT Name FROM singer ORDER BY Net_Worth_Millions ASC"),
                         gt, extra)["score"] == pytest.approx(1.1)
    # a gold query without a top-level ORDER BY: ordered == multiset comparison
    gt2 = {"target": ["SELECT Name FROM singer WHERE Singer_ID IN (SELECT Singer_ID FROM singer ORDER BY Birth_Year)"]}
    out = compute_score("spider", answer("SELECT Name FROM singer ORDER BY Name DESC"), gt2, extra)
    assert out["exec_match"] == out["exec_match_ordered"] == 1.0 and out["score"] == pytest.approx(1.1)
    assert has_top_level_order_by(gold) and not has_top_level_order_by(gt2["target"][0])
    assert not has_top_level_order_by("SELECT 'order by' FROM t -- ORDER BY x")


def test_several_gold_variants_match_any(rows):
    """A ground truth with several gold SQL variants: a prediction matching any one is a match
    (each variant runs through the searcher once, then comes from the cache)."""
    from deepretrieval.tasks.sql import clear_gold_cache
    extra = {"db_id": "singer", "split": "test"}
    gt = {"target": ["SELECT Name FROM singer WHERE Birth_Year < 1950",
                     "SELECT Name FROM singer ORDER BY Birth_Year LIMIT 2"]}
    first = "SELECT Name FROM singer WHERE Birth_Year < 1950"
    second = "SELECT Name FROM singer ORDER BY Birth_Year LIMIT 2"
    neither = "SELECT Name FROM singer"
    clear_gold_cache()
    for _ in range(2):  # second round: the gold results come from the cache
        a, b, c = (compute_score("spider", answer(q), gt, extra) for q in (first, second, neither))
        assert not (a["search_error"] or b["search_error"] or c["search_error"])
        assert a["score"] == b["score"] == pytest.approx(1.1) and c["score"] == 0.0
    # the variants really differ: with only the first, the second prediction is a mismatch
    only_first = compute_score("spider", answer(second), {"target": gt["target"][:1]}, extra)
    assert only_first["score"] == 0.0
    with pytest.raises(ValueError, match="non-empty strings"):
        from deepretrieval.tasks.sql import gold_sqls_of
        gold_sqls_of({"target": ["SELECT 1", ""]})


def test_value_normalisation_and_multisets():
    assert normalize_value(1.0) == normalize_value(1) == 1
    assert normalize_value(0.1 + 0.2) == normalize_value(0.3)
    assert normalize_value("1") != normalize_value(1)
    assert normalize_value(2.5) == 2.5 and normalize_value(None) is None
    assert exec_match([(1, "a"), (2.0, "b")], [(2, "b"), (1, "a")])
    assert not exec_match([(1,), (1,)], [(1,)]) and exec_match_set([(1,), (1,)], [(1,)])
    assert not exec_match([("a", 1)], [(1, "a")])  # columns are ordered
    assert exec_match_ordered([(1,), (2,)], [(1,), (2,)]) and not exec_match_ordered([(2,), (1,)], [(1,), (2,)])


HOSTILE = [
    "DROP TABLE flights",
    "DELETE FROM flights",
    "INSERT INTO airlines VALUES (99, 'x', 'y', 'z')",
    "UPDATE flights SET FlightNo = FlightNo + 1",
    "ATTACH DATABASE 'evil.db' AS evil",
    "DETACH DATABASE main",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = WAL",
    "PRAGMA query_only = OFF",
    "SELECT load_extension('/tmp/evil.so')",
    "VACUUM",
    "VACUUM INTO 'copy.db'",
    "CREATE TABLE t(x)",
    "CREATE TEMP TABLE t(x)",
    "BEGIN IMMEDIATE",
    "ANALYZE",
    "REINDEX",
    "SELECT 1; DROP TABLE flights",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c ORDER BY 1",
    "SELECT count(*) FROM flights a, flights b, flights c",
    "SELECT a.FlightNo FROM flights a, flights b, flights c ORDER BY random() LIMIT 1",
    "SELECT * FROM flights a, flights b, flights c",
    "SELECT zeroblob(2000000000)",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_sql_leaves_database_identical_and_ends_in_time(db_copy, sql):
    path, _ = db_copy
    before, files = file_sha256(path), sorted(os.listdir(path.parent))
    backend = SqliteBackend(path, timeout_s=LIMIT)
    started = time.monotonic()
    result = backend.search([sql], 1000)[0]
    elapsed = time.monotonic() - started
    assert elapsed < LIMIT + SLACK, (sql, elapsed)
    assert result.error is None  # the SQL's fault, never a search error
    assert result.rows is None or result.info["truncated"], (sql, result)
    assert result.rows is not None or result.info["error_kind"] in (
        "denied", "timeout", "multiple_statements", "runtime", "syntax", "too_large")
    assert file_sha256(path) == before
    assert sorted(os.listdir(path.parent)) == files  # no journal, WAL or copy written
    assert not Path("evil.db").exists() and not Path("copy.db").exists()


def test_hostile_sql_through_compute_score(db_copy, fast_task):
    path, index = db_copy
    before = file_sha256(path)
    gt = {"target": ["SELECT count(*) FROM flights"]}
    extra = {"db_id": "flight_2", "search_index": index, "split": "test"}
    for sql in HOSTILE:
        started = time.monotonic()
        out = compute_score(fast_task.name, answer(sql), gt, extra)
        assert time.monotonic() - started < LIMIT + SLACK, sql
        assert out["format_ok"] and not out["search_error"] and out["score"] == 0.0, (sql, out)
        assert out["exec_match"] == 0.0
    assert file_sha256(path) == before
    timed = compute_score(fast_task.name, answer(HOSTILE[-4]), gt, extra)
    assert timed["timeout"] == 1.0


def test_single_statement_only(db_copy):
    path, _ = db_copy
    assert split_statements("SELECT 1; -- done\n") == ["SELECT 1"]
    assert split_statements("SELECT ';' FROM t /* ; */") == ["SELECT ';' FROM t /* ; */"]
    assert len(split_statements("SELECT 1; SELECT 2")) == 2
    two = execute_readonly(path, "SELECT count(*) FROM flights; SELECT count(*) FROM airlines")
    assert two.rows is None and two.error_kind == "multiple_statements"
    one = execute_readonly(path, "SELECT count(*) FROM flights;")
    assert one.rows == [(1200,)]
    assert execute_readonly(path, "SELECT 1" + " " * 100_000).error_kind == "too_long"
    assert execute_readonly(path, "  -- nothing\n").error_kind == "empty"


def test_row_cap_and_truncation(db_copy, fast_task):
    path, index = db_copy
    ex = execute_readonly(path, "SELECT * FROM flights", max_rows=10)
    assert len(ex.rows) == 10 and ex.truncated
    ex = execute_readonly(path, "SELECT * FROM flights", max_rows=1200)
    assert len(ex.rows) == 1200 and not ex.truncated
    capped = register_task(fast_task.variant(name="spider_test_cap", options={**fast_task.options, "max_rows": 100}),
                           replace_existing=True)
    extra = {"db_id": "flight_2", "search_index": index}
    out = compute_score(capped.name, answer("SELECT * FROM flights"), {"target": ["SELECT count(*) FROM flights"]}, extra)
    assert out["truncated"] == 1.0 and out["exec_match"] == 0.0 and not out["search_error"]
    # a gold result over the cap cannot be scored: reported as a search error, not a silent 0
    out = compute_score(capped.name, answer("SELECT 1"), {"target": ["SELECT * FROM flights"]}, extra)
    assert out["search_error"]


def test_infrastructure_failures_are_search_errors(tmp_path):
    with pytest.raises(SearchError, match="does not exist"):
        SqliteBackend(tmp_path / "missing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SearchError):
        SqliteBackend(junk)
    # an index whose file disappears → search error in the reward
    path = tmp_path / "gone.sqlite"
    shutil.copyfile(BUNDLED_DIR / "database" / "singer" / "singer.sqlite", path)
    write_sqlite_index(tmp_path / "gone_index", path, "gone")
    register_index("test/gone", tmp_path / "gone_index")
    backend = open_index("test/gone")
    path.unlink()
    with pytest.raises(SearchError):
        backend.search(["SELECT 1"], 10)
    gt = {"target": ["SELECT count(*) FROM singer"]}
    out = compute_score("spider", answer("SELECT count(*) FROM singer"), gt,
                        {"db_id": "singer", "search_index": "test/gone"})
    assert out["search_error"] and out["score"] == 0.0
    # no db_id at all
    assert compute_score("spider", answer("SELECT 1"), gt, {})["search_error"]
    # a gold query that fails is a data problem
    assert compute_score("spider", answer("SELECT 1"), {"target": ["SELECT nope FROM singer"]},
                         {"db_id": "singer"})["search_error"]


def test_backend_contract_and_index_dirs(tmp_path):
    backend = open_index("spider/singer")
    assert backend.info()["type"] == "sqlite" and backend.tables() == ["singer", "song"]
    res = backend.search(["SELECT Name FROM singer ORDER BY Singer_ID LIMIT 2", "SELECT nope"], 10,
                         return_text=True)
    assert res[0].rows == [["Liliane Bettencourt"], ["Christy Walton"]]
    assert res[0].to_hits(False) == [{"id": "0", "contents": '["Liliane Bettencourt"]'},
                                     {"id": "1", "contents": '["Christy Walton"]'}]
    assert res[1].rows is None and res[1].error is None and "no such column" in res[1].info["sql_error"]
    with pytest.raises(ValueError):
        backend.search(["SELECT 1"], 10, options={"maxdate": "2020"})
    write_sqlite_index(tmp_path / "idx", BUNDLED_DIR / "database" / "singer" / "singer.sqlite", "x")
    assert open_index(str(tmp_path / "idx")).search(["SELECT count(*) FROM song"], 5)[0].rows == [[8]]


def test_async_and_batched_scoring_agree(rows):
    sample = rows[:20]
    items = [(r["data_source"], answer(r["reward_model"]["ground_truth"]["target"][0]),
              r["reward_model"]["ground_truth"], r["extra_info"]) for r in sample]
    sync = score_batch(items)
    assert all(m["exec_match"] == 1.0 for m in sync)
    one = asyncio.run(compute_score_async(*items[0]))
    assert one == sync[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(completion=st.one_of(st.text(max_size=200),
                            st.text(max_size=120).map(answer),
                            st.sampled_from(HOSTILE).map(answer),
                            st.text(alphabet="SELECT*FROMWHERE ;()'\"-/flights,", max_size=80).map(answer)))
def test_compute_score_never_raises(fast_task, completion):
    gt = {"target": ["SELECT count(*) FROM airlines"]}
    out = compute_score(fast_task.name, completion, gt, {"db_id": "flight_2", "split": "train"})
    assert out["score"] in (-2.0, 0.0, pytest.approx(1.1))
    assert set(out) >= {"score", "format_ok", "search_error", "exec_match", "exec_match_ordered"}
    assert not out["search_error"]
