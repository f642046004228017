"""`deepretrieval prepare spider|bird` and `baseline --task spider` on the bundled Spider subset."""
from __future__ import annotations

import json
import shutil

import pytest

from deepretrieval.cli import main
from deepretrieval.catalog import read_rows
from deepretrieval.rewards import compute_score
from deepretrieval.search.sql import BUNDLED_DIR


def _answer(sql):
    return "<think>t</think><answer>" + json.dumps({"sql": sql}) + "</answer>"


def test_prepare_bundled(tmp_path, capsys):
    assert main(["prepare", "spider", "--out", str(tmp_path)]) == 0
    rows = read_rows(tmp_path / "test.parquet")
    assert len(rows) == 110 and not (tmp_path / "train.parquet").exists()
    assert {r["extra_info"]["db_id"] for r in rows} == {"flight_2", "singer"}
    assert "110 rows" in capsys.readouterr().out
    assert main(["prepare", "spider", "--out", str(tmp_path / "nr"), "--task", "spider_no_reason"]) == 0
    row = read_rows(tmp_path / "nr" / "test.parquet")[0]
    assert row["data_source"] == "spider_no_reason" and row["extra_info"]["prefill"] == '<answer>{"sql": "'


@pytest.fixture()
def spider_dir(tmp_path, monkeypatch):
    """A Spider-layout folder (copy of the bundled one) plus one question on a missing database;
    a private index root so the registered databases do not leak into other tests."""
    monkeypatch.setenv("DEEPRETRIEVAL_INDEX_DIR", str(tmp_path / "indexes"))
    root = tmp_path / "spider"
    shutil.copytree(BUNDLED_DIR, root)
    dev = json.loads((root / "dev.json").read_text())
    dev.append({"db_id": "concert_singer", "question": "How many singers do we have?",
                "query": "SELECT count(*) FROM singer"})
    (root / "dev.json").write_text(json.dumps(dev))
    (root / "train_spider.json").write_text(json.dumps(dev[:7]))
    return root


def test_prepare_spider_dir(spider_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "spider", "--spider-dir", str(spider_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 questions" in printed and "concert_singer" in printed
    test_rows, train_rows = read_rows(out / "test.parquet"), read_rows(out / "train.parquet")
    assert len(test_rows) == 110 and len(train_rows) == 7
    assert train_rows[0]["extra_info"]["split"] == "train"
    # the databases were registered as indexes spider/<db_id> (pointing at this folder)
    meta = json.loads((tmp_path / "indexes" / "spider" / "flight_2" / "meta.json").read_text())
    assert meta["type"] == "sqlite" and meta["path"].startswith(str(spider_dir))
    row = test_rows[3]
    gt = row["reward_model"]["ground_truth"]
    assert compute_score("spider", _answer(gt["target"][0]), gt, row["extra_info"])["exec_match"] == 1.0


def test_prepare_errors(spider_dir, tmp_path, capsys):
    (spider_dir / "dev.json").write_text("[{not json")
    assert main(["prepare", "spider", "--spider-dir", str(spider_dir), "--out", str(tmp_path / "o")]) == 2
    assert "dev.json is not valid JSON" in capsys.readouterr().err
    (spider_dir / "dev.json").write_text(json.dumps([{"db_id": "singer", "question": "q"}]))
    assert main(["prepare", "spider", "--spider-dir", str(spider_dir), "--out", str(tmp_path / "o")]) == 2
    assert "example 0 has no 'query' string" in capsys.readouterr().err
    (spider_dir / "dev.json").write_text(json.dumps([{"db_id": "nope", "question": "q", "query": "SELECT 1"}]))
    assert main(["prepare", "spider", "--spider-dir", str(spider_dir), "--out", str(tmp_path / "o")]) == 2
    assert "error: test: none of the 1 questions" in capsys.readouterr().err
    assert main(["prepare", "spider", "--spider-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no database folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_prepare_bird_layout(tmp_path, monkeypatch):
    """BIRD's layout (dev.json with SQL/evidence/question_id + dev_databases/) built from the bundled
    Spider databases and questions."""
    monkeypatch.setenv("DEEPRETRIEVAL_INDEX_DIR", str(tmp_path / "indexes"))
    root = tmp_path / "bird"
    shutil.copytree(BUNDLED_DIR / "database", root / "dev_databases")
    spider = json.loads((BUNDLED_DIR / "dev.json").read_text())
    dev = [{"question_id": i, "db_id": ex["db_id"], "question": ex["question"],
            "evidence": "flights are in the flights table" if i == 0 else "", "SQL": ex["query"],
            "difficulty": "simple"} for i, ex in enumerate(spider[:12])]
    (root / "dev.json").write_text(json.dumps(dev))
    assert main(["prepare", "bird", "--bird-dir", str(root), "--out", str(tmp_path / "out")]) == 0
    rows = read_rows(tmp_path / "out" / "test.parquet")
    assert len(rows) == 12 and rows[0]["data_source"] == "bird"
    assert rows[0]["prompt"][1]["content"].endswith("Hint: flights are in the flights table")
    assert "Hint" not in rows[1]["prompt"][1]["content"]
    for row in rows:
        gt = row["reward_model"]["ground_truth"]
        out = compute_score("bird", _answer(gt["target"][0]), gt, row["extra_info"])
        assert out["score"] == pytest.approx(1.1), out


def test_baseline_scores_gold_sql(capsys):
    assert main(["baseline", "--task", "spider", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 110 and summary["query"] == "gold SQL (upper bound)"
    assert summary["exec_match"] == 1.0 and summary["search_error_rate"] == 0.0
    assert summary["score"] == pytest.approx(1.1)


def test_sql_index_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPRETRIEVAL_INDEX_DIR", str(tmp_path / "indexes"))
    db = BUNDLED_DIR / "database" / "singer" / "singer.sqlite"
    assert main(["sql-index", "--db", str(db), "--name", "mine/singer", "--timeout", "2"]) == 0
    assert "2 tables" in capsys.readouterr().out
    assert main(["search", "--index", "mine/singer", "-k", "3", "--json",
                 "SELECT Name FROM singer WHERE Citizenship = 'Chile'"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits == [[{"id": "0", "score": 1.0}]]
    assert main(["sql-index", "--db", str(tmp_path / "none.sqlite"), "--name", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
