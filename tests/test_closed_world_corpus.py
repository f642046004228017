"""The generated closed-world corpus: deterministic, answerable only by searching."""
import os
import subprocess
import sys

import pytest

from deepretrieval.agent.runner import run_rows
from deepretrieval.catalog import bundled_rows, get_task
from deepretrieval.core.agent_protocol import RETRIEVED_KEY, AgentSettings
from deepretrieval.core.qa_metrics import normalize_answer
from deepretrieval.data import closed_world as cw
from deepretrieval.rewards import score_batch


def _score(rows, episodes):
    # the runner's record of real searches goes with the trajectory (the `hit` metric reads it)
    return score_batch([(r["data_source"], e.text, r["reward_model"]["ground_truth"],
                         {**r["extra_info"], RETRIEVED_KEY: e.passages})
                        for r, e in zip(rows, episodes)])


@pytest.mark.slow
def test_deterministic_across_processes():
    code = "from deepretrieval.data.closed_world import generate_world; print(generate_world(0).digest())"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           check=True).stdout.strip()
    assert other == cw.generate_world(0).digest()
    assert cw.generate_world(1).digest() != other
    assert [q.id for q in cw.split_questions("test")] == [q.id for q in cw.split_questions("test")]


def test_world_is_well_formed():
    world = cw.generate_world(0)
    docs = world.passages()
    assert len({d["_id"] for d in docs}) == len(docs)
    titles = [normalize_answer(d["title"]) for d in docs]
    assert len(set(titles)) == len(titles)  # no two entities share a name
    qs = world.questions()
    assert {q.hops for q in qs} == {1, 2, 3}
    train, test = cw.split_questions("train"), cw.split_questions("test")
    assert len(train) + len(test) == len(qs) and not {q.id for q in train} & {q.id for q in test}
    for q in qs:  # the answer is never in the question, and a passage states each hop
        assert normalize_answer(q.answer) not in normalize_answer(q.question)
        assert all(any(d["title"] == e for d in docs) for e in q.chain)


def test_oracle_reaches_em_1_and_closed_book_0():
    task = get_task("agent_closedworld")
    rows = bundled_rows(task.name, "test")
    assert rows[0]["extra_info"]["search_index"] == "closedworld"
    eps = run_rows(cw.OraclePolicy(), rows)
    metrics = _score(rows, eps)
    assert sum(m["em"] for m in metrics) == len(rows)
    assert all(m["hit"] == 1.0 for m in metrics)
    hops = [r["extra_info"]["hops"] for r in rows]
    assert [m["n_search"] for m in metrics] == [float(h) for h in hops]  # one search per hop
    closed = _score(rows, run_rows(cw.ClosedBookGuess(), rows))
    assert sum(m["em"] for m in closed) == 0
    # the oracle needs the retrieved passages: with nothing retrieved it cannot answer
    class Empty:
        def search(self, index, queries, k, *, return_text=False, options=None):
            from deepretrieval.core.results import SearchResult
            return [SearchResult(texts=[]) for _ in queries]
    blind = _score(rows, run_rows(cw.OraclePolicy(), rows, Empty()))
    assert sum(m["em"] for m in blind) == 0


def test_oracle_tool_protocol():
    task = get_task("agent_closedworld")
    rows = cw.closed_world_rows(task, "test", settings=AgentSettings(protocol="tool"))[:10]
    metrics = _score(rows, run_rows(cw.OraclePolicy(), rows))
    assert all(m["em"] == 1.0 for m in metrics)


def test_prepare_closedworld_cli(tmp_path, capsys):
    from deepretrieval.catalog import read_rows
    from deepretrieval.cli import main

    out = tmp_path / "cw"
    assert main(["prepare", "closedworld", "--out", str(out), "--max-turns", "3", "--protocol", "tool"]) == 0
    train, test = read_rows(out / "train.parquet"), read_rows(out / "test.parquet")
    assert (len(train), len(test)) == (160, 40)
    assert test[0]["agent_name"] == "tool_agent" and test[0]["extra_info"]["max_turns"] == 3
    metrics = _score(test, run_rows(cw.OraclePolicy(), test))
    assert sum(m["em"] for m in metrics) == sum(m["hops"] <= 2 for m in
                                                 (r["extra_info"] for r in test))  # 3 hops need 4 turns
    assert main(["prepare", "closedworld", "--task", "agent_nq", "--out", str(out)]) == 2
