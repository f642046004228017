"""Episode runner: scripted policies against recording / failing searchers."""
import pytest

from deepretrieval.agent.runner import (
    Episode,
    EpisodeRunner,
    episodes_from_rows,
    run_rows,
)
from deepretrieval.catalog import get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.core.results import SearchError, SearchResult
from deepretrieval.generation.decoding import Decoding
from deepretrieval.rewards import compute_score
from deepretrieval.tasks.agentic import agent_rows


class Script:
    """Scripted policy: per question, the list of turns it writes (the last repeats)."""

    uses_prefill = True
    name = "script"

    def __init__(self, turns_by_question):
        self.turns = turns_by_question
        self.calls = []  # (number of prompts, decoding) per generate call

    def generate(self, prompts, decoding, *, batch_size=8, seed_offset=0, progress=False):
        self.calls.append((len(prompts), decoding))
        out = []
        for p in prompts:
            question = p.messages[-1]["content"] if p.messages[-1]["role"] == "user" else \
                next(m["content"] for m in p.messages if m["role"] == "user")
            script = self.turns[question.removeprefix("Question: ")]
            done = sum(1 for m in p.messages if m["role"] == "assistant") if "<tools>" in \
                p.messages[0]["content"] else len(P.injected_blocks(p.prefill))
            out.append([script[min(done, len(script) - 1)]])
        return out


class Recorder:
    """Searcher that answers every query with passages naming it, and records each call."""

    def __init__(self, fail=None, per_query_error=None, texts=True):
        self.calls = []
        self.fail = fail
        self.per_query_error = per_query_error
        self.texts = texts

    def search(self, index, queries, k, *, return_text=False, options=None):
        self.calls.append((index, list(queries), k, return_text))
        if self.fail:
            raise self.fail
        out = []
        for q in queries:
            if q == self.per_query_error:
                out.append(SearchResult(error="rate limited"))
                continue
            ids = [f"{q}-{i}" for i in range(k)]
            out.append(SearchResult(ids=ids, scores=[1.0] * k,
                                    texts=[f"passage {i} about {q}" for i in range(k)] if self.texts else None))
        return out


def rows_for(questions, answers=None, settings=None, index="idx"):
    examples = [{"question": q, "answers": [(answers or {}).get(q, "gold")]} for q in questions]
    return agent_rows(get_task("agent_nq"), examples, "test", search_index=index, settings=settings)


def test_multi_turn_batched_search_and_spans():
    script = Script({
        "A": ["<think>first</think><search>alpha</search>", "<search>beta</search>",
              "<record>passage 0 about beta</record><answer>gold</answer>"],
        "B": ["<search>gamma</search>", "<answer>wrong</answer>"],
        "C": ["<answer>gold</answer>"],
    })
    searcher = Recorder()
    rows = rows_for(["A", "B", "C"])
    eps = run_rows(script, rows, searcher, decoding=Decoding(max_new_tokens=32))
    a, b, c = eps
    # one generation call per turn over the live episodes; one search call per turn
    assert [n for n, _ in script.calls] == [3, 2, 1]
    assert searcher.calls == [("idx", ["alpha", "gamma"], 3, True), ("idx", ["beta"], 3, True)]
    stops = {s.text for s in script.calls[0][1].stops}
    assert stops == {"</search>", "</answer>", "<information>"}
    assert (a.turns, a.n_search, a.finish, a.answer) == (3, 2, "answer", "gold")
    assert (b.turns, b.n_search, b.answer) == (2, 1, "wrong")
    assert (c.turns, c.n_search, c.text) == (1, 0, "<answer>gold</answer>")
    assert a.records == ["passage 0 about beta"]
    # the spans are exactly the injected blocks; model text is outside them
    spans = a.injected_spans()
    assert len(spans) == 2
    for start, end in spans:
        assert a.text[start:end].strip().startswith("<information>Doc 1: passage 0 about")
        assert a.text[start:end].strip().endswith("</information>")
    outside = "".join(a.text[s:e] for s, e in zip([0] + [e for _, e in spans], [s for s, _ in spans] + [None]))
    assert outside == "<think>first</think><search>alpha</search><search>beta</search>" \
                      "<record>passage 0 about beta</record><answer>gold</answer>"
    assert a.searches[0] == {"turn": 1, "query": "alpha", "error": None,
                             "ids": ["alpha-0", "alpha-1", "alpha-2"]}
    # the next prompt continues the trajectory in the assistant turn
    assert a.prompt().prefill == a.text
    # the reward sees the same numbers
    m = compute_score(rows[0]["data_source"], a.text, rows[0]["reward_model"]["ground_truth"],
                      rows[0]["extra_info"])
    assert (m["em"], m["n_search"], m["turns"], m["format_ok"]) == (1.0, 2.0, 3.0, True)
    assert compute_score("agent_nq", b.text, {"target": ["gold"]})["em"] == 0.0


def test_token_mask_zero_exactly_on_injected_text():
    class CharTok:  # one token per character: the mask must match the character spans
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(ch) for ch in text]}

    ep = run_rows(Script({"A": ["<search>q</search>", "<answer>x</answer>"]}), rows_for(["A"]),
                  Recorder())[0]
    ids, mask = ep.token_ids(CharTok())
    assert "".join(map(chr, ids)) == ep.text
    injected = {i for s, e in ep.injected_spans() for i in range(s, e)}
    assert [i for i, m in enumerate(mask) if m == 0] == sorted(injected)


def test_invalid_action_gets_the_message_and_continues():
    s = P.AgentSettings()
    ep = run_rows(Script({"A": ["I think it is gold.", "<answer>gold</answer>"]}), rows_for(["A"]),
                  Recorder())[0]
    assert ep.finish == "answer" and ep.turns == 2 and ep.n_search == 0
    assert P.injected_blocks(ep.text) == [s.invalid_text]
    m = compute_score("agent_nq", ep.text, {"target": ["gold"]})
    assert m["em"] == 1.0 and m["n_search"] == 0.0 and m["turns"] == 2.0


def test_last_turn_refuses_search_and_notes_it():
    s = P.AgentSettings(max_turns=2)
    searcher = Recorder()
    ep = run_rows(Script({"A": ["<search>one</search>", "<search>two</search>"]}),
                  rows_for(["A"], settings=s), searcher)[0]
    assert [c[1] for c in searcher.calls] == [["one"]]  # the second search never ran
    assert ep.finish == "max_turns" and ep.turns == 2 and ep.n_search == 1 and ep.answer is None
    blocks = P.injected_blocks(ep.text)
    assert blocks[0].endswith(s.last_turn_note)          # told before its last turn
    assert blocks[-1] == s.refusal_message
    m = compute_score("agent_nq", ep.text, {"target": ["gold"]}, {"max_turns": 2})
    assert not m["format_ok"] and m["n_search"] == 1.0 and m["score"] == 0.0
    # an invalid last turn just ends the episode
    ep = run_rows(Script({"A": ["<search>one</search>", "nothing"]}), rows_for(["A"], settings=s),
                  Recorder())[0]
    assert ep.finish == "max_turns" and len(P.injected_blocks(ep.text)) == 1


def test_one_turn_budget_never_searches():
    searcher = Recorder()
    ep = run_rows(Script({"A": ["<search>q</search>"]}),
                  rows_for(["A"], settings=P.AgentSettings(max_turns=1)), searcher)[0]
    assert searcher.calls == [] and ep.finish == "max_turns"


def test_result_truncation():
    s = P.AgentSettings(max_result_chars=30, last_turn_note="")
    ep = run_rows(Script({"A": ["<search>a long query</search>", "<answer>x</answer>"]}),
                  rows_for(["A"], settings=s), Recorder())[0]
    (block,) = P.injected_blocks(ep.text)
    assert len(block) == 30 and block.endswith("…") and block.startswith("Doc 1: passage 0")


def test_batching_groups_by_index():
    script = Script({q: [f"<search>{q}</search>", "<answer>x</answer>"] for q in "ABCDE"})
    searcher = Recorder()
    rows = rows_for(list("ABC")) + rows_for(list("DE"), index="other")
    run_rows(script, rows, searcher)
    assert sorted((c[0], tuple(c[1])) for c in searcher.calls) == [("idx", ("A", "B", "C")),
                                                                  ("other", ("D", "E"))]


def test_search_failure_flags_search_error():
    rows = rows_for(["A", "B"])
    script = Script({"A": ["<search>a</search>", "<answer>gold</answer>"],
                     "B": ["<search>b</search>", "<answer>gold</answer>"]})
    eps = run_rows(script, rows, Recorder(fail=SearchError("service down")))
    for ep in eps:
        assert ep.search_error and ep.finish == "search_error" and ep.turns == 1
        assert P.injected_blocks(ep.text)[-1].startswith(P.SEARCH_ERROR_PREFIX)
        m = compute_score("agent_nq", ep.text, {"target": ["gold"]})
        assert m["search_error"] and m["score"] == 0.0
    # one query failing fails only its episode
    eps = run_rows(script, rows, Recorder(per_query_error="b"))
    assert [ep.search_error for ep in eps] == [False, True]
    assert eps[0].answer == "gold" and eps[1].error == "rate limited"
    # an index without passage texts is a search error too, never a silent empty result
    eps = run_rows(script, rows, Recorder(texts=False))
    assert all(ep.search_error for ep in eps)


def test_tool_protocol_several_calls_one_request():
    s = P.AgentSettings(protocol="tool")
    call = '<tool_call>{"name": "search", "arguments": {"query": "%s"}}</tool_call>'
    script = Script({"A": [call % "x" + call % "y", "<answer>gold</answer>"],
                     "B": [call % "z", "<tool_call>oops</tool_call>", "<answer>gold</answer>"]})
    searcher = Recorder()
    a, b = run_rows(script, rows_for(["A", "B"], settings=s), searcher)
    assert searcher.calls[0][1] == ["x", "y", "z"] and len(searcher.calls) == 1
    assert a.n_search == 2 and a.turns == 2 and a.answer == "gold"
    roles = [m["role"] for m in a.prompt().messages]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert b.turns == 3 and b.answer == "gold"
    m = compute_score("agent_nq", a.text, {"target": ["gold"]}, {"agent": {"protocol": "tool"}})
    assert (m["em"], m["n_search"], m["turns"]) == (1.0, 2.0, 2.0)


def test_rows_and_settings_checks():
    with pytest.raises(ValueError, match="protocol"):
        episodes_from_rows(rows_for(["A"]), settings=P.AgentSettings(protocol="tool"))
    with pytest.raises(ValueError, match="not an agentic task row"):
        episodes_from_rows([{"data_source": "scifact", "prompt": [], "extra_info": {}}])
    with pytest.raises(ValueError, match="repeat"):
        EpisodeRunner(Script({}), decoding=Decoding(greedy=False, n=2))
    eps = episodes_from_rows(rows_for(["A"]), repeat=3)
    assert len(eps) == 3 and all(isinstance(e, Episode) and e.index == "idx" for e in eps)


def test_per_episode_stepping_matches_the_batched_runner():
    """A per-sample loop (as a verl agent loop runs it, async searches) gives the same episode."""
    import asyncio

    from deepretrieval.agent.runner import search_replies

    script = Script({"A": ["<search>alpha</search>", "nothing", "<answer>gold</answer>"]})
    rows = rows_for(["A"])
    batched = run_rows(script, rows, Recorder())[0]

    class AsyncRecorder(Recorder):
        async def asearch(self, index, queries, k, *, return_text=False, options=None):
            return self.search(index, queries, k, return_text=return_text, options=options)

    async def loop():
        searcher = AsyncRecorder()
        (ep,) = episodes_from_rows(rows)
        while not ep.done:
            text = script.generate([ep.prompt()], Decoding())[0][0]
            queries = ep.advance(text)
            if queries:
                try:
                    outcome = await searcher.asearch(ep.index, list(queries), ep.settings.top_k,
                                                     return_text=True)
                except SearchError as exc:
                    outcome = exc
                ep.receive(search_replies(ep.index, list(queries), outcome))
        return ep

    single = asyncio.run(loop())
    assert single.text == batched.text and single.finish == batched.finish == "answer"
    assert single.searches == batched.searches
    with pytest.raises(ValueError, match="ended"):
        single.advance("<answer>again</answer>")
    assert search_replies("i", ["a", "b"], SearchError("down")) == [("a", None, "down"), ("b", None, "down")]
    assert search_replies("i", ["a"], [])[0][2] == "0 results for 1 queries"


# ---- hostile generators and failing backends (issue 29 items 4 and 10) ----------------------------

class Hostile:
    """Seeded generator of hostile turns: nested Boolean queries, fake result blocks, huge and
    empty turns, non-strings, many tool calls; ``marker`` queries make :class:`Faulty` raise."""

    uses_prefill = True
    name = "hostile"

    def __init__(self, seed, protocol="tags"):
        import random
        self.rng = random.Random(seed)
        self.protocol = protocol

    def turn(self):
        r = self.rng
        d = r.choice([10, 495, 496, 600, 2000, 4999])
        query = r.choice(["(" * d + "cell" + ")" * d, "(" * d, "cell therapy", "vitamin D",
                          "BOOM " + str(r.random()), "x" * r.choice([10, 3000]), "\ud800 cell", "\x00"])
        if self.protocol == "tool":
            call = '<tool_call>{"name": "search", "arguments": {"query": %s}}</tool_call>'
            import json
            return call % json.dumps(query) * r.choice([1, 2, 50])
        return r.choice([
            f"<search>{query}</search>",
            f"<think>t</think><search>{query}</search>",
            "<information>Doc 1: gold</information><answer>gold</answer>",
            "<search>" * r.choice([1, 3000]),
            "", None, 5, b"<search>cell</search>", ["<search>cell</search>"],
            "<answer>gold</answer>",
        ])

    def generate(self, prompts, decoding, *, batch_size=8, seed_offset=0, progress=False):
        return [[self.turn()] for _ in prompts]


class Faulty:
    """The real searcher, except that a batch holding a ``BOOM`` query raises an exception no
    backend is expected to raise (the runner caught only SearchError/ValueError/OSError)."""

    def __init__(self, inner, exc):
        self.inner, self.exc, self.batches = inner, exc, []

    def search(self, index, queries, k, *, return_text=False, options=None):
        self.batches.append(list(queries))
        if any(q.startswith("BOOM") for q in queries):
            raise self.exc("backend bug")
        return self.inner.search(index, queries, k, return_text=return_text, options=options)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["tags", "tool"])
def test_hostile_generator_on_the_boolean_index_loses_no_episode(protocol, _index_dir):
    """A nested Boolean query raised RecursionError out of EpisodeRunner.run (2 of 2 runs, 200
    episodes lost); now every episode of every batch ends with a defined finish, the searches of
    the healthy ones equal the direct search, and a backend that raises anything fails only the
    episodes of the queries that raise it."""
    from deepretrieval.catalog import get_searcher
    settings = P.AgentSettings(protocol=protocol, max_turns=3)
    rows = rows_for([f"question {i}" for i in range(24)], settings=settings, index="scifact_boolean")
    real = get_searcher()
    for seed, exc in [(1, RecursionError), (2, KeyError), (3, RuntimeError), (4, MemoryError)]:
        searcher = Faulty(real, exc)
        eps = run_rows(Hostile(seed, protocol), rows, searcher, repeat=2)
        assert len(eps) == 48
        for ep in eps:
            assert ep.finish in ("answer", "no_answer", "max_turns", "search_error"), ep.finish
            for s in ep.searches:
                if s["query"].startswith("BOOM"):
                    assert s["error"] and exc.__name__ in s["error"]
                elif s["error"] is None:
                    direct = real.search("scifact_boolean", [s["query"]], settings.top_k)[0]
                    assert s["ids"] == [str(i) for i in direct.ids]
            assert len([s for s in ep.searches if s["turn"] == 1]) <= settings.max_calls_per_turn
        booms = [s for ep in eps for s in ep.searches if s["query"].startswith("BOOM")]
        healthy = [s for ep in eps for s in ep.searches
                   if not s["query"].startswith("BOOM") and s["error"] is None]
        assert booms and healthy  # the generator hit both cases


def test_non_string_turns_are_empty_turns():
    rows = rows_for(["A", "B", "C", "D"])

    class Odd:
        uses_prefill, name = True, "odd"

        def generate(self, prompts, decoding, **kw):
            return [[t] for t, _ in zip([None, 5, b"<answer>x</answer>", ["<answer>x</answer>"]], prompts)]

    eps = run_rows(Odd(), rows, Recorder())
    assert [ep.finish for ep in eps] == ["max_turns"] * 4
    assert all(ep.answer is None and not ep.searches for ep in eps)


def test_tool_calls_per_turn_are_capped():
    s = P.AgentSettings(protocol="tool", max_calls_per_turn=3)
    call = '<tool_call>{"name": "search", "arguments": {"query": "q%d"}}</tool_call>'
    script = Script({"A": ["".join(call % i for i in range(2000)), "<answer>gold</answer>"]})
    searcher = Recorder()
    (ep,) = run_rows(script, rows_for(["A"], settings=s), searcher)
    assert searcher.calls[0][1] == ["q0", "q1", "q2"] and ep.n_search == 3 and ep.answer == "gold"
    m = compute_score("agent_nq", ep.text, {"target": ["gold"]}, {"agent": s.to_dict()})
    assert m["n_search"] == 3.0
    with pytest.raises(ValueError, match="max_calls_per_turn"):
        P.AgentSettings(max_calls_per_turn=0)
