"""The rewrite client (Python API, CLI, query_rewrite.py, vllm_host.sh) against a loopback
OpenAI-compatible server and the tiny local model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepretrieval.generation.api import LLMAPIError
from deepretrieval.rewrite import QueryRewriter
from deepretrieval.catalog import get_task
from deepretrieval.testing.openai_server import LoopbackChatServer

ROOT = Path(__file__).resolve().parent.parent
CLAIM = "Vitamin D supplementation lowers the risk of hip fracture."


def claim_of(body):
    user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return user.rsplit("Claim: ", 1)[1]


def expand(body):
    """A 'trained model' that continues the prefill with an expanded query."""
    return f'{claim_of(body)} vitamin D hip fracture"}}</answer>'


def test_rewriter_sends_the_task_messages_and_continues_the_prefill():
    task = get_task("scifact_no_reason")
    with LoopbackChatServer(expand) as server:
        rw = QueryRewriter("served", task="scifact_no_reason", api_url=server.base_url)
        result = rw.rewrite(CLAIM)
        assert rw(CLAIM) == result.query
        body = server.requests[0]
    # system + user exactly as in training, then the prefill as the assistant turn to continue
    assert body["messages"] == task.messages(query=CLAIM) + [{"role": "assistant", "content": task.prefill}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["temperature"] == 0.0 and body["model"] == "served"
    assert result.strict and result.ok and result.original == CLAIM
    assert result.query == f"{CLAIM} vitamin D hip fracture"


def test_rewriter_batches_and_keeps_order():
    claims = [f"claim number {i}" for i in range(5)]
    with LoopbackChatServer(expand) as server:
        rw = QueryRewriter("m", task="scifact_no_reason", api_url=server.base_url, batch_size=2)
        results = rw.rewrite_batch(claims)
        assert len(server.requests) == 5
    assert [r.original for r in results] == claims
    assert [r.query for r in results] == [f"{c} vitamin D hip fracture" for c in claims]


@pytest.mark.parametrize("reply, query, ok, strict", [
    ('<think>short</think>\n<answer>{"query": "vitamin D fracture"}</answer>', "vitamin D fracture", True, True),
    ('Sure! <answer>{"query": "vitamin D fracture"}</answer> hope it helps', "vitamin D fracture", True, False),
    ('```json\n{"query": "vitamin D fracture"}\n```', "vitamin D fracture", True, False),
    ('<think>I will write {"query": "vitamin D frac', CLAIM, False, False),
    ("", CLAIM, False, False),
])
def test_malformed_answers_are_extracted_leniently_or_fall_back(reply, query, ok, strict):
    with LoopbackChatServer(lambda body: reply) as server:
        rw = QueryRewriter("m", task="scifact", api_url=server.base_url)
        result = rw.rewrite(CLAIM)
        assert server.requests[0]["messages"] == get_task("scifact").messages(query=CLAIM)
    assert (result.query, result.ok, result.strict) == (query, ok, strict)
    if not ok:
        with LoopbackChatServer(lambda body: reply) as server:
            with pytest.raises(ValueError, match="no answer"):
                QueryRewriter("m", task="scifact", api_url=server.base_url, fallback=False).rewrite(CLAIM)


def test_server_model_listing_and_errors():
    with LoopbackChatServer(expand) as server:
        rw = QueryRewriter(task="scifact_no_reason", api_url=server.base_url)  # model from /v1/models
        assert rw.rewrite(CLAIM).ok and server.requests[0]["model"] == "loopback"
    calls = []

    def flaky(body):
        calls.append(1)
        return (429, {"error": {"message": "slow down"}}) if len(calls) == 1 else expand(body)

    with LoopbackChatServer(flaky) as server:
        rw = QueryRewriter("m", task="scifact_no_reason", api_url=server.base_url, backoff=0.01)
        assert rw.rewrite(CLAIM).strict and len(calls) == 2
    with LoopbackChatServer(lambda body: (400, {"error": {"message": "bad request: no such model"}})) as server:
        rw = QueryRewriter("m", task="scifact_no_reason", api_url=server.base_url)
        with pytest.raises(LLMAPIError, match="HTTP 400.*no such model"):
            rw.rewrite(CLAIM)
    with pytest.raises(ValueError, match="give a model"):
        QueryRewriter(task="scifact")


def test_cli_rewrite_prints_original_and_rewritten(capsys):
    from deepretrieval.cli import main
    with LoopbackChatServer(expand) as server:
        assert main(["rewrite", CLAIM, "second claim", "--task", "scifact_no_reason",
                     "--api-url", server.base_url, "--model", "m"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out == [f"original:  {CLAIM}", f"rewritten: {CLAIM} vitamin D hip fracture",
                       "original:  second claim", "rewritten: second claim vitamin D hip fracture"]
        assert main(["rewrite", CLAIM, "--task", "scifact_no_reason", "--api-url", server.base_url,
                     "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["rewritten"].endswith("vitamin D hip fracture") and record["strict"]
        import io
        import sys as _sys
        old_stdin, _sys.stdin = _sys.stdin, io.StringIO("first claim\n\nsecond claim\n")
        try:
            assert main(["rewrite", "-", "--task", "scifact_no_reason", "--api-url", server.base_url,
                         "--json"]) == 0
        finally:
            _sys.stdin = old_stdin
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["original"] for r in lines] == ["first claim", "second claim"]
    with LoopbackChatServer(lambda body: (503, "down")) as server:
        assert main(["rewrite", CLAIM, "--api-url", server.base_url, "--model", "m",
                     "--max-retries", "0"]) == 1
        assert "HTTP 503" in capsys.readouterr().err
    assert main(["rewrite", CLAIM]) == 2  # neither --model nor --api-url


@pytest.mark.slow
def test_query_rewrite_script(tmp_path):
    env = {**os.environ, "DEEPRETRIEVAL_PROGRESS": "0"}
    with LoopbackChatServer(expand) as server:
        proc = subprocess.run([sys.executable, str(ROOT / "query_rewrite.py"), CLAIM, "--task",
                               "scifact_no_reason", "--api-url", server.base_url, "--model", "m"],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"original:  {CLAIM}", f"rewritten: {CLAIM} vitamin D hip fracture"]


def test_local_tiny_model_rewriter(tiny):
    rw = QueryRewriter(tiny, task="scifact_no_reason", max_new_tokens=12, batch_size=2)
    claims = ["bone density falls with age", "statins lower cholesterol", "p53 regulates apoptosis"]
    first, again = rw.rewrite_batch(claims), rw.rewrite_batch(claims)
    assert first == again  # greedy: deterministic
    assert [r.original for r in first] == claims
    # the random model never writes a usable answer: every rewrite falls back to the original
    assert all(not r.strict for r in first)
    assert all(r.query == r.original for r in first if not r.ok)


def test_vllm_host_script_builds_the_serve_command(tmp_path):
    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "vllm $*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    run = lambda *args, env=env: subprocess.run(["bash", str(ROOT / "vllm_host.sh"), *args],  # noqa: E731
                                                capture_output=True, text=True, timeout=30, env=env)
    proc = run("ckpt/dir", "--port", "9001", "--max-len", "4096", "--tp", "2", "--name", "rewriter",
               "--", "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["vllm", "serve", "ckpt/dir", "--host", "0.0.0.0", "--port", "9001",
                                   "--max-model-len", "4096", "--tensor-parallel-size", "2",
                                   "--served-model-name", "rewriter", "--gpu-memory-utilization", "0.9",
                                   "--generation-config", "vllm", "--dtype", "bfloat16"]
    assert run("m", "--port", "eighty").returncode == 2
    assert run("m", "--bogus").returncode == 2
    assert run().returncode == 2
    no_vllm = run("m", env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert no_vllm.returncode == 127 and "vllm is not installed" in no_vllm.stderr
