"""Agentic GRPO through TRL's rollout hook on the tiny model: the episode runner plays the episodes,
injected tokens get env mask 0 and carry exactly zero gradient, a result over the completion
budget ends the episode visibly, the tool-call path masks the template's rendering, and real
training steps run."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

from deepretrieval.agent.runner import EpisodeRunner, episodes_from_rows
from deepretrieval.catalog import bundled_rows, get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.data.closed_world import (
    ClosedBookGuess,
    OraclePolicy,
    closed_world_rows,
)
from deepretrieval.generation.decoding import Decoding
from deepretrieval.rewards import score_batch
from deepretrieval.train.trl_agent import (
    AgentRollout,
    tag_completion,
    tool_completion,
)
from deepretrieval.train.trl_engine import (
    METRIC_PREFIX,
    TRLSettings,
    build_trainer,
    render_messages as render_prompt,
    train_trl,
)

TASK = "agent_closedworld"
# two-hop questions: the oracle searches twice, so there are two injected result blocks
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.rows(TASK, "train", where=lambda r: r["extra_info"]["hops"] == 2, limit=4)]


def _settings(tiny, tmp_path, **kw):
    base = {"model": tiny, "output_dir": str(tmp_path), "steps": 1, "prompts_per_step": 2,
            "num_generations": 2, "max_completion_length": 512, "temperature": 1.0, "bf16": False,
            "progress": False, "use_vllm": False, "save_steps": 0, "extra": {"gradient_checkpointing": False}}
    base.update(kw)
    return TRLSettings(**base)


def _batch(trainer, rows):
    """One step's inputs as TRL's sampler builds them (each prompt num_generations times)."""
    trainer.model.train()  # as in a training step (the trainer logs under "train")
    trainer.current_gradient_accumulation_steps = 1  # (set by Trainer.train)
    records = trainer.train_dataset
    g = trainer.args.num_generations
    return [dict(records[i]) for i in range(len(rows)) for _ in range(g)]


def _token_grads(trainer, batch):
    """Per completion token: |gradient| of TRL's GRPO loss w.r.t. the final hidden state that
    predicts it (TRL's fused LM head never materialises logits; the hidden state at position t
    feeds only the prediction of token t+1, so a zero here means the token carries no loss)."""
    captured = []

    def hook(module, args, output):
        output.retain_grad()
        captured.append(output)

    handle = trainer.model.model.norm.register_forward_hook(hook)
    try:
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    finally:
        handle.remove()
    grads = torch.cat([h.grad for h in captured], dim=0).abs().sum(-1)  # (B, P + C)
    width = batch["prompt_ids"].shape[1]
    return grads[:, width - 1: width - 1 + batch["completion_ids"].shape[1]]


def test_rollout_masks_injected_tokens_and_they_carry_zero_gradient(tiny, tmp_path, rows, tok):
    rollout = AgentRollout(turn_tokens=32, policy=OraclePolicy())
    trainer, _ = build_trainer(rows[:2], _settings(tiny, tmp_path), rollout=rollout)
    inputs = _batch(trainer, rows[:2])
    batch = trainer._generate_and_score_completions(inputs)
    episodes = rollout.last_episodes
    assert len(episodes) == 4 and all(ep.finish == "answer" and ep.n_search == 2 for ep in episodes)
    # the reward saw the trajectories: the oracle answers right
    assert [m["em"] for m in rollout.reward.last_metrics] == [1.0] * 4

    comp, cmask, tmask = batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]
    for i, ep in enumerate(episodes):
        n = int(cmask[i].sum())
        ids, mask = tag_completion(tok, ep)
        assert comp[i, :n].tolist() == ids and tmask[i, :n].tolist() == mask
        # mask 0 exactly on the injected blocks: their tokens decode to the <information> text
        injected = tok.decode([t for t, m in zip(ids, mask) if m == 0])
        assert injected == "".join(s.text for s in ep.segments if s.injected)
        written = tok.decode([t for t, m in zip(ids, mask) if m == 1], skip_special_tokens=True)
        assert written == "".join(s.text for s in ep.segments if not s.injected)
        assert P.INFO_OPEN not in written and ids[-1] == tok.eos_token_id and mask[-1] == 1

    # GRPO loss gradient: exactly zero where injected tokens are predicted, nonzero on the
    # model's own tokens (advantages set to non-zero values: the oracle's rewards are all equal)
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])
    per_token = _token_grads(trainer, batch)
    assert per_token.shape == comp.shape
    injected = (cmask == 1) & (tmask == 0)
    written = (cmask == 1) & (tmask == 1)
    assert injected.sum() > 50 and written.sum() > 20
    assert torch.all(per_token[injected] == 0)
    assert torch.all(per_token[written] > 0)
    # the same batch without the env mask (the bug users report) trains on the injected tokens
    batch["tool_mask"] = torch.ones_like(tmask)
    leaky = _token_grads(trainer, batch)
    assert torch.all(leaky[injected] > 0)


def test_result_over_the_budget_ends_the_episode_visibly(tiny, tmp_path, rows, tok):
    # a budget that fits the first search, its results and the second search, not its results
    full = episodes_from_rows(rows[:1])[0]
    EpisodeRunner(OraclePolicy(), decoding=Decoding(max_new_tokens=32)).run([full])
    ids, _ = tag_completion(tok, full)

    def n(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    first = sum(n(s.text) for s in full.segments[:2])
    reserve = n(P.information(full.settings.budget_message))
    limit = first + n(full.segments[2].text) + reserve + 5
    assert limit + n(full.segments[3].text) - reserve - 5 > limit and limit < len(ids)

    rollout = AgentRollout(turn_tokens=32, policy=OraclePolicy())
    trainer, _ = build_trainer(rows[:1], _settings(tiny, tmp_path, max_completion_length=limit + 1,
                                                   prompts_per_step=1), rollout=rollout)
    batch = trainer._generate_and_score_completions(_batch(trainer, rows[:1]))
    assert len(rollout.last_episodes) == 2
    for i, ep in enumerate(rollout.last_episodes):
        assert ep.finish == "budget" and ep.answer is None
        assert ep.searches[-1]["error"] == "results over the token budget"
        last = ep.segments[-1]
        assert last.injected and last.content == ep.settings.budget_message
        assert [s.text for s in ep.segments[:3]] == [s.text for s in full.segments[:3]]
        assert ep.text.endswith(P.information(ep.settings.budget_message))
        assert int(batch["completion_mask"][i].sum()) <= limit + 1
        m = rollout.reward.last_metrics[i]
        assert m["budget"] == 1.0 and m["format_ok"] is False and m["n_search"] == 1.0
    assert trainer.reward_logger.drain()[METRIC_PREFIX + "finish_budget"] == 1.0
    # the trainer counts them as truncated, not as finished completions
    assert trainer._metrics["train"]["completions/clipped_ratio"][-1] == 1.0


def test_runner_cuts_a_model_turn_over_the_budget(tok, rows):
    class Rambler:
        def generate(self, prompts, decoding, **kw):
            return [["word " * 200] for _ in prompts]

    ep = episodes_from_rows(rows[:1])[0]
    EpisodeRunner(Rambler(), decoding=Decoding(max_new_tokens=400), token_budget=40,
                  tokenizer=tok).run([ep])
    assert ep.finish == "budget" and len(ep.segments) == 2
    assert len(ep.token_ids(tok)[0]) <= 40 and ep.text.startswith("word word")
    assert ep.segments[1].injected and ep.segments[1].content == ep.settings.budget_message
    metrics = score_batch([(TASK, ep.text, rows[0]["reward_model"]["ground_truth"], rows[0]["extra_info"])])[0]
    assert metrics["format_ok"] is False and metrics["budget"] == 1.0


def test_tool_protocol_mask_follows_the_chat_template(tok):
    task = get_task(TASK)
    rows = [r for r in closed_world_rows(task, "train", settings=P.AgentSettings(protocol="tool"))
            if r["extra_info"]["hops"] == 2][:2]
    episodes = episodes_from_rows(rows)
    EpisodeRunner(OraclePolicy(), decoding=Decoding(max_new_tokens=64)).run(episodes)
    for ep in episodes:
        assert ep.finish == "answer" and ep.n_search == 2
        ids, mask = tool_completion(tok, ep)
        prompt = render_prompt(tok, ep.messages)
        msgs = [dict(m) for m in ep.messages] + [
            {"role": "tool" if s.injected else "assistant", "content": s.content} for s in ep.segments]
        full = tok.apply_chat_template(msgs, tokenize=False)
        assert prompt + tok.decode(ids) == full  # the completion is the template's rendering
        written = tok.decode([t for t, m in zip(ids, mask) if m == 1])
        want = "".join(s.content + tok.eos_token for s in ep.segments if not s.injected)
        assert written == want  # model text and the end-of-turn closing it; nothing else
        hidden = tok.decode([t for t, m in zip(ids, mask) if m == 0])
        assert all(s.content in hidden for s in ep.segments if s.injected)
        assert "<|im_start|>assistant" in hidden  # role headers are the template's, not the model's


class HalfOracle:
    """First turn: every other episode is the oracle (searches, answers right), the others guess
    closed-book (answer at once, wrong) — rewards that differ within each group."""

    def __init__(self):
        self.oracle, self.guess = OraclePolicy(), ClosedBookGuess()

    def generate(self, prompts, decoding, **kw):
        out = []
        for i, p in enumerate(prompts):
            first = not P.injected_blocks(p.prefill)
            out += (self.guess if first and i % 2 else self.oracle).generate([p], decoding)
        return out


def test_agentic_grpo_steps_train_the_policy(tiny, tmp_path):
    rows = bundled_rows(TASK, "train")[:4]
    settings = _settings(tiny, tmp_path, steps=2, learning_rate=1e-3)
    rollout = AgentRollout(turn_tokens=32, policy=HalfOracle())
    from transformers import AutoModelForCausalLM
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny).state_dict().items()}
    result = train_trl(rows, settings, rollout=rollout)
    steps = [h for h in result.history if "loss" in h]
    assert len(steps) == 2 and all(math.isfinite(h["loss"]) for h in steps)
    for h in steps:
        # the guessing half is always wrong; the oracle half right where retrieval finds the chain
        # (and its episode fits the budget)
        assert 0 < h[METRIC_PREFIX + "em"] <= 0.5 and h[METRIC_PREFIX + "finish_answer"] >= 0.5
        assert h["reward_std"] > 0
    after = AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_policy_rollout_on_the_tiny_model_stays_in_budget(tiny, tmp_path):
    """The trained model itself plays (random weights: gibberish turns, invalid-action blocks)."""
    rows = bundled_rows(TASK, "train")[:2]
    rollout = AgentRollout(turn_tokens=16)
    trainer, _ = build_trainer(rows, _settings(tiny, tmp_path, max_completion_length=96), rollout=rollout)
    batch = trainer._generate_and_score_completions(_batch(trainer, rows))
    assert len(rollout.last_episodes) == 4
    assert int(batch["completion_mask"].sum(1).max()) <= 96
    for i, ep in enumerate(rollout.last_episodes):
        ids, mask = tag_completion(rollout.tokenizer, ep)
        assert len(ids) <= 96 and batch["tool_mask"][i, :len(ids)].tolist() == mask


def test_first_turn_is_parsed_with_its_prefill(rows):
    ep = episodes_from_rows(rows[:1])[0]
    ep.prefill = P.SEARCH_OPEN
    assert ep.advance(" Zorvia </search>") == ("Zorvia",)
    assert ep.text == " Zorvia </search>"  # the prefill stays in the prompt, not the trajectory
    assert ep.prompt().prefill == P.SEARCH_OPEN + " Zorvia </search>"


def test_quickstart_reward_pays_a_hit_before_the_answer_format():
    from deepretrieval.core.tables import RewardTable
    from deepretrieval.train.agentic_quickstart import QUICKSTART_TABLE

    unanswered = {"format_ok": False, "search_error": False, "f1": 0.0, "hit": 1.0}
    assert QUICKSTART_TABLE.score_of(unanswered) == pytest.approx(0.3)
    assert RewardTable(metric="f1", linear=True, bonus_metric="hit", bonus_value=0.3).score_of(unanswered) == 0.0
    answered = {**unanswered, "format_ok": True, "f1": 0.5}
    assert QUICKSTART_TABLE.score_of(answered) == pytest.approx(0.9)
