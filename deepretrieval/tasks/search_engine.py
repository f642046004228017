"""Search-engine family: write a Boolean query for PubMed / ClinicalTrials.gov from a review's
PICO; reward = recall of the review's included studies among the top 3,000 results.

Tasks: ``pubmed``, ``pubmed_no_reason``, ``ctgov``, ``ctgov_no_reason`` (the paper's tiers:
``search_engine`` reward table). ``extra_info.pub_date`` becomes PubMed's ``maxdate`` option
(publication-date cap, ``datetype=pdat``), so a search cannot find studies published after the
review. Metrics (same keys on every row): ``recall`` (at the task depth), ``recall@100``,
``recall@1000``, ``num_results``.

Rows come from bundled real data (:func:`bundled_rows`):

* ``pubmed`` test: the 25 TrialMind-SLR reviews (PICO; included trials' PMIDs; review date);
  train: the 30 CLEF TAR 2018 Task 2 test topics (title + objective; abstract-level relevant
  PMIDs; the end of the Boolean query's entry-date limit as date cap when it has one).
* ``ctgov`` test: the TrialMind-SLR reviews with NCT ids among their included trials.

The "original query" (``extra_info.query``, what ``deepretrieval baseline`` searches) is the
review title: what a person would type before any query engineering.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deepretrieval.core.bundled import BUNDLED_DIR as BUNDLED
from deepretrieval.core.tables import RewardTable
from deepretrieval.tasks.base import Family, SearchPlan, Task
from deepretrieval.tasks.beir import qrels_from_ground_truth

#: PubMed / ClinicalTrials.gov (the paper's table): recall@3000 of the review's included studies.
TABLE = RewardTable(
    metric="recall", tiers=((0.7, 5), (0.5, 4), (0.4, 3), (0.3, 1), (0.1, 0.5), (0.05, 0.1)),
    otherwise=-3.5, format_ok=1, format_bad=-4, error=-4)
TABLES = {"search_engine": TABLE}
PICO_FIELDS = (("P", "Population"), ("I", "Intervention"), ("C", "Comparison"), ("O", "Outcome"))


class SearchEngineFamily(Family):
    name = "search_engine"

    def metric_keys(self, task: Task) -> list[str]:
        return ["recall", "recall@100", "recall@1000", "num_results"]

    def user_message(self, task: Task, fields: Mapping[str, Any]) -> str:
        lines = []
        if fields.get("title"):
            lines.append(f"Review title: {fields['title']}")
        if fields.get("objective"):
            lines.append(f"Objective: {fields['objective']}")
        for key, label in PICO_FIELDS:
            if fields.get(key):
                lines.append(f"{key} ({label}): {fields[key]}")
        if not lines:
            raise ValueError(f"{task.name}: a row needs PICO fields (P, I, C, O) or a title")
        return task.instruction.format(engine=task.options.get("engine_label", task.index),
                                       review="\n".join(lines))

    def plan(self, task, value, ground_truth, extra_info, mode) -> SearchPlan:
        options = None
        pub_date = extra_info.get("pub_date")
        if task.options.get("date_cap") and pub_date not in (None, ""):
            options = {"maxdate": str(pub_date)}
        return SearchPlan(index=extra_info.get("search_index") or task.index, query=value,
                          k=task.depth(mode), options=options)

    def score(self, task, plan, result, ground_truth, extra_info, mode) -> dict[str, float]:
        qrels = qrels_from_ground_truth(ground_truth)
        ids = result.ids
        ranked = list(dict.fromkeys(ids if all(type(d) is str for d in ids) else map(str, ids)))
        depths = {"recall": task.depth(mode), "recall@100": 100, "recall@1000": 1000}
        out = recalls_at(ranked, qrels, depths)
        out["num_results"] = float(len(ranked))
        return out

    def query_error_metrics(self, task, plan, result, ground_truth, extra_info, mode):
        # a Boolean backend (``pubmed_local``) rejected the query as malformed: nothing found
        return self.empty_metrics(task)


def recalls_at(ranked: list[str], qrels: Mapping[str, float], depths: Mapping[str, int]) -> dict[str, float]:
    """:func:`~deepretrieval.core.metrics.recall_at_k` at several depths in one pass over a
    de-duplicated ranking (3,000 ids per reward: this is the hot path)."""
    positives = {d for d, g in qrels.items() if g > 0}
    if not positives:
        return {name: 0.0 for name in depths}
    ranks = [i for i, doc in enumerate(ranked) if doc in positives]
    return {name: sum(1 for r in ranks if r < k) / len(positives) for name, k in depths.items()}


SEARCH_ENGINE = SearchEngineFamily()

_INSTRUCTION = (
    "Write a Boolean search query for {engine} that finds the studies included in the systematic "
    "review described below. Combine the key concepts with AND, their synonyms and related terms "
    "with OR, and group them with parentheses, e.g. (term1 OR term2) AND (term3 OR term4).\n\n"
    "{review}")
_PREFILL = "<answer>{\"query\": \""

TASKS: list[Task] = []
for _name, _index, _label, _cap, _desc in (
        ("pubmed", "pubmed", "PubMed", True,
         "PICO → Boolean PubMed query; reward tiers on recall@3000 of included studies"),
        ("ctgov", "ctgov", "ClinicalTrials.gov", False,
         "PICO → Boolean ClinicalTrials.gov query; reward tiers on recall@3000 of included trials")):
    _opts = {"engine_label": _label, "date_cap": _cap}
    TASKS.append(Task(name=_name, family=SEARCH_ENGINE, index=_index, instruction=_INSTRUCTION,
                      reward=TABLE, train_depth=3000, val_depth=3000, options=_opts,
                      description=_desc))
    TASKS.append(Task(name=f"{_name}_no_reason", family=SEARCH_ENGINE, index=_index,
                      instruction=_INSTRUCTION, reward=TABLE, train_depth=3000,
                      val_depth=3000, reasoning=False, prefill=_PREFILL, options=_opts,
                      description=f"{_label}, answer-only format with the answer prefilled"))


# ---------------------------------------------------------------------------------------------
# rows from the bundled data

def load_trialmind() -> list[dict[str, Any]]:
    with open(BUNDLED / "trialmind_slr" / "reviews.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_clef() -> list[dict[str, Any]]:
    with open(BUNDLED / "clef_tar" / "topics.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def trialmind_rows(task: Task, split: str = "test", engine: str = "pubmed") -> list[dict[str, Any]]:
    """One row per TrialMind-SLR review with at least one included study id for ``engine``
    (``pubmed``: PMIDs, ``ctgov``: NCT ids)."""
    key = "pmid" if engine == "pubmed" else "nctid"
    rows: list[dict[str, Any]] = []
    for review in load_trialmind():
        target = list(dict.fromkeys(t[key] for t in review["trials"] if t.get(key)))
        if not target:
            continue
        rows.append(task.row(split, len(rows), review["pico"], {"target": target},
                             query_id=review["pmid"], query=review["title"],
                             pub_date=review["date"], source="trialmind_slr"))
    return rows


def clef_rows(task: Task, split: str = "train") -> list[dict[str, Any]]:
    """One row per CLEF TAR 2018 Task 2 test topic with relevant PMIDs."""
    rows: list[dict[str, Any]] = []
    for topic in load_clef():
        if not topic["relevant"]:
            continue
        rows.append(task.row(split, len(rows),
                             {"title": topic["title"], "objective": topic["objective"]},
                             {"target": list(topic["relevant"])}, query_id=topic["topic"],
                             query=topic["title"], pub_date=topic["date"], source="clef_tar_2018"))
    return rows


def bundled_rows(task: Task, split: str) -> list[dict[str, Any]]:
    """Rows of a search-engine task from the bundled data (``pubmed``: train = CLEF TAR,
    test = TrialMind-SLR; ``ctgov``: test = TrialMind-SLR reviews with NCT ids)."""
    task_name = task.name
    if task.family.name != SEARCH_ENGINE.name:
        raise ValueError(f"{task_name} is not a search-engine task")
    engine = task.index
    if engine == "pubmed" and split == "train":
        return clef_rows(task, split)
    if split in ("test", "val", "validation"):
        return trialmind_rows(task, split, engine="pubmed" if engine == "pubmed" else "ctgov")
    raise ValueError(f"no bundled {split!r} rows for {task_name} "
                     f"({'train, test' if engine == 'pubmed' else 'test'} available)")
