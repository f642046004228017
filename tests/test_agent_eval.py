"""Agentic evaluation: the agent next to closed-book and naive RAG, per-question trajectories."""
import json

import pytest

from deepretrieval.agent.evaluate import evaluate_agent
from deepretrieval.data.closed_world import OraclePolicy
from deepretrieval.tasks.agentic import CLOSED_BOOK, NAIVE_RAG

pytestmark = pytest.mark.rows("agent_closedworld", "test")


def _lines(path):
    return [json.loads(line) for line in open(path)]


def test_oracle_report_and_files(rows, tmp_path):
    report = evaluate_agent(OraclePolicy(), rows[:12], out_dir=tmp_path, plot=False)
    systems = report["systems"]
    assert list(systems) == [CLOSED_BOOK, NAIVE_RAG, "oracle"]
    assert systems["oracle"]["em"] == 1.0 and systems["oracle"]["f1"] == 1.0
    assert systems["oracle"]["n_search"] == pytest.approx(sum(r["extra_info"]["hops"] for r in rows[:12]) / 12)
    assert systems[NAIVE_RAG]["n_search"] == 1.0
    assert systems[CLOSED_BOOK]["n_search"] == 0.0
    recs = _lines(tmp_path / "generations.jsonl")
    assert len(recs) == 12
    for rec in recs:
        assert rec["metrics"]["em"] == 1.0 and rec["answer"] == rec["gold"][0]
        assert "<information>" in rec["trajectory"] and rec["injected_spans"]
        # the per-question record agrees with the reward's view of the trajectory
        assert rec["metrics"]["turns"] == rec["turns"] and rec["metrics"]["n_search"] == rec["n_search"]
    assert len(_lines(tmp_path / "closed_book.jsonl")) == 12
    assert len(_lines(tmp_path / "naive_rag.jsonl")) == 12
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["systems"]) == {CLOSED_BOOK, NAIVE_RAG, "oracle"}
    md = (tmp_path / "summary.md").read_text()
    assert "| closed-book |" in md and "| naive RAG |" in md
    # rerun: everything resumes from the file, same numbers
    again = evaluate_agent(OraclePolicy(), rows[:12], out_dir=tmp_path, plot=False, references=False)
    assert again["summary"] == report["summary"]
    with pytest.raises(ValueError, match="other settings"):
        evaluate_agent(OraclePolicy(), rows[:12], out_dir=tmp_path, plot=False, max_new_tokens=9)


@pytest.mark.slow
def test_tiny_model_closed_book_and_naive_rag(rows, tmp_path, tiny):
    from deepretrieval.generation.local import TransformersGenerator

    gen = TransformersGenerator(tiny)
    report = evaluate_agent(gen, rows[:4], out_dir=tmp_path, max_new_tokens=12, batch_size=4,
                            plot=False, name="tiny")
    systems = report["systems"]
    assert list(systems) == [CLOSED_BOOK, NAIVE_RAG, "tiny"]
    assert systems[CLOSED_BOOK]["em"] == 0.0          # made-up facts: nothing to recall
    for name in systems:
        for key in ("em", "f1", "n_search", "turns", "hit", "format_error_rate", "search_error_rate"):
            assert key in systems[name]
    assert systems[NAIVE_RAG]["n_search"] == 1.0
    # naive RAG searched the question: for the closed world it retrieves the first hop's passage
    rag = _lines(tmp_path / "naive_rag.jsonl")
    assert all(r["searches"][0]["ids"] for r in rag)
    for rec in _lines(tmp_path / "generations.jsonl"):
        assert rec["metrics"]["turns"] == rec["turns"] and rec["metrics"]["n_search"] == rec["n_search"]
        assert 1 <= rec["turns"] <= rows[0]["extra_info"]["max_turns"]


def test_eval_cli_dispatches_agentic_tasks(tmp_path, capsys, tiny):
    from deepretrieval.cli import main

    out = tmp_path / "run"
    rc = main(["eval", "--task", "agent_closedworld", "--model", tiny, "--limit", "2",
               "--max-new-tokens", "8", "--max-turns", "2", "--out", str(out), "--no-plot", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["systems"]) == {CLOSED_BOOK, NAIVE_RAG, "tiny-qwen2-v1-seed0"}
    recs = _lines(out / "generations.jsonl")
    assert len(recs) == 2 and all(r["turns"] <= 2 for r in recs)
    assert json.loads((out / "run.json").read_text())["agent"]["max_turns"] == 2
    assert main(["eval", "--task", "agent_closedworld", "--model", "x", "--n", "2", "--sampling",
                 "--out", str(tmp_path / "bad")]) == 2  # a clear error, no traceback
