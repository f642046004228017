"""Local PubMed / CT.gov mirrors: fixtures in, exact records out; interrupted ingestion resumes
without duplicates or loss; the pubmed / ctgov tasks search the mirror."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepretrieval.data import mirror
from deepretrieval.search.boolean import BooleanIndex

DATA = Path(__file__).parent / "data" / "mirror"


def test_pubmed_records_exact():
    recs = list(mirror.parse_pubmed_xml(DATA / "pubmed" / "pubmed26n0001.xml.gz"))
    assert [r["_id"] for r in recs] == ["1234567", "42286391", "42286351"]
    assert recs[0] == {   # as in the recorded efetch response (no abstract in this record)
        "_id": "1234567",
        "title": "The effect of castration and peroral estrogen therapy on some psychological functions.",
        "text": "", "date": "1975", "pub_types": ["Journal Article"],
        "mesh": ["Adult", "Anxiety", "Castration", "Emotions", "Estradiol", "Female", "Humans",
                 "Hysterectomy", "Memory", "Menopause", "Middle Aged", "Psychological Tests"]}
    new = recs[1]
    assert new["title"].startswith("Early timepoint 99mTc-DPD whole body scintigraphy")  # <sup> text inline
    assert new["text"].startswith("Cardiac transthyretin amyloidosis (ATTR-CM) is a progressive")
    assert new["date"] == "2026-06-12" and new["mesh"] == []
    second = list(mirror.parse_pubmed_xml(DATA / "pubmed" / "pubmed26n0002.xml.gz"))
    assert second[-1] == {"_id": "42286351", "deleted": True}
    assert second[-2]["_id"] == "42286391" and second[-2]["title"] == "Revised title of record 42286391."


def _ingest(tmp_path, source="pubmed", **kw):
    return mirror.ingest(source, DATA / source, tmp_path / "work", tmp_path / "index",
                         progress=None, **kw)


def _expected_pubmed():
    docs = {}
    for f in sorted((DATA / "pubmed").glob("*.xml.gz")):
        for r in mirror.parse_pubmed_xml(f):
            docs.pop(r["_id"], None)
            if not r.get("deleted"):
                docs[r["_id"]] = r
    return docs


def test_pubmed_mirror_index(tmp_path):
    stats = _ingest(tmp_path)
    assert (stats.files, stats.parsed, stats.skipped, stats.deleted) == (2, 2, 0, 1)
    index = BooleanIndex.load(tmp_path / "index")
    expected = _expected_pubmed()
    assert len(index) == stats.records == 5 == len(expected)
    assert "42286351" not in index.doc_ids                       # deleted by the update file
    assert sorted(index.doc_ids) == sorted(expected)
    by_id = dict(zip(index.doc_ids, index.records))
    assert by_id["42286391"]["ti"] == ["Revised title of record 42286391."]  # later file wins
    assert by_id["1234567"]["mh"] == expected["1234567"]["mesh"]
    assert index.search(["castration[mh] AND estradiol[mh]"], 10)[0].ids == ["1234567"]
    assert index.search(["1975[dp]"], 10)[0].ids == ["1234567"]
    assert "1234567" not in index.search(["journal article[pt]"], 10, options={"mindate": "2000"})[0].ids
    assert index.search(["amyloidosis[tiab]"], 10, options={"maxdate": "2025"})[0].ids == []


def test_interrupted_ingestion_resumes_without_duplicates_or_loss(tmp_path, monkeypatch):
    real = mirror._write_part
    calls = []

    def crash_on_second(path, records):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while writing")
        real(path, records)

    monkeypatch.setattr(mirror, "_write_part", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _ingest(tmp_path)
    parts = sorted(p.name for p in (tmp_path / "work" / "parts").iterdir())
    assert parts == ["pubmed26n0001.xml.gz.jsonl.gz"]             # nothing half-written
    assert not (tmp_path / "index").exists()
    monkeypatch.setattr(mirror, "_write_part", real)
    stats = _ingest(tmp_path)
    assert (stats.parsed, stats.skipped) == (1, 1) and stats.parsed_files == ["pubmed26n0002.xml.gz"]
    index = BooleanIndex.load(tmp_path / "index")
    assert len(index.doc_ids) == len(set(index.doc_ids)) == 5
    assert sorted(index.doc_ids) == sorted(_expected_pubmed())
    again = _ingest(tmp_path)                                    # nothing new: same index
    assert (again.parsed, again.skipped, again.records) == (0, 2, 5)


def test_ctgov_mirror(tmp_path):
    stats = _ingest(tmp_path, "ctgov")
    index = BooleanIndex.load(tmp_path / "index")
    assert sorted(index.doc_ids) == ["NCT01958021", "NCT02278120", "NCT02422615"]
    assert stats.records == 3
    by_id = dict(zip(index.doc_ids, index.records))
    page = json.loads((DATA / "ctgov" / "page_0001.json").read_text())["studies"]
    last = [s for s in page if s["protocolSection"]["identificationModule"]["nctId"] == "NCT02422615"][-1]
    assert by_id["NCT02422615"]["ti"] == [last["protocolSection"]["identificationModule"]["briefTitle"]]
    assert by_id["NCT02422615"]["mh"] == ["Breast Cancer"]
    hits = index.search(["ribociclib AND (letrozole OR fulvestrant)"], 10)[0]
    assert set(hits.ids) <= set(index.doc_ids) and "NCT01958021" in hits.ids


def test_cli_mirror_and_pubmed_task_on_the_mirror(tmp_path):
    import os
    env = dict(os.environ, DEEPRETRIEVAL_INDEX_DIR=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "deepretrieval.cli", *a],
                                    capture_output=True, text=True, env=env, timeout=300)
    out = run("mirror", "pubmed", "--from", str(DATA / "pubmed"))
    assert out.returncode == 0, out.stderr
    assert "[1/2] pubmed26n0001.xml.gz: 3 records" in out.stdout
    assert (tmp_path / "pubmed_local" / "meta.json").exists()
    again = run("mirror", "pubmed", "--from", str(DATA / "pubmed"))
    assert "0 parsed now, 2 already ingested" in again.stdout
    bad = run("mirror", "pubmed", "--from", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "not a folder" in bad.stderr and "Traceback" not in bad.stderr
    # the pubmed task (date cap, depth 3000, tiers) runs against the mirror
    base = run("baseline", "--task", "pubmed", "--split", "test", "--index", "pubmed_local", "--json")
    assert base.returncode == 0, base.stderr
    summary = json.loads(base.stdout)
    assert summary["n"] == 25 and summary["search_error_rate"] == 0.0
    # training rows that search the mirror
    prep = run("prepare", "pubmed", "--out", str(tmp_path / "rows"), "--index", "pubmed_local")
    assert prep.returncode == 0, prep.stderr
    from deepretrieval.catalog import read_rows
    rows = read_rows(tmp_path / "rows" / "train.parquet")
    assert rows and all(r["extra_info"]["search_index"] == "pubmed_local" for r in rows)


def test_pubmed_task_reward_on_the_mirror(tmp_path):
    from deepretrieval.rewards import compute_score
    from deepretrieval.catalog import register_index
    _ingest(tmp_path)
    register_index("pubmed_mirror_test", tmp_path / "index")
    gt = {"target": ["1234567", "42286391"]}
    answer = '<think>x</think>\n<answer>{"query": "estradiol[mh] OR amyloidosis"}</answer>'
    out = compute_score("pubmed", answer, gt, {"split": "test", "search_index": "pubmed_mirror_test"})
    assert out["recall"] == 1.0 and out["score"] == 6
    capped = compute_score("pubmed", answer, gt, {"split": "test", "pub_date": "2020-01-01",
                                                  "search_index": "pubmed_mirror_test"})
    assert capped["recall"] == 0.5 and capped["score"] == 1 + 4   # 2026 record is after the cap
    bad = compute_score("pubmed", answer.replace("OR amyloidosis", "OR (amyloidosis"), gt,
                        {"split": "test", "search_index": "pubmed_mirror_test"})
    assert not bad["search_error"] and bad["recall"] == 0.0 and bad["score"] == 1 - 3.5
