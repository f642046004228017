"""Bring your own data (``prepare beir | sql | pico``) on real collections, plus malformed input.

BEIR: a collection built here from the bundled TrialMind-SLR reviews (real text, not SciFact): the
corpus is the included trials that have a title (PMID, title), the queries are the 25 review titles, the qrels say
which trials each review included. SQL: the bundled Spider ``flight_2`` database with its real dev
questions. PICO: the TrialMind-SLR reviews' P/I/C/O and included PMIDs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deepretrieval.cli import main
from deepretrieval.data import byo
from deepretrieval.core.beir_files import FormatError
from deepretrieval.catalog import read_rows
from deepretrieval.rewards import compute_score
from deepretrieval.catalog import local_searcher, open_index

BUNDLED = Path(__file__).resolve().parent.parent / "deepretrieval" / "bundled"
REVIEWS = [json.loads(line) for line in (BUNDLED / "trialmind_slr" / "reviews.jsonl").read_text().splitlines()
           if line.strip()]


def _docs() -> dict[str, str]:
    docs = {}
    for review in REVIEWS:
        for trial in review["trials"]:
            if trial["title"].strip():  # a few included trials have no title in the source
                docs.setdefault(trial["pmid"], trial["title"])
    return docs


DOCS = _docs()


def write_collection(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    docs = DOCS
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": pmid, "title": "", "text": title}) + "\n" for pmid, title in docs.items()))
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": r["pmid"], "text": r["title"]}) + "\n" for r in REVIEWS))
    for split, reviews in (("train", REVIEWS[:18]), ("test", REVIEWS[18:])):
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [f"{r['pmid']}\t{t['pmid']}\t1" for r in reviews for t in r["trials"] if t["pmid"] in docs]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
            "train": folder / "train.tsv", "test": folder / "test.tsv"}


def beir_args(files, name, out, *extra):
    return ["prepare", "beir", "--corpus", str(files["corpus"]), "--queries", str(files["queries"]),
            "--qrels", f"train={files['train']}", f"test={files['test']}", "--name", name,
            "--out", str(out), *extra]


def answer(query):
    return f"<think>use the review topic</think><answer>{json.dumps({'query': query})}</answer>"


@pytest.fixture(scope="module")
def trialmind(tmp_path_factory, _index_dir):
    tmp = tmp_path_factory.mktemp("byo")
    files = write_collection(tmp / "src")
    out = tmp / "rows"
    assert main(beir_args(files, "trialmind_byo", out)) == 0
    return files, out


def test_prepare_beir_builds_index_and_rows(trialmind, _index_dir):
    files, out = trialmind
    index = open_index("trialmind_byo")
    assert len(index) == len(DOCS) > 600
    assert (_index_dir / "trialmind_byo" / "meta.json").exists()
    train, test = read_rows(out / "train.parquet"), read_rows(out / "test.parquet")
    with_docs = [any(t["pmid"] in DOCS for t in r["trials"]) for r in REVIEWS]
    assert len(train) == sum(with_docs[:18]) >= 15 and len(test) == sum(with_docs[18:]) == 7
    row = test[0]
    review = REVIEWS[18]
    assert row["data_source"] == "trialmind_byo" and row["ability"] == "beir"
    assert row["extra_info"]["query"] == review["title"] and row["extra_info"]["split"] == "test"
    assert row["reward_model"]["ground_truth"]["target"] == list(dict.fromkeys(
        t["pmid"] for t in review["trials"] if t["pmid"] in DOCS))
    assert review["title"] in row["prompt"][-1]["content"]
    assert not list(out.glob(".*")) and not list(_index_dir.glob(".trialmind_byo*"))  # no leftovers


def test_byo_rows_score_through_compute_score(trialmind):
    files, out = trialmind
    row = read_rows(out / "test.parquet")[0]
    gt = row["reward_model"]["ground_truth"]
    title = next(t["title"] for t in REVIEWS[18]["trials"] if t["pmid"] in DOCS)
    got = compute_score(row["data_source"], answer(title), gt, row["extra_info"], searcher=local_searcher())
    ranked = open_index("trialmind_byo").search([title], 10)[0].ids
    relevant = set(gt["target"])
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked) if d in relevant)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    assert ranked[0] in relevant                              # the trial's own title finds it
    assert got["ndcg"] == pytest.approx(dcg / idcg) and got["score"] == pytest.approx(0.1 + dcg / idcg)
    assert compute_score(row["data_source"], "bad", gt, row["extra_info"])["score"] == -2.0
    # the answer-only variant name resolves too
    no_reason = compute_score("trialmind_byo_no_reason", f"<answer>{json.dumps({'query': title})}</answer>",
                              gt, row["extra_info"], searcher=local_searcher())
    assert no_reason["score"] == pytest.approx(got["score"])
    # the original-query baseline over real reviews retrieves something relevant
    assert main(["baseline", "--task", "trialmind_byo", "--rows", str(out / "test.parquet"), "--json"]) == 0


def test_prepare_beir_dense(tmp_path, _index_dir):
    pytest.importorskip("sentence_transformers")
    files = write_collection(tmp_path / "src")
    out = tmp_path / "rows"
    assert main(beir_args(files, "trialmind_byo2", out, "--dense", "all-MiniLM-L6-v2")) == 0
    dense = open_index("trialmind_byo2_dense")
    assert len(dense) == len(DOCS)
    rows = read_rows(out / "dense" / "test.parquet")
    assert rows[0]["data_source"] == "trialmind_byo2_dense"
    title = next(t["title"] for t in REVIEWS[18]["trials"] if t["pmid"] in DOCS)
    got = compute_score(rows[0]["data_source"], answer(title), rows[0]["reward_model"]["ground_truth"],
                        rows[0]["extra_info"], searcher=local_searcher())
    assert got["format_ok"] and not got["search_error"] and got["ndcg"] > 0


# --- malformed input: file:line, what was expected; nothing written ---------------------------

def _corrupt(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("target,lineno,text,message", [
    ("corpus", 3, '{"_id": "x", "text": "unterminated', r"corpus.jsonl:3: invalid JSON"),
    ("corpus", 5, '{"title": "no id", "text": "t"}', r"corpus.jsonl:5: missing field\(s\) \['_id'\]"),
    ("corpus", 2, '{"_id": "30197259b", "text": ""}', r"corpus.jsonl:2: expected a string 'text'"),
    ("queries", 4, '{"_id": "q4"}', r"queries.jsonl:4: missing field\(s\) \['text'\]"),
    ("test", 3, "32306958\t30539281", r"test.tsv:3: expected 3 tab-separated columns"),
    ("test", 2, "32306958\t30539281\tyes", r"test.tsv:2: score 'yes' is not a number"),
    ("train", 4, "32306958\t99999999\t1", r"train.tsv:4: corpus-id '99999999' is not in the corpus"),
    ("test", 2, "00000000\t30539281\t1", r"test.tsv:2: query-id '00000000' is not in the queries"),
])
def test_malformed_beir_input(tmp_path, _index_dir, capsys, target, lineno, text, message):
    files = write_collection(tmp_path / "src")
    _corrupt(files[target], lineno, text)
    out = tmp_path / "rows"
    with pytest.raises(FormatError, match=message):
        byo.prepare_beir(corpus=files["corpus"], queries=files["queries"],
                         qrels={"train": files["train"], "test": files["test"]}, name="broken",
                         out=out, show_progress=False)
    assert main(beir_args(files, "broken", out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists() and not (_index_dir / "broken").exists()


def test_missing_files_and_bad_arguments(tmp_path, capsys):
    files = write_collection(tmp_path / "src")
    files["corpus"] = tmp_path / "nope.jsonl"
    assert main(beir_args(files, "x", tmp_path / "rows")) == 2
    assert "corpus file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="SPLIT=PATH"):
        byo.parse_qrels_args(["=a.tsv"])
    with pytest.raises(ValueError, match="given twice"):
        byo.parse_qrels_args(["a.tsv", "test=b.tsv"])


def test_failure_late_leaves_nothing_half_written(tmp_path, _index_dir, monkeypatch):
    """The index is saved and the train rows written, then writing the test rows fails: the staged
    index and rows are removed and nothing appears under the final names."""
    files = write_collection(tmp_path / "src")
    out = tmp_path / "rows"
    real = byo.write_parquet
    calls = []

    def failing(rows, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(rows, path)

    monkeypatch.setattr(byo, "write_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        byo.prepare_beir(corpus=files["corpus"], queries=files["queries"],
                         qrels={"train": files["train"], "test": files["test"]}, name="halfway",
                         out=out, show_progress=False)
    assert len(calls) == 2
    assert not (_index_dir / "halfway").exists()
    assert not list(_index_dir.glob(".halfway*"))
    assert not out.exists() or not list(out.iterdir())


# --- SQL ---------------------------------------------------------------------------------------

def _flight_questions():
    dev = json.loads((BUNDLED / "spider" / "dev.json").read_text())
    return [{"question": x["question"], "sql": x["query"]} for x in dev if x["db_id"] == "flight_2"]


def test_prepare_sql(tmp_path):
    db = BUNDLED / "spider" / "database" / "flight_2" / "flight_2.sqlite"
    questions = _flight_questions()
    qfile = tmp_path / "questions.json"
    qfile.write_text(json.dumps(questions))
    out = tmp_path / "rows"
    assert main(["prepare", "sql", "--db", str(db), "--questions", str(qfile), "--name", "flights_byo",
                 "--out", str(out)]) == 0
    rows = read_rows(out / "train.parquet") + read_rows(out / "test.parquet")
    assert len(rows) == len(questions) == 80
    test = read_rows(out / "test.parquet")
    assert 5 <= len(test) <= 30  # ~20% by a stable hash of the question
    row = test[0]
    assert row["data_source"] == "spider" and row["extra_info"]["db_id"] == "flights_byo"
    assert "CREATE TABLE" in row["prompt"][-1]["content"]
    gold = row["reward_model"]["ground_truth"]["target"][0]
    sol = f"<think>x</think><answer>{json.dumps({'sql': gold})}</answer>"
    assert compute_score("spider", sol, row["reward_model"]["ground_truth"], row["extra_info"],
                         searcher=local_searcher())["score"] == pytest.approx(1.1)


@pytest.mark.parametrize("items,message", [
    ([{"question": "How many flights?"}], r"questions.json item 0: missing 'sql'"),
    ([{"question": "q", "sql": "SELECT count(*) FROM flights"}, {"sql": "SELECT 1"}],
     r"questions.json item 1: missing 'question'"),
    ([{"question": "q", "sql": "SELEC nonsense FROM"}], r"questions.json item 0: the gold SQL fails"),
    ([{"question": "q", "sql": "SELECT * FROM no_such_table"}], r"item 0: the gold SQL fails.*no such table"),
])
def test_malformed_sql_input(tmp_path, items, message, _index_dir):
    db = BUNDLED / "spider" / "database" / "flight_2" / "flight_2.sqlite"
    qfile = tmp_path / "questions.json"
    qfile.write_text(json.dumps(items))
    with pytest.raises(FormatError, match=message):
        byo.prepare_sql(db=str(db), questions=str(qfile), name="bad_sql", out=str(tmp_path / "rows"))
    assert not (tmp_path / "rows").exists() and not (_index_dir / "spider" / "bad_sql").exists()


def test_sql_not_a_database_and_bad_jsonl(tmp_path):
    notdb = tmp_path / "x.sqlite"
    notdb.write_text("this is not sqlite")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"question": "q", "sql": "SELECT 1"}\n{"question": \n')
    with pytest.raises(FormatError, match="not a readable SQLite database"):
        byo.prepare_sql(db=str(notdb), questions=str(qfile), out=str(tmp_path / "rows"))
    db = BUNDLED / "spider" / "database" / "flight_2" / "flight_2.sqlite"
    with pytest.raises(FormatError, match=r"q.jsonl:2: invalid JSON"):
        byo.prepare_sql(db=str(db), questions=str(qfile), out=str(tmp_path / "rows"))
    assert not (tmp_path / "rows").exists()


# --- PICO --------------------------------------------------------------------------------------

def _pico_items():
    return [{"id": r["pmid"], "title": r["title"], "pub_date": r["date"].replace("/", ""), **r["pico"],
             "included": [t["pmid"] for t in r["trials"]]} for r in REVIEWS]


def test_prepare_pico(tmp_path, monkeypatch):
    items = _pico_items()
    for i, item in enumerate(items):
        item["split"] = "test" if i < 5 else "train"
    rfile = tmp_path / "reviews.json"
    rfile.write_text(json.dumps(items))
    out = tmp_path / "rows"
    assert main(["prepare", "pico", "--reviews", str(rfile), "--out", str(out)]) == 0
    test = read_rows(out / "test.parquet")
    assert len(test) == 5 and len(read_rows(out / "train.parquet")) == 20
    row, review = test[0], REVIEWS[0]
    assert row["data_source"] == "pubmed" and row["ability"] == "search_engine"
    assert review["pico"]["P"] in row["prompt"][-1]["content"]
    assert row["reward_model"]["ground_truth"]["target"] == list(dict.fromkeys(t["pmid"] for t in review["trials"]))
    assert row["extra_info"]["pub_date"] == review["date"].replace("/", "")
    fake_engines = pytest.importorskip("deepretrieval.testing.fake_engines")
    with fake_engines.FakePubMed() as fake:
        monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_URL", fake.url)
        monkeypatch.setenv("DEEPRETRIEVAL_CACHE", "off")
        query = " OR ".join(f'"{t["title"]}"' for t in review["trials"])
        got = compute_score("pubmed", answer(query), row["reward_model"]["ground_truth"],
                            {**row["extra_info"], "pub_date": ""}, searcher=local_searcher())
        assert got["recall"] == pytest.approx(1.0) and got["score"] == pytest.approx(6.0)


@pytest.mark.parametrize("change,message", [
    ({"included": []}, r"reviews.json item 2: 'included' must be a non-empty list of PMIDs"),
    ({"included": ["12345", "PMC999"]}, r"item 2: included id 'PMC999' is not a PMID"),
    ({"P": None}, r"item 2: P must be a string"),
    ({"P": "", "I": ""}, r"item 2: missing P \(population\) or I \(intervention\)"),
    ({"split": "holdout"}, r"item 2: split 'holdout' must be train, test or val"),
])
def test_malformed_pico_input(tmp_path, change, message):
    items = _pico_items()
    items[2].update(change)
    rfile = tmp_path / "reviews.json"
    rfile.write_text(json.dumps(items))
    with pytest.raises(FormatError, match=message):
        byo.prepare_pico(reviews=str(rfile), out=str(tmp_path / "rows"))
    assert not (tmp_path / "rows").exists()


def test_pico_ctgov_ids_checked(tmp_path):
    items = [{"P": "adults with asthma", "I": "inhaled steroids", "included": ["NCT01234567", "123"]}]
    rfile = tmp_path / "r.jsonl"
    rfile.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    with pytest.raises(FormatError, match=r"r.jsonl:1: included id '123' is not a NCT id"):
        byo.prepare_pico(reviews=str(rfile), engine="ctgov", out=str(tmp_path / "rows"))
