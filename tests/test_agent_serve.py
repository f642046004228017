"""Serving: SearchAgent and `deepretrieval ask` against a real uvicorn retrieval service and a
loopback OpenAI-compatible model server (the scripted oracle answering as the model)."""
import json

import pytest

from deepretrieval.agent.serve import SearchAgent
from deepretrieval.data.closed_world import OraclePolicy, split_questions
from deepretrieval.generation.decoding import Prompt
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.testing.openai_server import LoopbackChatServer


@pytest.fixture(scope="module")
def service():
    from deepretrieval.catalog import open_index

    class Counting:
        """The closed-world BM25 index, counting the backend calls the service makes."""

        def __init__(self, inner):
            self.inner, self.name, self.batches = inner, "closedworld", []

        def search(self, queries, k, *, return_text=False, options=None):
            self.batches.append(list(queries))
            return self.inner.search(queries, k, return_text=return_text, options=options)

        def info(self):
            return self.inner.info()

    backend = Counting(open_index("closedworld"))
    app = create_app({"closedworld": backend}, ServiceConfig(batch_wait_ms=2))
    with ServerThread(app) as srv:
        srv.backend, srv.stats = backend, app.state.deepretrieval
        yield srv


def oracle_reply(body):
    """The model server: continues the assistant prefill (continue_final_message) like vLLM."""
    messages = body["messages"]
    prefill = ""
    if messages[-1]["role"] == "assistant":
        assert body.get("continue_final_message") is True
        prefill = messages[-1]["content"]
        messages = messages[:-1]
    return OraclePolicy().turn(Prompt.of(messages, prefill))


def test_search_agent_through_service_and_api(service):
    questions = split_questions("test")[:5]
    with LoopbackChatServer(oracle_reply) as llm:
        agent = SearchAgent(api_url=llm.base_url, search_url=service.url, task="agent_closedworld")
        before, requests = len(service.backend.batches), service.stats["requests"]
        episodes = agent.ask_batch([q.question for q in questions])
        assert llm.requests[0]["model"] == "loopback"  # the first served model
    for q, ep in zip(questions, episodes):
        assert ep.answer == q.answer and ep.finish == "answer" and not ep.search_error
        assert ep.n_search == q.hops
    # the searches went through the service, one request per turn (the runner sends a turn's
    # queries in a single request; the service may search a request in several backend calls:
    # its chunks follow the measured time per query, so their number is not the runner's)
    assert service.stats["requests"] - requests == max(q.hops for q in questions)
    searched = [q for batch in service.backend.batches[before:] for q in batch]
    assert len(searched) == len(set(searched)) == sum(q.hops for q in questions)


def test_ask_cli_prints_trajectory_and_answer(service, capsys):
    from deepretrieval.cli import main

    q = split_questions("test")[0]
    with LoopbackChatServer(oracle_reply) as llm:
        assert main(["ask", q.question, "--api-url", llm.base_url, "--search-url", service.url]) == 0
        out = capsys.readouterr().out
        assert f"answer: {q.answer}" in out and "<information>" in out and "<search>" in out
        assert main(["ask", q.question, "--api-url", llm.base_url, "--search-url", service.url,
                     "--json"]) == 0
        rec = json.loads(capsys.readouterr().out)
        assert rec["answer"] == q.answer and rec["injected_spans"]


def test_ask_reports_search_failure_and_bad_input(capsys):
    from deepretrieval.cli import main

    q = split_questions("test")[0]
    with LoopbackChatServer(oracle_reply) as llm:
        # nothing listens on this port: the service client's error becomes a visible search error
        rc = main(["ask", q.question, "--api-url", llm.base_url, "--search-url", "http://127.0.0.1:9",
                   "--json"])
        assert rc == 0
        rec = json.loads(capsys.readouterr().out)
        assert rec["search_error"] and rec["finish"] == "search_error" and rec["answer"] is None
    assert main(["ask", "q"]) == 2                          # no model given
    assert main(["ask", "q", "--model", "m", "--task", "scifact"]) == 2  # not an agentic task
    assert "error:" in capsys.readouterr().err
