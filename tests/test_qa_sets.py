"""Agentic QA rows: bundled standard sets, bring-your-own JSONL, ``deepretrieval prepare qa``."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from deepretrieval.cli import main
from deepretrieval.data import qa_sets
from deepretrieval.core.beir_files import FormatError
from deepretrieval.catalog import read_rows

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multihop_qa_r1searcher"


def test_all_seven_standard_sets_have_task_names():
    assert [s.task_name for s in qa_sets.STANDARD_SETS.values()] == [
        "agent_nq", "agent_triviaqa", "agent_popqa", "agent_hotpotqa", "agent_2wikimultihopqa",
        "agent_musique", "agent_bamboogle"]
    assert qa_sets.task_name("my_set2") == "agent_my_set2"
    for bad in ("My Set", "", "-x", "a/b"):
        with pytest.raises(ValueError, match="lower-case"):
            qa_sets.task_name(bad)


@pytest.mark.parametrize("name,split,n,first_q,first_a", [
    ("nq", "test", 3610, "when was the last time anyone was on the moon",
     ["14 December 1972 UTC", "December 1972"]),
    ("hotpotqa", "dev", 500, "In the 1973 NFL season, the Pro Bowl took place at what football "
     "stadium that is part of the Truman Sports Complex, along with what other stadium?",
     ["Kauffman Stadium"]),
    ("2wikimultihopqa", "dev", 500, "Who is Ahmose-Henutemipet's paternal grandmother?",
     ["Tetisheri"]),
    ("musique", "dev", 500, "What was the director of Addicted to Love nominated for?",
     ["Academy Award for Best Live Action Short Film"]),
    ("bamboogle", "test", 125, "Who was president of the United States in the year that "
     "Citibank was founded?", ["james madison"]),
])
def test_bundled_sets(name, split, n, first_q, first_a):
    assert qa_sets.default_split(name) == split
    questions = qa_sets.bundled_questions(name)
    assert len(questions) == n
    assert questions[0]["question"] == first_q and questions[0]["answers"] == first_a
    assert len({q["id"] for q in questions}) == n


def test_bundled_copies_equal_the_shared_originals():
    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    for name, file in (("hotpotqa", "hotpotqa_500"), ("2wikimultihopqa", "2wiki_500"),
                       ("musique", "musique_500"), ("bamboogle", "bamboogle")):
        bundled = qa_sets.BUNDLED_DIR / qa_sets.STANDARD_SETS[name].bundled[
            qa_sets.default_split(name)]
        assert gzip.decompress(bundled.read_bytes()) == (SHARED / f"{file}.jsonl").read_bytes()


def test_unbundled_sets_say_where_to_get_them():
    for name in ("triviaqa", "popqa"):
        with pytest.raises(ValueError, match="--from-hub"):
            qa_sets.bundled_questions(name)
    with pytest.raises(ValueError, match="bundled: \\['test', 'efficientqa-dev'"):
        qa_sets.bundled_questions("nq", "train")
    with pytest.raises(KeyError, match="standard sets"):
        qa_sets.standard_set("nope")


def test_rows_schema():
    questions = qa_sets.bundled_questions("bamboogle")[:3]
    rows = qa_sets.qa_rows(questions, "agent_bamboogle", "wiki_offline", "test", topk=5,
                           max_turns=3)
    assert len(rows) == 3
    row = rows[1]
    assert set(row) == {"data_source", "agent_name", "prompt", "ability", "reward_model",
                        "extra_info"}
    assert row["data_source"] == "agent_bamboogle"
    # the agentic family's rows (tasks/agentic.agent_rows): its agent loop, prompt and settings
    assert row["agent_name"] == "deepretrieval_agent" and row["ability"] == "agentic"
    assert row["reward_model"] == {"style": "rule",
                                   "ground_truth": {"target": questions[1]["answers"]}}
    assert row["prompt"][-1] == {"role": "user", "content": f"Question: {questions[1]['question']}"}
    assert row["extra_info"] == {
        "split": "test", "index": 1, "query_id": questions[1]["id"],
        "query": questions[1]["question"], "search_index": "wiki_offline", "top_k": 5,
        "max_turns": 3,
        "tools_kwargs": {"search": {"create_kwargs": {
            "index": "wiki_offline", "top_k": 5,
            "ground_truth": {"target": questions[1]["answers"]}}}}}
    for bad in ({"topk": 0}, {"max_turns": True}, {"topk": "3"}):
        with pytest.raises(ValueError):
            qa_sets.qa_rows(questions, "agent_x", "w", "test", **bad)
    with pytest.raises(ValueError, match="index"):
        qa_sets.qa_rows(questions, "agent_x", "", "test")


def write_jsonl(path: Path, lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


def test_bring_your_own_formats(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": " Who wrote Hamlet? ", "golden_answers": ["William Shakespeare", "Shakespeare"]},
        {"id": "q7", "question": "Capital of France?", "answer": "Paris"},
        "",
        {"idx": 3, "question": "Largest planet?", "answers": ["Jupiter", " "]},
    ])
    qs = qa_sets.load_questions(path)
    assert qs == [
        {"id": "0", "question": "Who wrote Hamlet?", "answers": ["William Shakespeare", "Shakespeare"]},
        {"id": "q7", "question": "Capital of France?", "answers": ["Paris"]},
        {"id": "3", "question": "Largest planet?", "answers": ["Jupiter"]}]


@pytest.mark.parametrize("lines,line,message", [
    ([{"question": "a?", "answers": ["x"]}, "{not json"], 2, "invalid JSON"),
    ([{"question": "", "answers": ["x"]}], 1, "'question' must be a non-empty string"),
    ([{"question": "a?"}], 1, "no gold answers"),
    ([{"question": "a?", "answers": []}], 1, "'answers' must be"),
    ([{"question": "a?", "golden_answers": [1, 2]}], 1, "'golden_answers' must be"),
    ([{"question": "a?", "answer": "x", "id": [1]}], 1, "'id' must be"),
    ([{"id": 1, "question": "a?", "answer": "x"}, {"id": "1", "question": "b?", "answer": "y"}],
     2, "repeats line 1"),
    (["[1, 2]"], 1, "expected a JSON object"),
])
def test_bring_your_own_errors_name_file_and_line(tmp_path, lines, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(FormatError, match=message) as info:
        qa_sets.load_questions(path)
    assert str(info.value).startswith(f"{path}:{line}:")


def test_cli_bundled_and_byo(tmp_path, capsys):
    out = tmp_path / "hp"
    assert main(["prepare", "qa", "--set", "hotpotqa", "--index", "wiki_offline", "--limit", "7",
                 "--topk", "2", "--out", str(out)]) == 0
    assert "agent_hotpotqa dev: 7 rows" in capsys.readouterr().out
    rows = read_rows(out / "dev.parquet")
    expected = qa_sets.qa_rows(qa_sets.bundled_questions("hotpotqa")[:7], "agent_hotpotqa",
                               "wiki_offline", "dev", topk=2)
    assert rows == expected

    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "Capital of France?",
                                                  "golden_answers": ["Paris"]}])
    assert main(["prepare", "qa", "--name", "capitals", "--input", str(path), "--index", "w",
                 "--split", "train", "--out", str(tmp_path / "cap")]) == 0
    rows = read_rows(tmp_path / "cap" / "train.parquet")
    assert [r["data_source"] for r in rows] == ["agent_capitals"]
    assert rows[0]["reward_model"]["ground_truth"] == {"target": ["Paris"]}
    assert rows[0]["extra_info"]["split"] == "train"
    # a standard set from the user's file keeps the standard task name
    assert main(["prepare", "qa", "--set", "triviaqa", "--input", str(path), "--index", "w",
                 "--out", str(tmp_path / "tq")]) == 0
    assert read_rows(tmp_path / "tq" / "test.parquet")[0]["data_source"] == "agent_triviaqa"


@pytest.mark.parametrize("argv,message", [
    (["--set", "popqa"], "--from-hub"),
    (["--name", "nq", "--input", "x.jsonl"], "'nq' is a standard set"),
    (["--name", "mine"], "--name needs --input"),
    (["--name", "Bad Name", "--input", "BAD"], "lower-case"),
    ([], "give --set"),
    (["--set", "nq", "--name", "x"], "not both"),
    (["--set", "nq", "--split", "train"], "no bundled 'train' split"),
    (["--set", "nq", "--limit", "0"], "limit must be"),
    (["--name", "mine", "--input", "BAD"], ":2: no gold answers"),
])
def test_cli_errors_are_messages(tmp_path, capsys, argv, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "a?", "answer": "x"},
                                               {"question": "b?"}])
    argv = [str(bad) if a == "BAD" else a for a in argv]
    assert main(["prepare", "qa", "--index", "w", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_hub_download_path(tmp_path, monkeypatch):
    # no network: stand in for hf_hub_download and check what would be fetched
    import huggingface_hub
    local = write_jsonl(tmp_path / "test.jsonl", [
        {"id": "test_0", "question": "who got the first nobel prize in physics",
         "golden_answers": ["Wilhelm Conrad Röntgen"], "metadata": {}}])
    calls = []

    def fake(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw["repo_type"]))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    qs = qa_sets.hub_questions("triviaqa", "test")
    assert calls == [("RUC-NLPIR/FlashRAG_datasets", "triviaqa/test.jsonl", "dataset")]
    assert qs == [{"id": "test_0", "question": "who got the first nobel prize in physics",
                   "answers": ["Wilhelm Conrad Röntgen"]}]
    with pytest.raises(ValueError, match="no 'train' split of 'popqa'"):
        qa_sets.hub_questions("popqa", "train")
    assert main(["prepare", "qa", "--set", "popqa", "--from-hub", "--index", "w",
                 "--out", str(tmp_path / "pq")]) == 0
    assert calls[-1] == ("RUC-NLPIR/FlashRAG_datasets", "popqa/test.jsonl", "dataset")
    assert read_rows(tmp_path / "pq" / "test.parquet")[0]["data_source"] == "agent_popqa"
