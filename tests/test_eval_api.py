"""LLM-API baselines against a loopback OpenAI-compatible server: the task's own messages are
sent, answers are scored like the training reward, errors retried or reported, responses cached."""
import json

import pytest

from deepretrieval.catalog import bundled_rows
from deepretrieval.evaluation.single_shot import BASELINE_NAME, evaluate_model
from deepretrieval.generation.api import ChatClient, LLMAPIError, chat_completions_url
from deepretrieval.testing.openai_server import LoopbackChatServer

ROWS = 12
pytestmark = pytest.mark.rows("scifact", "test", limit=ROWS)


def claim_of(body):
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return user.rsplit("Claim: ", 1)[1]


def reasoning_echo(body):
    claim = claim_of(body)
    return f"<think>The claim itself is a good query.</think>\n<answer>{json.dumps({'query': claim})}</answer>"


@pytest.fixture
def api(tmp_path):
    """evaluate_model keyword arguments for a loopback server + a fresh response cache."""
    def kw(server, **extra):
        return dict(base_url=server.base_url, cache_dir=tmp_path / "cache", progress=False,
                    max_new_tokens=64, batch_size=5, backoff=0.01, **extra)
    return kw


def test_api_baseline_scores_like_the_original_query(rows, api, tmp_path):
    with LoopbackChatServer(reasoning_echo) as server:
        report = evaluate_model("openai:echo", rows, out_dir=tmp_path / "run", **api(server))
        assert len(server.requests) == ROWS
        for body, row in zip(sorted(server.requests, key=claim_of), sorted(rows, key=lambda r: r["extra_info"]["query"])):
            # the task's own chat messages, once: no prompt rendered into a second template
            assert body["messages"] == row["prompt"]
            assert body["model"] == "echo" and body["temperature"] == 0.0 and body["max_tokens"] == 64
        # rerun into another folder: every response comes from the cache
        again = evaluate_model("openai:echo", rows, out_dir=tmp_path / "run2", **api(server))
        assert len(server.requests) == ROWS
    # copying the claim scores exactly like the original-query baseline
    for rec, base in zip(report["records"], report["baseline_records"]):
        assert rec["format_ok"] and rec["query"] == base["query"]
        assert rec["reasoning"] == "The claim itself is a good query."
        assert {k: v for k, v in rec["metrics"].items() if k != "score"} == \
            {k: v for k, v in base["metrics"].items() if k != "score"}
        assert rec["retrieved"] == base["retrieved"]
    model, baseline = report["systems"]["openai:echo"], report["systems"][BASELINE_NAME]
    assert model["ndcg@10"] == baseline["ndcg@10"] and model["format_error_rate"] == 0.0
    assert again["records"] == report["records"]


def test_answer_only_with_and_without_prefill(api, tmp_path, scifact_index):
    rows = bundled_rows("scifact_no_reason", "test")[:4]

    def reply(body):
        if body.get("continue_final_message"):  # vLLM-style continuation of the prefill
            assert body["messages"][-1] == {"role": "assistant", "content": '<answer>{"query": "'}
            assert body["add_generation_prompt"] is False
            return claim_of(body) + '"}</answer><|im_end|>'
        return f'<answer>{json.dumps({"query": claim_of(body)})}</answer>'

    with LoopbackChatServer(reply) as server:
        plain = evaluate_model("openai:m", rows, **api(server))
        cont = evaluate_model("openai:m", rows, **api(server, api_prefill="continue"))
        assert len(server.requests) == 8
        assert sum(bool(b.get("continue_final_message")) for b in server.requests) == 4
    for report in (plain, cont):
        assert report["summary"]["format_error_rate"] == 0.0
        assert report["summary"]["ndcg@10"] == report["baseline"]["ndcg@10"]
    assert plain["records"][0]["prefill"] == "" and cont["records"][0]["prefill"] == '<answer>{"query": "'


def test_malformed_answers_strict_and_lenient(rows, api):
    def reply(body):  # no tags at all: a chatty model ignoring the format
        return claim_of(body)

    with LoopbackChatServer(reply) as server:
        strict = evaluate_model("openai:chatty", rows, **api(server, baseline=False))
        lenient = evaluate_model("openai:chatty", rows, **api(server, extract="lenient"))
        assert len(server.requests) == ROWS  # same requests: the second run is served from cache
    assert strict["summary"]["format_error_rate"] == 1.0
    assert all(r["metrics"]["score"] == -2.0 and r["query"] is None for r in strict["records"])
    assert all(r["format_error"] for r in strict["records"])
    assert lenient["summary"]["strict_format_error_rate"] == 1.0
    assert lenient["summary"]["format_error_rate"] == 0.0
    assert lenient["summary"]["ndcg@10"] == lenient["baseline"]["ndcg@10"]
    assert all(r["extracted"] == "lenient" for r in lenient["records"])


def test_transient_http_errors_are_retried(rows, api):
    state = {"n": 0}

    def flaky(body):
        state["n"] += 1
        if state["n"] % 3 == 1:
            return (503, {"error": {"message": "overloaded"}})
        if state["n"] % 3 == 2:
            return (200, "{not json")  # a truncated/malformed response is retried too
        return reasoning_echo(body)

    with LoopbackChatServer(flaky) as server:
        report = evaluate_model("openai:flaky", rows[:3], **api(server, concurrency=1, baseline=False))
        assert len(server.requests) == 9
    assert report["summary"]["format_error_rate"] == 0.0


def test_permanent_errors_are_clear(rows, api, tmp_path, capsys):
    with LoopbackChatServer(reasoning_echo, api_key="right") as server:
        with pytest.raises(LLMAPIError, match=r"HTTP 401.*OPENAI_API_KEY.*invalid api key"):
            evaluate_model("openai:x", rows[:2], api_key="wrong", **api(server))
        assert len(server.requests) == 0  # rejected before the reply: not retried
    with LoopbackChatServer(lambda body: (500, {"error": {"message": "boom"}})) as server:
        with pytest.raises(LLMAPIError, match=r"failed after 3 attempts: HTTP 500: boom"):
            evaluate_model("openai:x", rows[:1], max_retries=2, **api(server))
        assert len(server.requests) == 3
        # the CLI reports it without a traceback and keeps the rows done so far
        from deepretrieval.cli import main
        code = main(["eval", "--model", "openai:x", "--base-url", server.base_url, "--task", "scifact",
                     "--limit", "1", "--out", str(tmp_path / "cli"), "--cache-dir", str(tmp_path / "c"),
                     "--max-retries", "0"])
    assert code == 1 and "HTTP 500" in capsys.readouterr().err


def test_cli_api_baseline_cached(tmp_path, capsys, scifact_index):
    from deepretrieval.cli import main
    with LoopbackChatServer(reasoning_echo) as server:
        args = ["eval", "--model", "openai:echo", "--base-url", server.base_url, "--task", "scifact",
                "--limit", "3", "--cache-dir", str(tmp_path / "cache"), "--json"]
        assert main(args + ["--out", str(tmp_path / "a")]) == 0
        first = json.loads(capsys.readouterr().out)
        assert main(args + ["--out", str(tmp_path / "b")]) == 0
        second = json.loads(capsys.readouterr().out)
        assert len(server.requests) == 3
        assert main(args + ["--out", str(tmp_path / "c"), "--no-cache"]) == 0
        assert len(server.requests) == 6
    assert first["systems"] == second["systems"]
    assert first["systems"]["openai:echo"]["ndcg@10"] == first["systems"][BASELINE_NAME]["ndcg@10"]


def test_chat_client_url_and_key_handling(monkeypatch):
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://x/v1/chat/completions") == "https://x/v1/chat/completions"
    with pytest.raises(ValueError, match="not an http"):
        chat_completions_url("localhost:8000")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        ChatClient()


def test_sql_task_against_gold_sql_upper_bound(api):
    """SQL tasks: the reference system is the gold SQL; an API model answering the gold SQL
    (strict format) matches it, one answering a wrong query executes but does not match."""
    rows = bundled_rows("spider", "test")[:4]
    gold = {r["extra_info"]["query"]: r["reward_model"]["ground_truth"]["target"][0] for r in rows}

    def oracle(body):
        user = body["messages"][-1]["content"]
        question = next(q for q in gold if q in user)
        sql = gold[question] if body["model"] == "oracle" else "SELECT 1"
        return f"<think>look at the schema</think>\n<answer>{json.dumps({'sql': sql})}</answer>"

    with LoopbackChatServer(oracle) as server:
        good = evaluate_model("openai:oracle", rows, **api(server))
        bad = evaluate_model("openai:wrong", rows, **api(server, baseline=False))
    assert good["baseline_name"] == "gold SQL (upper bound)"
    assert good["summary"]["exec_match"] == good["baseline"]["exec_match"] == 1.0
    assert good["summary"]["score"] == 1.1
    assert bad["summary"]["exec_match"] == 0.0 and bad["summary"]["format_error_rate"] == 0.0
    assert bad["summary"]["exec_ok"] == 1.0
