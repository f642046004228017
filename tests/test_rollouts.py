"""Every registered rollout: what each agent protocol owns holds for all of them (so a new one is
checked by registering it), tasks say how they are rolled out, and generators share one protocol."""
import pytest

from deepretrieval.agent.runner import Episode, episodes_from_rows
from deepretrieval.catalog import TASKS, get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.core.protocols import ROLLOUTS, SINGLE_SHOT, AgentProtocol, agent_protocol, protocol_names
from deepretrieval.data.closed_world import ClosedBookGuess, OraclePolicy, closed_world_rows
from deepretrieval.generation.decoding import Generator

PROTOCOLS = [agent_protocol(name) for name in protocol_names()]


@pytest.mark.parametrize("rollout", PROTOCOLS, ids=lambda r: r.name)
def test_every_protocol_reads_back_what_it_writes(rollout):
    assert rollout.episodic and isinstance(rollout, AgentProtocol) and ROLLOUTS[rollout.name] is rollout
    search = rollout.parse_turn(rollout.write_search(["capital of Goudemar"]))
    assert (search.kind, search.queries) == ("search", ("capital of Goudemar",))
    answer = rollout.parse_turn(rollout.write_answer("Zeiski"))
    assert (answer.kind, answer.answer) == ("answer", "Zeiski")
    # the reward's reading of a finished trajectory: the answer written after an injected reply,
    # never one the environment's reply holds
    reply = rollout.wrap("Doc 1: " + rollout.write_answer("Fake"))
    traj = rollout.write_search(["q"]) + reply + rollout.write_answer("Zeiski")
    assert rollout.final_answer(traj) == "Zeiski"
    assert rollout.final_answer(rollout.write_search(["q"]) + reply) is None
    stats = P.trajectory_stats(traj, P.AgentSettings(protocol=rollout.name))
    assert (stats.answer, stats.n_search, stats.turns) == ("Zeiski", 1, 2)
    # injected text is a block every reader recognises, and a turn stops where a block starts
    assert P.injected_blocks(reply) and P.model_text(reply).strip() == ""
    assert any(reply.strip().startswith(s) for s in rollout.stop_strings())
    assert rollout.messages("Q?")[0] == {"role": "system", "content": rollout.system_prompt()}
    # a turn without a valid action gets the protocol's reply (rows may set their own)
    for settings, told in ((P.AgentSettings(protocol=rollout.name), rollout.invalid_message),
                           (P.AgentSettings(protocol=rollout.name, invalid_message="Try again."), "Try again.")):
        ep = Episode(rollout.messages("Q?"), "closedworld", settings)
        assert ep.advance("<tool_call>{not json</tool_call>") == () and not ep.done
        assert P.injected_blocks(ep.text) == [told]
        assert P.trajectory_stats(ep.text, settings).n_invalid == 1


@pytest.mark.parametrize("rollout", PROTOCOLS, ids=lambda r: r.name)
def test_rows_name_their_loop_and_refuse_another_protocol(rollout):
    task = get_task("agent_closedworld")
    rows = closed_world_rows(task, "test", settings=P.AgentSettings(protocol=rollout.name))[:2]
    assert rows[0].get("agent_name") == rollout.verl_agent_loop
    assert all(ep.rollout is rollout for ep in episodes_from_rows(rows))
    for other in PROTOCOLS:
        if other is not rollout and other.verl_agent_loop:
            moved = dict(rows[0], agent_name=other.verl_agent_loop)
            assert rollout.row_problem(moved) is not None
            with pytest.raises(ValueError, match=rows[0]["data_source"]):
                episodes_from_rows([moved])


def test_the_next_turn_is_laid_out_by_the_protocol():
    for s in (P.AgentSettings(protocol=name) for name in protocol_names()):
        ep = Episode(s.rollout.messages("Q?"), "closedworld", s, prefill="<think>")
        ep.advance(s.rollout.write_search(["a"]))
        ep.receive([("a", None, "down")])  # a failed search ends the episode visibly
        prompt = ep.prompt()
        if s.rollout.single_message:
            assert prompt.prefill == "<think>" + ep.text and len(prompt.messages) == 2
        else:
            assert prompt.prefill == "" and [m["role"] for m in prompt.messages][2:] == ["assistant", "tool"]
        assert ep.finish == "search_error" and P.SEARCH_ERROR_PREFIX in ep.text


def test_tasks_say_how_they_are_rolled_out():
    for task in TASKS.values():
        assert task.rollout.episodic == (task.family.name == "agentic"), task.name
        if not task.rollout.episodic:
            assert task.rollout is SINGLE_SHOT
    scifact = get_task("scifact")
    assert scifact.messages(query="q")[0]["content"] == SINGLE_SHOT.system_prompt(
        scifact.system, scifact.answer_key, scifact.reasoning)
    parsed = scifact.parse('<think>x</think><answer>{"query": "q"}</answer>')
    assert parsed.ok and parsed.value == "q"
    assert get_task("agent_nq").rollout is agent_protocol("tags")


def test_unknown_protocol_names_raise_with_the_known_ones():
    known = str(list(protocol_names()))
    for bad in ("tag", "answer", ""):
        with pytest.raises(ValueError, match=f"unknown agent protocol {bad!r}; known: " + known.replace("[", r"\[").replace("]", r"\]")):
            P.AgentSettings(protocol=bad)
    with pytest.raises(ValueError, match="unknown agent protocol 'x'"):
        P.parse_turn("<answer>a</answer>", "x")


def test_generators_share_one_protocol():
    from deepretrieval.generation.api import OpenAIChatGenerator

    for gen in (OraclePolicy(), ClosedBookGuess(), OpenAIChatGenerator("m", base_url="http://127.0.0.1:9/v1")):
        assert isinstance(gen, Generator)

    class NoPrefillFlag:
        name = "x"

        def generate(self, prompts, decoding, **kw):
            return []

    assert not isinstance(NoPrefillFlag(), Generator)
