"""Text-to-SQL data (Spider, BIRD): examples → task rows of the SQL family, with each database's
schema in the prompt; the bundled Spider subset. The family itself (prompt, scoring, tables) is
:mod:`deepretrieval.tasks.sql`."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.results import SearchError
from deepretrieval.core.sql_text import spider_database_path
from deepretrieval.search.sql import BUNDLED_DIR, SqliteBackend, write_sqlite_index
from deepretrieval.tasks.base import Task
from deepretrieval.tasks.sql import SQL


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
                    write_sqlite_index(settings.index_dir() / task.index / db_id, path, f"{task.index}/{db_id}")
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
        rows.append(task.row(split, len(rows), {"schema": schema, "question": question,
                                                       "evidence": evidence},
                             {"target": [str(ex[sql_key]).strip()]}, **extra))
    return rows, dict(skipped)


def bundled_rows(task: Task, split: str = "test") -> list[dict[str, Any]]:
    """Rows of the bundled Spider subset (110 dev questions on ``flight_2`` and ``singer``),
    which is the evaluation split (``test``; ``dev`` and ``validation`` are accepted too)."""
    task_name = task.name
    if task.family.name != SQL.name or task.index != "spider":
        raise ValueError(f"the bundled SQL data is Spider; task {task_name!r} is not a Spider task")
    if split not in ("test", "dev", "validation", "val"):
        raise ValueError(f"the bundled Spider subset has only the dev questions (split 'test'), not {split!r}")
    rows, _ = sql_rows(task, load_examples(BUNDLED_DIR / "dev.json"), BUNDLED_DIR / "database", "test")
    return rows
