"""The ``paper`` profile's SQL: model SQL with the original's semantics (one statement, never
committed, a timeout gives no rows, rows compared as a set by :mod:`deepretrieval.paper.engine`)
on a private copy of the database per sample, inside the default profile's sandbox
(:func:`deepretrieval.search.sql.lock_down`); where an original row's ``db_path`` is found.
``docs/hardening.md`` ("The paper profile's SQL") lists the bounds.
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.bundled import bundled_path
from deepretrieval.search import sql as sql_backend

__all__ = ["SQL_MAX_RESULT_BYTES", "SQL_MAX_ROWS", "SQL_OVER_CAPS",
           "SQL_TIMEOUT_S", "SQLiteCopy", "resolve_db_path", "run_sql_on_copy"]

#: Model SQL's time limit (the default profile's; the original used 30 s). Over it: no rows.
SQL_TIMEOUT_S = sql_backend.DEFAULT_TIMEOUT_S
#: Result caps of model SQL (over them: an execution error, see :func:`run_sql_on_copy`).
SQL_MAX_ROWS = 100_000
SQL_MAX_RESULT_BYTES = sql_backend.MAX_RESULT_BYTES
#: Message of the error a result over the caps raises.
SQL_OVER_CAPS = "result over the paper profile's caps"


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


def resolve_db_path(db_path: Any) -> Path:
    """An original row's ``extra_info.db_path``: absolute, or relative to the working directory,
    to ``$DEEPRETRIEVAL_SQL_DB_ROOT``, or to the bundled Spider databases."""

    if not db_path:
        raise FileNotFoundError("the row has no extra_info.db_path")
    path = Path(str(db_path))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute():
        root = settings.get_str("DEEPRETRIEVAL_SQL_DB_ROOT")
        roots = [root] if root else []
        roots.append(str(bundled_path("spider", "database")))
        for root in roots:
            candidates += [Path(root) / path, Path(root) / path.parent.name / path.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"database {db_path!r} not found (looked in: "
                            f"{', '.join(str(c) for c in candidates)}; set $DEEPRETRIEVAL_SQL_DB_ROOT)")
