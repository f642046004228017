"""Evidence seeking: answer normalisation, the DPR token-level answer match, rank tiers at every
boundary, and compute_score end to end on a real-text passage corpus with real NQ-open questions.

The passage corpus is real text: the bundled SciFact abstracts split into 100-word passages (the
way DPR splits Wikipedia), written as BEIR JSONL and indexed through the CLI like a user's corpus.
The questions and answers are real NQ-open dev questions whose answers occur in that corpus.
"""
from __future__ import annotations

import json
import re
import unicodedata

import pytest

from deepretrieval.cli import main as cli_main
from deepretrieval.train.trl_engine import bf16_supported
from deepretrieval.rewards import TABLES, compute_score, score_batch
from deepretrieval.catalog import open_index
from deepretrieval.catalog import get_task
from deepretrieval.tasks.evidence import (DEFAULT_DEPTH, HIT_KS, answers_from_ground_truth,
                                          evidence_metrics, first_answer_rank, has_answer,
                                          load_qa_jsonl, normalize_answer, nq_examples, qa_rows)

# ---- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The Beatles", "beatles"),
    ("  Hello,   World!  ", "hello world"),
    ("an apple a day", "apple day"),
    ("A", ""),
    ("the", ""),
    ("Theory of Anathema", "theory of anathema"),      # articles only as whole words
    ("U.S.A.", "usa"),
    ("the U.S. Army", "us army"),
    ("J.R.R. Tolkien", "jrr tolkien"),
    ("e.g. this. A.", "eg this"),
    ("Rock & Roll", "rock roll"),
    ("$26 billion", "26 billion"),
    ("don't", "don t"),
    ("\"Autumn\"", "autumn"),
    ("snake_case-name", "snake case name"),
    ("Guy Henry's", "guy henry s"),
    ("Tab\tand\nnewline", "tab and newline"),
    ("THE END", "end"),
    ("thallium ← lead → bismuth", "thallium lead bismuth"),
    ("period\xa06", "period 6"),                        # no-break space (a real NQ answer)
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_unicode_forms_agree():
    nfc = unicodedata.normalize("NFC", "Beyoncé Knowles")
    nfd = unicodedata.normalize("NFD", "Beyoncé Knowles")
    assert nfc != nfd
    assert normalize_answer(nfc) == normalize_answer(nfd) == "beyoncé knowles"
    assert has_answer(f"Songs by {nfd}.", [nfc])


@pytest.mark.parametrize("passage, answers, expected", [
    ("The party started at nine.", ["art"], False),            # token level, not substring
    ("Modern art is popular.", ["art"], True),
    ("He moved to New-York City in 1978.", ["new york"], False),   # "-" is a token (DPR)
    ("He moved to New-York City in 1978.", ["New-York"], True),
    ("He moved to New York City.", ["York City"], True),
    ("Born in 19780.", ["1978"], False),
    ("Served in the U.S. Army.", ["U.S.A."], False),
    ("Flew to the U.S.A. in May.", ["USA"], False),               # u . s . a . ≠ usa
    ("Flew to the U.S.A. in May.", ["U.S.A."], True),
    ("Signed on November 10, 1978.", ["November 10, 1978"], True),
    ("Signed on 10 November 1978.", ["November 10, 1978"], False),  # order matters
    ("The Home Rule League campaigned.", ["Home Rule League"], True),
    ("It was Guy Henry's role.", ["Guy Henry"], True),
    ("Text about cats.", [], False),
    ("Text about the cats.", ["The"], True),                     # articles are kept (DPR)
    ("Text about cats.", ["  "], False),                         # no tokens: ignored
    ("Text about cats.", ["", "dogs", "cats"], True),
    ("", ["cats"], False),
])
def test_has_answer(passage, answers, expected):
    assert has_answer(passage, answers) is expected


def test_first_answer_rank_and_depth():
    passages = ["nothing here", None, "still nothing", "the answer is Paris", "Paris again"]
    assert first_answer_rank(passages, ["paris"]) == 4
    assert first_answer_rank(passages, ["paris"], depth=3) is None
    assert first_answer_rank(passages, ["paris"], depth=4) == 4
    assert first_answer_rank(passages, ["london"]) is None
    assert first_answer_rank([], ["paris"]) is None


def test_answers_from_ground_truth_shapes():
    import numpy as np
    assert answers_from_ground_truth({"target": ["a", "b"]}) == ["a", "b"]
    assert answers_from_ground_truth({"target": np.array(["x", "y"], dtype=object)}) == ["x", "y"]
    assert answers_from_ground_truth({"target": "solo"}) == ["solo"]
    assert answers_from_ground_truth(["p", None, "q"]) == ["p", "q"]
    assert answers_from_ground_truth(None) == [] and answers_from_ground_truth({}) == []


# ---- rank tiers --------------------------------------------------------------------------------

# (first-hit rank, the paper's evidence answer score); None = no answer-bearing passage
TIER_CASES = [(1, 5), (5, 5), (6, 4), (20, 4), (21, 2), (50, 2), (51, 1), (100, 1), (101, 0.5),
              (1000, 0.5), (1001, 0.1), (3000, 0.1), (None, -3.5)]


@pytest.mark.parametrize("rank, answer_score", TIER_CASES)
def test_rank_tiers_at_every_boundary(rank, answer_score):
    table = get_task("nq").table()
    assert table is TABLES["evidence"] or table == TABLES["evidence"]
    metrics = evidence_metrics(rank, DEFAULT_DEPTH)
    assert metrics["first_hit_rank"] == (rank if rank is not None else DEFAULT_DEPTH + 1)
    assert table.answer_score(metrics[table.metric]) == answer_score
    assert table.total(True, table.answer_score(metrics[table.metric])) == answer_score + 1
    assert table.total(False, 0.0) == -4
    assert table.total(True, table.error) == -3          # search error: format ok (+1) + error (-4)
    for k in HIT_KS:
        assert metrics[f"hit@{k}"] == (1.0 if rank is not None and rank <= k else 0.0)
    assert metrics["hit"] == (0.0 if rank is None else 1.0)
    assert all(isinstance(v, float) for v in metrics.values())


def test_evidence_tasks_registered():
    for name in ("nq", "triviaqa", "squad"):
        for variant in (name, name + "_no_reason"):
            task = get_task(variant)
            assert task.family.name == "evidence" and task.reward is TABLES["evidence"]
            assert task.train_depth == task.val_depth == 3000
            assert task.reasoning is (variant == name)
            text = task.messages(query="who wrote hamlet")[1]["content"]
            assert "who wrote hamlet" in text and "passage" in text


# ---- a real-text passage corpus ------------------------------------------------------------------


def _passages():
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.core.bundled import collection_dir
    out = []
    for doc in load_corpus(collection_dir("scifact")):
        words = doc["text"].split()
        for i in range(0, max(len(words), 1), 100):
            out.append({"_id": f"{doc['_id']}-{i // 100}", "title": doc["title"],
                        "text": " ".join(words[i:i + 100])})
    return out


#: Real NQ-open dev questions whose answers occur in the SciFact passages.
QUESTIONS = [
    "which eastern european country was ruled by the magyars",
    "in which country would you find the champs elysees 1. spain 2. france",
    "where do long-chain fatty acids go",
    "where does the fire hydrant water come from",
    "who gets the interest from the federal reserve",
    "1 25-dihydroxyvitamin d3 is secreted by several organs one of which is the",
    "what is the 3d shape of a micelle",
    "who sang the 1995 hit song who will save your soul",
    "what are the 3 layers of the meninges",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The passage corpus as a user would supply it, indexed with `deepretrieval index`."""
    folder = tmp_path_factory.mktemp("scifact_passages")
    passages = _passages()
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for p in passages:
            fh.write(json.dumps(p) + "\n")
    assert cli_main(["index", "--corpus", str(folder / "corpus.jsonl"), "--name", "sf_passages"]) == 0
    return {"folder": folder, "passages": passages, "index": open_index("sf_passages")}


@pytest.fixture(scope="module")
def examples():
    by_question = {ex["question"]: ex for ex in nq_examples("dev") + nq_examples("efficientqa-dev")}
    return [by_question[q] for q in QUESTIONS]


def _oracle_rank(texts, answers, depth):
    """Independent check (DPR ``has_answers`` semantics for the plain alphanumeric answers used
    here): the answer's words, articles included, adjacent and separated by whitespace only
    (punctuation is a token of its own), on word boundaries in the lowercased text."""
    words = [[w for w in re.split(r"\s+", a.lower()) if w] for a in answers]
    pats = [re.compile(r"(?<![^\W_])" + r"\s+".join(map(re.escape, ws)) + r"(?![^\W_])")
            for ws in words if ws]
    for rank, text in enumerate(texts[:depth], start=1):
        if any(p.search(text.lower()) for p in pats):
            return rank
    return None


def test_bundled_nq_open():
    dev = nq_examples("dev")
    assert len(dev) == 3610
    assert len(nq_examples("efficientqa-dev")) == 1800
    assert len(nq_examples("efficientqa-test")) == 1769
    assert dev[0] == {"question": "when was the last time anyone was on the moon",
                      "answers": ["14 December 1972 UTC", "December 1972"]}
    with pytest.raises(ValueError, match="unknown NQ-open split"):
        nq_examples("train")


def _completion(query: str) -> str:
    return f"<think>look for the answer</think>\n<answer>{json.dumps({'query': query})}</answer>"


def test_compute_score_end_to_end_matches_oracle(corpus, examples):
    index = corpus["index"]
    seen_tiers = set()
    for ex in examples:
        gt = {"target": ex["answers"]}
        extra = {"split": "dev", "search_index": "sf_passages", "query": ex["question"]}
        out = compute_score("nq", _completion(ex["question"]), gt, extra)
        texts = index.search([ex["question"]], DEFAULT_DEPTH, return_text=True)[0].texts
        oracle = _oracle_rank(texts, ex["answers"], DEFAULT_DEPTH)
        assert out["format_ok"] is True and out["search_error"] is False
        assert out["first_hit_rank"] == (oracle if oracle is not None else DEFAULT_DEPTH + 1), ex
        expected = TABLES["evidence"].total(True, TABLES["evidence"].answer_score(
            out["first_hit_rank"]))
        assert out["score"] == expected
        assert out["hit@20"] == (1.0 if oracle is not None and oracle <= 20 else 0.0)
        seen_tiers.add(expected)
    # the real questions cover top ranks, middle tiers and "no answer-bearing passage"
    assert 6.0 in seen_tiers and -2.5 in seen_tiers and len(seen_tiers) >= 4


def test_the_reward_ranks_equal_the_plain_rule_for_many_nq_questions(corpus):
    """The evidence reward's rank (answers sent with the search; the index's kernel rules most
    passages out) equals DPR's rule read plainly (tokens_by_char) over the searched texts, for
    80 real NQ-open questions with all their answers (dates, numbers, names with accents)."""
    from deepretrieval.core import dpr_match

    index = corpus["index"]
    assert index.answer_filter() is not None
    exs = nq_examples("dev")[:80]
    questions = [ex["question"] for ex in exs]
    results = index.search(questions, DEFAULT_DEPTH, return_text=True)
    seen: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}

    def plain(text):
        if text not in seen:
            toks = tuple(dpr_match.tokens_by_char(text))
            seen[text] = toks, frozenset(toks)
        return seen[text]

    hits = 0
    for ex, res in zip(exs, results):
        needles = [tuple(dpr_match.tokens_by_char(a)) for a in dpr_match.answer_keys(ex["answers"])]
        want = next((rank for rank, text in enumerate(res.texts, start=1)
                     if any(plain(text)[1].issuperset(n) and dpr_match.contains(plain(text)[0], n)
                            for n in needles)), None)
        out = compute_score("nq", _completion(ex["question"]), {"target": ex["answers"]},
                            {"split": "dev", "search_index": "sf_passages"})
        assert out["first_hit_rank"] == (want if want is not None else DEFAULT_DEPTH + 1), ex
        hits += want is not None
    assert 0 < hits < len(exs)


def test_a_better_query_earns_more(corpus, examples):
    ex = next(e for e in examples if e["question"].startswith("what are the 3 layers"))
    gt, extra = {"target": ex["answers"]}, {"split": "dev", "search_index": "sf_passages"}
    vague = compute_score("nq", _completion("layers"), gt, extra)
    precise = compute_score("nq", _completion("meninges dura mater arachnoid pia mater"), gt, extra)
    assert precise["first_hit_rank"] <= 5 < vague["first_hit_rank"]
    assert precise["score"] > vague["score"]


def test_format_and_search_errors(corpus, examples):
    ex = examples[0]
    gt = {"target": ex["answers"]}
    bad = compute_score("nq", "Hungary, obviously", gt, {"split": "dev", "search_index": "sf_passages"})
    assert bad["score"] == -4 and bad["format_ok"] is False
    missing = compute_score("nq", _completion("magyars"), gt, {"split": "dev",
                                                               "search_index": "no_such_index"})
    assert missing["search_error"] is True and missing["score"] == -3
    # the no-reason variant with its prefill
    out = compute_score("nq_no_reason", "magyars hungary\"}</answer>", gt,
                        {"split": "dev", "search_index": "sf_passages"})
    assert out["format_ok"] is True and out["first_hit_rank"] >= 1


def test_hostile_completions_get_defined_scores(corpus, examples):
    gt = {"target": examples[0]["answers"]}
    extra = {"split": "train", "search_index": "sf_passages"}
    nasty = ["", "<answer></answer>", _completion(""), _completion(" " * 50), _completion("\x00"),
             _completion("(" * 300), _completion("ü" * 5000), _completion("a AND OR NOT"),
             "<think>x</think><answer>{\"query\": 5}</answer>", None, 42]
    results = score_batch([("nq", c, gt, extra) for c in nasty])
    keys = {tuple(sorted(r)) for r in results}
    assert len(keys) == 1                                   # same metric keys for every row
    for r in results:
        assert isinstance(r["score"], float) and -4 <= r["score"] <= 6
        assert all(isinstance(v, (bool, float)) for v in r.values())


def test_prepare_nq_and_baseline_cli(corpus, tmp_path, capsys):
    out = tmp_path / "nq"
    assert cli_main(["prepare", "nq", "--index", "sf_passages", "--limit", "40",
                     "--out", str(out)]) == 0
    from deepretrieval.catalog import read_rows
    rows = read_rows(out / "dev.parquet")
    dev = nq_examples("dev")[:40]
    assert len(rows) == 40
    for row, ex in zip(rows, dev):
        assert row["data_source"] == "nq" and row["ability"] == "evidence"
        assert row["reward_model"]["ground_truth"]["target"] == ex["answers"]
        assert row["extra_info"]["query"] == ex["question"]
        assert row["extra_info"]["search_index"] == "sf_passages"
        assert row["extra_info"]["split"] == "dev"
        assert ex["question"] in row["prompt"][1]["content"]
    capsys.readouterr()
    assert cli_main(["baseline", "--task", "nq", "--rows", str(out / "dev.parquet"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 40 and summary["search_error_rate"] == 0
    assert 0 <= summary["hit@20"] <= summary["hit@100"] <= summary["hit@1000"] <= summary["hit"] <= 1


def test_bundled_rows_for_nq(corpus, capsys):
    from deepretrieval.catalog import bundled_rows
    rows = bundled_rows("nq", "test")
    assert len(rows) == 3610 and rows[0]["extra_info"]["split"] == "test"
    assert "search_index" not in rows[0]["extra_info"]                # the task's index
    assert len(bundled_rows("nq_no_reason", "efficientqa-dev")) == 1800
    with pytest.raises(ValueError, match="no bundled rows"):
        bundled_rows("triviaqa", "test")


def test_prepare_from_user_file(tmp_path):
    src = tmp_path / "tqa.jsonl"
    src.write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": ["Shakespeare"]}) + "\n"
                   + json.dumps({"question": "Capital of France?", "answers": "Paris"}) + "\n")
    assert cli_main(["prepare", "triviaqa", "--input", str(src), "--index", "wiki",
                     "--task", "triviaqa_no_reason", "--split", "train", "--out",
                     str(tmp_path / "out")]) == 0
    from deepretrieval.catalog import read_rows
    rows = read_rows(tmp_path / "out" / "train.parquet")
    assert [r["reward_model"]["ground_truth"]["target"] for r in rows] == [["Shakespeare"], ["Paris"]]
    assert rows[0]["extra_info"]["prefill"] == "<answer>{\"query\": \""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no answers here"}\n')
    from deepretrieval.core.beir_files import FormatError
    with pytest.raises(FormatError, match="bad.jsonl:1"):
        load_qa_jsonl(bad)
    assert cli_main(["prepare", "nq", "--index", "x", "--task", "scifact", "--out",
                     str(tmp_path / "o2")]) == 2


@pytest.mark.slow
def test_evidence_over_a_dense_index(corpus, examples, tmp_path):
    """The same family on a dense index (texts come back from the dense backend)."""
    from deepretrieval.catalog import register_index
    from deepretrieval.search.dense import DenseIndex
    ex = next(e for e in examples if e["question"].startswith("what are the 3 layers"))
    passages = [p for p in corpus["passages"] if has_answer(p["title"] + " " + p["text"],
                                                            ex["answers"])]
    passages += corpus["passages"][:150]
    index = DenseIndex.build(passages, "minilm", name="sf_dense_small",
                             precision="bfloat16" if bf16_supported() else "float32",
                             max_seq_length=64, show_progress=False)
    index.save(tmp_path / "sf_dense_small")
    register_index("sf_dense_small", tmp_path / "sf_dense_small")
    rows = qa_rows(get_task("nq"), [ex], "dev", search_index="sf_dense_small")
    out = compute_score("nq", _completion("layers of the meninges"),
                        rows[0]["reward_model"]["ground_truth"], rows[0]["extra_info"])
    texts = index.search(["layers of the meninges"], 3000, return_text=True)[0].texts
    assert len(texts) == len(passages)
    assert out["first_hit_rank"] == _oracle_rank(texts, ex["answers"], 3000)
    assert out["hit@100"] == 1.0 and out["score"] >= 2
