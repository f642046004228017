"""Seed trajectories for a warm-up (ExSearch's supervised start, :mod:`deepretrieval.train.exsearch`).

Three sources, all giving :class:`~deepretrieval.agent.runner.Episode` objects whose segments
say which text the model wrote and which the environment injected (so the warm-up loss can skip
the injected passages):

* :func:`oracle_seeds` — the scripted :class:`~deepretrieval.data.closed_world.OraclePolicy` run
  through the episode runner (real searches, closed-world corpus);
* :func:`teacher_seeds` — any OpenAI-compatible endpoint acting as the agent (the tag protocol:
  the endpoint continues the assistant prefill), cached on disk by the chat client; a request
  that fails for good drops that question (``teacher_error``), never the run;
* :func:`jsonl_seeds` — a user JSONL file, one trajectory per line
  (``{"question", "answers", "trajectory"}``, optional ``"messages"``): injected text is what lies
  inside ``<information>…</information>`` blocks, as the protocol guarantees.

:func:`filter_seeds` keeps what a warm-up should imitate (default: trajectories whose final
answer matches a gold answer) and counts what it dropped.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.agent.runner import (
    Episode,
    EpisodeRunner,
    Segment,
    episodes_from_rows,
)
from deepretrieval.core import agent_protocol as P
from deepretrieval.core.qa_metrics import exact_match
from deepretrieval.data.closed_world import OraclePolicy
from deepretrieval.generation.api import LLMAPIError, OpenAIChatGenerator
from deepretrieval.generation.decoding import Decoding, Prompt
from deepretrieval.tasks.agentic import agent_rows

log = logging.getLogger(__name__)

#: What :func:`filter_seeds` keeps: ``correct`` (final answer matches a gold one), ``answered``
#: (any final answer), ``all``.
KEEP = ("correct", "answered", "all")
SOURCES = ("oracle", "teacher", "jsonl")


def gold_answers(row: Mapping[str, Any] | None) -> list[str]:
    """The gold answers of an agentic task row (``reward_model.ground_truth.target``)."""
    target = (((row or {}).get("reward_model") or {}).get("ground_truth") or {}).get("target")
    if isinstance(target, str):
        target = [target]
    answers = [str(a) for a in (target or []) if str(a).strip()]
    if not answers:
        raise ValueError("the row has no gold answer (reward_model.ground_truth.target)")
    return answers


def filter_seeds(episodes: Sequence[Episode], keep: str = "correct",
                 dropped: Mapping[str, int] | None = None) -> tuple[list[Episode], dict[str, Any]]:
    """Seeds worth imitating, and a report ``{"kept", "dropped": {reason: n}}``."""
    if keep not in KEEP:
        raise ValueError(f"unknown keep rule {keep!r}; known: {list(KEEP)}")
    counts: dict[str, int] = dict(dropped or {})
    out = []
    for ep in episodes:
        reason = None
        if ep.search_error:
            reason = "search_error"
        elif keep != "all" and ep.answer is None:
            reason = "no_answer"
        elif keep == "correct" and not exact_match(ep.answer, gold_answers(ep.row)):
            reason = "wrong_answer"
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
        else:
            out.append(ep)
    return out, {"kept": len(out), "dropped": counts}


def _single_message(ep: Episode, where: str) -> None:
    if not ep.rollout.single_message:
        raise ValueError(f"{where}: seed trajectories are one assistant message with <information> "
                         f"blocks (the tag protocol's text); the {ep.settings.protocol!r} protocol "
                         f"lays turns out as messages: prepare the rows with --protocol tags")


def _check_tags(rows: Sequence[Mapping[str, Any]]) -> list[Episode]:
    episodes = episodes_from_rows(rows)
    for ep in episodes:
        _single_message(ep, "rows")
    return episodes


def oracle_seeds(rows: Sequence[Mapping[str, Any]], searcher=None, *, keep: str = "correct",
                 batch_size: int = 64) -> tuple[list[Episode], dict[str, Any]]:
    """The closed-world oracle's trajectories for ``rows`` (real searches through ``searcher``)."""
    episodes = _check_tags(rows)
    EpisodeRunner(OraclePolicy(), searcher, decoding=Decoding(max_new_tokens=64),
                  batch_size=batch_size).run(episodes)
    kept, report = filter_seeds(episodes, keep)
    report["source"] = "oracle"
    return kept, report


def _prompt_key(prompt: Prompt) -> str:
    return json.dumps([dict(m) for m in prompt.messages], sort_keys=True)


class _TolerantTeacher:
    """A generator over a teacher endpoint where a request that failed for good marks that
    question failed (its later turns get an empty text without asking again) instead of ending
    the whole run."""

    uses_prefill = True

    def __init__(self, inner: OpenAIChatGenerator):
        self.inner = inner
        self.name = inner.name
        self.uses_prefill = inner.uses_prefill
        self.failed: dict[str, str] = {}

    def generate(self, prompts, decoding, *, batch_size: int = 8, seed_offset: int = 0,
                 progress: bool = False) -> list[list[str]]:
        out: list[list[str] | None] = [None] * len(prompts)
        todo = [i for i, p in enumerate(prompts) if _prompt_key(p) not in self.failed]
        for i in range(len(prompts)):
            if i not in todo:
                out[i] = [""] * decoding.n
        try:
            texts = self.inner.generate([prompts[i] for i in todo], decoding, batch_size=batch_size,
                                        seed_offset=seed_offset)
            for i, t in zip(todo, texts):
                out[i] = t
        except LLMAPIError:  # find out which requests fail (the good ones come from the cache)
            for i in todo:
                try:
                    out[i] = self.inner.generate([prompts[i]], decoding, seed_offset=seed_offset + i)[0]
                except LLMAPIError as exc:
                    log.warning("teacher failed on a question: %s", exc)
                    self.failed[_prompt_key(prompts[i])] = str(exc)
                    out[i] = [""] * decoding.n
        return [o if o is not None else [""] * decoding.n for o in out]


def teacher_seeds(rows: Sequence[Mapping[str, Any]], model: str, *, base_url: str,
                  api_key: str | None = None, cache_dir: str | os.PathLike | None = None,
                  searcher=None, keep: str = "correct", max_new_tokens: int = 256,
                  temperature: float | None = None, samples: int = 1, concurrency: int = 8,
                  **client_kw: Any) -> tuple[list[Episode], dict[str, Any]]:
    """Trajectories of an OpenAI-compatible endpoint acting as the agent (greedy unless a
    ``temperature`` is given; ``samples`` episodes per row). Responses are cached on disk
    (:class:`~deepretrieval.generation.api.ChatClient`), so a rerun asks nothing again. The
    endpoint must continue an assistant prefill (vLLM does; ``continue_final_message`` is sent).
    ``client_kw`` go to the chat client (``max_retries``, ``backoff``, ``timeout``)."""
    episodes = _check_tags([r for r in rows for _ in range(max(1, samples))])
    generator = _TolerantTeacher(OpenAIChatGenerator(
        model, base_url=base_url, api_key=api_key, cache_dir=cache_dir, prefill="continue",
        concurrency=concurrency, **client_kw))
    decoding = Decoding(max_new_tokens=max_new_tokens, greedy=temperature is None,
                        temperature=temperature or 1.0)
    EpisodeRunner(generator, searcher, decoding=decoding, batch_size=64).run(episodes)
    failed = [ep for ep in episodes
              if _prompt_key(Prompt.of(ep.messages)) in generator.failed]
    ok = [ep for ep in episodes if _prompt_key(Prompt.of(ep.messages)) not in generator.failed]
    kept, report = filter_seeds(ok, keep, {"teacher_error": len(failed)} if failed else None)
    report["source"] = f"teacher {model} at {base_url}"
    report["requests_sent"] = generator.inner.client.requests_sent
    report["cache_hits"] = generator.inner.client.cache_hits
    return kept, report


_BLOCK_WITH_SPACE = re.compile(r"\s*<information>.*?(?:</information>|\Z)\s*", re.DOTALL)


def episode_from_text(messages: Sequence[Mapping[str, str]], trajectory: str, *, index: str = "",
                      settings: P.AgentSettings | None = None, row: Mapping[str, Any] | None = None
                      ) -> Episode:
    """An episode rebuilt from a tag-protocol trajectory string: text inside
    ``<information>…</information>`` (and the whitespace around it) is injected, the rest is the
    model's."""
    if not isinstance(trajectory, str) or not trajectory.strip():
        raise ValueError("the trajectory is empty")
    segments, pos, turn = [], 0, 1
    for m in _BLOCK_WITH_SPACE.finditer(trajectory):
        if m.start() > pos:
            segments.append(Segment(trajectory[pos:m.start()], False, trajectory[pos:m.start()], turn))
        segments.append(Segment(m.group(0), True, m.group(0).strip(), turn))
        turn += 1
        pos = m.end()
    if pos < len(trajectory):
        segments.append(Segment(trajectory[pos:], False, trajectory[pos:], turn))
    ep = Episode([dict(m) for m in messages], index, settings or P.AgentSettings(), "", row,
                 segments=segments)
    ep.finish = "answer" if ep.answer is not None else "no_answer"
    return ep


def jsonl_seeds(path: str | os.PathLike, task, *, keep: str = "correct"
                ) -> tuple[list[Episode], dict[str, Any]]:
    """Seed trajectories from a JSONL file: one object per line with ``question``, ``answers``
    (list or string) and ``trajectory`` (the assistant's tag-protocol text, injected passages
    inside ``<information>`` blocks); optional ``messages`` (the prompt; default the task's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such seed file: {path}")
    episodes = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")  # noqa: TRY004 (bad file)
            missing = [k for k in ("question", "answers", "trajectory") if k not in item]
            if missing:
                raise ValueError(f"{path}:{n}: missing {missing} (needs question, answers, trajectory)")
            answers = item["answers"] if isinstance(item["answers"], list) else [item["answers"]]
            row = agent_rows(task, [{"id": item.get("id", f"seed-{n}"), "question": item["question"],
                                     "answers": [str(a) for a in answers]}], "train")[0]
            ep = episodes_from_rows([row])[0]
            _single_message(ep, f"task {task.name}")
            messages = item.get("messages") or ep.messages
            try:
                episodes.append(episode_from_text(messages, item["trajectory"], index=ep.index,
                                                  settings=ep.settings, row=row))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
    if not episodes:
        raise ValueError(f"{path} holds no trajectories")
    kept, report = filter_seeds(episodes, keep)
    report["source"] = str(path)
    return kept, report
