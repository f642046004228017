"""Boolean family: write a PubMed-syntax Boolean query for a claim; the query runs on a local
Boolean engine (``deepretrieval/search/boolean.py``); reward = the paper's search-engine tiers
on recall@K of the relevant documents.

Tasks: ``scifact_boolean`` (reasoning format) and ``scifact_boolean_no_reason`` (answer-only,
answer prefilled) over the bundled SciFact (5,183 abstracts; index ``scifact_boolean``), and
``scifact_boolean_shaped`` (answer-only; the same tiers plus a small bonus for the size of the
match set, :data:`SHAPED_TABLE`).

Why K = 100: the paper's PubMed depth, 3,000 of ~36 million records, is under 0.01 % of the
collection; on 5,183 documents a depth of 3,000 would be 58 % of the corpus, and any query that
matches broadly would reach full recall. 100 (1.9 % of the corpus) keeps the depth small next
to the collection, deep enough that tier boundaries at 0.05 … 0.7 recall are all reachable for
claims with one or two relevant abstracts, and it is the depth of the feasibility measurement
(``notes/boolean-feasibility.md``). Train and validation use the same depth, as the paper does
for PubMed.

The original query (``extra_info.query``, what ``deepretrieval baseline`` searches) is the claim
itself: under implicit AND it must match every content word, so it usually matches nothing.

Metrics (same keys on every row): ``recall`` (at K), ``recall@10``, ``recall@1000``,
``num_results`` (hits returned, at most K), ``query_error`` (1.0 when the engine rejected the
query as malformed; it then scores as a query that found nothing: ``format_ok`` + the lowest
tier, -2.5 with the paper's table, not a search error).
"""
from __future__ import annotations

from dataclasses import replace

from deepretrieval.tasks import beir
from deepretrieval.tasks.base import SearchPlan, Task
from deepretrieval.tasks.beir import qrels_from_ground_truth
from deepretrieval.tasks.search_engine import TABLE, SearchEngineFamily, recalls_at


class BooleanFamily(SearchEngineFamily):
    name = "boolean"

    def metric_keys(self, task: Task) -> list[str]:
        return ["recall", "recall@10", "recall@1000", "num_results", "query_error"]

    def user_message(self, task, fields):
        return task.instruction.format(**fields)

    def plan(self, task, value, ground_truth, extra_info, mode) -> SearchPlan:
        return SearchPlan(index=extra_info.get("search_index") or task.index, query=value,
                          k=max(task.depth(mode), 1000))

    def score(self, task, plan, result, ground_truth, extra_info, mode) -> dict[str, float]:
        qrels = qrels_from_ground_truth(ground_truth)
        ranked = list(dict.fromkeys(result.ids))
        out = recalls_at(ranked, qrels, {"recall": task.depth(mode), "recall@10": 10,
                                         "recall@1000": 1000})
        out["num_results"] = float(min(len(ranked), task.depth(mode)))
        out["query_error"] = 0.0
        return out

    def query_error_metrics(self, task, plan, result, ground_truth, extra_info, mode):
        out = self.empty_metrics(task)
        out["query_error"] = 1.0
        return out



BOOLEAN = BooleanFamily()
#: The paper's search-engine tiers (shared with the PubMed / CT.gov tasks).
TABLES: dict = {}
#: The bundled SciFact queries and qrels, as for the BEIR tasks (the ``collection`` option).
bundled_rows = beir.bundled_rows

#: recall depth of the SciFact Boolean task (see the module docstring)
SCIFACT_DEPTH = 100

_INSTRUCTION = (
    "Write a Boolean query for a PubMed-style search engine over scientific paper abstracts that "
    "finds the abstracts supporting or refuting the claim below. The engine ANDs terms that have "
    "no operator between them, so a long query matches almost nothing: keep only the key "
    "concepts, combine them with AND, put synonyms and related terms together with OR, and group "
    "with parentheses, e.g. (term1 OR term2) AND term3. Quoted phrases, term* truncation and "
    "field tags such as [tiab] or [ti] are supported.\n\nClaim: {query}")

#: The paper's tiers plus 0.01 per matching document up to the depth (at most +1 when the query
#: matches >= 100 documents). For small policies that never sample a query finding a relevant
#: abstract: under the bare table every such query scores the same -2.5, so nothing points from
#: "copy the claim" (matches nothing) towards fewer terms; the bonus does, and stays small next
#: to the upper tiers (3-5), so recall still dominates once queries find relevant abstracts.
SHAPED_TABLE = replace(TABLE, bonus_metric="num_results", bonus_value=0.01)

TASKS = [
    Task(name="scifact_boolean", family=BOOLEAN, index="scifact_boolean",
         instruction=_INSTRUCTION, reward=TABLE, train_depth=SCIFACT_DEPTH,
         val_depth=SCIFACT_DEPTH, options={"collection": "scifact"},
         description="SciFact claim → Boolean query (PubMed syntax, AND semantics); "
                     "paper's search-engine tiers on recall@100"),
    Task(name="scifact_boolean_no_reason", family=BOOLEAN, index="scifact_boolean",
         instruction=_INSTRUCTION, reward=TABLE, train_depth=SCIFACT_DEPTH,
         val_depth=SCIFACT_DEPTH, reasoning=False, prefill=beir.ANSWER_PREFILL,
         options={"collection": "scifact"},
         description="SciFact Boolean, answer-only format with the answer prefilled"),
    Task(name="scifact_boolean_shaped", family=BOOLEAN, index="scifact_boolean",
         instruction=_INSTRUCTION, reward=SHAPED_TABLE, train_depth=SCIFACT_DEPTH,
         val_depth=SCIFACT_DEPTH, reasoning=False, prefill=beir.ANSWER_PREFILL,
         options={"collection": "scifact"},
         description="SciFact Boolean, answer-only, the paper's tiers + 0.01 per matching "
                     "document up to 100 (shaped for small CPU policies)"),
]
