"""Local PubMed / CT.gov mirrors: fixtures in, exact records out; interrupted ingestion resumes
without duplicates or loss; the pubmed / ctgov tasks search the mirror."""
from __future__ import annotations

import gzip
import json
import re
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


@pytest.mark.slow
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


# ---- malformed input (issue 29 item 8): the 33 kinds of the probes, generated ----------------------

def _article(pmid="777", year="2001", month="Jan", day="15", title="Good title", extra="",
             citation=True, article=True):
    date = "".join(f"<{k}>{v}</{k}>" for k, v in (("Year", year), ("Month", month), ("Day", day)) if v is not None)
    art = (f"<Article><Journal><JournalIssue><PubDate>{date}</PubDate></JournalIssue></Journal>"
           f"<ArticleTitle>{title}</ArticleTitle></Article>") if article else ""
    pm = f"<PMID>{pmid}</PMID>" if pmid is not None else ""
    return f"<PubmedArticle><MedlineCitation>{pm}{art}{extra}</MedlineCitation></PubmedArticle>" \
        if citation else f"<PubmedArticle>{pm}</PubmedArticle>"


def _set(*articles):
    return "<PubmedArticleSet>" + "".join(articles) + "</PubmedArticleSet>"


GOOD_PUBMED = _set(_article("100", title="aspirin heart"), _article("101", title="statin stroke"))
#: name → (file content (str: gzipped text, bytes: raw gzip file), kind): ``record`` — the bad
#: record is skipped and named, the file's other record kept; ``file`` — the file is skipped;
#: ``kept`` — accepted as it is (the value shown)
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)) + "]>")
PUBMED_CASES = {
    "no_medlinecitation": (_set(_article("1", citation=False), _article("2")), "record"),
    "no_pmid": (_set(_article(None), _article("2")), "record"),
    "no_article": (_set(_article("1", article=False), _article("2")), "record"),
    "empty_delete_pmid": (_set(_article("2")) [:-len("</PubmedArticleSet>")]
                          + "<DeleteCitation><PMID></PMID></DeleteCitation></PubmedArticleSet>", "record"),
    "not_xml": ("this is not XML at all", "file"),
    "truncated_xml": (_set(_article("1"), _article("2"))[:-40], "file"),
    "billion_laughs": (LAUGHS + _set(_article("1", title="&lol9;")), "file"),
    "external_entity": ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY ext SYSTEM "file:///etc/passwd">]>'
                        + _set(_article("1", title="&ext;")), "file"),
    "nul_char_ref": (_set(_article("1", title="a&#0;b")), "file"),
    "year_19xx": (_set(_article("1", year="19xx"), _article("2")), "record"),
    "year_20011": (_set(_article("1", year="20011"), _article("2")), "record"),
    "day_32": (_set(_article("1", day="32"), _article("2")), "record"),
    "namespaced": ('<x:PubmedArticleSet xmlns:x="urn:x"><x:PubmedArticle/></x:PubmedArticleSet>', "file"),
    "html": ("<html><body><p>Service unavailable</p></body></html>", "file"),
    "truncated_gzip": (gzip.compress(GOOD_PUBMED.encode())[:-30], "file"),
    "empty_pmid": (_set(_article(""), _article("2")), "record"),
    "blank_pmid": (_set(_article("   "), _article("2")), "record"),
    "month_spring": (_set(_article("1", month="Spring", day=None), _article("2")), "kept"),
    "odd_medlinedate": (_set(_article("1", year=None, month=None, day=None,
                                      extra="").replace("<PubDate></PubDate>",
                                                        "<PubDate><MedlineDate>Winter 1998-99</MedlineDate></PubDate>"),
                             _article("2")), "kept"),
    "title_10mb": (_set(_article("1", title="x " * 5_000_000), _article("2")), "kept"),
}


def _study(nct="NCT00000001", title="A trial", date="2020-03", **over):
    ident = {"nctId": nct, "briefTitle": title}
    study = {"protocolSection": {"identificationModule": ident,
                                 "descriptionModule": {"briefSummary": "aspirin in adults"},
                                 "conditionsModule": {"conditions": ["Stroke"]},
                                 "statusModule": {"startDateStruct": {"date": date}}},
             "derivedSection": {"conditionBrowseModule": {"meshes": [{"term": "Stroke"}]}}}
    for path, value in over.items():
        *keys, last = path.split("__")
        node = study
        for k in keys:
            node = node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return study


def _page(*studies):
    return json.dumps({"studies": list(studies)})


GOOD_STUDY = _study("NCT09999999")
CTGOV_CASES = {
    "brief_title_number": (_page(_study(title=5), GOOD_STUDY), "record"),
    "studies_string": (json.dumps({"studies": "NCT1"}), "file"),
    "list_of_strings": (json.dumps(["NCT1", "NCT2"]), "records_all"),
    "null": ("null", "file"),
    "brief_summary_object": (_page(_study(protocolSection__descriptionModule__briefSummary={"a": 1}),
                                   GOOD_STUDY), "record"),
    "no_protocol_section": (_page(_study(protocolSection=KeyError), GOOD_STUDY), "record"),
    "no_nct_id": (_page(_study(protocolSection__identificationModule__nctId=KeyError), GOOD_STUDY), "record"),
    "mesh_without_term": (_page(_study(derivedSection__conditionBrowseModule__meshes=[{"x": 1}]),
                                GOOD_STUDY), "record"),
    "date_month_13": (_page(_study(date="2020-13"), GOOD_STUDY), "record"),
    "date_words": (_page(_study(date="March 2020"), GOOD_STUDY), "record"),
    "not_utf8": (_page(GOOD_STUDY).encode("utf-8").replace(b"aspirin", b"asp\xffrin"), "file"),
    "conditions_string": (_page(_study(protocolSection__conditionsModule__conditions="Breast"), GOOD_STUDY), "record"),
    "nct_id_number": (_page(_study(nct=12345), GOOD_STUDY), "record"),
}


def _write_case(folder: Path, source: str, content) -> Path:
    folder.mkdir(parents=True)
    if source == "pubmed":
        (folder / "pubmed26n0001.xml.gz").write_bytes(gzip.compress(GOOD_PUBMED.encode()))
        bad = folder / "pubmed26n0002.xml.gz"
        bad.write_bytes(content if isinstance(content, bytes) else gzip.compress(content.encode()))
    else:
        (folder / "a_good.json").write_text(json.dumps(_study("NCT08888888")))
        bad = folder / "b_bad.json"
        if isinstance(content, bytes):
            bad.write_bytes(content)
        else:
            bad.write_text(content)
    return bad


@pytest.mark.parametrize("source,case", [("pubmed", c) for c in PUBMED_CASES] + [("ctgov", c) for c in CTGOV_CASES])
def test_malformed_input_is_skipped_counted_and_named(source, case, tmp_path):
    """Each of the 33 malformed inputs of the probes (14 tracebacks, 12 unnamed `error:` lines, 3
    silently wrong records, a bad date that blocked every rerun): the good records are indexed,
    the bad record or file is skipped and named, nothing wrong is stored, a rerun succeeds the
    same way, and --strict stops with the file (and record) named."""
    content, kind = (PUBMED_CASES if source == "pubmed" else CTGOV_CASES)[case]
    src = tmp_path / "src"
    bad = _write_case(src, source, content)
    good_ids = {"100", "101"} if source == "pubmed" else {"NCT08888888"}
    for attempt in range(2):  # the rerun is never blocked by what the first run stored
        stats = mirror.ingest(source, src, tmp_path / "work", tmp_path / "index", progress=None)
        index = BooleanIndex.load(tmp_path / "index")
        ids = set(index.doc_ids)
        assert good_ids <= ids and "" not in ids and all(i.strip() == i and i for i in ids), ids
        for rec in index.records:
            assert all(isinstance(m, str) and len(m) > 1 for m in rec["mh"]), rec["mh"]  # no split letters
        named = [m for m in stats.malformed if m.file == bad.name]
        if kind == "kept":
            assert not stats.malformed and ids == good_ids | {"1", "2"}
        elif kind == "file":  # no part stored: every run tries the file again
            assert [m.record for m in named] == ["file"], stats.malformed
            assert ids == good_ids
        else:
            if attempt == 0:
                assert named and all(m.record != "file" and m.reason for m in named), stats.malformed
                assert len(named) == (2 if kind == "records_all" else 1)
                assert str(named[0]).startswith(bad.name)
            assert ids == good_ids | (set() if kind == "records_all" else
                                      {"2"} if source == "pubmed" else {"NCT09999999"})
    if kind != "kept":
        with pytest.raises(mirror.MirrorError, match=re.escape(bad.name)):
            mirror.ingest(source, src, tmp_path / "work2", tmp_path / "index2", progress=None, strict=True)


@pytest.mark.slow
def test_cli_malformed_input_one_line_and_strict(tmp_path):
    import os
    env = dict(os.environ, DEEPRETRIEVAL_INDEX_DIR=str(tmp_path / "indexes"))
    src = tmp_path / "src"
    _write_case(src, "pubmed", PUBMED_CASES["day_32"][0])
    run = lambda *a: subprocess.run([sys.executable, "-m", "deepretrieval.cli", "mirror", "pubmed",
                                     "--from", str(src), *a], capture_output=True, text=True, env=env, timeout=300)
    out = run()
    assert out.returncode == 0, out.stderr
    assert "skipped pubmed26n0002.xml.gz: PubmedArticle 1 (1): bad day" in out.stdout
    assert "skipped 1 malformed record(s)" in out.stdout
    strict = run("--strict", "--out", str(tmp_path / "strict_index"))
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert strict.stderr.strip().splitlines() == [
        "error: pubmed26n0002.xml.gz: PubmedArticle 1 (1): bad day in date '2001-01-32' (--strict)"]
