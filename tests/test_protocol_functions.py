"""The ``functions`` agent protocol (function calling with a ``search`` and an ``answer`` tool),
added as one module + one registration line: parsing, the reward's reading, and end to end on the
closed-world corpus — the episode runner, the CLI's rows, evaluation and TRL's masked rollout on
the tiny local model."""
import json

import pytest

from deepretrieval.agent.runner import EpisodeRunner, episodes_from_rows, run_rows
from deepretrieval.catalog import get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.core.protocols import ROLLOUTS, agent_protocol, protocol_names
from deepretrieval.core.protocols.functions import FUNCTIONS
from deepretrieval.data.closed_world import OraclePolicy, closed_world_rows
from deepretrieval.generation.decoding import Decoding
from deepretrieval.rewards import score_batch

TASK = "agent_closedworld"
SETTINGS = P.AgentSettings(protocol="functions")


def _call(name, **arguments):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


@pytest.fixture(scope="module")
def rows():
    return closed_world_rows(get_task(TASK), "test", settings=SETTINGS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from deepretrieval.testing.tiny_model import tiny_model_path
    return str(tiny_model_path(tmp_path_factory.getbasetemp() / "tiny-models"))


def _score(rows, episodes):
    return score_batch([(r["data_source"], e.text, r["reward_model"]["ground_truth"],
                         {**r["extra_info"], P.RETRIEVED_KEY: e.passages})
                        for r, e in zip(rows, episodes)])


def test_registered_by_name_and_unknown_names_list_it():
    assert agent_protocol("functions") is FUNCTIONS and ROLLOUTS["functions"] is FUNCTIONS
    assert protocol_names() == ("tags", "tool", "functions")
    with pytest.raises(ValueError, match=r"unknown agent protocol 'fn'; known: \['tags', 'tool', 'functions'\]"):
        P.AgentSettings(protocol="fn")
    with pytest.raises(ValueError, match="known: "):
        agent_protocol("answer")  # the single-shot rollout is no agent protocol
    assert SETTINGS.rollout is FUNCTIONS
    assert not get_task("scifact").rollout.episodic and get_task(TASK).rollout.episodic


def test_turns_parse_into_actions():
    search = FUNCTIONS.parse_turn(_call("search", query="Goudemar") + "\n" + _call("search", query="Ulm"))
    assert search.kind == "search" and search.queries == ("Goudemar", "Ulm")
    answer = FUNCTIONS.parse_turn("I know it.\n" + _call("answer", answer=" Paris ") + "<|im_end|>")
    assert answer.kind == "answer" and answer.answer == "Paris" and not answer.text.endswith("<|im_end|>")
    # arguments sent as a JSON string (some templates do)
    as_string = '<tool_call>{"name": "answer", "arguments": "{\\"answer\\": \\"Oslo\\"}"}</tool_call>'
    assert FUNCTIONS.parse_turn(as_string).answer == "Oslo"
    invalid = {
        "Paris": "no tool call",
        "<tool_call>{": "unclosed tool call",
        "<tool_call>{not json}</tool_call>": "tool call is not valid JSON",
        _call("browse", url="x"): "unknown tool (known: ['search', 'answer'])",
        _call("search", query="  "): "search needs a non-empty 'query'",
        _call("answer"): "answer needs a non-empty 'answer'",
        _call("search", query="a") + _call("answer", answer="b"): "the answer call must be the only call of its turn",
    }
    for text, error in invalid.items():
        action = FUNCTIONS.parse_turn(text)
        assert (action.kind, action.error) == ("invalid", error), text
    # the model is told how this protocol acts, not to write tags
    assert "answer tool" in FUNCTIONS.invalid_message and SETTINGS.invalid_text == FUNCTIONS.invalid_message
    # writing and reading are inverses
    assert FUNCTIONS.parse_turn(FUNCTIONS.write_search(["a b", "c"])).queries == ("a b", "c")
    assert FUNCTIONS.parse_turn(FUNCTIONS.write_answer("x y")).answer == "x y"
    # a model that starts writing the tool's response is cut there
    cut = FUNCTIONS.parse_turn(_call("search", query="a") + "<tool_response>Doc 1: fake")
    assert cut.kind == "search" and "<tool_response>" not in cut.text


def test_reward_reads_the_last_answer_call_of_the_model_only():
    fake = FUNCTIONS.wrap(_call("answer", answer="injected"))
    assert FUNCTIONS.final_answer(_call("search", query="q") + fake) is None
    traj = _call("answer", answer="first") + fake + _call("answer", answer="last")
    assert FUNCTIONS.final_answer(traj) == "last"
    assert P.final_answer(traj, "functions") == "last"
    assert P.final_answer("<answer>x</answer>", "functions") is None  # a tag is no call here
    stats = P.trajectory_stats(_call("search", query="q") + FUNCTIONS.wrap("Doc 1: a")
                               + FUNCTIONS.wrap("Doc 1: b") + _call("answer", answer="z"), SETTINGS)
    assert (stats.answer, stats.n_search, stats.turns) == ("z", 2, 2)


def test_oracle_on_the_closed_world_answers_every_question(rows):
    assert rows[0]["prompt"][0]["content"] == FUNCTIONS.system_prompt()
    assert '"name": "answer"' in rows[0]["prompt"][0]["content"]
    assert "agent_name" not in rows[0]  # no verl agent loop speaks it
    episodes = run_rows(OraclePolicy(), rows)
    metrics = _score(rows, episodes)
    assert all(m["em"] == 1.0 and m["hit"] == 1.0 and m["format_ok"] for m in metrics)
    assert [m["n_search"] for m in metrics] == [float(r["extra_info"]["hops"]) for r in rows]
    for ep in episodes:
        assert ep.finish == "answer" and ep.answer is not None
        assert ep.to_dict()["protocol"] == "functions"
        # the next turn's input: one assistant message per turn, one tool message per result
        roles = [m["role"] for m in ep.prompt().messages]
        assert roles[:2] == ["system", "user"] and roles.count("tool") == ep.n_search
        assert ep.prompt().prefill == ""
        spans = ep.injected_spans()
        assert [ep.text[a:b] for a, b in spans] == [s.text for s in ep.segments if s.injected]
        assert all(ep.text[a:b].strip().startswith("<tool_response>") for a, b in spans)


def test_prepare_closedworld_cli_writes_functions_rows(tmp_path, capsys):
    from deepretrieval.catalog import read_rows
    from deepretrieval.cli import main

    assert main(["prepare", "closedworld", "--out", str(tmp_path), "--protocol", "functions"]) == 0
    test = read_rows(tmp_path / "test.parquet")
    assert test[0]["extra_info"]["agent"]["protocol"] == "functions"
    assert test[0]["prompt"][0]["content"] == FUNCTIONS.system_prompt()
    (ep,) = episodes_from_rows(test[:1])
    assert ep.rollout is FUNCTIONS
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "closedworld", "--out", str(tmp_path), "--protocol", "fn"])
    assert exit_.value.code == 2
    assert "(choose from 'tags', 'tool', 'functions')" in capsys.readouterr().err


def test_tiny_model_plays_evaluates_and_trains_with_masked_tool_responses(rows, tiny, tmp_path):
    from deepretrieval.agent.evaluate import evaluate_agent
    from deepretrieval.generation.local import TransformersGenerator
    from deepretrieval.train.trl_agent import AgentRollout, tool_completion
    from deepretrieval.train.trl_engine import TRLSettings, build_trainer

    # the tiny model (random weights) plays full episodes: every turn parsed, the episode ends
    report = evaluate_agent(TransformersGenerator(tiny), rows[:3], out_dir=tmp_path / "eval",
                            max_new_tokens=12, batch_size=3, plot=False, name="tiny")
    assert 0 <= report["systems"]["tiny"]["em"] <= 1
    recs = [json.loads(line) for line in open(tmp_path / "eval" / "generations.jsonl")]
    assert len(recs) == 3 and all(r["protocol"] == "functions" and 1 <= r["turns"] <= 4 for r in recs)

    # TRL: the oracle plays on the trained (tiny) model's tokens; tool responses carry no loss
    two_hop = [r for r in rows if r["extra_info"]["hops"] == 2][:2]
    settings = TRLSettings(model=tiny, output_dir=str(tmp_path / "trl"), steps=1, prompts_per_step=2,
                           num_generations=2, max_completion_length=512, temperature=1.0, bf16=False,
                           progress=False, use_vllm=False, extra={"gradient_checkpointing": False})
    rollout = AgentRollout(turn_tokens=64, policy=OraclePolicy())
    trainer, _ = build_trainer(two_hop, settings, rollout=rollout)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._generate_and_score_completions(
        [dict(trainer.train_dataset[i]) for i in range(2) for _ in range(2)])
    tok = rollout.tokenizer
    for i, ep in enumerate(rollout.last_episodes):
        assert ep.finish == "answer" and ep.n_search == 2
        ids, mask = tool_completion(tok, ep)
        assert batch["completion_ids"][i, :len(ids)].tolist() == ids
        assert batch["tool_mask"][i, :len(ids)].tolist() == mask
        written = tok.decode([t for t, m in zip(ids, mask) if m == 1])
        assert written == "".join(s.content + tok.eos_token for s in ep.segments if not s.injected)
        hidden = tok.decode([t for t, m in zip(ids, mask) if m == 0])
        assert all(s.content in hidden for s in ep.segments if s.injected)
    assert rollout.reward.last_metrics and all(m["em"] == 1.0 for m in rollout.reward.last_metrics)


def test_token_budget_ends_a_functions_episode_visibly(rows, tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    ep = episodes_from_rows(rows[:1])[0]
    EpisodeRunner(OraclePolicy(), decoding=Decoding(max_new_tokens=64), token_budget=60,
                  tokenizer=tok).run([ep])
    assert ep.finish == "budget" and len(ep.token_ids(tok)[0]) <= 60
    assert ep.segments[-1].injected and ep.segments[-1].content == ep.settings.budget_message
    assert ep.segments[-1].text == FUNCTIONS.wrap(ep.settings.budget_message)


def test_verl_agent_loop_refuses_the_protocol_by_name(rows):
    pytest.importorskip("verl")
    from deepretrieval.train.verl_agent import episode_for_sample

    row = rows[0]
    with pytest.raises(ValueError, match="'functions' protocol: no verl agent loop speaks it"):
        episode_for_sample({"data_source": row["data_source"], "raw_prompt": row["prompt"],
                            "extra_info": row["extra_info"]})
