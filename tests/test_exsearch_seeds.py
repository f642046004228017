"""Seed trajectories for the ExSearch warm-up: oracle, teacher endpoint (loopback server), JSONL."""
import json

import pytest

from deepretrieval.agent import seeds as S
from deepretrieval.catalog import get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.data.closed_world import OraclePolicy
from deepretrieval.generation.decoding import Prompt
from deepretrieval.testing.openai_server import LoopbackChatServer

pytestmark = pytest.mark.rows("agent_closedworld", "train", limit=6)


def _question(body):
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def test_oracle_seeds_are_correct_real_searches(rows):
    seeds, report = S.oracle_seeds(rows)
    assert report == {"kept": 6, "dropped": {}, "source": "oracle"}
    for ep in seeds:
        assert ep.n_search >= 1 and not ep.search_error
        assert ep.answer in S.gold_answers(ep.row)
        assert ep.injected_spans()


def test_teacher_seeds_through_a_loopback_endpoint(rows, tmp_path):
    oracle = OraclePolicy()
    questions = [r["extra_info"]["query"] for r in rows]
    broken, garbage, rambling, wrong = questions[:4]

    def reply(body):
        q = _question(body)
        if broken in q:
            return 503, {"error": {"message": "overloaded"}}
        if garbage in q:
            return 200, "this is not JSON"
        if rambling in q:
            return "I think the answer is somewhere in the corpus."   # no action at all
        msgs = body["messages"]
        prefill = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else ""
        turn = oracle.turn(Prompt.of([m for m in msgs if m["role"] != "assistant"], prefill))
        if wrong in q and "<answer>" in turn:
            return "<answer>Nowhere</answer>"
        return turn

    with LoopbackChatServer(reply) as server:
        seeds, report = S.teacher_seeds(rows, "teacher", base_url=server.base_url,
                                        cache_dir=tmp_path / "cache", max_retries=1, backoff=0.0)
        assert report["kept"] == 2
        assert report["dropped"] == {"teacher_error": 2, "no_answer": 1, "wrong_answer": 1}
        assert {ep.row["extra_info"]["query"] for ep in seeds} == set(questions[4:])
        for ep in seeds:
            assert ep.answer in S.gold_answers(ep.row) and ep.n_search >= 1
        # the teacher continued our prefill: a later request carries the trajectory so far
        continued = [b for b in server.requests if b["messages"][-1]["role"] == "assistant"]
        assert continued and all(b["continue_final_message"] for b in continued)
        assert all(P.INFO_OPEN in b["messages"][-1]["content"] for b in continued)
        sent = len(server.requests)
        # a rerun is answered from the cache: only the failing questions are asked again
        again, report2 = S.teacher_seeds(rows, "teacher", base_url=server.base_url,
                                         cache_dir=tmp_path / "cache", max_retries=1, backoff=0.0)
        assert [e.text for e in again] == [e.text for e in seeds]
        assert report2["cache_hits"] > 0
        new = server.requests[sent:]
        assert new and all(broken in _question(b) or garbage in _question(b) for b in new)


def test_teacher_unreachable_drops_every_question(rows, tmp_path):
    with LoopbackChatServer(lambda body: (500, {"error": {"message": "down"}})) as server:
        seeds, report = S.teacher_seeds(rows[:2], "t", base_url=server.base_url,
                                        cache_dir=tmp_path, max_retries=0, backoff=0.0)
    assert seeds == [] and report["dropped"] == {"teacher_error": 2}


def test_jsonl_seeds_rebuild_the_masks(rows, tmp_path):
    oracle, _ = S.oracle_seeds(rows[:3])
    path = tmp_path / "seeds.jsonl"
    lines = [{"question": ep.row["extra_info"]["query"],
              "answers": ep.row["reward_model"]["ground_truth"]["target"],
              "trajectory": ep.text} for ep in oracle]
    lines.append({"question": "What is the capital of Nowhere?", "answers": "X",
                  "trajectory": "<answer>Y</answer>"})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    seeds, report = S.jsonl_seeds(path, get_task("agent_closedworld"))
    assert report["kept"] == 3 and report["dropped"] == {"wrong_answer": 1}
    for ep, ref in zip(seeds, oracle):
        assert ep.text == ref.text
        assert ep.injected_spans() == ref.injected_spans()
        assert ep.messages == ref.messages and ep.answer == ref.answer
    everything, _ = S.jsonl_seeds(path, get_task("agent_closedworld"), keep="all")
    assert len(everything) == 4

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing \['trajectory'\]"):
        S.jsonl_seeds(bad, get_task("agent_closedworld"))
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="not JSON"):
        S.jsonl_seeds(bad, get_task("agent_closedworld"))
    with pytest.raises(FileNotFoundError):
        S.jsonl_seeds(tmp_path / "missing.jsonl", get_task("agent_closedworld"))
    with pytest.raises(ValueError, match="keep rule"):
        S.filter_seeds([], keep="best")
