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
from deepretrieval.data import byo_beir, byo_pico, byo_sql
from deepretrieval.core.beir_files import FormatError
from deepretrieval.catalog import read_rows
from deepretrieval.rewards import compute_score
from deepretrieval.catalog import get_task, local_searcher, open_index

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
    # the answer-only variant name resolves too, with the answer prefilled (as scifact_no_reason):
    # the completion continues `<answer>{"query": "`
    assert get_task("trialmind_byo_no_reason").prefill == get_task("scifact_no_reason").prefill \
        == '<answer>{"query": "'
    extra = {k: v for k, v in row["extra_info"].items() if k != "prefill"}
    no_reason = compute_score("trialmind_byo_no_reason", json.dumps({"query": title})[11:] + "</answer>",
                              gt, extra, searcher=local_searcher())
    assert no_reason["format_ok"] and no_reason["score"] == pytest.approx(got["score"])
    # the original-query baseline over real reviews retrieves something relevant
    assert main(["baseline", "--task", "trialmind_byo", "--rows", str(out / "test.parquet"), "--json"]) == 0


@pytest.mark.slow
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


@pytest.mark.slow
def test_no_reason_collection_trains_two_trl_steps_with_reward_spread(tmp_path, _index_dir, warm_tiny):
    """`prepare beir --no_reason` rows carry the answer prefill, so a 2-step TRL run of the
    small-model recipe sees well-formed answers among its samples: reward std > 0 (without the
    prefill every sample is a format error, the rewards are all -2 and GRPO learns nothing)."""
    pytest.importorskip("trl")
    torch = pytest.importorskip("torch")
    from deepretrieval.train.trl_engine import TRLSettings, read_metrics, train_trl

    files = write_collection(tmp_path / "src")
    out = tmp_path / "rows"
    assert main(beir_args(files, "trialmind_nr", out, "--no_reason")) == 0
    rows = read_rows(out / "train.parquet")[:8]
    assert rows[0]["data_source"] == "trialmind_nr_no_reason"
    assert rows[0]["extra_info"]["prefill"] == '<answer>{"query": "'
    model = warm_tiny(rows, tmp_path / "warm")  # taught the answer-only recipe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_trl(rows, TRLSettings(
            model=str(model), output_dir=str(tmp_path / "run"), steps=2, prompts_per_step=2,
            num_generations=4, max_completion_length=24, temperature=1.0, learning_rate=1e-3,
            progress=False, bf16=False, seed=0, save_steps=0), searcher=local_searcher())
    finally:
        torch.set_num_threads(threads)
    steps = [h for h in read_metrics(result.metrics_path) if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    assert any(h["deepretrieval/format_ok"] > 0 for h in steps), "no sample parsed"
    assert any(h["reward_std"] > 0 for h in steps), "rewards never differed within a batch"


# --- names: a collection never shadows, and is never shadowed by, another meaning ------------

def test_prepare_beir_refuses_names_with_another_meaning(tmp_path, _index_dir, capsys):
    files = write_collection(tmp_path / "src")
    for name, meaning in (("nfcorpus_test", "'nfcorpus_test' is an original DeepRetrieval data_source "
                                            "name → task over index 'nfcorpus'"),
                          ("scifact", "'scifact' is a defined task"),
                          ("wiki_offline", "'wiki_offline' is a built-in index")):
        assert main(beir_args(files, name, tmp_path / name)) == 2
        err = capsys.readouterr().err
        assert meaning in err and "Pick another --name" in err and "Traceback" not in err, err
        assert not (tmp_path / name).exists()
    assert not (_index_dir / "nfcorpus_test").exists()


def test_clashing_collection_is_an_error_naming_both_meanings(tmp_path, monkeypatch, capsys):
    """A collection built outside `prepare beir`'s check (library call, `deepretrieval index`)
    under an original name + split suffix: every command says it is ambiguous — baseline does not
    print zeros and exit 0, train --dry-run has no traceback."""
    from deepretrieval import catalog
    monkeypatch.setenv("DEEPRETRIEVAL_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.setattr(catalog, "_RESOLVED", {})  # names resolved earlier in this process
    files = write_collection(tmp_path / "src")
    byo_beir.prepare_beir(corpus=files["corpus"], queries=files["queries"],
                     qrels={"train": files["train"], "test": files["test"]}, name="nfcorpus_test",
                     out=tmp_path / "rows", show_progress=False)
    both = ("original DeepRetrieval data_source name → task over index 'nfcorpus'",
            "user collection (index) → task over index 'nfcorpus_test'")
    for argv in (["baseline", "--rows", str(tmp_path / "rows" / "test.parquet")],
                 ["baseline", "--task", "nfcorpus_test"],
                 ["train", "--engine", "trl", "--task", "nfcorpus_test", "--data",
                  str(tmp_path / "rows"), "--out", str(tmp_path / "run"), "--dry-run"]):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert "ambiguous" in captured.err and all(m in captured.err for m in both), captured.err
        assert "Traceback" not in captured.err and "search_error_rate" not in captured.out
    assert main(["tasks"]) == 0
    listed = capsys.readouterr().out
    assert "nfcorpus_test" in listed and "ambiguous" in listed
    # the index an original name expects (`prepare beir --name nfcorpus`) is no clash: the
    # collection's own names resolve to its task
    (tmp_path / "indexes" / "nfcorpus").mkdir()
    (tmp_path / "indexes" / "nfcorpus" / "meta.json").write_text(json.dumps({"type": "bm25"}))
    assert catalog.collection_name_clashes("nfcorpus") == []
    assert catalog.collection_name_clashes("nfcorpus_test")
    assert catalog.get_task("nfcorpus") == catalog.resolve_local_collection("nfcorpus")
    assert catalog.get_task("nfcorpus_no_reason").prefill == '<answer>{"query": "'


def test_tasks_lists_your_collections(trialmind, capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mine = {"trialmind_byo", "trialmind_byo_no_reason"}
    byo_lines = {line.split()[0]: line for line in lines if line.split()[:1] and line.split()[0] in mine}
    assert set(byo_lines) == mine
    assert lines.index(byo_lines["trialmind_byo"]) > lines.index(next(x for x in lines if "your collections" in x))
    assert "index 'trialmind_byo'" in byo_lines["trialmind_byo"]
    assert "answer prefilled" in byo_lines["trialmind_byo_no_reason"]


# --- one qrels file → train/test; train's data checks ------------------------------------------

def _single_qrels(files, folder: Path) -> Path:
    path = folder / "all.tsv"
    body = files["train"].read_text().splitlines() + files["test"].read_text().splitlines()[1:]
    path.write_text("\n".join(body) + "\n")
    return path


def _args_one_qrels(files, qrels, name, out, *extra):
    return ["prepare", "beir", "--corpus", str(files["corpus"]), "--queries", str(files["queries"]),
            "--qrels", str(qrels), "--name", name, "--out", str(out), *extra]


def test_prepare_beir_splits_one_qrels_file(tmp_path, _index_dir, capsys):
    files = write_collection(tmp_path / "src")
    qrels = _single_qrels(files, tmp_path / "src")
    out = tmp_path / "rows"
    assert main(_args_one_qrels(files, qrels, "trialmind_split", out, "--test-fraction", "0.3")) == 0
    printed = capsys.readouterr().out
    train, test = read_rows(out / "train.parquet"), read_rows(out / "test.parquet")
    n = len(train) + len(test)
    assert n == sum(any(t["pmid"] in DOCS for t in r["trials"]) for r in REVIEWS) > 20
    assert len(test) == round(0.3 * n)
    assert f"{len(train)} train / {len(test)} test queries" in printed and "by query id" in printed
    train_ids = {r["extra_info"]["query_id"] for r in train}
    assert train_ids.isdisjoint(r["extra_info"]["query_id"] for r in test)
    assert {r["extra_info"]["split"] for r in test} == {"test"}
    # stable: the same split again
    out2 = tmp_path / "rows2"
    assert main(_args_one_qrels(files, qrels, "trialmind_split", out2, "--test-fraction", "0.3")) == 0
    assert {r["extra_info"]["query_id"] for r in read_rows(out2 / "train.parquet")} == train_ids
    # --split-by a query field: queries sharing the value stay together
    lines = [json.loads(x) for x in files["queries"].read_text().splitlines()]
    for i, q in enumerate(lines):
        q["metadata"] = {"topic": f"t{i % 5}"}
    files["queries"].write_text("".join(json.dumps(q) + "\n" for q in lines))
    out3 = tmp_path / "rows3"
    assert main(_args_one_qrels(files, qrels, "trialmind_split", out3, "--split-by", "metadata.topic")) == 0
    topic = {q["_id"]: q["metadata"]["topic"] for q in lines}
    by_split = {s: {topic[r["extra_info"]["query_id"]] for r in read_rows(out3 / f"{s}.parquet")}
                for s in ("train", "test")}
    assert by_split["train"].isdisjoint(by_split["test"]) and len(by_split["test"]) == 1  # 0.2 of 5
    assert "the queries' 'metadata.topic' field" in capsys.readouterr().out
    # errors: several qrels files, a bad fraction, a missing field
    assert main(beir_args(files, "trialmind_split", tmp_path / "x", "--test-fraction", "0.2")) == 2
    assert "split one qrels file" in capsys.readouterr().err
    assert main(_args_one_qrels(files, qrels, "trialmind_split", tmp_path / "x", "--test-fraction", "1.5")) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(_args_one_qrels(files, qrels, "trialmind_split", tmp_path / "x", "--split-by", "nope")) == 2
    assert "queries.jsonl:1: no field 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_test_only_folder_and_missing_folder_say_so(tmp_path, _index_dir, capsys):
    files = write_collection(tmp_path / "src")
    qrels = _single_qrels(files, tmp_path / "src")
    out = tmp_path / "rows"
    assert main(_args_one_qrels(files, qrels, "trialmind_testonly", out)) == 0
    printed = capsys.readouterr().out
    assert "note: no train split was written" in printed and "--test-fraction" in printed
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet"]
    run = ["train", "--engine", "trl", "--task", "trialmind_testonly", "--out", str(tmp_path / "run"),
           "--dry-run"]
    assert main(run + ["--data", str(out)]) == 2
    captured = capsys.readouterr()
    assert "has test.parquet but no train.parquet" in captured.err and "--test-fraction" in captured.err
    assert "starting the retrieval service" not in captured.out and "Traceback" not in captured.err
    assert main(run + ["--data", str(tmp_path / "no_such_rows")]) == 2
    captured = capsys.readouterr()
    assert "no such folder" in captured.err and "dry run" not in captured.out
    assert "starting the retrieval service" not in captured.out


def test_empty_documents_are_kept_with_a_warning(tmp_path, _index_dir, capsys):
    """Cranfield judges two documents with empty text: they are indexed (and count as relevant in
    the ideal DCG), with a warning naming them."""
    files = write_collection(tmp_path / "src")
    lines = files["corpus"].read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    lines[0] = json.dumps({"_id": first["_id"], "title": "", "text": ""})
    lines[1] = json.dumps({"_id": second["_id"], "text": "  "})
    files["corpus"].write_text("\n".join(lines) + "\n")
    out = tmp_path / "rows"
    assert main(beir_args(files, "trialmind_empty", out)) == 0
    err = capsys.readouterr().err
    assert f"2 document(s) with empty title and text ('{first['_id']}', '{second['_id']}')" in err
    assert err.startswith("warning: ") and "judged relevant" in err
    index = open_index("trialmind_empty")
    assert len(index) == len(DOCS) and first["_id"] in index.doc_ids
    assert index.search([first["title"] or "a"], 5)[0].error is None


# --- baseline: task and split from the rows ----------------------------------------------------

def test_baseline_takes_task_and_split_from_rows(trialmind, capsys):
    files, out = trialmind
    assert main(["baseline", "--rows", str(out / "train.parquet"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "trialmind_byo" and summary["split"] == "train"
    assert summary["n"] == len(read_rows(out / "train.parquet"))
    assert main(["baseline", "--rows", str(out / "train.parquet"), "--task", "trialmind_byo",
                 "--split", "train", "--json"]) == 0
    capsys.readouterr()
    for extra, message in ((["--task", "scifact"], "--task 'scifact' contradicts the rows: their "
                                                   "data_source is 'trialmind_byo'"),
                           (["--split", "test"], "--split 'test' contradicts the rows: their "
                                                 "extra_info.split is 'train'")):
        assert main(["baseline", "--rows", str(out / "train.parquet"), *extra]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""


# --- malformed input: file:line, what was expected; nothing written ---------------------------

def _corrupt(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("target,lineno,text,message", [
    ("corpus", 3, '{"_id": "x", "text": "unterminated', r"corpus.jsonl:3: invalid JSON"),
    ("corpus", 5, '{"title": "no id", "text": "t"}', r"corpus.jsonl:5: missing field\(s\) \['_id'\]"),
    ("corpus", 2, '{"_id": "30197259b", "text": 5}', r"corpus.jsonl:2: expected a string 'text'"),
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
        byo_beir.prepare_beir(corpus=files["corpus"], queries=files["queries"],
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
        byo_beir.parse_qrels_args(["=a.tsv"])
    with pytest.raises(ValueError, match="given twice"):
        byo_beir.parse_qrels_args(["a.tsv", "test=b.tsv"])


def test_failure_late_leaves_nothing_half_written(tmp_path, _index_dir, monkeypatch):
    """The index is saved and the train rows written, then writing the test rows fails: the staged
    index and rows are removed and nothing appears under the final names."""
    files = write_collection(tmp_path / "src")
    out = tmp_path / "rows"
    real = byo_beir.write_parquet
    calls = []

    def failing(rows, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(rows, path)

    monkeypatch.setattr(byo_beir, "write_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        byo_beir.prepare_beir(corpus=files["corpus"], queries=files["queries"],
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
        byo_sql.prepare_sql(db=str(db), questions=str(qfile), name="bad_sql", out=str(tmp_path / "rows"))
    assert not (tmp_path / "rows").exists() and not (_index_dir / "spider" / "bad_sql").exists()


def test_sql_not_a_database_and_bad_jsonl(tmp_path):
    notdb = tmp_path / "x.sqlite"
    notdb.write_text("this is not sqlite")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"question": "q", "sql": "SELECT 1"}\n{"question": \n')
    with pytest.raises(FormatError, match="not a readable SQLite database"):
        byo_sql.prepare_sql(db=str(notdb), questions=str(qfile), out=str(tmp_path / "rows"))
    db = BUNDLED / "spider" / "database" / "flight_2" / "flight_2.sqlite"
    with pytest.raises(FormatError, match=r"q.jsonl:2: invalid JSON"):
        byo_sql.prepare_sql(db=str(db), questions=str(qfile), out=str(tmp_path / "rows"))
    assert not (tmp_path / "rows").exists()


def test_prepare_sql_reports_every_failing_gold_query_and_skips_on_request(tmp_path, _index_dir, capsys):
    db = BUNDLED / "spider" / "database" / "flight_2" / "flight_2.sqlite"
    questions = _flight_questions()[:12]
    questions[2]["sql"] = "SELECT * FROM no_such_table"
    questions[7]["sql"] = "SELEC nonsense"
    qfile = tmp_path / "questions.json"
    qfile.write_text(json.dumps(questions))
    out = tmp_path / "rows"
    args = ["prepare", "sql", "--db", str(db), "--questions", str(qfile), "--name", "flights_fail",
            "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 gold SQL queries fail" in err and "--skip-failing" in err
    assert "questions.json item 2: the gold SQL fails" in err and "no such table" in err
    assert "questions.json item 7: the gold SQL fails" in err
    assert not out.exists() and not (_index_dir / "spider" / "flights_fail").exists()
    assert main(args + ["--skip-failing"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 question(s) whose gold SQL fails" in printed and "item 7" in printed
    rows = read_rows(out / "train.parquet") + read_rows(out / "test.parquet")
    assert len(rows) == 10
    assert not {q["question"] for q in (questions[2], questions[7])} & {r["extra_info"]["query"] for r in rows}


def test_prepare_sql_dev_split_gold_variants_and_split_by(tmp_path, _index_dir, capsys):
    db = BUNDLED / "spider" / "database" / "flight_2" / "flight_2.sqlite"
    questions = _flight_questions()[:20]
    for i, q in enumerate(questions):
        q["group"] = f"g{i % 4}"
    questions[0]["split"] = "dev"
    questions[1]["split"] = "dev"
    # two gold variants: the question's own and an equivalent one with other rows' order
    questions[3]["sql"] = [questions[3]["sql"], questions[3]["sql"] + " LIMIT 1000000"]
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "rows"
    assert main(["prepare", "sql", "--db", str(db), "--questions", str(qfile), "--name", "flights_dev",
                 "--out", str(out), "--split-by", "group", "--test-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "split 18 questions without a 'split' by 'group'" in printed
    dev = read_rows(out / "dev.parquet")
    assert [r["extra_info"]["query"] for r in dev] == [questions[0]["question"], questions[1]["question"]]
    assert {r["extra_info"]["split"] for r in dev} == {"dev"}
    groups = {q["question"]: q["group"] for q in questions}
    train, test = read_rows(out / "train.parquet"), read_rows(out / "test.parquet")
    test_groups = {groups[r["extra_info"]["query"]] for r in test}
    assert len(test_groups) == 1 and test_groups.isdisjoint(groups[r["extra_info"]["query"]] for r in train)
    row = next(r for r in train + test if r["extra_info"]["query"] == questions[3]["question"])
    gt = row["reward_model"]["ground_truth"]
    assert list(gt["target"]) == questions[3]["sql"]
    for gold in questions[3]["sql"]:
        sol = f"<think>x</think><answer>{json.dumps({'sql': gold})}</answer>"
        assert compute_score("spider", sol, gt, row["extra_info"], searcher=local_searcher())["score"] \
            == pytest.approx(1.1)
    # answer-only rows carry the SQL answer prefill (as the bundled spider_no_reason)
    assert main(["prepare", "sql", "--db", str(db), "--questions", str(qfile), "--name", "flights_dev",
                 "--out", str(tmp_path / "nr"), "--no_reason"]) == 0
    nr = read_rows(tmp_path / "nr" / "train.parquet")[0]
    assert nr["data_source"] == "spider_no_reason" and nr["extra_info"]["prefill"] == '<answer>{"sql": "'
    got = compute_score("spider_no_reason", json.dumps({"sql": nr["reward_model"]["ground_truth"]["target"][0]})[9:]
                        + "</answer>", nr["reward_model"]["ground_truth"], nr["extra_info"],
                        searcher=local_searcher())
    assert got["format_ok"] and got["score"] == pytest.approx(1.1)
    capsys.readouterr()
    # train reads dev.parquet as the validation split when there is no test.parquet
    (out / "test.parquet").unlink()
    assert main(["train", "--engine", "trl", "--task", "spider", "--data", str(out), "--out",
                 str(tmp_path / "run"), "--no-service", "--dry-run"]) == 0
    assert f"train rows = {(out / 'train.parquet').resolve()}" in capsys.readouterr().out


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
    ({"split": "holdout"}, r"item 2: split 'holdout' must be train, test, val or dev"),
])
def test_malformed_pico_input(tmp_path, change, message):
    items = _pico_items()
    items[2].update(change)
    rfile = tmp_path / "reviews.json"
    rfile.write_text(json.dumps(items))
    with pytest.raises(FormatError, match=message):
        byo_pico.prepare_pico(reviews=str(rfile), out=str(tmp_path / "rows"))
    assert not (tmp_path / "rows").exists()


def test_pico_ctgov_ids_checked(tmp_path):
    items = [{"P": "adults with asthma", "I": "inhaled steroids", "included": ["NCT01234567", "123"]}]
    rfile = tmp_path / "r.jsonl"
    rfile.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    with pytest.raises(FormatError, match=r"r.jsonl:1: included id '123' is not a NCT id"):
        byo_pico.prepare_pico(reviews=str(rfile), engine="ctgov", out=str(tmp_path / "rows"))
