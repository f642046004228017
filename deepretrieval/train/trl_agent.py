"""Agentic GRPO on TRL 1.16: the episode runner as the trainer's ``rollout_func``, with the
environment mask.

TRL's ``GRPOTrainer(rollout_func=...)`` hands the rollout the step's prompts (each already repeated
``num_generations`` times by TRL's sampler) and expects ``prompt_ids``, ``completion_ids`` and
``logprobs`` back; any other key goes to the reward functions, except ``env_mask``, which TRL
multiplies into the loss mask (1: a token the model wrote, trained on; 0: a token the environment
injected, no loss). :class:`AgentRollout` runs the episodes with
:class:`~deepretrieval.agent.runner.EpisodeRunner` — one batched generate and one batched search per
turn, the same runner as evaluation and verl — on the policy being trained, then turns each episode
into token ids and that mask:

* **tag protocol** (any chat template, e.g. SmolLM2's, which has no tool support): the prompt is the
  chat template's rendering of the row's messages plus its assistant prefill; the completion is the
  trajectory, tokenised segment by segment (:meth:`Episode.token_ids`): model turns 1, every
  ``<information>`` block 0, then the end-of-turn token (1) when the model ended the episode.
* **tool protocol** (templates with tool messages, hermes ``<tool_call>``): the completion is the
  chat template's rendering of the assistant and ``tool`` messages after the prompt, rendered
  message by message; only the text each assistant message holds, and the end-of-turn token that
  closes it, are 1 — tool responses and the template's role headers are 0.

The completion budget is TRL's ``max_completion_length``: the runner gets it as its token budget
(less one token for the end-of-turn), so an episode whose next search result would not fit ends
with finish reason ``budget`` and a visible budget block instead of being truncated by the trainer
(which would drop the final answer silently); the share of such episodes is logged per step as
``deepretrieval/finish_budget``.

The reward scores the trajectory (the ``trajectory`` column the rollout returns) with the row's
task (:func:`deepretrieval.rewards.score_batch`), or with a given reward table; per-step means of
EM, F1, hit, searches, turns, answered share and finish reasons are logged as
``deepretrieval/<key>``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deepretrieval.agent.runner import (
    Episode,
    EpisodeRunner,
    episodes_from_rows,
)
from deepretrieval.core import agent_protocol as P
from deepretrieval.core.tables import RewardTable
from deepretrieval.generation.decoding import Decoding
from deepretrieval.train.trl_engine import TRLRewardAdapter, render_messages

#: Metrics averaged per step (besides the finish-reason shares).
LOGGED = ("score", "em", "f1", "hit", "n_search", "turns", "budget", "format_ok", "search_error")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _end_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-turn (eos) token")
    return int(tokenizer.eos_token_id)


def tag_completion(tokenizer, ep: Episode) -> tuple[list[int], list[int]]:
    """Completion ids and env mask of a single-message episode (tag protocol; see the module
    docstring)."""
    ids, mask = ep.token_ids(tokenizer)
    ended_by_model = ep.finish != "budget" and (not ep.segments or not ep.segments[-1].injected)
    if ended_by_model or not ids:
        ids, mask = ids + [_end_id(tokenizer)], mask + [1 if ended_by_model else 0]
    return ids, mask


def tool_completion(tokenizer, ep: Episode) -> tuple[list[int], list[int]]:
    """Completion ids and env mask of an episode laid out as messages (tool-call protocols): the
    chat template's rendering of
    the messages after the prompt, message by message (a template whose rendering of a longer
    conversation does not extend the shorter one cannot be masked this way: ValueError)."""
    messages = [dict(m) for m in ep.messages]
    previous = render_messages(tokenizer, messages)
    ids: list[int] = []
    mask: list[int] = []
    segments = ep.segments
    for i, seg in enumerate(segments):
        messages.append({"role": "tool" if seg.injected else "assistant", "content": seg.content})
        follows = i + 1 < len(segments) and not segments[i + 1].injected
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=follows)
        if not text.startswith(previous):
            raise ValueError("the chat template re-renders earlier messages differently once a "
                             "message is added; its tool conversations cannot be masked by prefix "
                             "(use the tag protocol for this model)")
        piece, previous = text[len(previous):], text
        if seg.injected or not seg.content:
            part = _encode(tokenizer, piece)
            ids, mask = ids + part, mask + [0] * len(part)
            continue
        at = piece.find(seg.content)
        if at < 0:
            raise ValueError("the chat template changed an assistant message's text; cannot mask it")
        head, body, tail = piece[:at], seg.content, piece[at + len(seg.content):]
        for part_text, value in ((head, 0), (body, 1)):
            part = _encode(tokenizer, part_text) if part_text else []
            ids, mask = ids + part, mask + [value] * len(part)
        tail_ids = _encode(tokenizer, tail) if tail else []
        end = _end_id(tokenizer)
        # the end-of-turn token closing the model's message is the model's (it stopped there)
        tail_mask = [1 if (j == 0 and t == end) else 0 for j, t in enumerate(tail_ids)]
        ids, mask = ids + tail_ids, mask + tail_mask
    if not ids:
        ids, mask = [_end_id(tokenizer)], [0]
    return ids, mask


class AgentRollout:
    """TRL ``rollout_func`` running agentic episodes (see the module docstring).

    ``turn_tokens``: new tokens per model turn. The dataset holds one record per row
    (:meth:`records`: the rendered prompt as TRL's ``prompt`` column, plus the reward columns);
    the rollout finds each prompt's row by its text. Sampling (temperature, top-p) and the
    completion budget come from the trainer's config at call time. ``policy``: a generator that
    plays the episodes instead of the model being trained (e.g. the closed world's scripted
    oracle in tests); the loss is still the trained model's on those tokens."""

    def __init__(self, turn_tokens: int = 48, *, table: RewardTable | None = None, searcher=None,
                 batch_size: int = 16, seed: int = 0, policy=None):
        if turn_tokens < 1:
            raise ValueError("turn_tokens must be >= 1")
        self.turn_tokens = turn_tokens
        self.searcher = searcher
        self.policy = policy
        self.batch_size = batch_size
        self.seed = seed
        self.reward = TRLRewardAdapter(table=table, text_column="trajectory", mode="train", logged=LOGGED,
                                       copy_rate=False, name="deepretrieval_agent")
        self.tokenizer = None
        self._rows: dict[str, Mapping[str, Any]] = {}
        self.last_episodes: list[Episode] = []
        self.calls = 0
        self.__name__ = "deepretrieval_agent_rollout"

    def records(self, tokenizer, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """TRL dataset records for agentic task rows (validated: every row is agentic)."""
        self.tokenizer = tokenizer
        out = []
        for ep, row in zip(episodes_from_rows(rows), rows):
            text = render_messages(tokenizer, ep.messages, ep.prefill)
            self._rows.setdefault(text, row)
            out.append({"prompt": text, "data_source": row["data_source"],
                        "reward_model": dict(row.get("reward_model") or {}),
                        "extra_info": dict(row.get("extra_info") or {})})
        protocols = {ep.settings.protocol for ep in episodes_from_rows(rows)}
        if len(protocols) > 1:
            raise ValueError(f"rows mix protocols {sorted(protocols)}; train one protocol at a time")
        return out

    def __call__(self, prompts: Sequence[str], trainer) -> dict[str, Any]:
        from deepretrieval.generation.local import TransformersGenerator

        if self.tokenizer is None:
            raise ValueError("AgentRollout.records() must build the dataset first")
        tok = self.tokenizer
        try:
            rows = [self._rows[p] for p in prompts]
        except KeyError:
            raise ValueError("a prompt the rollout did not render (build the dataset with "
                             "AgentRollout.records)") from None
        args = trainer.args
        budget = int(args.max_completion_length) - 1
        if budget < 1:
            raise ValueError("max_completion_length must be >= 2 for agentic rollouts")
        generator = self.policy
        if generator is None:
            generator = TransformersGenerator(trainer.accelerator.unwrap_model(trainer.model), tok)
        decoding = Decoding(max_new_tokens=self.turn_tokens, greedy=False,
                            temperature=float(args.temperature), top_p=float(args.top_p),
                            seed=self.seed + 7919 * (trainer.state.global_step + 1) + 104729 * self.calls)
        self.calls += 1
        episodes = episodes_from_rows(rows)
        runner = EpisodeRunner(generator, self.searcher, decoding=decoding,
                               batch_size=self.batch_size, token_budget=budget, tokenizer=tok)
        runner.run(episodes)
        self.last_episodes = episodes
        prompt_ids, completion_ids, env_mask = [], [], []
        for ep in episodes:
            prompt_ids.append(_encode(tok, render_messages(tok, ep.messages, ep.prefill)))
            ids, mask = (tag_completion(tok, ep) if ep.rollout.single_message
                         else tool_completion(tok, ep))
            if len(ids) > budget + 1:  # the runner keeps episodes within the budget
                raise RuntimeError(f"episode of {len(ids)} tokens over the budget {budget + 1}")
            completion_ids.append(ids)
            env_mask.append(mask)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None,
                "env_mask": env_mask, "trajectory": [ep.text for ep in episodes],
                P.RETRIEVED_KEY: [ep.passages for ep in episodes],
                "finish": [ep.finish for ep in episodes]}

