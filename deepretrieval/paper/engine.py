"""The ``paper`` profile's scoring engine: the original DeepRetrieval reward modules, re-implemented.

:func:`paper_score` scores one sample as the original module
(:data:`deepretrieval.paper.modules.PAPER_MODULES`) did: its tables are
:class:`~deepretrieval.core.tables.RewardTable` objects, its nDCG is
:func:`deepretrieval.core.metrics.ndcg_at_k` with the original's arithmetic
(``ideal="listed", dedup=False``), and it searches through a
:class:`~deepretrieval.core.results.Backend` (one query per call; :class:`SearcherIndex` for
real searches, :class:`deepretrieval.paper.check.CaseBackend` for recorded cases) and runs SQL
through a ``run_sql(sql, db_path) -> rows`` callable (:mod:`deepretrieval.paper.sql`). It never
raises for anything in the sample: where the original raised, it returns the score of the rule
listed in :data:`RAISE_RULES` (and in ``docs/profiles.md``). :func:`score_sample` is the
profile's result for ``compute_score``.

The original's response handling, which the paper profile keeps:

* the response is what follows the first ``Assistant:`` (else the first ``<|im_start|>assistant``),
  stripped; the screening module takes what follows the second ``Assistant:``;
* the answer is the last ``<answer>…</answer>`` (stripped); the structure check counts each tag
  (``<think>``, ``</think>``, ``<answer>``, ``</answer>``; no-reason modules only the answer
  tags) exactly once in that order — text after ``</answer>`` is allowed;
* an empty answer passes the structure check and is then not scored (answer score 0).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepretrieval.catalog import get_task
from deepretrieval.core import dpr_match
from deepretrieval.core.metrics import ndcg_at_k
from deepretrieval.core.results import Backend, SearchError, SearchResult, Searcher
from deepretrieval.core.tags import tag_contents
from deepretrieval.paper.modules import PaperModule, paper_data_source, paper_module
from deepretrieval.paper.sql import SQLiteCopy, resolve_db_path, run_sql_on_copy
from deepretrieval.tasks import UnknownTask

log = logging.getLogger(__name__)

_HEADERS = ("Assistant:", "<|im_start|>assistant")
PUBMED_MINDATE = "1970/01/01"
#: How the engine runs SQL: ``run_sql(sql, db_path)`` → the statement's rows (raises its error).
RunSQL = Callable[[Any, str], list]

#: Where the original raised, the paper profile returns (rule id → what it does).
RAISE_RULES = {
    "no_header": "no `Assistant:` / `<|im_start|>assistant` header (modern verl passes the "
                 "response alone): the text is scored as if the header and the prompt's tail "
                 "(`extra_info.assistant_prefix` or `prefill`; else `<think>` when the text "
                 "closes a think tag it never opened) preceded it; screening with "
                 "fewer than two `Assistant:` markers scores like one marker (format only)",
    "json_not_container": "BEIR/msmarco answer JSON that is a number, boolean or null "
                          "(`check_json_format` raised TypeError): a format failure",
    "answer_step": "any other exception inside the answer step (fiqa.py's unguarded helper, "
                   "the SQL answer being a JSON string/array, ...): the module's own "
                   "answer-failure score (as its try/except gives elsewhere); SQL: an "
                   "execution error whose message has no 'syntax'",
    "target_list": "evidence target given as a plain list (the original needed a numpy array): "
                   "used as is",
    "msmarco_mode": "msmarco data_source naming neither sparse nor dense: sparse (the original "
                    "helper's default mode)",
}


@dataclass
class PaperResult:
    score: float
    format_ok: bool
    answer_score: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    raised: str | None = None     # which RAISE_RULES entry applied (the original raised here)


# ---------------------------------------------------------------------------------------------
# response handling

def _split_response(text: str, module: PaperModule) -> tuple[str | None, str, bool]:
    """(answer, response, had_header) as the original's ``extract_solution``."""
    if module.kind == "screening":
        parts = text.split("Assistant:")
        if len(parts) >= 3:
            body = parts[2].strip()
        else:  # one marker: the whole string is validated, no answer (none: same, defined)
            return None, text, len(parts) == 2
    else:
        for header in _HEADERS:
            if header in text:
                body = text.split(header, 1)[1].strip()
                break
        else:
            body, had = text.strip(), False
            matches = tag_contents(body, "<answer>", "</answer>")
            return (matches[-1].strip() if matches else None), body, had
    matches = tag_contents(body, "<answer>", "</answer>")
    return (matches[-1].strip() if matches else None), body, True


def _structure_ok(body: str, module: PaperModule) -> bool:
    tags = ["<answer>", "</answer>"]
    if module.kind == "screening":
        tags = ["<criteria>", "</criteria>", "<think>", "</think>"] + tags
    elif module.reasoning:
        tags = ["<think>", "</think>"] + tags
    if any(body.count(tag) != 1 for tag in tags):
        return False
    positions = [body.find(tag) for tag in tags]
    return all(a <= b for a, b in zip(positions, positions[1:]))


def _json_ok(answer: str | None, module: PaperModule) -> tuple[bool, bool]:
    """(ok, raised): the original ``check_json_format`` (SQL catches every exception)."""
    if not answer:
        return False, False
    try:
        data = json.loads(answer)
    except (ValueError, RecursionError):
        return False, False
    try:
        return module.key in data, False
    except TypeError:  # number, bool, null: `in` raises
        return False, module.kind != "sql"


def _split_of(data_source: str) -> bool:
    """The original's test: depth 10 when 'test' or 'val' is a *substring* of the data_source."""
    return "test" in data_source or "val" in data_source


# ---------------------------------------------------------------------------------------------
# searches and the original's nDCG inputs

def _search(backend: Backend, query: Any, k: int, return_text: bool = False,
            options: dict | None = None) -> SearchResult:
    """One query through the backend (the original searched one query at a time)."""
    result = backend.search([query], k, return_text=return_text, options=options)[0]
    if result.error:
        raise SearchError(result.error)
    return result


_NUMBER = (bool, int, float, np.bool_, np.integer, np.floating)


def _listed_judgments(ids: Sequence, target: Sequence, scores: Sequence, k: int) -> list[tuple]:
    """(doc, grade) pairs as the original listed them. Its checks: equal lengths, and a grade
    that enters the DCG (of a retrieved document or of the first ``k`` listed) must be a number
    (numpy divided it; a text or missing grade made the original raise)."""
    if len(target) != len(scores):
        raise ValueError("target and score lengths differ")
    judgments = [(doc, scores[i]) for i, doc in enumerate(target)]
    grade = dict(judgments)
    for g in [grade.get(str(doc), 0) for doc in list(ids)[:k]] + [grade[doc] for doc in target[:k]]:
        if not isinstance(g, _NUMBER):
            raise TypeError(f"relevance {g!r} is not a number")
    return judgments


def _original_ndcg(ids: Sequence, judgments: list[tuple], k: int) -> float:
    """The original's nDCG@k: ideal DCG in listed order, both lists taken as given."""
    return ndcg_at_k(ids, judgments, k, ideal="listed", dedup=False)


# ---------------------------------------------------------------------------------------------
# the answer step per kind

def _query_of(answer: str, key: str = "query") -> Any:
    data = json.loads(answer)
    return data[key]


def _answer_search_engine(module, answer, gt, extra, backend, metrics):
    label = gt["target"]
    query = _query_of(answer)
    literature_type = extra.get("literature_type", "publication")
    options = None
    if module.date_filter == "always" or (module.date_filter == "publication"
                                          and literature_type == "publication"):
        if not isinstance(query, str):
            raise TypeError("the date filter is appended to the query text")
        options = {"mindate": PUBMED_MINDATE, "maxdate": extra.get("pub_date")}
        ids = _search(backend, query, module.train_depth, options=options).ids
    elif module.date_filter == "publication":
        if literature_type == "trial":
            raise TypeError("pubmed.py has no trial search")   # returned None
        raise TypeError(f"unknown literature_type {literature_type!r}")
    else:
        ids = _search(backend, query, module.train_depth).ids
    recall = len(set(ids) & set(label)) / len(label)
    metrics["recall"] = recall
    return module.table.answer_score(recall)


def _answer_beir(module, answer, gt, extra, backend, metrics, label, scores, depth):
    query = _query_of(answer)
    ids = _search(backend, query, depth).ids
    if module.keyed_results:
        hash(query)  # the BM25 wrapper searched, then keyed its hits by the query
    if module.target == "str":  # one target id, gain 1 wherever it is retrieved
        judgments = [(label, 1)]
    else:
        judgments = _listed_judgments(ids, label, scores, depth)
    value = _original_ndcg(ids, judgments, depth)
    metrics["ndcg"] = value
    return module.table.answer_score(value)


def _answer_msmarco(module, answer, gt, extra, backend, metrics, label, depth):
    query = _query_of(answer)
    targets = [str(x) for x in label]
    ids = _search(backend, query, depth).ids
    scores = [1] * len(label)
    if module.kind == "msmarco_ndcg":
        len(set(ids) & set(targets)) / len(targets)  # computed first: an empty label fails
    if module.kind == "msmarco_ndcg" or depth == module.val_depth:
        value = _original_ndcg(ids, _listed_judgments(ids, targets, scores, depth), depth)
        metrics["ndcg"] = value
        return value
    return _msmarco_recall_tiers(module, ids, targets, metrics)


def _msmarco_recall_tiers(module, ids, targets, metrics) -> float:
    """``msmarco_.py`` on training splits: tiers on recall at 10, 100 and 3000."""
    r = {k: len(set(ids[:k]) & set(targets)) / len(targets) for k in (10, 100, 3000)}
    metrics["recall"] = r[3000]
    if r[10] >= 0.5:
        return 5
    if r[10] >= 0.4:
        return 4
    if r[10] >= 0.3:
        return 3
    if r[10] >= 0.2:
        return 2
    if r[100] >= 0.5:
        return 1
    if r[100] >= 0.4:
        return 0.5
    if r[100] >= 0.3:
        return 0.3
    if r[3000] >= 0.5:
        return 0.1
    return module.table.otherwise


def _answer_evidence(module, answer, gt, extra, backend, metrics, label):
    query = _query_of(answer)
    passages = _search(backend, query, module.train_depth, return_text=True).texts or []
    rank = dpr_match.first_answer_rank(passages, label) or module.train_depth + 1
    metrics["first_hit_rank"] = float(rank)
    return module.table.answer_score(rank)


def _answer_screening(module, answer, gt):
    try:
        evaluations = json.loads(answer)["evaluations"]
        total = 0
        for item in evaluations:
            eligibility = item["eligibility"]
            if eligibility == "YES":
                total += 1
            elif eligibility == "PARTIAL":
                total += 0.5
            elif eligibility == "NO":
                total -= 1
        return total / len(evaluations) * gt["target"] * 2
    except Exception:  # noqa: BLE001 - the original: any error scores -1.5
        return module.table.error


def _answer_sql(module, pred_sql, gt, extra, run_sql, metrics):
    gold = gt["target"]
    try:
        pred_rows = run_sql(pred_sql, extra["db_path"])
        gold_rows = run_sql(gold, extra["db_path"])
        match = set(map(tuple, pred_rows)) == set(map(tuple, gold_rows))
    except Exception as exc:  # noqa: BLE001 - the original's score for any error
        metrics["exec_ok"] = 0.0
        if module.sql_error_nonsyntax and "syntax" not in str(exc):
            return module.sql_error_nonsyntax
        return module.table.error
    metrics["exec_ok"] = 1.0
    metrics["exec_match"] = float(match)
    return module.table.answer_score(float(match))  # 1, else the module's mismatch score


# ---------------------------------------------------------------------------------------------

def paper_score(data_source: str, solution_str: Any, ground_truth: Any, extra_info: Any = None,
                backend: Backend | None = None, run_sql: RunSQL | None = None,
                module: PaperModule | None = None, prefix: str = "") -> PaperResult:
    """Score one sample as the original module did (see the module docstring).

    ``extra_info``: ``pub_date``/``literature_type`` (search engine), ``db_path`` (SQL), and
    optionally ``paper_module``. ``prefix`` is put before a ``solution_str`` that has no response
    header (the original scored prompt + response; modern verl passes the response alone)."""
    extra = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    module = module or paper_module(data_source, extra)
    gt = ground_truth if isinstance(ground_truth, Mapping) else {"target": ground_truth}
    text = solution_str if isinstance(solution_str, str) else ""
    raised = None
    if module.kind != "screening" and not any(h in text for h in _HEADERS):
        if not prefix and "</think>" in text and "<think>" not in text:
            prefix = "<think>\n"  # the original prompts opened the think tag
        text = "<|im_start|>assistant\n" + prefix + text
        raised = "no_header"
    elif module.kind == "screening" and text.count("Assistant:") < 2:
        raised = "no_header" if "Assistant:" not in text else None
    if module.kind == "evidence" and not isinstance(gt.get("target"), np.ndarray):
        raised = raised or "target_list"   # the original called target.tolist()
    answer, body, _ = _split_response(text, module)
    format_ok = _structure_ok(body, module)
    if module.json_check:
        ok, json_raised = _json_ok(answer, module)
        format_ok = format_ok and ok
        if json_raised:
            raised = raised or "json_not_container"
            format_ok = False
    metrics: dict[str, float] = {}
    if not (format_ok and answer):
        return PaperResult(module.table.total(format_ok, 0.0), format_ok, 0, metrics, raised)
    try:
        value = _answer(module, data_source, answer, gt, extra, backend, run_sql, metrics)
    except _AnswerRaised as exc:
        raised = raised or exc.rule
        value = exc.score
    except Exception as exc:  # noqa: BLE001 - the original's try/except: answer failure
        log.debug("%s: answer step failed: %s", module.name, exc)
        value = module.table.error
    return PaperResult(module.table.total(True, value), True, value, metrics, raised)


class _AnswerRaised(Exception):
    def __init__(self, rule: str, score: float):
        super().__init__(rule)
        self.rule, self.score = rule, score


def _answer(module, data_source, answer, gt, extra, backend, run_sql, metrics) -> float:
    kind = module.kind
    if kind == "screening":
        return _answer_screening(module, answer, gt)
    if kind == "search_engine":
        return _answer_search_engine(module, answer, gt, extra, backend, metrics)
    if kind == "beir":
        depth = module.val_depth if _split_of(data_source) else module.train_depth
        try:
            if module.target == "str":
                # a converted original row keeps its one-id target (ours is a list) for this
                original = extra.get("original_target")  # None: not a converted row (or a padded key)
                label = str(gt["target"] if original is None else original)
                scores = None
            else:
                label, scores = [str(x) for x in gt["target"]], gt["score"]
            return _answer_beir(module, answer, gt, extra, backend, metrics, label, scores, depth)
        except Exception as exc:  # noqa: BLE001
            if module.name == "fiqa.py":  # no try/except there: it raised
                raise _AnswerRaised("answer_step", module.table.error) from exc
            raise
    if kind in ("msmarco_ndcg", "msmarco_tiers"):
        if kind == "msmarco_ndcg":
            depth = module.train_depth
        else:
            depth = module.val_depth if _split_of(data_source) else module.train_depth
        try:
            value = _answer_msmarco(module, answer, gt, extra, backend, metrics, gt["target"], depth)
        except Exception:  # noqa: BLE001
            value = module.table.error
        if "sparse" not in data_source and "dense" not in data_source:
            raise _AnswerRaised("msmarco_mode", value)
        return value
    if kind == "evidence":
        label = gt["target"]
        if not isinstance(label, (np.ndarray, list, tuple)):
            raise TypeError("the evidence target must be a list of answers")
        label = label.tolist() if isinstance(label, np.ndarray) else list(label)
        return _answer_evidence(module, answer, gt, extra, backend, metrics, label)
    if kind == "sql":
        try:
            pred_sql = _query_of(answer, "sql")
        except TypeError as exc:
            # the answer JSON is a string or array: the original raised here
            score = module.sql_error_nonsyntax if "syntax" not in str(exc) else 0
            raise _AnswerRaised("answer_step", score) from exc
        return _answer_sql(module, pred_sql, gt, extra, run_sql, metrics)
    raise ValueError(f"unknown paper module kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# the paper profile inside compute_score / TRLReward: real searches through our searchers

class SearcherIndex:
    """One index of a :class:`~deepretrieval.core.results.Searcher` as a
    :class:`~deepretrieval.core.results.Backend`, for the paper profile's real searches; SQL on a
    private copy of the row's database. ``failed`` keeps the first search or database failure
    (the sample's ``search_error``)."""

    def __init__(self, searcher: Searcher, index: str):
        self.searcher, self.name = searcher, index
        self.failed: str | None = None

    def info(self) -> dict[str, Any]:
        return {"type": "searcher index", "index": self.name}

    def search(self, queries: list, k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        if not all(isinstance(q, str) for q in queries):
            raise TypeError("the query must be text")
        if options and options.get("maxdate") in (None, ""):
            options = None  # no publication date on the row: no date filter
        try:
            results = self.searcher.search(self.name, list(queries), k, return_text=return_text,
                                           options=options)
        except (SearchError, OSError, ValueError) as exc:
            self.failed = str(exc)
            raise
        for result in results:
            if result.error and self.failed is None:
                self.failed = result.error
        return results

    def run_sql(self, sql: Any, db_path: Any) -> list:
        try:
            source = resolve_db_path(db_path)
        except FileNotFoundError as exc:
            self.failed = str(exc)
            raise
        with SQLiteCopy(source) as copy:
            return run_sql_on_copy(sql, copy.path)


def score_sample(data_source: str, solution_str: Any, ground_truth: Any, extra_info: Any,
                 searcher: Searcher, value: str | None = None) -> dict:
    """The paper profile's result dict for ``compute_score``: ``score``, ``format_ok``,
    ``search_error`` and the task's metric keys (0 where the original computed no such value)."""

    extra = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    original_ds = paper_data_source(data_source, extra)
    module = paper_module(original_ds, extra)
    try:
        task = get_task(data_source)
    except UnknownTask:  # e.g. screening: scored by the paper profile only
        task = None
    out: dict[str, Any] = {"score": 0.0, "format_ok": False, "search_error": False}
    if task is not None:
        out.update(task.family.empty_metrics(task))
    index = str(extra.get("search_index") or (task.index if task is not None else module.index))
    backend = SearcherIndex(searcher, index)
    if value is not None:  # an already-extracted query: score the answer step
        answer = json.dumps({module.key: value})
        solution_str = "<|im_start|>assistant\n" + (
            f"<think></think><answer>{answer}</answer>" if module.reasoning or module.kind == "screening"
            else f"<answer>{answer}</answer>")
    prefix = str(extra.get("assistant_prefix", extra.get("prefill", "")) or "")
    result = paper_score(original_ds, solution_str, ground_truth, extra, backend=backend,
                         run_sql=backend.run_sql, module=module, prefix=prefix)
    out["score"] = float(result.score)
    out["format_ok"] = bool(result.format_ok)
    out["search_error"] = backend.failed is not None
    for key, val in result.metrics.items():
        if key in out:
            out[key] = float(val)
    return out
