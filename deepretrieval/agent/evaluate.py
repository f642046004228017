"""Agentic evaluation (``deepretrieval eval`` on ``agent_*`` tasks).

The model runs full episodes through the episode runner (same protocol, same searcher, same reward
as training); next to it, two reference systems with the same model and decoding:

* **closed-book**: the question alone, answer directly (one turn, no search);
* **naive RAG**: one search with the question itself (top-k of the row), the passages in the
  prompt, answer directly (one turn; ``n_search`` = 1).

This is the evaluation harness (:func:`deepretrieval.evaluation.harness.evaluate`) with the
agentic rollout (:class:`EpisodeRollout`) and the two references (:class:`OneTurnReference`): the
same resume rule, per-row record header and report writer as single-shot evaluation.
Per question: EM, F1, searches, turns, hit, format and search-error flags; the report (``summary.json``,
``summary.md``, ``comparison.png``) holds one row per system. Per-question JSONL with the full
trajectory: ``generations.jsonl`` (the model, appended batch by batch: a rerun resumes),
``closed_book.jsonl``, ``naive_rag.jsonl``.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.agent.runner import (
    SEARCH_FAILURES,
    Episode,
    EpisodeRunner,
    episodes_from_rows,
)
from deepretrieval.catalog import get_searcher
from deepretrieval.core import agent_protocol as P
from deepretrieval.evaluation.harness import Reference, evaluate
from deepretrieval.evaluation.scoring import summarize
from deepretrieval.generation.decoding import Decoding, Generator
from deepretrieval.generation.factory import make_generator
from deepretrieval.rewards import score_batch
from deepretrieval.tasks.agentic import CLOSED_BOOK, NAIVE_RAG, blocks_hold_answer
from deepretrieval.tasks.evidence import answers_from_ground_truth

REFERENCE_FILES = {CLOSED_BOOK: "closed_book.jsonl", NAIVE_RAG: "naive_rag.jsonl"}
CLOSED_BOOK_SYSTEM = ("Answer the question. Give only the short final answer inside "
                      "<answer> </answer>, for example <answer> Paris </answer>.")
NAIVE_RAG_SYSTEM = ("Answer the question using the passages between <information> and "
                    "</information>. Give only the short final answer inside <answer> </answer>, "
                    "for example <answer> Paris </answer>.")


def _question(row: Mapping[str, Any]) -> str:
    info = row.get("extra_info") or {}
    if not info.get("query"):
        raise ValueError("agentic rows need the question in extra_info.query")
    return str(info["query"])


def _one_turn(ep: Episode, messages: list[dict[str, str]]) -> Episode:
    """A one-turn episode (any search is refused) with other messages."""
    settings = P.AgentSettings(**{**ep.settings.to_dict(), "max_turns": 1, "protocol": "tags"})
    return Episode(messages, ep.index, settings, "", ep.row)


def closed_book_episodes(rows: Sequence[Mapping[str, Any]]) -> list[Episode]:
    return [_one_turn(ep, [{"role": "system", "content": CLOSED_BOOK_SYSTEM},
                           {"role": "user", "content": f"Question: {_question(ep.row)}"}])
            for ep in episodes_from_rows(rows)]


def naive_rag_episodes(rows: Sequence[Mapping[str, Any]], searcher) -> list[Episode]:
    """One search per question (batched per index / top-k), passages in the user message."""
    base = episodes_from_rows(rows)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, ep in enumerate(base):
        groups.setdefault((ep.index, ep.settings.top_k), []).append(i)
    contents: dict[int, tuple[str, str | None, list[str]]] = {}
    for (index, k), members in groups.items():
        queries = [_question(base[i].row) for i in members]
        try:
            results = searcher.search(index, queries, k, return_text=True)
            errors = [r.error or (None if r.texts is not None or not r.ids
                                  else f"index {index!r} returned no passage texts") for r in results]
        except SEARCH_FAILURES as exc:
            results, errors = [None] * len(members), [str(exc) or type(exc).__name__] * len(members)
        for i, result, error in zip(members, results, errors):
            if error:
                contents[i] = (P.search_error_content(error), error, [])
            else:
                contents[i] = (P.render_passages(result.texts or [], base[i].settings), None,
                               [str(x) for x in result.ids])
    out = []
    for i, ep in enumerate(base):
        content, error, ids = contents[i]
        one = _one_turn(ep, [{"role": "system", "content": NAIVE_RAG_SYSTEM},
                             {"role": "user", "content": f"Question: {_question(ep.row)}\n\n"
                                                         f"{P.INFO_OPEN}{content}{P.INFO_CLOSE}"}])
        one.searches.append({"turn": 0, "query": _question(ep.row), "error": error, "ids": ids})
        if error:  # nothing to answer from: the episode is a search error, not a model failure
            one.search_error, one.error, one.finish = True, error, "search_error"
        out.append(one)
    return out


def _score(rows: Sequence[Mapping[str, Any]], episodes: Sequence[Episode], mode: str,
           reference: str | None = None) -> list[dict[str, Any]]:
    items = [(r["data_source"], e.text, (r.get("reward_model") or {}).get("ground_truth"),
              {**(r.get("extra_info") or {}), P.RETRIEVED_KEY: e.passages})
             for r, e in zip(rows, episodes)]
    metrics = score_batch(items, mode=mode)
    if reference == NAIVE_RAG:
        for m, e, (_, _, gt, _) in zip(metrics, episodes, items):
            # the search happened before the model's turn: in its prompt, not its trajectory
            m["n_search"] = float(e.n_search)
            golds = answers_from_ground_truth(gt)
            m["hit"] = float(blocks_hold_answer(P.injected_blocks(e.messages[-1]["content"]), golds))
            if e.search_error:
                m["search_error"] = True
    return metrics


def _body(row: Mapping[str, Any], ep: Episode, metrics: dict[str, Any]) -> dict[str, Any]:
    """The agentic part of a per-row record (after the harness's header): question, gold answers,
    prompt, the episode (trajectory, spans, searches, finish) and the metrics."""
    return {"question": (row.get("extra_info") or {}).get("query"),
            "gold": list(((row.get("reward_model") or {}).get("ground_truth") or {}).get("target") or []),
            "prompt": [dict(m) for m in ep.messages], **ep.to_dict(), "metrics": metrics}


class EpisodeRollout:
    """The harness's rollout for agentic rows: full episodes through the episode runner (same
    protocol, searcher and reward as training). ``runner``: called for the runner the first time
    episodes run (so a finished run loads no model). ``settings`` overrides the rows' protocol
    settings."""

    def __init__(self, name: str, runner: Callable[[], EpisodeRunner], *, mode: str,
                 settings: P.AgentSettings | None = None):
        self.name, self.runner, self.mode, self.settings = name, runner, mode, settings

    def run(self, rows: Sequence[Mapping[str, Any]], positions: Sequence[int]) -> list[dict[str, Any]]:
        episodes = self.runner().run(episodes_from_rows(rows, settings=self.settings))
        return [_body(r, e, m) for r, e, m in zip(rows, episodes, _score(rows, episodes, self.mode))]

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return summarize([r["metrics"] for r in records])


class OneTurnReference(EpisodeRollout):
    """A reference system played by the same model in one turn: closed-book or naive RAG
    (``episodes``: builds the one-turn episodes of rows)."""

    def __init__(self, name: str, runner: Callable[[], EpisodeRunner], *, mode: str,
                 episodes: Callable[[Sequence[Mapping[str, Any]]], list[Episode]]):
        super().__init__(name, runner, mode=mode)
        self.episodes = episodes

    def run(self, rows: Sequence[Mapping[str, Any]], positions: Sequence[int]) -> list[dict[str, Any]]:
        episodes = self.episodes(rows)
        self.runner().run([e for e in episodes if not e.done])
        metrics = _score(rows, episodes, self.mode, reference=self.name)
        return [_body(r, e, m) for r, e, m in zip(rows, episodes, metrics)]


def evaluate_agent(model: Any, rows: Sequence[Mapping[str, Any]], *,
                   out_dir: str | os.PathLike | None = None, max_new_tokens: int = 256,
                   batch_size: int = 16, greedy: bool = True, temperature: float = 1.0,
                   top_p: float = 1.0, seed: int = 0, resume: bool = True, name: str | None = None,
                   mode: str = "val", references: bool = True, plot: bool = True, searcher=None,
                   settings: P.AgentSettings | None = None, progress: bool = True,
                   **generator_kw: Any) -> dict[str, Any]:
    """Evaluate an agent on agentic task rows; returns the report (also written to ``out_dir``):
    the harness's (:func:`deepretrieval.evaluation.harness.evaluate`) with :class:`EpisodeRollout`,
    and closed-book and naive RAG as references (``references``).

    ``model``: a generator object (``generate(prompts, decoding, ...)``, e.g. a scripted policy or
    :class:`~deepretrieval.generation.local.TransformersGenerator`) or anything
    :func:`deepretrieval.generation.factory.make_generator` takes (``generator_kw`` go there).
    ``max_new_tokens`` is per turn. ``settings`` overrides the rows' protocol settings."""
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to evaluate")
    decoding = Decoding(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                        top_p=top_p, seed=seed)
    if isinstance(model, Generator):
        system = name or str(model.name)
        model_id = system
        generator = functools.cache(lambda: model)
    else:
        system = name or (Path(model).name if Path(str(model)).exists() else str(model))
        model_id = str(model)
        generator = functools.cache(lambda: make_generator(model, **generator_kw))
    episodes = episodes_from_rows(rows, settings=settings)  # validates rows and settings early
    searcher = searcher or get_searcher()
    runner = functools.cache(lambda: EpisodeRunner(generator(), searcher, decoding=decoding,
                                                   batch_size=batch_size))
    refs = [Reference(OneTurnReference(CLOSED_BOOK, runner, mode=mode, episodes=closed_book_episodes),
                      REFERENCE_FILES[CLOSED_BOOK]),
            Reference(OneTurnReference(NAIVE_RAG, runner, mode=mode,
                                       episodes=lambda rs: naive_rag_episodes(rs, searcher)),
                      REFERENCE_FILES[NAIVE_RAG])] if references else []
    run_settings = {"kind": "agentic", "model": model_id, "name": system, "decoding": decoding.to_dict(),
                    "extract": "final <answer>", "prefill_used": True, "mode": mode,
                    "agent": episodes[0].settings.to_dict()}
    return evaluate(EpisodeRollout(system, runner, mode=mode, settings=settings), rows,
                    settings=run_settings, references=refs, out_dir=out_dir, batch_size=batch_size,
                    resume=resume, progress=progress, plot=plot)
