"""Rows in the original DeepRetrieval format (built here from the layout documented in
docs/datasets.md: raw prompt strings with special tokens, original data_source names and ground-truth
shapes) go through ``compute_score`` and get the paper's scores; ``deepretrieval convert`` turns them
into chat-message rows that score the same."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepretrieval.core.beir_files import load_qrels, load_queries
from deepretrieval.core.bundled import collection_dir
from deepretrieval.data.original import convert_row, model_prefill, parse_name, split_raw_prompt
from deepretrieval.catalog import read_rows
from deepretrieval.rewards import compute_score
from deepretrieval.catalog import local_searcher, open_index
from deepretrieval.search import LocalSearcher
from deepretrieval.catalog import get_task
from deepretrieval.tasks import UnknownTask

BUNDLED = Path(__file__).resolve().parent.parent / "deepretrieval" / "bundled"

# --- the original's prompt layouts (see docs/datasets.md, "Row layout") -----------------------

SYS_REASON = "You are a helpful assistant. You first think about the reasoning process and then answer."


def chatml_inline(instruction: str, item: str, lead: str = "Let me think step by step. \n<think>\n") -> str:
    """BEIR / evidence layout: the user turn is never closed; ``Assistant:`` starts the answer."""
    return (f"<|im_start|>system\n{SYS_REASON}<|im_end|>\n<|im_start|>user\n{instruction}\n"
            f"Show your work in <think> </think> tags. Your final response must be in JSON format "
            f"within <answer> </answer> tags.\n\nHere's the input:\n{item}\nAssistant: {lead}")


def chatml_sql(schema: str, question: str) -> str:
    """SQL layout: closed user turn, then an opened assistant turn."""
    return (f"<|im_start|>system\n{SYS_REASON}<|im_end|>\n<|im_start|>user\nWrite the SQL query.\n"
            f"Database Schema:\n{schema}\n\nHere's the user query:\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n\nLet me write the SQL query with reasoning. \n<think>\n")


def llama_plain(pico: str) -> str:
    """pubmed_32 layout (Llama 3.2): ``<|begin_of_text|>System: … User: … Assistant: …``."""
    return ("<|begin_of_text|>System: A conversation between User and Assistant. The Assistant "
            "first thinks and then answers.\n\nUser: Create a PubMed query for this review.\n"
            f"The research is defined by the following PICO:\n{pico}\n\n"
            "Assistant: Let me solve this step by step. \n<think>")


def original_row(data_source, prompt, ground_truth, split, index=0, **columns):
    """A row as ``datasets.Dataset.map`` wrote it: the input columns stay beside the new ones."""
    row = {"data_source": data_source, "prompt": [{"role": "user", "content": prompt}],
           "ability": "literature_mining",
           "reward_model": {"style": "rule", "ground_truth": ground_truth},
           "extra_info": {"split": split, "index": index}}
    row.update(columns)
    return row


def roundtrip(rows, tmp_path, name="original.parquet"):
    """Write like the original (pyarrow via datasets) and read the rows back unconverted, as verl's
    dataset loader hands them to the reward (``read_rows`` would convert them to ours)."""
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, pq.read_table(path).to_pylist()


def score(row, completion, **kw):
    # these tests pin the default profile on original rows; tests/test_paper_profile.py the paper one
    kw.setdefault("profile", "default")
    return compute_score(row["data_source"], completion, row["reward_model"]["ground_truth"],
                         row["extra_info"], **kw)


def answer(query, key="query", think="I will use the key terms."):
    """A completion after a prompt that ended with ``<think>``."""
    return f"{think}</think>\n<answer>{json.dumps({key: query})}</answer><|im_end|>"


class NamedSearcher(LocalSearcher):
    """Serves index names used by the original's rows from backends given here (no global state)."""

    def __init__(self, mapping):
        super().__init__(open_index)
        self.mapping = mapping

    def backend(self, index):
        if index in self.mapping:
            value = self.mapping[index]
            return value() if callable(value) else value
        return super().backend(index)


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("data_source,canonical,index,family,reasoning,train_depth", [
    ("pubmed_32", "pubmed", "pubmed", "search_engine", True, 3000),
    ("pmd_no_reason", "pubmed_no_reason", "pubmed", "search_engine", False, 3000),
    ("ctgov", "ctgov", "ctgov", "search_engine", True, 3000),
    ("nq_serini", "nq", "wikipedia", "evidence", True, 3000),
    ("nq_serini_no_reason", "nq_no_reason", "wikipedia", "evidence", False, 3000),
    ("triviaqa", "triviaqa", "wikipedia", "evidence", True, 3000),
    ("squad", "squad", "wikipedia", "evidence", True, 3000),
    ("scifact_train", "scifact", "scifact", "beir", True, 1000),
    ("scifact_test", "scifact", "scifact", "beir", True, 10),     # test/val: validation depth
    ("scifact_dense_val", "scifact_dense", "scifact_dense", "beir", True, 10),
    ("scifact_no_reason_test", "scifact_no_reason", "scifact", "beir", False, 10),
    ("nfcorpus_test", "nfcorpus", "nfcorpus", "beir", True, 10),  # no registered task: made on the fly
    ("nfcorpus_dense_train", "nfcorpus_dense", "nfcorpus_dense", "beir", True, 1000),
    ("fever_wor_val", "fever_no_reason", "fever", "beir", False, 10),
    ("hotpotqa_train", "hotpotqa", "hotpotqa", "beir", True, 1000),
    ("msmarco_beir_test", "msmarco_beir", "msmarco_beir", "beir", True, 10),
    ("msmarco_health_dense_train", "msmarco_health_dense", "msmarco_health_dense", "beir", True, 1000),
    ("spider_train", "spider", "spider", "sql", True, None),
    ("bird_test", "bird", "bird", "sql", True, None),
    ("bird_no_reason_val", "bird_no_reason", "bird", "sql", False, None),
])
def test_original_names_map_onto_our_tasks(data_source, canonical, index, family, reasoning, train_depth):
    task = get_task(data_source)
    # names that are also ours exactly (ctgov, triviaqa, squad) are our tasks as they are
    assert getattr(task, "canonical", task.name) == canonical and task.index == index
    assert task.family.name == family and task.reasoning is reasoning
    if train_depth is not None:
        assert task.train_depth == train_depth
    assert task.family.metric_keys(task) == get_task(canonical).family.metric_keys(get_task(canonical))


def test_unsupported_and_unknown_names_fail_clearly():
    for name in ("countdown", "wikisql_train", "my_dataset"):
        assert parse_name(name) is None
        with pytest.raises(UnknownTask, match="unknown task"):
            get_task(name)
    # an original name with no task here: the paper profile scores it (the original trainer did),
    # but it has no task to train or evaluate
    assert parse_name("screening_pubmed") is None
    with pytest.raises(UnknownTask, match="only the paper profile scores it"):
        get_task("screening_pubmed")


# --- raw prompts -----------------------------------------------------------------------------

def test_split_raw_prompts_of_every_layout():
    msgs, prefix = split_raw_prompt(chatml_inline("Rewrite the claim.", "Vitamin D prevents flu."))
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"].endswith("Vitamin D prevents flu.")
    assert prefix == "Let me think step by step. \n<think>\n" and model_prefill(prefix) == "<think>\n"
    assert not any("<|im" in m["content"] for m in msgs)

    msgs, prefix = split_raw_prompt(chatml_sql("CREATE TABLE singer (Name text)", "How many singers?"))
    assert msgs[1]["content"].endswith("How many singers?") and model_prefill(prefix) == "<think>\n"

    msgs, prefix = split_raw_prompt(llama_plain("P: adults\nI: statins"))
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("A conversation")
    assert msgs[1]["content"].endswith("P: adults\nI: statins") and model_prefill(prefix) == "<think>"
    assert "<|begin_of_text|>" not in msgs[0]["content"]

    msgs, prefix = split_raw_prompt(chatml_inline("Rewrite.", "a claim", lead="\n<answer>\n"))
    assert model_prefill(prefix) == "<answer>\n"

    with pytest.raises(ValueError, match="no user turn"):
        split_raw_prompt("<|im_start|>system\nonly a system turn<|im_end|>")


# --- BEIR (SciFact, as published: one row per qrels line, target = one doc id) ----------------

@pytest.fixture(scope="module")
def scifact_case(scifact_index):
    queries = load_queries(collection_dir("scifact"))
    qrels = load_qrels(collection_dir("scifact"), "test")
    index = scifact_index
    titles = dict(zip(index.doc_ids, index.texts))
    # a judged document whose title alone ranks it first (checked, not assumed)
    for qid, judged in qrels.items():
        doc = next(iter(judged))
        title = titles[doc].split("\n")[0][:200]
        if index.search([title], 10)[0].ids[:1] == [doc]:
            return qid, queries[qid], doc, title
    pytest.fail("no SciFact title retrieves its own document first")


def test_beir_original_row_gets_paper_score(scifact_case, tmp_path):
    qid, claim, doc, title = scifact_case
    rows = [original_row("scifact_test", chatml_inline("Rewrite the claim.", claim), {"target": doc},
                         "test", qid=qid, query=claim, target=doc, label=1)]
    _, (row,) = roundtrip(rows, tmp_path)
    assert score(row, answer(title))["score"] == pytest.approx(0.1 + 1.0)  # nDCG@10 = 1 → 0.1 + 1
    ranked = open_index("scifact").search([claim], 10)[0].ids
    expected = (1 / math.log2(ranked.index(doc) + 2)) if doc in ranked else 0.0
    got = score(row, answer(claim))
    assert got["ndcg"] == pytest.approx(expected)
    assert got["score"] == pytest.approx(0.1 + expected if expected > 0 else 0.0)
    assert score(row, answer("zzzq xxyv"))["score"] == 0.0           # nDCG 0 → 0
    assert score(row, "<answer>{\"query\": \"x\"}</answer>")["score"] == -2.0  # no </think>: format
    assert score(row, answer(title) + " trailing")["score"] == -2.0
    # the whole decoded sequence, as the original's reward manager passed it, scores the same
    full = row["prompt"][0]["content"] + answer(title)
    assert score(row, full)["score"] == pytest.approx(1.1)


def test_beir_no_reason_original_row(scifact_case, tmp_path):
    qid, claim, doc, title = scifact_case
    prompt = chatml_inline("Rewrite the claim.", claim, lead="\n<answer>\n")
    _, (row,) = roundtrip([original_row("scifact_no_reason_test", prompt, {"target": doc}, "test")], tmp_path)
    assert score(row, json.dumps({"query": title}) + "\n</answer>")["score"] == pytest.approx(1.1)
    assert score(row, "<think>x</think>" + json.dumps({"query": title}) + "</answer>")["score"] == -2.0


def test_graded_beir_ground_truth_uses_the_grades(scifact_index, scifact_case, tmp_path):
    # nfcorpus/fever/msmarco layout: {"target": [ids], "score": [grades]}, here over SciFact's text
    qid, claim, doc, title = scifact_case
    other = next(d for d in scifact_index.doc_ids if d != doc)
    gt = {"target": [other, doc], "score": [2, 1]}
    _, (row,) = roundtrip([original_row("nfcorpus_test", chatml_inline("Q", claim), gt, "test")], tmp_path)
    searcher = NamedSearcher({"nfcorpus": scifact_index})
    got = score(row, answer(title), searcher=searcher)
    ranked = scifact_index.search([title], 10)[0].ids
    gains = {other: 2, doc: 1}
    dcg = sum(gains.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert got["ndcg"] == pytest.approx(dcg / idcg)        # graded, not binary
    assert got["score"] == pytest.approx(0.1 + dcg / idcg)
    # qrels given as a dict or as a string also work
    for shape in ({"target": {other: 2, doc: 1}}, {"target": json.dumps([other, doc]), "score": [2, 1]}):
        assert score({**row, "reward_model": {"ground_truth": shape}}, answer(title),
                     searcher=searcher)["ndcg"] == pytest.approx(dcg / idcg)


# --- SQL (Spider / BIRD: target = gold SQL string, extra_info.db_path) -----------------------

SINGER_SCHEMA = "CREATE TABLE singer (Singer_ID int, Name text, Net_Worth_Millions real)"


def sql_row(data_source, question, gold, split="test"):
    db_path = "data/raw_data/spider/spider_data/database/singer/singer.sqlite"
    row = original_row(data_source, chatml_sql(SINGER_SCHEMA, question), {"target": gold}, split,
                       question=question, db_id="singer", sql=gold)
    row["ability"] = "sql_generation"
    row["extra_info"]["db_path"] = db_path
    return row


def test_spider_and_bird_original_rows(tmp_path, monkeypatch):
    dev = json.loads((BUNDLED / "spider" / "dev.json").read_text())
    ex = next(x for x in dev if x["db_id"] == "singer" and "count" in x["query"].lower())
    rows = [sql_row("spider_test", ex["question"], ex["query"]),
            sql_row("bird_val", ex["question"], ex["query"], split="val")]
    _, (spider, bird) = roundtrip(rows, tmp_path)
    good = answer(ex["query"], key="sql")
    bad = answer("SELECT Name FROM singer", key="sql")
    assert score(spider, good)["score"] == pytest.approx(1.1)   # execution match
    assert score(spider, bad)["score"] == 0.0                     # mismatch
    assert score(spider, "no tags")["score"] == -2.0              # format
    # BIRD rows search bird/<db_id>; register the same real database under that name
    from deepretrieval.search.sql import bundled_databases, write_sqlite_index
    monkeypatch.setenv("DEEPRETRIEVAL_INDEX_DIR", str(tmp_path / "indexes"))
    write_sqlite_index(tmp_path / "indexes" / "bird" / "singer", bundled_databases()["spider/singer"],
                       "bird/singer")
    searcher = local_searcher()
    assert score(bird, good, searcher=searcher)["score"] == pytest.approx(1.1)
    assert score(bird, bad, searcher=searcher)["score"] == pytest.approx(0.4)  # BIRD: mismatch 0.4


# --- evidence (NQ / TriviaQA / SQuAD: target = answers) --------------------------------------

def test_evidence_original_row(scifact_index, scifact_case, tmp_path):
    qid, claim, doc, title = scifact_case
    text = scifact_index.texts[scifact_index.doc_ids.index(doc)]
    words = text.split()
    answer_span = " ".join(words[len(words) // 2: len(words) // 2 + 4])  # a span from the passage
    rows = [original_row("nq_serini", chatml_inline("Rewrite the question.", "who found it?",
                                                    lead="Let me rewrite the query with reasoning. \n<think>\n"),
                         {"target": [answer_span]}, "test", input="who found it?", label=[answer_span])]
    _, (row,) = roundtrip(rows, tmp_path)
    searcher = NamedSearcher({"wikipedia": scifact_index})
    got = score(row, answer(title), searcher=searcher)
    assert got["first_hit_rank"] == 1 and got["score"] == pytest.approx(1 + 5)  # rank <= 5: 5
    miss = score({**row, "reward_model": {"ground_truth": {"target": ["qqzzx unfindable"]}}},
                 answer(title), searcher=searcher)
    assert miss["score"] == pytest.approx(1 - 3.5)                               # no hit: -3.5
    assert score(row, "plain text", searcher=searcher)["score"] == -4.0          # format: -4


# --- search engine (PubMed through the loopback fake E-utilities) -----------------------------

def test_pubmed_original_row(tmp_path, monkeypatch):
    fake_engines = pytest.importorskip("deepretrieval.testing.fake_engines")
    review = json.loads((BUNDLED / "trialmind_slr" / "reviews.jsonl").read_text().splitlines()[0])
    pico = "".join(f"{k}: {review['pico'][k]}\n" for k in "PICO")
    pmids = [t["pmid"] for t in review["trials"]]
    rows = [original_row("pubmed_32", llama_plain(pico), {"target": pmids}, "test",
                         input=pico, label=pmids, pub_date=review["date"].replace("/", ""))]
    _, (row,) = roundtrip(rows, tmp_path)
    with fake_engines.FakePubMed() as fake:
        monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_URL", fake.url)
        monkeypatch.setenv("DEEPRETRIEVAL_CACHE", "off")
        searcher = local_searcher()
        tiers = ((0.7, 5), (0.5, 4), (0.4, 3), (0.3, 1), (0.1, 0.5), (0.05, 0.1))
        for query in (" OR ".join(f'"{t["title"]}"' for t in review["trials"]),         # every title
                      " OR ".join(f'"{t["title"][:60]}"' for t in review["trials"][:40])):  # some
            recall = len(set(fake.match(query)) & set(pmids)) / len(pmids)  # the engine's own answer
            got = score(row, answer(query), searcher=searcher)
            assert got["recall"] == pytest.approx(recall)
            expected = 1 + next((s for b, s in tiers if recall >= b), -3.5)
            assert got["score"] == pytest.approx(expected)
        assert recall < 0.7  # the second query lands in a lower tier than the first (6.0)
        assert score(row, answer('"zzqxv nothing matches"'), searcher=searcher)["score"] == pytest.approx(-2.5)
        assert score(row, "<think>x</think>", searcher=searcher)["score"] == -4.0


# --- the converter ---------------------------------------------------------------------------

def test_convert_command_and_converted_rows_score_the_same(scifact_case, tmp_path, capsys):
    from deepretrieval.cli import main
    qid, claim, doc, title = scifact_case
    dev = json.loads((BUNDLED / "spider" / "dev.json").read_text())
    ex = next(x for x in dev if x["db_id"] == "singer")
    rows = [original_row("scifact_test", chatml_inline("Rewrite the claim.", claim), {"target": doc},
                         "test", qid=qid, query=claim),
            original_row("scifact_no_reason_test", chatml_inline("R", claim, lead="\n<answer>\n"),
                         {"target": doc}, "test", qid=qid, query=claim)]
    src, originals = roundtrip(rows, tmp_path)
    out = tmp_path / "ours.parquet"
    assert main(["convert", "--in", str(src), "--out", str(out)]) == 0
    assert "converted 2 rows" in capsys.readouterr().out
    conv = read_rows(out)
    assert [r["data_source"] for r in conv] == ["scifact", "scifact_no_reason"]
    first = conv[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert all("<|im_" not in m["content"] for m in first["prompt"])
    assert first["reward_model"]["ground_truth"] == {"target": [doc]}
    assert first["extra_info"]["prefill"] == "<think>\n" and first["extra_info"]["query"] == claim
    assert first["extra_info"]["query_id"] == qid and first["ability"] == "beir"
    assert conv[1]["extra_info"]["prefill"] == "<answer>\n"
    # converted rows give the same scores as the originals, in the converted (validation) mode
    for orig, new, completion in ((originals[0], conv[0], answer(title)),
                                  (originals[1], conv[1], json.dumps({"query": title}) + "</answer>")):
        assert score(new, completion)["score"] == pytest.approx(score(orig, completion)["score"])
        assert score(new, completion)["score"] == pytest.approx(1.1)

    # SQL + pub_date columns are carried over
    sql = convert_row(sql_row("spider_train", ex["question"], ex["query"], split="train"), get_task)
    assert sql["data_source"] == "spider" and sql["extra_info"]["db_id"] == "singer"
    assert sql["reward_model"]["ground_truth"] == {"target": [ex["query"]]}
    pub = convert_row(original_row("pubmed_32", llama_plain("P: x\n"), {"target": ["1", "2"]}, "train",
                                   pub_date="20200401"), get_task)
    assert pub["extra_info"]["pub_date"] == "20200401" and pub["data_source"] == "pubmed"
    assert pub["extra_info"]["prefill"] == "<think>"


def test_convert_errors_are_clear(tmp_path):
    from deepretrieval.cli import main
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([original_row("countdown", "x", {"target": "1"}, "train")]), bad)
    out = tmp_path / "o.parquet"
    from deepretrieval.data.original import convert_file
    with pytest.raises(ValueError, match="row 0: unknown data_source 'countdown'"):
        convert_file(bad, out, get_task)
    assert main(["convert", "--in", str(bad), "--out", str(out)]) == 2
    assert not out.exists()
    notparquet = tmp_path / "x.parquet"
    notparquet.write_text("not parquet")
    assert main(["convert", "--in", str(notparquet), "--out", str(out)]) == 2
    assert not out.exists()


def test_loaders_detect_and_convert_original_files(scifact_case, tmp_path):
    from deepretrieval.data.original import ensure_ours, is_original_row, maybe_convert
    from deepretrieval.catalog import bundled_rows
    qid, claim, doc, title = scifact_case
    src, originals = roundtrip([original_row("scifact_test", chatml_inline("R", claim), {"target": doc},
                                             "test", query=claim)], tmp_path)
    ours = bundled_rows("scifact", "test")[:3]
    assert all(is_original_row(r) for r in originals) and not any(is_original_row(r) for r in ours)
    assert maybe_convert(ours, get_task) is ours
    assert maybe_convert(originals, get_task)[0]["data_source"] == "scifact"
    converted = ensure_ours(src, tmp_path / "conv", get_task)
    assert converted != src and read_rows(converted)[0]["extra_info"]["prefill"] == "<think>\n"
    ours_file = tmp_path / "ours.parquet"
    from deepretrieval.data.rows import write_parquet
    write_parquet(ours, ours_file)
    assert ensure_ours(ours_file, tmp_path / "conv", get_task) == ours_file
