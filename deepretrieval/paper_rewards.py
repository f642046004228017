"""The ``paper`` profile's scoring engine: the original DeepRetrieval reward modules, re-implemented.

:func:`paper_score` scores one sample as the original module (:data:`profiles.PAPER_MODULES`)
did, against a :class:`Backend` that supplies the search results (ranked ids, passages) and runs
SQL. It never raises for anything in the sample: where the original raised, it returns the score
of the rule listed in :data:`RAISE_RULES` (and in ``docs/profiles.md``).

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
import math
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepretrieval.catalog import get_task
from deepretrieval.core import dpr_match, settings
from deepretrieval.core.bundled import bundled_path
from deepretrieval.core.results import SearchError
from deepretrieval.core.tags import tag_contents
from deepretrieval.search import sql as sql_backend
from deepretrieval.profiles import PaperModule, paper_data_source, paper_module
from deepretrieval.tasks import UnknownTask

log = logging.getLogger(__name__)

_HEADERS = ("Assistant:", "<|im_start|>assistant")
PUBMED_MINDATE = "1970/01/01"
#: Model SQL's time limit (the default profile's; the original used 30 s). Over it: no rows.
SQL_TIMEOUT_S = sql_backend.DEFAULT_TIMEOUT_S
#: Result caps of model SQL (over them: an execution error, see :func:`run_sql_on_copy`).
SQL_MAX_ROWS = 100_000
SQL_MAX_RESULT_BYTES = sql_backend.MAX_RESULT_BYTES
#: Message of the error a result over the caps raises.
SQL_OVER_CAPS = "result over the paper profile's caps"

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


class Backend(Protocol):
    def ranked_ids(self, module: PaperModule, query: Any, k: int, options: dict | None) -> list: ...
    def passages(self, module: PaperModule, query: Any, k: int) -> list: ...
    def run_sql(self, sql: Any, db_path: str) -> list: ...


@dataclass
class PaperResult:
    score: float
    format_ok: bool
    answer_score: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    raised: str | None = None     # which RAISE_RULES entry applied (the original raised here)
    search_error: bool = False


class _AnswerFailure(Exception):
    """The answer step failed where the original caught it."""


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


def _total(module: PaperModule, format_ok: bool, answer: float) -> float:
    fmt = module.format_ok if format_ok else module.format_bad
    if not module.positive_only:
        return fmt + answer
    if answer > 0:
        return fmt + answer
    return 0 if fmt > 0 else fmt


def _tier(module: PaperModule, value: float, compare: str = ">=") -> float:
    for bound, score in module.tiers:
        if (value >= bound) if compare == ">=" else (value <= bound):
            return score
    return module.otherwise


def _split_of(data_source: str) -> bool:
    """The original's test: depth 10 when 'test' or 'val' is a *substring* of the data_source."""
    return "test" in data_source or "val" in data_source


# ---------------------------------------------------------------------------------------------
# metrics, as the original computed them

def _discounts(n: int) -> np.ndarray:
    return np.log2(np.arange(2, n + 2))


def _gain_array(gains: list) -> np.ndarray:
    # numpy divides numbers (and booleans); a text or missing grade made the original raise
    for g in gains:
        if not isinstance(g, (bool, int, float, np.bool_, np.integer, np.floating)):
            raise TypeError(f"relevance {g!r} is not a number")
    return np.array(gains, dtype=float)


def ndcg_single(retrieved: Sequence, target: str, k: int) -> float:
    """nDCG@k against one target id (scifact.py): every occurrence counts, ideal DCG is 1."""
    retrieved = list(retrieved)[:k]
    gains = np.array([1.0 if doc == target else 0.0 for doc in retrieved])
    dcg = float(np.sum(gains / _discounts(len(gains))))
    return dcg  # ideal: the target alone at rank 1 → 1/log2(2) = 1


def ndcg_graded_listed(retrieved: Sequence, target: Sequence, scores: Sequence, k: int) -> float:
    """The original graded nDCG@k: gains from the qrels (a repeated id keeps its last grade),
    duplicates in the ranking count each time, and the ideal DCG takes the qrels **in the order
    they are listed** (so nDCG can exceed 1)."""
    if len(target) != len(scores):
        raise ValueError("target and score lengths differ")
    grade = {doc: scores[i] for i, doc in enumerate(target)}
    retrieved = list(retrieved)[:k]
    dcg = float(np.sum(_gain_array([grade.get(doc, 0) for doc in retrieved]) / _discounts(len(retrieved))))
    ideal_docs = list(target)[:k]
    ideal = float(np.sum(_gain_array([grade.get(doc, 0) for doc in ideal_docs]) / _discounts(len(ideal_docs))))
    return dcg / ideal if ideal > 0 else 0.0


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
        ids = backend.ranked_ids(module, query, module.train_depth, options)
    elif module.date_filter == "publication":
        if literature_type == "trial":
            raise TypeError("pubmed.py has no trial search")   # returned None
        raise TypeError(f"unknown literature_type {literature_type!r}")
    else:
        ids = backend.ranked_ids(module, query, module.train_depth, None)
    recall = len(set(ids) & set(label)) / len(label)
    metrics["recall"] = recall
    return _tier(module, recall)


def _answer_beir(module, answer, gt, extra, backend, metrics, label, scores, depth):
    query = _query_of(answer)
    ids = backend.ranked_ids(module, query, depth, None)
    if module.keyed_results:
        hash(query)  # the BM25 wrapper searched, then keyed its hits by the query
    if module.target == "str":
        value = ndcg_single(ids, label, depth)
    else:
        value = ndcg_graded_listed(ids, label, scores, depth)
    metrics["ndcg"] = value
    return value


def _answer_msmarco(module, answer, gt, extra, backend, metrics, label, depth):
    query = _query_of(answer)
    targets = [str(x) for x in label]
    ids = backend.ranked_ids(module, query, depth, None)
    scores = [1] * len(label)
    if module.kind == "msmarco_ndcg":
        len(set(ids) & set(targets)) / len(targets)  # computed first: an empty label fails
        value = ndcg_graded_listed(ids, targets, scores, depth)
        metrics["ndcg"] = value
        return value
    if depth == module.val_depth:
        value = ndcg_graded_listed(ids, targets, scores, depth)
        metrics["ndcg"] = value
        return value
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
    return module.otherwise


def _answer_evidence(module, answer, gt, extra, backend, metrics, label):
    query = _query_of(answer)
    passages = backend.passages(module, query, module.train_depth)
    rank = module.train_depth + 1
    for i, passage in enumerate(passages):
        if dpr_match.has_answer(passage, label):
            rank = i + 1
            break
    metrics["first_hit_rank"] = float(rank)
    return _tier(module, rank, "<=")


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
        return module.error


def _answer_sql(module, pred_sql, gt, extra, backend, metrics):
    gold = gt["target"]
    try:
        pred_rows = backend.run_sql(pred_sql, extra["db_path"])
        gold_rows = backend.run_sql(gold, extra["db_path"])
        match = set(map(tuple, pred_rows)) == set(map(tuple, gold_rows))
    except Exception as exc:  # noqa: BLE001 - the original's score for any error
        metrics["exec_ok"] = 0.0
        if module.sql_error_nonsyntax and "syntax" not in str(exc):
            return module.sql_error_nonsyntax
        return 0
    metrics["exec_ok"] = 1.0
    metrics["exec_match"] = float(match)
    return 1 if match else module.mismatch


# ---------------------------------------------------------------------------------------------

def paper_score(data_source: str, solution_str: Any, ground_truth: Any, extra_info: Any = None,
                backend: Backend | None = None, module: PaperModule | None = None,
                prefix: str = "") -> PaperResult:
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
        return PaperResult(_total(module, format_ok, 0), format_ok, 0, metrics, raised)
    try:
        value = _answer(module, data_source, answer, gt, extra, backend, metrics)
    except _AnswerRaised as exc:
        raised = raised or exc.rule
        value = exc.score
    except Exception as exc:  # noqa: BLE001 - the original's try/except: answer failure
        log.debug("%s: answer step failed: %s", module.name, exc)
        value = module.error
    return PaperResult(_total(module, True, value), True, value, metrics, raised)


class _AnswerRaised(Exception):
    def __init__(self, rule: str, score: float):
        super().__init__(rule)
        self.rule, self.score = rule, score


def _answer(module, data_source, answer, gt, extra, backend, metrics) -> float:
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
                raise _AnswerRaised("answer_step", module.error) from exc
            raise
    if kind in ("msmarco_ndcg", "msmarco_tiers"):
        if kind == "msmarco_ndcg":
            depth = module.train_depth
        else:
            depth = module.val_depth if _split_of(data_source) else module.train_depth
        try:
            value = _answer_msmarco(module, answer, gt, extra, backend, metrics, gt["target"], depth)
        except Exception:  # noqa: BLE001
            value = module.error
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
        return _answer_sql(module, pred_sql, gt, extra, backend, metrics)
    raise ValueError(f"unknown paper module kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# SQL with the original's semantics, on a private copy, in the sandbox

def run_sql_on_copy(sql: Any, db_file: str | Path, timeout_s: float = SQL_TIMEOUT_S) -> list:
    """Execute one statement of model SQL on ``db_file`` — a private copy (:class:`SQLiteCopy`,
    one per sample, so that a statement the original persisted, e.g. a ``DROP``, affects only that
    sample, as it did in the original) — and return its rows.

    The original's semantics (one statement, default transaction handling, never committed; a
    timeout gives no rows), inside the default profile's bounds (:func:`search.sql.lock_down`):
    no ``ATTACH`` / ``VACUUM [INTO]`` (nothing reaches another file), no pragma writes, no
    extensions or file functions, SQLite's heap ceiling, value-length and column limits, a
    deadline inside SQLite (:data:`SQL_TIMEOUT_S`), and row / byte caps while fetching. A statement
    the sandbox refuses gives no rows, as the original's run of it did, without running it; a
    result over the caps (:data:`SQL_MAX_ROWS` rows, :data:`SQL_MAX_RESULT_BYTES` bytes) raises
    ``sqlite3.OperationalError`` (it could not be compared whole: the module's execution-error
    score); any other error is SQLite's, as in the original."""
    start = time.monotonic()
    conn = sqlite3.connect(str(db_file))
    deadline = start + timeout_s
    timed_out = []

    def _progress():
        if time.monotonic() > deadline:
            timed_out.append(True)
            return 1
        return 0

    try:
        sql_backend.lock_down(conn, private_copy=True)
        conn.set_progress_handler(_progress, sql_backend.PROGRESS_EVERY)
        cur = conn.cursor()
        try:
            cur.execute(sql)
            rows: list = []
            size = 0
            while (row := cur.fetchone()) is not None:
                size += sum(sql_backend.value_size(v) for v in row)
                if len(rows) >= SQL_MAX_ROWS or size > SQL_MAX_RESULT_BYTES:
                    raise sqlite3.OperationalError(f"{SQL_OVER_CAPS} ({SQL_MAX_ROWS} rows, "
                                                   f"{SQL_MAX_RESULT_BYTES} bytes)")
                rows.append(row)
                if time.monotonic() > deadline:
                    return []
            return rows
        except sqlite3.DatabaseError as exc:
            if timed_out or any(m in str(exc) for m in ("not authorized", "authorization denied")):
                return []
            raise
    finally:
        conn.rollback()
        conn.close()
        sql_backend.release_free_memory_after(time.monotonic() - start)


class SQLiteCopy:
    """A private temporary copy of a database for one sample (removed on close)."""

    def __init__(self, db_file: str | Path):
        self._dir = tempfile.mkdtemp(prefix="dr-paper-sql-")
        self.path = Path(self._dir) / Path(db_file).name
        shutil.copyfile(db_file, self.path)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# the paper profile inside compute_score / TRLReward: real searches through our searchers

SQL_DB_ROOT_ENV = "DEEPRETRIEVAL_SQL_DB_ROOT"


def resolve_db_path(db_path: Any) -> Path:
    """An original row's ``extra_info.db_path``: absolute, or relative to the working directory,
    to ``$DEEPRETRIEVAL_SQL_DB_ROOT``, or to the bundled Spider databases."""

    if not db_path:
        raise FileNotFoundError("the row has no extra_info.db_path")
    path = Path(str(db_path))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute():
        roots = [settings.get_str(SQL_DB_ROOT_ENV)] if settings.get_str(SQL_DB_ROOT_ENV) else []
        roots.append(str(bundled_path("spider", "database")))
        for root in roots:
            candidates += [Path(root) / path, Path(root) / path.parent.name / path.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"database {db_path!r} not found (looked in: "
                            f"{', '.join(str(c) for c in candidates)}; set ${SQL_DB_ROOT_ENV})")


class SearcherBackend:
    """Real searches for the paper profile through one of our searchers (``search(index,
    queries, k, return_text=, options=)``); SQL on a private copy of the row's database."""

    def __init__(self, searcher, index: str, extra: Mapping[str, Any]):
        self.searcher, self.index, self.extra = searcher, index, extra
        self.failed: str | None = None

    def _search(self, query, k, return_text=False, options=None):

        if not isinstance(query, str):
            raise TypeError("the query must be text")
        try:
            result = self.searcher.search(self.index, [query], k, return_text=return_text,
                                          options=options)[0]
        except (SearchError, OSError, ValueError) as exc:
            self.failed = str(exc)
            raise
        if result.error:
            self.failed = result.error
            raise SearchError(result.error)
        return result

    def ranked_ids(self, module, query, k, options):
        if options and options.get("maxdate") in (None, ""):
            options = None  # no publication date on the row: no date filter
        return list(self._search(query, k, options=options).ids)

    def passages(self, module, query, k):
        return list(self._search(query, k, return_text=True).texts or [])

    def run_sql(self, sql, db_path):
        try:
            source = resolve_db_path(db_path)
        except FileNotFoundError as exc:
            self.failed = str(exc)
            raise
        with SQLiteCopy(source) as copy:
            return run_sql_on_copy(sql, copy.path)


def score_sample(data_source: str, solution_str: Any, ground_truth: Any, extra_info: Any,
                 searcher, value: str | None = None) -> dict:
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
    backend = SearcherBackend(searcher, index, extra)
    if value is not None:  # an already-extracted query: score the answer step
        answer = json.dumps({module.key: value})
        solution_str = "<|im_start|>assistant\n" + (
            f"<think></think><answer>{answer}</answer>" if module.reasoning or module.kind == "screening"
            else f"<answer>{answer}</answer>")
    prefix = str(extra.get("assistant_prefix", extra.get("prefill", "")) or "")
    result = paper_score(original_ds, solution_str, ground_truth, extra, backend=backend,
                         module=module, prefix=prefix)
    out["score"] = float(result.score)
    out["format_ok"] = bool(result.format_ok)
    out["search_error"] = backend.failed is not None
    for key, val in result.metrics.items():
        if key in out:
            out[key] = float(val)
    return out
