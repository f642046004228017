"""The ``paper`` profile's data: every reward module of the original DeepRetrieval code (pat-jj/
DeepRetrieval @ 001a563, ``code/verl/utils/reward_score*/``) as a :class:`PaperModule` — its
:class:`~deepretrieval.core.tables.RewardTable` (format scores, tiers, answer-failure score) and
the original's quirks (parse style, depth rule, target layout, result comparison). The engine that
applies them is :mod:`deepretrieval.paper.engine`; ``docs/profiles.md`` lists every difference
from the ``default`` profile.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepretrieval.catalog import TASKS as _TASKS
from deepretrieval.core.tables import RewardTable
from deepretrieval.tasks.original import paper_module_name

__all__ = ["NO_PAPER_REWARD", "OUR_NAMES", "PAPER_MODULES", "PaperModule", "paper_data_source",
           "paper_module"]


@dataclass(frozen=True)
class PaperModule:
    """How one original reward module scores (all values are the original's).

    ``table``: format scores (``format_ok`` / ``format_bad``), the answer score of a failed answer
    step (``error``), ``positive_only`` (total = format + answer only when answer > 0, else 0) and,
    for the tiered kinds, the tiers on ``table.metric`` (search engine: recall ``>=``; evidence:
    first answer-bearing rank ``<=``; SQL: execution match, ``otherwise`` = the mismatch score)."""

    name: str                     # original module, e.g. "scifact.py", "reward_score_dense/nfcorpus.py"
    kind: str                     # search_engine | beir | msmarco_ndcg | msmarco_tiers | evidence | sql | screening
    table: RewardTable
    reasoning: bool = True        # structure check requires <think></think> before <answer>
    json_check: bool = False      # format also needs a JSON answer holding the key (BEIR, msmarco, SQL)
    key: str = "query"
    train_depth: int = 1000       # depth on splits whose name holds neither "test" nor "val"
    val_depth: int = 10
    target: str = "list"          # "str": str(target) single id (scifact) | "graded": target + score
    keyed_results: bool = False   # BM25 wrapper returns results keyed by the query (needs hashable)
    date_filter: str | None = None  # "always" (pmd_no_reason) | "publication" (pubmed.py)
    sql_error_nonsyntax: float = 0.0  # SQL: answer score of an error without "syntax" in it
    index: str = ""               # our index name for the real search backend


_SE_TIERS = ((0.7, 5), (0.5, 4), (0.4, 3), (0.3, 1), (0.1, 0.5), (0.05, 0.1))
_EV_TIERS = ((5, 5), (20, 4), (50, 2), (100, 1), (1000, 0.5), (3000, 0.1))
#: BEIR and msmarco.py: format 0.1 / -2, nDCG as the answer score, total 0 unless it is positive.
_NDCG = RewardTable("ndcg", linear=True, format_ok=0.1, format_bad=-2, error=-2, positive_only=True)


def _se(name, **kw):
    table = RewardTable("recall", tiers=_SE_TIERS, otherwise=-3.5, format_ok=1, format_bad=-4,
                        error=-4)
    return PaperModule(name=name, kind="search_engine", table=table, train_depth=3000,
                       val_depth=3000, **kw)


def _beir(name, depth, target="graded", dense=False):
    dataset = name.split("/")[-1][:-3]
    return PaperModule(name=name, kind="beir", table=_NDCG, json_check=True, train_depth=depth,
                       target=target, keyed_results=not dense,
                       index=f"{dataset}{'-dense' if dense else ''}")


def _ev(name, reasoning=True, squad=False):
    table = RewardTable("first_hit_rank", tiers=_EV_TIERS, compare="<=",
                        otherwise=-2.5 if squad else -3.5, format_ok=1, format_bad=-4,
                        error=-3 if squad else -4)
    return PaperModule(name=name, kind="evidence", table=table, reasoning=reasoning,
                       train_depth=3000, val_depth=3000, index="wikipedia")


def _sql(name, reasoning=True, bird=False, nonsyntax=0.0):
    table = RewardTable("exec_match", tiers=((1.0, 1.0),), otherwise=0.3 if bird else 0.0,
                        format_ok=0.1, format_bad=-2, positive_only=True)
    return PaperModule(name=name, kind="sql", table=table, reasoning=reasoning, json_check=True,
                       key="sql", sql_error_nonsyntax=nonsyntax)


#: Every original reward module, keyed by its file name under ``code/verl/utils/``.
PAPER_MODULES: dict[str, PaperModule] = {m.name: m for m in (
    _se("pubmed.py", date_filter="publication", index="pubmed"),
    _se("ctgov.py", index="ctgov"),
    _se("pmd_no_reason.py", reasoning=False, date_filter="always", index="pubmed"),
    _beir("scifact.py", 50, target="str"),
    _beir("reward_score_dense/scifact.py", 1000, target="str", dense=True),
    _beir("nfcorpus.py", 1000),
    _beir("reward_score_dense/nfcorpus.py", 100, dense=True),
    _beir("fever.py", 1000),
    _beir("reward_score_dense/fever.py", 1000, dense=True),
    _beir("hotpotqa.py", 3000),
    _beir("reward_score_dense/hotpotqa.py", 1000, dense=True),
    _beir("msmarco_beir.py", 1000),
    _beir("reward_score_dense/msmarco_beir.py", 1000, dense=True),
    _beir("fiqa.py", 1000),
    PaperModule(name="msmarco.py", kind="msmarco_ndcg", table=_NDCG, json_check=True,
                train_depth=10, val_depth=10, target="msmarco", index="msmarco-passage"),
    # recall tiers on three depths (code: engine._msmarco_recall_tiers); -3.5 below them
    PaperModule(name="msmarco_.py", kind="msmarco_tiers",
                table=RewardTable("recall", otherwise=-3.5, format_ok=1, format_bad=-4, error=-4,
                                  positive_only=True),
                json_check=True, train_depth=3000, val_depth=10, target="msmarco",
                index="msmarco-passage"),
    _ev("nq_serini.py"), _ev("triviaqa.py"), _ev("squad.py", squad=True),
    _ev("nq_no_reason.py", reasoning=False), _ev("tqa_no_reason.py", reasoning=False),
    _ev("squad_no_reason.py", reasoning=False, squad=True),
    _sql("spider.py"), _sql("bird.py", bird=True),
    _sql("spider_no_reason.py", reasoning=False),
    _sql("bird_no_reason.py", reasoning=False, bird=True, nonsyntax=0.1),
    PaperModule(name="screening.py", kind="screening",
                table=RewardTable("eligibility", linear=True, format_ok=1, format_bad=-2,
                                  error=-1.5)),
)}

def paper_module(data_source: str, extra_info: Mapping[str, Any] | None = None) -> PaperModule:
    """The module spec for a sample: ``extra_info["paper_module"]`` (e.g. ``"msmarco_.py"``, which
    the original trainer never selected) or the dispatch of ``data_source``."""
    name = (extra_info or {}).get("paper_module") if isinstance(extra_info, Mapping) else None
    name = name or paper_module_name(data_source)
    if name not in PAPER_MODULES:
        raise ValueError(f"no original reward module for data_source {data_source!r}"
                         + (f" (paper_module {name!r})" if name else "")
                         + f"; known modules: {sorted(PAPER_MODULES)}")
    return PAPER_MODULES[name]


#: Our task names → the original's ``data_source`` spelling (for the paper profile's dispatch).
OUR_NAMES = {"nq": "nq_serini", "nq_no_reason": "nq_serini_no_reason",
             "triviaqa_no_reason": "triviaqa_no_reason", "squad_no_reason": "squad_no_reason",
             "pubmed_no_reason": "pmd_no_reason", "spider_no_reason": "spider_wor",
             "bird_no_reason": "bird_wor", "scifact_dense": "scifact_dense"}
#: Our tasks the original has no reward for (its trainer scored such rows with the reasoning
#: module, which fails every answer-only completion).
NO_PAPER_REWARD = ("ctgov_no_reason", "scifact_no_reason", "scifact_dense_no_reason")


def paper_data_source(data_source: str, extra_info: Mapping[str, Any] | None = None) -> str:
    """The ``data_source`` the original would have seen for a sample: original names unchanged;
    our task names spelled the original's way with the row's split appended (``scifact`` +
    split test → ``scifact_test``), since the original chose depths from the name."""

    if data_source not in _TASKS:
        return data_source
    if data_source in NO_PAPER_REWARD:
        raise ValueError(f"the original DeepRetrieval has no reward for {data_source!r} (its "
                         "trainer scored such rows with the reasoning module, failing every "
                         "answer-only completion); score it with the default profile")
    split = str((extra_info or {}).get("split", "train")) if isinstance(extra_info, Mapping) else "train"
    name = OUR_NAMES.get(data_source, data_source)
    return f"{name}_{'train' if split == 'train' else 'test'}"
