"""SQL family: the model writes a SQLite query; reward = execution match with the gold query.

Tasks: ``spider`` / ``spider_no_reason`` (Spider reward table: match 1.1, else 0, bad format -2)
and ``bird`` / ``bird_no_reason`` (BIRD table: match 1.1, mismatch 0.4, bad format -2).
The answer key is ``sql``: ``<answer>{"sql": "SELECT ..."}</answer>``.

Rows: ``ground_truth = {"target": [gold_sql]}``, ``extra_info.db_id`` (the database), and
``extra_info.query`` = the question. The search runs on index ``<task.index>/<db_id>``
(``spider/flight_2``…) unless ``extra_info.search_index`` names another.

Execution match (see :func:`normalize_rows`): both results are compared as **multisets of rows**
(``exec_match``, order-insensitive, duplicates count), as **sets** (``exec_match_set``) and, when the
gold query has a top-level ``ORDER BY``, as **ordered lists** (``exec_match_ordered``; a multiset
comparison otherwise). The reward reads ``exec_match``; use ``reward_overrides={"metric":
"exec_match_ordered"}`` (or ``exec_match_set``) to reward another. A SQL error, timeout or a result
over the row cap is a mismatch (the model's fault), not a search error; a gold query that fails
or a missing database is a search error.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..search.base import SearchError, SearchResult
from ..search.sql import (BUNDLED_DIR, DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S, has_top_level_order_by,
                          spider_database_path)
from . import Family, SearchPlan, Task, get_task, register_task

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


def _search_blocking(searcher, index: str, queries: list[str], k: int, options: dict) -> list:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return searcher.search(index, queries, k, options=options)
    # inside an event loop (async reward path): a sync client must not run on the loop's thread
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(searcher.search, index, queries, k, options=options).result()


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


def gold_result(index: str, gold_sql: str, k: int, timeout_s: float = GOLD_TIMEOUT_S,
                searcher=None) -> tuple[list[tuple], bool]:
    """Normalized rows of the gold query and whether it was truncated at ``k`` rows; cached per
    (index, gold SQL, k) in this process. Raises when the gold query fails."""
    key = (index, gold_sql, int(k))
    with _gold_lock:
        hit = _gold_cache.get(key)
    if hit is not None:
        return hit
    if searcher is None:
        from ..search import get_searcher
        searcher = get_searcher()
    result = _search_blocking(searcher, index, [gold_sql], int(k), {"timeout_s": float(timeout_s)})[0]
    rows, info = result_rows(result)
    if rows is None:
        raise SearchError(f"the gold SQL failed on {index}: {info.get('sql_error')} "
                          f"({info.get('error_kind')}); SQL: {gold_sql[:200]}")
    value = (normalize_rows(rows), bool(info.get("truncated")))
    with _gold_lock:
        if len(_gold_cache) >= _GOLD_CACHE_MAX:
            _gold_cache.clear()
        _gold_cache[key] = value
    return value


def gold_sql_of(ground_truth: Any) -> str:
    target = ground_truth.get("target") if hasattr(ground_truth, "get") else ground_truth
    if isinstance(target, str):
        return target
    target = list(target) if target is not None else []
    if not target or not isinstance(target[0], str) or not target[0].strip():
        raise ValueError("SQL ground truth needs target = [gold_sql]")
    return target[0]


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

    def plan(self, task, value, ground_truth, extra_info, mode) -> SearchPlan:
        return SearchPlan(index=self.index_of(task, extra_info), query=value,
                          k=int(task.options.get("max_rows", DEFAULT_MAX_ROWS)),
                          options={"timeout_s": float(task.options.get("timeout_s", DEFAULT_TIMEOUT_S))})

    def score(self, task, plan, result, ground_truth, extra_info, mode) -> dict[str, float]:
        gold_sql = gold_sql_of(ground_truth)
        rows, info = result_rows(result)  # infrastructure problems raise → search error
        gold_rows, gold_truncated = gold_result(
            plan.index, gold_sql, plan.k, float(task.options.get("gold_timeout_s", GOLD_TIMEOUT_S)))
        if gold_truncated:
            raise SearchError(f"the gold result on {plan.index} has more than {plan.k} rows; "
                              "raise the task's max_rows option")
        out = {key: 0.0 for key in self.METRICS}
        out["timeout"] = float(info.get("error_kind") == "timeout")
        out["truncated"] = float(bool(info.get("truncated")))
        if rows is None or info.get("truncated"):
            out["exec_ok"] = float(rows is not None)
            return out
        out["exec_ok"] = 1.0
        out["exec_match"] = float(exec_match(rows, gold_rows))
        out["exec_match_set"] = float(exec_match_set(rows, gold_rows))
        out["exec_match_ordered"] = float(exec_match_ordered(rows, gold_rows, gold_sql))
        return out

    def user_message(self, task: Task, fields: Mapping[str, Any]) -> str:
        fields = dict(fields)
        evidence = str(fields.get("evidence") or "").strip()
        fields["evidence"] = f"\n\nHint: {evidence}" if evidence else ""
        return task.instruction.format(**fields)

    def bundled_rows(self, task, split):
        return bundled_sql_rows(task.name, split)

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

for _name, _index, _reward, _reasoning, _desc in (
        ("spider", "spider", "spider", True, "Spider text-to-SQL, reward 1.1 on execution match"),
        ("spider_no_reason", "spider", "spider", False, "Spider, answer-only format, answer prefilled"),
        ("bird", "bird", "bird", True, "BIRD text-to-SQL, reward 1.1 match / 0.4 mismatch"),
        ("bird_no_reason", "bird", "bird", False, "BIRD, answer-only format, answer prefilled")):
    register_task(Task(name=_name, family=SQL, index=_index, instruction=_INSTRUCTION, system=_SYSTEM,
                       answer_key="sql", reward=_reward, train_depth=DEFAULT_MAX_ROWS,
                       val_depth=DEFAULT_MAX_ROWS, reasoning=_reasoning,
                       prefill="" if _reasoning else _PREFILL, options=dict(_OPTIONS),
                       description=_desc))


# Preparing rows -----------------------------------------------------------------------------

class PrepareError(ValueError):
    """Bad input for ``prepare spider`` / ``prepare bird`` (message says what and where)."""


def load_examples(path: str | Path, sql_key: str = "query") -> list[dict[str, Any]]:
    """Examples of a Spider (``query``) or BIRD (``SQL``) JSON file, checked."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PrepareError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise PrepareError(f"{path}: expected a JSON list of examples, got {type(data).__name__}")
    for i, ex in enumerate(data):
        if not isinstance(ex, dict):
            raise PrepareError(f"{path}: example {i} is not an object")
        for key in ("db_id", "question", sql_key):
            if not isinstance(ex.get(key), str) or not ex[key].strip():
                raise PrepareError(f"{path}: example {i} has no {key!r} string")
    return data


def sql_rows(task: Task, examples: Sequence[Mapping[str, Any]], db_root: str | Path, split: str, *,
             sql_key: str = "query", id_key: str | None = None,
             register_indexes: bool = False) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Task rows for the examples whose database ``<db_root>/<db_id>/<db_id>.sqlite`` exists.
    Returns ``(rows, skipped)`` with ``skipped`` = questions per missing database. With
    ``register_indexes`` every database used gets an index directory ``<index root>/<task.index>/
    <db_id>`` so the name ``<task.index>/<db_id>`` opens it in any process sharing the index root."""
    from ..data.prepare import make_row
    from ..search import index_root
    from ..search.sql import SqliteBackend, write_sqlite_index

    schemas: dict[str, str | None] = {}
    rows: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    for i, ex in enumerate(examples):
        db_id = str(ex["db_id"])
        if db_id not in schemas:
            path = spider_database_path(db_root, db_id)
            if path.is_file():
                try:
                    schemas[db_id] = SqliteBackend(path, name=f"{task.index}/{db_id}").schema_sql()
                except SearchError as exc:
                    raise PrepareError(str(exc)) from exc
                if register_indexes:
                    write_sqlite_index(index_root() / task.index / db_id, path, f"{task.index}/{db_id}")
            else:
                schemas[db_id] = None
        schema = schemas[db_id]
        if schema is None:
            skipped[db_id] += 1
            continue
        question = str(ex["question"]).strip()
        evidence = str(ex.get("evidence") or "").strip()
        qid = str(ex[id_key]) if id_key and ex.get(id_key) is not None else f"{split}-{i}"
        extra = {"query_id": qid, "query": question, "db_id": db_id}
        if evidence:
            extra["evidence"] = evidence
        rows.append(make_row(task, split, len(rows), {"schema": schema, "question": question,
                                                       "evidence": evidence},
                             {"target": [str(ex[sql_key]).strip()]}, **extra))
    return rows, dict(skipped)


def bundled_sql_rows(task_name: str = "spider", split: str = "test") -> list[dict[str, Any]]:
    """Rows of the bundled Spider subset (110 dev questions on ``flight_2`` and ``singer``),
    which is the evaluation split (``test``; ``dev`` and ``validation`` are accepted too)."""
    task = get_task(task_name)
    if task.family is not SQL or task.index != "spider":
        raise ValueError(f"the bundled SQL data is Spider; task {task_name!r} is not a Spider task")
    if split not in ("test", "dev", "validation", "val"):
        raise ValueError(f"the bundled Spider subset has only the dev questions (split 'test'), not {split!r}")
    rows, _ = sql_rows(task, load_examples(BUNDLED_DIR / "dev.json"), BUNDLED_DIR / "database", "test")
    return rows


def _write(rows, path: Path, label: str) -> None:
    from ..data.prepare import write_parquet
    write_parquet(rows, path)
    print(f"{label}: {len(rows)} rows → {path}")


def _report_skipped(skipped: Mapping[str, int], label: str) -> None:
    if skipped:
        n = sum(skipped.values())
        names = ", ".join(sorted(skipped)[:8]) + (" …" if len(skipped) > 8 else "")
        print(f"{label}: skipped {n} questions whose database is missing ({len(skipped)} DBs: {names})")


def cmd_prepare_spider(args) -> int:
    task = get_task(args.task)
    if task.family is not SQL:
        raise SystemExit(f"--task {args.task!r} is not a SQL task")
    root = Path(args.spider_dir) if args.spider_dir else BUNDLED_DIR
    db_root = Path(args.db_dir) if args.db_dir else root / "database"
    if not db_root.is_dir():
        raise SystemExit(f"no database folder {db_root} (expected <spider-dir>/database/<db_id>/<db_id>.sqlite)")
    bundled = root.resolve() == BUNDLED_DIR.resolve()
    splits = [("test", ["dev.json"]), ("train", ["train_spider.json", "train_others.json"])]
    written = 0
    for split, names in splits:
        files = [root / n for n in names if (root / n).is_file()]
        if not files:
            if split == "test":
                raise SystemExit(f"{root / 'dev.json'} does not exist")
            continue
        examples = [ex for f in files for ex in load_examples(f, "query")]
        rows, skipped = sql_rows(task, examples, db_root, split, register_indexes=not bundled)
        _report_skipped(skipped, split)
        if not rows:
            raise SystemExit(f"{split}: none of the {len(examples)} questions has its database under {db_root}")
        _write(rows, Path(args.out) / f"{split}.parquet", split)
        written += 1
    if not bundled:
        from ..search import index_root
        print(f"databases registered as indexes {task.index}/<db_id> under {index_root() / task.index}")
    return 0 if written else 1


def cmd_prepare_bird(args) -> int:
    task = get_task(args.task)
    if task.family is not SQL:
        raise SystemExit(f"--task {args.task!r} is not a SQL task")
    root = Path(args.bird_dir)
    found = False
    for split, json_name, db_dir in (("test", "dev.json", "dev_databases"),
                                     ("train", "train.json", "train_databases")):
        if not (root / json_name).is_file():
            continue
        found = True
        examples = load_examples(root / json_name, "SQL")
        rows, skipped = sql_rows(task, examples, root / db_dir, split, sql_key="SQL",
                                 id_key="question_id", register_indexes=True)
        _report_skipped(skipped, split)
        if not rows:
            raise SystemExit(f"{split}: none of the {len(examples)} questions has its database under {root / db_dir}")
        _write(rows, Path(args.out) / f"{split}.parquet", split)
    if not found:
        raise SystemExit(f"{root} has neither dev.json nor train.json (BIRD layout: dev.json + dev_databases/)")
    return 0


def cmd_sql_index(args) -> int:
    from ..search import index_root
    from ..search.sql import SqliteBackend, write_sqlite_index
    try:
        backend = SqliteBackend(args.db, name=args.name)  # checks that it is a readable database
    except SearchError as exc:
        raise ValueError(str(exc)) from None
    out = Path(args.out) if args.out else index_root() / args.name
    write_sqlite_index(out, args.db, args.name, timeout_s=float(args.timeout))
    print(f"{args.name}: {len(backend.tables())} tables → {out}")
    return 0


def register(sub) -> None:
    from ..commands import prepare_targets
    targets = prepare_targets()
    p = targets.add_parser(
        "spider", help="Spider text-to-SQL → test (dev) / train parquet",
        description="Write Spider task rows. Default: the bundled 110 dev questions (flight_2, singer). "
                    "With --spider-dir (a full Spider download: dev.json, train_spider.json, "
                    "tables.json, database/) every question whose database exists; those databases "
                    "are registered as indexes spider/<db_id> under the index root.")
    p.add_argument("--spider-dir", help="Spider folder (default: the bundled subset)")
    p.add_argument("--db-dir", help="database folder (default: <spider-dir>/database)")
    p.add_argument("--out", default="data/spider", help="output folder (default: data/spider)")
    p.add_argument("--task", default="spider", help="task name (e.g. spider_no_reason)")
    p.set_defaults(func=cmd_prepare_spider)

    p = targets.add_parser(
        "bird", help="BIRD text-to-SQL → test (dev) / train parquet",
        description="Write BIRD task rows from a BIRD download (dev.json + dev_databases/, "
                    "train.json + train_databases/); databases are registered as indexes bird/<db_id>.")
    p.add_argument("--bird-dir", required=True, help="BIRD folder")
    p.add_argument("--out", default="data/bird", help="output folder (default: data/bird)")
    p.add_argument("--task", default="bird", help="task name (e.g. bird_no_reason)")
    p.set_defaults(func=cmd_prepare_bird)

    p = sub.add_parser(
        "sql-index", help="register a SQLite database as a SQL index",
        description="Write an index folder (meta.json) for a SQLite database so that tasks, "
                    "`deepretrieval search` and `deepretrieval serve` open it by name. The database "
                    "is only ever opened read-only.")
    p.add_argument("--db", required=True, help="the SQLite database file")
    p.add_argument("--name", required=True, help="index name, e.g. spider/concert_singer")
    p.add_argument("--out", help="index folder (default: <index root>/<name>)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"default per-query time limit in seconds (default {DEFAULT_TIMEOUT_S:g})")
    p.set_defaults(func=cmd_sql_index)
