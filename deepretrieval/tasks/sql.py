"""SQL family: the model writes a SQLite query; reward = execution match with the gold query.

Tasks: ``spider`` / ``spider_no_reason`` (Spider reward table: match 1.1, else 0, bad format -2)
and ``bird`` / ``bird_no_reason`` (BIRD table: match 1.1, mismatch 0.4, bad format -2).
The answer key is ``sql``: ``<answer>{"sql": "SELECT ..."}</answer>``.

Rows: ``ground_truth = {"target": [gold_sql, ...]}`` (several equivalent gold queries: a match with
any of them counts), ``extra_info.db_id`` (the database), and
``extra_info.query`` = the question. The search runs on index ``<task.index>/<db_id>``
(``spider/flight_2``…) unless ``extra_info.search_index`` names another.

Execution match (see :func:`normalize_rows`): both results are compared as **multisets of rows**
(``exec_match``, order-insensitive, duplicates count), as **sets** (``exec_match_set``) and, when the
gold query has a top-level ``ORDER BY``, as **ordered lists** (``exec_match_ordered``; a multiset
comparison otherwise). The Spider reward reads ``exec_match_ordered`` (Spider's evaluator compares
ordered results only when the gold query has ORDER BY), the BIRD reward ``exec_match`` (BIRD's
evaluator ignores order); use ``reward_overrides={"metric": ...}`` to reward another. A SQL error, timeout or a result
over the row cap is a mismatch (the model's fault), not a search error; a gold query that fails
or a missing database is a search error.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from deepretrieval.core.results import SearchError, SearchResult
from deepretrieval.core.sql_text import (
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    has_top_level_order_by,
)
from deepretrieval.core.tables import RewardTable
from deepretrieval.tasks.base import Family, SearchPlan, Task

log = logging.getLogger(__name__)

#: Significant digits floats are compared at.
FLOAT_DIGITS = 10
GOLD_TIMEOUT_S = 30.0
_GOLD_CACHE_MAX = 20_000


# Comparing results ---------------------------------------------------------------------------

def normalize_value(value: Any) -> Any:
    """Value used for comparison: floats are rounded to :data:`FLOAT_DIGITS` significant digits
    and integral floats become ints (``1.0 == 1``; ``0.1 + 0.2 == 0.3``); ints, text, NULL and
    blobs compare exactly (text ``'1'`` differs from the number ``1``; text is case- and
    space-sensitive)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ("nan",)
        if math.isinf(value):
            return value
        rounded = float(f"{value:.{FLOAT_DIGITS}g}")
        if rounded.is_integer() and abs(rounded) < 2 ** 63:
            return int(rounded)
        return rounded
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, list):
        return tuple(normalize_value(v) for v in value)
    return value


def normalize_rows(rows: Sequence[Sequence[Any]]) -> list[tuple]:
    return [tuple(normalize_value(v) for v in row) for row in rows]


def exec_match(pred: Sequence[Sequence[Any]], gold: Sequence[Sequence[Any]]) -> bool:
    """Same rows with the same multiplicities, in any order (columns in order)."""
    return Counter(normalize_rows(pred)) == Counter(normalize_rows(gold))


def exec_match_set(pred: Sequence[Sequence[Any]], gold: Sequence[Sequence[Any]]) -> bool:
    """Same set of distinct rows, in any order."""
    return set(normalize_rows(pred)) == set(normalize_rows(gold))


def exec_match_ordered(pred: Sequence[Sequence[Any]], gold: Sequence[Sequence[Any]],
                       gold_sql: str | None = None) -> bool:
    """Same rows in the same order when the gold query has a top-level ORDER BY (or when no gold
    SQL is given); otherwise :func:`exec_match`."""
    if gold_sql is not None and not has_top_level_order_by(gold_sql):
        return exec_match(pred, gold)
    return normalize_rows(pred) == normalize_rows(gold)


# Executing the gold query (cached) ---------------------------------------------------------

_gold_cache: dict[tuple, tuple[list[tuple], bool]] = {}
_gold_lock = threading.Lock()


def clear_gold_cache() -> None:
    with _gold_lock:
        _gold_cache.clear()


def result_rows(result: SearchResult) -> tuple[list | None, dict]:
    """``(rows, info)`` of a SQL search result; ``rows`` is None when the SQL failed. Raises
    SearchError when the result is not from a SQL backend (e.g. a service that drops ``rows``)."""
    info = dict(result.info or {})
    if result.error:
        raise SearchError(result.error)
    if result.rows is not None:
        return list(result.rows), info
    if "sql_error" not in info:
        raise SearchError("the search result carries no SQL rows (is the index a SQL database, "
                          "and does the search service pass 'rows' and 'info' through?)")
    return None, info


def _gold_key(index: str, gold_sql: str, k: int) -> tuple:
    return (index, gold_sql, int(k))


def cached_gold(index: str, gold_sql: str, k: int) -> tuple[list[tuple], bool] | None:
    """Normalized rows of a gold query already executed in this process (and whether it was
    truncated at ``k`` rows), or None."""
    with _gold_lock:
        return _gold_cache.get(_gold_key(index, gold_sql, k))


def gold_from_result(index: str, gold_sql: str, k: int, result: SearchResult) -> tuple[list[tuple], bool]:
    """Normalized rows of the gold query's search result (cached per (index, gold SQL, k));
    raises SearchError when the gold query failed."""
    rows, info = result_rows(result)
    if rows is None:
        raise SearchError(f"the gold SQL failed on {index}: {info.get('sql_error')} "
                          f"({info.get('error_kind')}); SQL: {gold_sql[:200]}")
    value = (normalize_rows(rows), bool(info.get("truncated")))
    with _gold_lock:
        if len(_gold_cache) >= _GOLD_CACHE_MAX:
            _gold_cache.clear()
        _gold_cache[_gold_key(index, gold_sql, k)] = value
    return value


def gold_sqls_of(ground_truth: Any) -> list[str]:
    """Every gold SQL variant of a ground truth ``{"target": [gold_sql, ...]}`` (a bare string is
    one variant); a prediction matching any of them is a match."""
    target = ground_truth.get("target") if hasattr(ground_truth, "get") else ground_truth
    if isinstance(target, str):
        target = [target]
    target = list(target) if target is not None else []
    if not target or not all(isinstance(t, str) and t.strip() for t in target):
        raise ValueError("SQL ground truth needs target = [gold_sql, ...] (non-empty strings)")
    return list(dict.fromkeys(target))


def gold_sql_of(ground_truth: Any) -> str:
    """The first gold SQL variant (the reference query of reports)."""
    return gold_sqls_of(ground_truth)[0]


# The family ---------------------------------------------------------------------------------

class SqlFamily(Family):
    name = "sql"
    METRICS = ["exec_match", "exec_match_set", "exec_match_ordered", "exec_ok", "timeout",
               "truncated"]

    def metric_keys(self, task: Task) -> list[str]:
        return list(self.METRICS)

    def index_of(self, task: Task, extra_info: Mapping[str, Any]) -> str:
        if extra_info.get("search_index"):
            return str(extra_info["search_index"])
        db_id = extra_info.get("db_id")
        if not db_id:
            raise ValueError(f"{task.name}: row has no extra_info.db_id (nor search_index)")
        return f"{task.index}/{db_id}"

    def plan(self, task, value, ground_truth, extra_info, mode) -> tuple[SearchPlan, ...]:
        """The model's SQL and every gold SQL variant this process has not run yet: all go
        through the same searcher and are batched with the other completions' queries."""
        index = self.index_of(task, extra_info)
        k = int(task.options.get("max_rows", DEFAULT_MAX_ROWS))
        model = SearchPlan(index=index, query=value, k=k,
                           options={"timeout_s": float(task.options.get("timeout_s", DEFAULT_TIMEOUT_S))})
        gold_timeout = float(task.options.get("gold_timeout_s", GOLD_TIMEOUT_S))
        golds = tuple(SearchPlan(index=index, query=gold_sql, k=k, options={"timeout_s": gold_timeout})
                      for gold_sql in gold_sqls_of(ground_truth)
                      if cached_gold(index, gold_sql, k) is None)
        return (model, *golds)

    def score(self, task, plan, result, ground_truth, extra_info, mode) -> dict[str, float]:
        """Each match metric is 1 when the model's rows match any gold variant's rows."""
        rows, info = result_rows(result[0])  # infrastructure problems raise → search error
        model_plan = plan[0]
        ran = {p.query: r for p, r in zip(plan[1:], result[1:])}
        golds = []
        for gold_sql in gold_sqls_of(ground_truth):
            if gold_sql in ran:
                gold = gold_from_result(model_plan.index, gold_sql, model_plan.k, ran[gold_sql])
            else:
                cached = cached_gold(model_plan.index, gold_sql, model_plan.k)
                if cached is None:
                    raise SearchError(f"the gold SQL result on {model_plan.index} is not known "
                                      f"(neither run nor cached): {gold_sql[:200]}")
                gold = cached
            if gold[1]:
                raise SearchError(f"the gold result on {model_plan.index} has more than "
                                  f"{model_plan.k} rows; raise the task's max_rows option")
            golds.append((gold_sql, gold[0]))
        out = {key: 0.0 for key in self.METRICS}
        out["timeout"] = float(info.get("error_kind") == "timeout")
        out["truncated"] = float(bool(info.get("truncated")))
        if rows is None or info.get("truncated"):
            out["exec_ok"] = float(rows is not None)
            return out
        out["exec_ok"] = 1.0
        out["exec_match"] = float(any(exec_match(rows, g) for _, g in golds))
        out["exec_match_set"] = float(any(exec_match_set(rows, g) for _, g in golds))
        out["exec_match_ordered"] = float(any(exec_match_ordered(rows, g, sql) for sql, g in golds))
        return out

    def user_message(self, task: Task, fields: Mapping[str, Any]) -> str:
        fields = dict(fields)
        evidence = str(fields.get("evidence") or "").strip()
        fields["evidence"] = f"\n\nHint: {evidence}" if evidence else ""
        return task.instruction.format(**fields)

    def reference_queries(self, task, rows):
        """A question cannot be executed as SQL: the reference is the gold SQL (an upper bound
        that checks data, databases and matching; expect exec_match 1.0)."""
        return GOLD_SQL, [gold_sql_of((r.get("reward_model") or {}).get("ground_truth"))
                                          for r in rows]


SQL = SqlFamily()

#: Name of the SQL tasks' reference system in reports (see ``SqlFamily.reference_queries``).
GOLD_SQL = "gold SQL (upper bound)"

_SYSTEM = "You are an expert in SQL. You write SQLite queries that answer questions about a database."
_INSTRUCTION = (
    "Write one SQLite query that answers the question about the database below. Use only the "
    "tables and columns in the schema.\n\nDatabase schema:\n{schema}\n\nQuestion: {question}{evidence}")
_PREFILL = "<answer>{\"sql\": \""
_OPTIONS = {"timeout_s": DEFAULT_TIMEOUT_S, "gold_timeout_s": GOLD_TIMEOUT_S,
            "max_rows": DEFAULT_MAX_ROWS}

#: Spider (the paper's table): execution match 1.1, else 0; bad format -2. The match is
#: order-aware when the gold SQL has a top-level ORDER BY (the Spider evaluator's convention).
SPIDER_TABLE = RewardTable(metric="exec_match_ordered", tiers=((1.0, 1.1),), otherwise=0.0, format_bad=-2)
#: BIRD (the paper's table): execution match 1.1, mismatch 0.4; bad format -2. Order-insensitive,
#: as the BIRD evaluator (it compares result sets).
BIRD_TABLE = RewardTable(metric="exec_match", tiers=((1.0, 1.1),), otherwise=0.4, format_bad=-2)
TABLES = {"spider": SPIDER_TABLE, "bird": BIRD_TABLE}

TASKS = [
    Task(name=_name, family=SQL, index=_index, instruction=_INSTRUCTION, system=_SYSTEM,
         answer_key="sql", reward=TABLES[_index], train_depth=DEFAULT_MAX_ROWS,
         val_depth=DEFAULT_MAX_ROWS, reasoning=_reasoning,
         prefill="" if _reasoning else _PREFILL, options=dict(_OPTIONS), description=_desc)
    for _name, _index, _reasoning, _desc in (
        ("spider", "spider", True, "Spider text-to-SQL, reward 1.1 on execution match"),
        ("spider_no_reason", "spider", False, "Spider, answer-only format, answer prefilled"),
        ("bird", "bird", True, "BIRD text-to-SQL, reward 1.1 match / 0.4 mismatch"),
        ("bird_no_reason", "bird", False, "BIRD, answer-only format, answer prefilled"))]
