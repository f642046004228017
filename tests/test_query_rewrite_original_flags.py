"""The original DeepRetrieval's command lines: query_rewrite.py --query/--api_url."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepretrieval.cli import build_parser
from deepretrieval.cli.compat import ORIGINAL_MODEL, original_rewrite_argv
from deepretrieval.testing.openai_server import LoopbackChatServer

ROOT = Path(__file__).resolve().parent.parent
CLAIM = "Vitamin D supplementation lowers the risk of hip fracture."


def test_original_call_translates_with_the_original_defaults():
    argv = original_rewrite_argv(["--query", "Who wrote Hamlet?"])
    assert argv[0] == "Who wrote Hamlet?"
    args = build_parser().parse_args(["rewrite", *argv])  # no "unrecognized arguments"
    assert args.queries == ["Who wrote Hamlet?"]
    assert args.api_url == "http://localhost:8000/v1" and args.model == ORIGINAL_MODEL
    assert args.task == "nq" and args.sampling and args.temperature == 0.7
    assert args.max_new_tokens == 512
    # ours win where given; our own calls pass through untouched
    args = build_parser().parse_args(["rewrite", *original_rewrite_argv(
        ["--query", "q", "--api_url", "http://h:9/v1/chat/completions", "--task", "scifact",
         "--temperature", "0"])])
    assert (args.api_url, args.task, args.temperature) == ("http://h:9/v1", "scifact", 0.0)
    assert original_rewrite_argv(["q", "--task", "scifact"]) is None


@pytest.mark.slow
def test_query_rewrite_script_original_flags(tmp_path):
    def reply(body):
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        assert body["model"] == "m" and body["max_tokens"] == 512
        return f'{user.rsplit("Claim: ", 1)[1]} vitamin D"}}</answer>'

    env = {**os.environ, "DEEPRETRIEVAL_PROGRESS": "0"}
    with LoopbackChatServer(reply) as server:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "query_rewrite.py"), "--query", CLAIM,
             "--api_url", server.base_url.rstrip("/") + "/chat/completions",
             "--task", "scifact_no_reason", "--model", "m"],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"original:  {CLAIM}", f"rewritten: {CLAIM} vitamin D"]
