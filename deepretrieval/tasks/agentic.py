"""Agentic search (Search-R1 / ExSearch): the model searches several times and answers; the reward
is the final answer's exact match (or F1).

Tasks ``agent_<set>``: ``agent_nq``, ``agent_triviaqa``, ``agent_popqa``, ``agent_hotpotqa``,
``agent_2wikimultihopqa``, ``agent_musique``, ``agent_bamboogle`` (real QA sets, searching the
index their rows name, default ``wikipedia``), ``agent_closedworld`` (the generated closed-world
corpus, index ``closedworld``), and ``agent_<name>`` for any other name (bring your own: the rows
name their index). verl's ``data_source`` spelling ``searchR1_<set>`` (written by verl's
``preprocess_search_r1_dataset.py``) resolves to the same tasks; Search-R1's own scripts write the
bare set names, which are converted (:mod:`deepretrieval.data.search_r1`). Each
task has an ``_f1`` variant rewarded by F1 (``agent_nq_f1``); any agentic table
(:data:`TABLES`) can score any agentic task with ``compute_score(..., table=NAME)``.

Scoring takes a **whole trajectory string** — the model's turns with the injected
``<information>`` / ``<tool_response>`` blocks, as verl's reward path passes it — and needs no
search at scoring time (the searches ran during the episode):

* answer: the last ``<answer>…</answer>`` outside injected blocks
  (:func:`deepretrieval.core.agent_protocol.final_answer`); none, or an empty last one →
  ``format_ok`` False;
* ``em`` / ``f1``: the SQuAD v1.1 normalisation (the one Search-R1 and verl use), max over the
  gold answers; ``sub_em`` (a gold answer inside the answer), ``cover_em`` (every gold token in
  the answer), ``em_unicode`` / ``f1_unicode`` (our NFC + Unicode-punctuation extension)
  (:mod:`deepretrieval.core.qa_metrics`); ``answer_spam`` (1 when the trajectory holds more than
  10 ``<answer>`` or ``</answer>`` tags, counted over the whole string as verl does);
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
from deepretrieval.core.qa_metrics import cover_exact_match, exact_match, f1_score, sub_exact_match
from deepretrieval.core.tables import RewardTable
from deepretrieval.tasks.base import Family, Task
from deepretrieval.tasks.evidence import (
    answers_from_ground_truth,
    has_answer,
)

#: verl agent-loop names the rows ask for (the tag-protocol loop is registered under this name).
TAG_AGENT_LOOP, TOOL_AGENT_LOOP = P.TAG_AGENT_LOOP, P.TOOL_AGENT_LOOP
METRICS = ("em", "f1", "sub_em", "cover_em", "em_unicode", "f1_unicode", "answer_spam",
           "n_search", "turns", "hit", "budget")
#: verl's ``search_r1_like_qa_em``: more answer tags than this (opening or closing) is answer spam.
ANSWER_SPAM_TAGS = 10
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


def answer_spam(trajectory: str) -> bool:
    """verl's rule: more than :data:`ANSWER_SPAM_TAGS` ``<answer>`` or ``</answer>`` tags in the
    whole string (injected blocks included, as verl counts)."""
    return (trajectory.count(P.ANSWER_OPEN) > ANSWER_SPAM_TAGS
            or trajectory.count(P.ANSWER_CLOSE) > ANSWER_SPAM_TAGS)


def blocks_hold_answer(blocks: Iterable[str], golds: Iterable[str]) -> bool:
    """Does a passage of these rendered results blocks contain a gold answer (the ``hit``
    metric)?"""
    golds = list(golds)
    return any(has_answer(p, golds) for block in blocks for p in passages_of(block))


class AgenticFamily(Family):
    name = "agentic"

    def metric_keys(self, task):
        return list(METRICS)

    def rollout(self, task):
        return settings_for(task).rollout

    def messages(self, task, fields):
        return settings_for(task).rollout.messages(fields["query"])

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
        answer = stats.answer
        return {"format_ok": answer is not None, "search_error": stats.search_error,
                "em": exact_match(answer, golds), "f1": f1_score(answer, golds),
                "sub_em": sub_exact_match(answer, golds), "cover_em": cover_exact_match(answer, golds),
                "em_unicode": exact_match(answer, golds, unicode=True),
                "f1_unicode": f1_score(answer, golds, unicode=True),
                "answer_spam": 1.0 if answer_spam(plan.trajectory) else 0.0,
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
    # sub-EM: a (normalised) gold answer contained in the (normalised) final answer.
    "agent_sub_em": RewardTable(metric="sub_em", linear=True),
    # cover-EM: every token of a gold answer among the final answer's tokens.
    "agent_cover_em": RewardTable(metric="cover_em", linear=True),
    # EM / F1 with our Unicode extension (NFC, Unicode punctuation deleted): opt-in.
    "agent_em_unicode": RewardTable(metric="em_unicode", linear=True),
    "agent_f1_unicode": RewardTable(metric="f1_unicode", linear=True),
    # verl's search_r1_like_qa_em: EM, divided by 4 when there are more than 10 answer tags.
    "agent_em_verl": RewardTable(metric="em", linear=True, scale_metric="answer_spam",
                                 scale_value=0.25),
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
    """verl's ``searchR1_<set>`` → ``agent_<set>`` (from ``tasks``, the defined tasks); an undefined
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
    rollout = settings.rollout
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
        row["prompt"] = rollout.messages(ex["question"])
        if rollout.verl_agent_loop is not None:
            row["agent_name"] = rollout.verl_agent_loop
        rows.append(row)
    return rows
