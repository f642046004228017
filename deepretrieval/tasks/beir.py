"""BEIR family: rewrite a query for a local index; reward = nDCG of the result."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deepretrieval.core.beir_files import load_qrels, load_queries
from deepretrieval.core.bundled import COLLECTIONS, collection_dir
from deepretrieval.core.metrics import ndcg_at_k, recall_at_k, trec_order
from deepretrieval.core.tables import RewardTable
from deepretrieval.tasks.base import Family, SearchPlan, Task

#: BEIR (the paper's table): 0.1 + nDCG when nDCG > 0, else 0; bad format -2.
TABLE = RewardTable(metric="ndcg", linear=True, format_ok=0.1, format_bad=-2, error=0.0,
                    positive_only=True)
TABLES = {"beir": TABLE}
#: Assistant-turn prefix of the answer-only BEIR tasks.
ANSWER_PREFILL = "<answer>{\"query\": \""


def qrels_from_ground_truth(ground_truth: Any) -> dict[str, float]:
    """Ground truth ``{"target": [doc ids], "grades": [grades]?}`` (grades default to 1) → qrels
    in listed order. Accepts lists, tuples and numpy arrays (as read back from parquet)."""
    if ground_truth is None:
        return {}
    target = ground_truth.get("target") if hasattr(ground_truth, "get") else ground_truth
    if target is None:
        return {}
    if isinstance(target, (str, int)):
        target = [target]
    ids = [str(t) for t in list(target)]
    grades = ground_truth.get("grades") if hasattr(ground_truth, "get") else None
    grades = [1.0] * len(ids) if grades is None else [float(g) for g in list(grades)]
    if len(grades) != len(ids):
        raise ValueError("ground truth 'grades' and 'target' differ in length")
    return dict(zip(ids, grades))


class BeirFamily(Family):
    name = "beir"

    def metric_keys(self, task: Task) -> list[str]:
        return ["ndcg", "ndcg@10", "ndcg_paper", "recall@100", "recall@1000"]

    def plan(self, task, value, ground_truth, extra_info, mode) -> SearchPlan:
        k = max(task.train_depth, task.val_depth, 1000)
        return SearchPlan(index=extra_info.get("search_index") or task.index, query=value, k=k)

    def score(self, task, plan, result, ground_truth, extra_info, mode) -> dict[str, float]:
        """trec_eval metrics on the result in trec_eval's order (score descending, ties by doc id
        descending: :func:`~deepretrieval.core.metrics.trec_order`); the paper's nDCG on the
        engine's order, as the original computed it."""
        qrels = qrels_from_ground_truth(ground_truth)
        ranked = trec_order(result.ids, result.scores)
        depth = task.depth(mode)
        variant = task.options.get("ndcg", "trec")
        paper = ndcg_at_k(result.ids, qrels, depth, ideal="listed")
        return {"ndcg": paper if variant == "paper" else ndcg_at_k(ranked, qrels, depth),
                "ndcg@10": ndcg_at_k(ranked, qrels, 10),
                "ndcg_paper": paper,
                "recall@100": recall_at_k(ranked, qrels, 100),
                "recall@1000": recall_at_k(ranked, qrels, 1000)}



BEIR = BeirFamily()


def beir_rows(task: Task, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
              split: str, search_index: str | None = None) -> list[dict[str, Any]]:
    """One row per query that has at least one relevant document, in qrels order."""
    rows: list[dict[str, Any]] = []
    for qid, judged in qrels.items():
        relevant = [(doc, grade) for doc, grade in judged.items() if grade > 0]
        if not relevant or qid not in queries:
            continue
        extra: dict[str, Any] = {"query_id": qid, "query": queries[qid]}
        if search_index:
            extra["search_index"] = search_index
        rows.append(task.row(split, len(rows), {"query": queries[qid]},
                             {"target": [d for d, _ in relevant], "grades": [g for _, g in relevant]},
                             **extra))
    return rows


def bundled_rows(task: Task, split: str) -> list[dict[str, Any]]:
    """Rows of a bundled BEIR collection (the task's ``collection`` option or its index)."""
    name = task.options.get("collection", task.index)
    if name not in COLLECTIONS:
        raise ValueError(f"no bundled rows for task {task.name!r}; write rows with "
                         f"`deepretrieval prepare beir ...` and pass --rows FILE.parquet")
    folder = collection_dir(name)
    try:
        qrels = load_qrels(folder, split)
    except FileNotFoundError:
        raise ValueError(f"no bundled {split!r} split for task {task.name!r}") from None
    return beir_rows(task, load_queries(folder), qrels, split)

_SCIFACT = (
    "Rewrite the scientific claim below into a search query for a BM25 search engine over "
    "scientific paper abstracts, so that it retrieves the abstracts that support or refute the "
    "claim.\n\nClaim: {query}")

TASKS = [
    Task(name="scifact", family=BEIR, index="scifact", instruction=_SCIFACT,
         reward=TABLE, train_depth=1000, val_depth=10,
         description="BEIR SciFact, BM25, reward 0.1 + nDCG@1000 (train) / @10 (val)"),
    Task(name="scifact_no_reason", family=BEIR, index="scifact", instruction=_SCIFACT,
         reward=TABLE, train_depth=1000, val_depth=10, reasoning=False,
         prefill=ANSWER_PREFILL,
         description="SciFact, answer-only format with the answer prefilled (small models)"),
]

# Dense retrieval over the same collection (index ``scifact_dense``: the shipped all-MiniLM-L6-v2;
# see deepretrieval/search/dense.py). ``collection`` names the bundled queries/qrels.
_SCIFACT_DENSE = _SCIFACT.replace("a BM25 search engine", "a dense (semantic) retrieval engine")
_DENSE_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("scifact_dense", {}), ("scifact_dense_no_reason", {"reasoning": False, "prefill": ANSWER_PREFILL}))
for _name, _extra in _DENSE_VARIANTS:
    TASKS.append(Task(name=_name, family=BEIR, index="scifact_dense", instruction=_SCIFACT_DENSE,
                      reward=TABLE, train_depth=1000, val_depth=10,
                      options={"collection": "scifact"},
                      description="BEIR SciFact, dense retrieval (all-MiniLM-L6-v2), reward "
                                  "0.1 + nDCG" + (", answer-only" if _extra else ""), **_extra))
