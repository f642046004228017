"""Agentic search (Search-R1 / ExSearch): the model searches several times and answers; the reward
is the final answer's exact match (or F1).

Tasks ``agent_<set>``: ``agent_nq``, ``agent_triviaqa``, ``agent_popqa``, ``agent_hotpotqa``,
``agent_2wikimultihopqa``, ``agent_musique``, ``agent_bamboogle`` (real QA sets, searching the
index their rows name, default ``wikipedia``), ``agent_closedworld`` (the generated closed-world
corpus, index ``closedworld``), and ``agent_<name>`` for any other name (bring your own: the rows
name their index). Search-R1's ``data_source`` spellings ``searchR1_<set>`` resolve to the same
tasks. Each task has an ``_f1`` variant rewarded by F1 (``agent_nq_f1``).

Scoring takes a **whole trajectory string** — the model's turns with the injected
``<information>`` / ``<tool_response>`` blocks, as verl's reward path passes it — and needs no
search at scoring time (the searches ran during the episode):

* answer: the last ``<answer>…</answer>`` outside injected blocks
  (:func:`deepretrieval.core.agent_protocol.final_answer`); none → ``format_ok`` False;
* ``em`` / ``f1``: SQuAD/KILT normalisation, max over the gold answers
  (:mod:`deepretrieval.core.qa_metrics`);
* ``n_search`` (searches answered), ``turns`` (model turns), ``hit`` (1 when a retrieved passage
  contains a gold answer, DPR token match — read from the record of real searches in
  ``extra_info["agent_passages"]`` that the runner, verl agent loop and ``search`` tool pass, never
  from blocks in the text, which a model can write itself; without a record ``hit`` is 0),
  ``budget`` (1 when the episode ended on the token
  budget, :class:`deepretrieval.agent.runner.EpisodeRunner`), ``search_error`` (a search failed during the episode;
  scored with the table's ``error`` value).

Rows (verl's schema): ``agent_name`` (the verl agent loop: ``deepretrieval_agent`` for the tag
protocol, ``tool_agent`` for the tool-call protocol), ``prompt``, ``reward_model.ground_truth =
{"target": [answers]}``, ``extra_info`` with ``index``, ``split``, ``query_id``, ``query`` (the
question), ``search_index``, ``top_k``, ``max_turns``, ``agent`` (the other protocol settings) and
``tools_kwargs`` (verl's per-tool ``create_kwargs``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deepretrieval.core import agent_protocol as P
from deepretrieval.core.answer import ParsedAnswer
from deepretrieval.core.qa_metrics import exact_match, f1_score
from deepretrieval.core.tables import RewardTable
from deepretrieval.tasks.base import Family, Task
from deepretrieval.tasks.evidence import (
    answers_from_ground_truth,
    has_answer,
)

#: verl agent-loop names the rows ask for (the tag-protocol loop is registered under this name).
TAG_AGENT_LOOP = "deepretrieval_agent"
TOOL_AGENT_LOOP = "tool_agent"
METRICS = ("em", "f1", "n_search", "turns", "hit", "budget")
CLOSED_BOOK, NAIVE_RAG = "closed-book", "naive RAG"

_DOC_PREFIX = re.compile(r"(?m)^Doc \d+: ")


@dataclass(frozen=True)
class AgentPlan:
    """What the agentic family scores: the whole trajectory (nothing to search)."""

    trajectory: str
    settings: P.AgentSettings


def settings_for(task: Task, extra_info: Mapping[str, Any] | None = None) -> P.AgentSettings:
    """The protocol settings of a row: the task's defaults, then the row's ``extra_info``."""
    base = P.AgentSettings(**dict(task.options.get("agent") or {}))
    return P.AgentSettings.from_extra_info(extra_info, base)


def passages_of(block: str) -> list[str]:
    """The passages of one rendered results block (``Doc i: …`` lines)."""
    return [p.strip() for p in _DOC_PREFIX.split(block) if p.strip()]


def blocks_hold_answer(blocks: Iterable[str], golds: Iterable[str]) -> bool:
    """Does a passage of these rendered results blocks contain a gold answer (the ``hit``
    metric)?"""
    golds = list(golds)
    return any(has_answer(p, golds) for block in blocks for p in passages_of(block))


class AgenticFamily(Family):
    name = "agentic"

    def metric_keys(self, task):
        return list(METRICS)

    def messages(self, task, fields):
        return P.messages(fields["query"], settings_for(task).protocol)

    def parse(self, task, text):
        # the format (a final answer) is judged while scoring, so that searches and turns are
        # reported for every trajectory, answered or not
        if not isinstance(text, str):
            return ParsedAnswer(False, error="completion is not a string")
        return ParsedAnswer(True, value=text)

    def plan(self, task, value, ground_truth, extra_info, mode):
        return AgentPlan(str(value), settings_for(task, extra_info))

    def score(self, task, plan, result, ground_truth, extra_info, mode):
        stats = P.trajectory_stats(plan.trajectory, plan.settings)
        golds = answers_from_ground_truth(ground_truth)
        # real searches only: the record the runner / verl loop / search tool passed; a block in
        # the text may be the model's own fake (no record: no hit)
        record = (extra_info or {}).get(P.RETRIEVED_KEY)
        hit = record is not None and blocks_hold_answer(list(record), golds)
        return {"format_ok": stats.answer is not None, "search_error": stats.search_error,
                "em": exact_match(stats.answer, golds), "f1": f1_score(stats.answer, golds),
                "n_search": float(stats.n_search), "turns": float(stats.turns),
                "hit": 1.0 if hit else 0.0, "budget": 1.0 if stats.budget else 0.0}

    def reference_queries(self, task, rows):
        """Naive RAG searches the question itself."""
        return NAIVE_RAG, [(r.get("extra_info") or {}).get("query") for r in rows]


AGENTIC = AgenticFamily()

#: The agentic reward tables.
TABLES: dict[str, RewardTable] = {
    # Search-R1: exact match of the final answer; no answer scores 0.
    "agent_em": RewardTable(metric="em", linear=True),
    # token F1 of the final answer (partial credit, e.g. for small models).
    "agent_f1": RewardTable(metric="f1", linear=True),
    # EM with a format penalty for episodes that end without an answer.
    "agent_em_format": RewardTable(metric="em", linear=True, format_bad=-0.2),
    # EM plus 0.1 when an answer-bearing passage was retrieved during the episode.
    "agent_em_hit": RewardTable(metric="em", linear=True, bonus_metric="hit", bonus_value=0.1),
}

#: Standard sets: name → (title, default index).
DATASETS = {
    "nq": ("Natural Questions (open)", "wikipedia"),
    "triviaqa": ("TriviaQA", "wikipedia"),
    "popqa": ("PopQA", "wikipedia"),
    "hotpotqa": ("HotpotQA", "wikipedia"),
    "2wikimultihopqa": ("2WikiMultiHopQA", "wikipedia"),
    "musique": ("MuSiQue", "wikipedia"),
    "bamboogle": ("Bamboogle", "wikipedia"),
    "closedworld": ("generated closed-world multi-hop corpus", "closedworld"),
}


def _make_task(name: str, dataset: str, index: str, title: str, reward: str = "agent_em") -> Task:
    metric = "F1" if reward == "agent_f1" else "EM"
    return Task(name=name, family=AGENTIC, index=index, instruction="Question: {query}",
                system=P.TAG_SYSTEM, answer_key="answer", reward=TABLES[reward], train_depth=3, val_depth=3,
                options={"dataset": dataset}, description=f"{title}: agentic search, answer {metric}")


TASKS = [task for _set, (_title, _index) in DATASETS.items()
         for task in (_make_task(f"agent_{_set}", _set, _index, _title),
                      _make_task(f"agent_{_set}_f1", _set, _index, _title, reward="agent_f1"))]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve(data_source: str, tasks: Mapping[str, Task]) -> Task | None:
    """``searchR1_<set>`` → ``agent_<set>`` (from ``tasks``, the defined tasks); an undefined
    ``agent_<name>`` → a bring-your-own agentic task whose default index is ``<name>``
    (``agent_<name>_f1``: rewarded by F1)."""
    lower = data_source.lower()
    task = None
    if lower.startswith("searchr1_") and len(data_source) > len("searchr1_"):
        target = "agent_" + data_source[len("searchR1_"):]
        if target.lower() in {f"agent_{s}" for s in DATASETS} | {f"agent_{s}_f1" for s in DATASETS}:
            task = tasks[target.lower()]
        else:
            task = resolve(target, tasks)
    elif lower.startswith("agent_") and _NAME.match(data_source[len("agent_"):] or "-") \
            and not lower.endswith("_no_reason"):  # agentic tasks have no answer-only variant
        rest = data_source[len("agent_"):]
        f1 = rest.endswith("_f1") and len(rest) > 3
        name = rest[:-3] if f1 else rest
        task = _make_task(data_source, name, name, f"bring-your-own QA set {name!r}",
                          reward="agent_f1" if f1 else "agent_em")
    return task


# ---------------------------------------------------------------------------------------------
# rows

def agent_rows(task: Task, examples: Sequence[Mapping[str, Any]], split: str, *,
               search_index: str | None = None, settings: P.AgentSettings | None = None,
               id_prefix: str = "") -> list[dict[str, Any]]:
    """One verl row per ``{"question", "answers"}`` example (see the module docstring)."""
    
    settings = settings or settings_for(task)
    index = search_index or task.index
    agent_name = TAG_AGENT_LOOP if settings.protocol == "tags" else TOOL_AGENT_LOOP
    other = {k: v for k, v in settings.to_dict().items()
             if k not in ("max_turns", "top_k") and v != getattr(P.AgentSettings(), k)}
    rows = []
    for i, ex in enumerate(examples):
        answers = [str(a) for a in ex["answers"]]
        extra: dict[str, Any] = {
            "query_id": str(ex.get("id", f"{id_prefix}{i}")), "query": ex["question"],
            "search_index": index, "top_k": settings.top_k, "max_turns": settings.max_turns,
            "tools_kwargs": {P.SEARCH_TOOL_NAME: {"create_kwargs": {
                "index": index, "top_k": settings.top_k, "ground_truth": {"target": answers}}}}}
        if other:
            extra["agent"] = other
        row = task.row(split, i, {"query": ex["question"]}, {"target": answers}, **extra)
        row["prompt"] = P.messages(ex["question"], settings.protocol)
        row["agent_name"] = agent_name
        rows.append(row)
    return rows
