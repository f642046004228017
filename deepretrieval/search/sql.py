"""SQLite backend: run SQL (written by a model, so untrusted) read-only, bounded in time and size.

Every query gets its own connection, opened with the URI ``file:PATH?mode=ro`` and then locked down:

* ``PRAGMA query_only=ON``; ``SQLITE_LIMIT_ATTACHED`` = 0; values capped at ``MAX_VALUE_BYTES``;
* an authorizer that allows only reading: ``SELECT``, column reads, (recursive) CTEs, functions
  other than extension loading / file access, and a few schema-reading pragmas (``table_info``…).
  Everything else (INSERT/UPDATE/DELETE, CREATE/DROP/ALTER, ATTACH/DETACH, ``VACUUM INTO``,
  transactions, pragma writes, ANALYZE, REINDEX, ``load_extension``) is denied while compiling,
  before anything runs;
* extension loading switched off;
* a wall-clock limit enforced *inside* SQLite: a progress handler returns non-zero once the deadline
  has passed, which interrupts the statement (infinite recursive CTEs, cartesian explosions);
* a row cap (``k`` of the search) and a result-size cap, checked as each row is fetched;
* temp b-trees and sorters in memory under a process-wide heap ceiling (:data:`HEAP_LIMIT_BYTES`);
* exactly one statement (a trailing ``;`` and comments are fine).

A failing execution is the SQL's fault, not the backend's: it comes back as a normal result with
``rows=None`` and ``info["sql_error"]`` / ``info["error_kind"]`` (``syntax`` … see
:data:`ERROR_KINDS`), so rewards score it as a mismatch. ``SearchResult.error`` is reserved for
infrastructure failures (the database file is missing, unreadable, corrupt or locked), which reward
code reports as search errors. A database that cannot be opened at all raises :class:`SearchError`.

Results also fill the generic fields so any client of the search API can read them: ``ids`` are row
numbers (``"0"``, ``"1"``, …), ``scores`` are 1.0 and, with ``return_text``, ``texts`` are the rows
as JSON arrays. Blobs are given as SQL hex literals (``X'00FF'``) so rows stay JSON-friendly.

Index names: the bundled Spider databases are built-in indexes ``spider/flight_2`` and
``spider/singer``; any other database gets an index directory with ``meta.json``
``{"type": "sqlite", "path": "/abs/db.sqlite"}`` (:func:`write_sqlite_index`).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.bundled import bundled_path
from deepretrieval.core.io import write_atomic
from deepretrieval.core.memory import release_free_memory
from deepretrieval.core.results import SearchError, SearchResult
from deepretrieval.core.sql_text import (  # noqa: F401
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    LITERAL,
    has_top_level_order_by,
    spider_database_path,
    split_statements,
)

log = logging.getLogger(__name__)

INDEX_TYPE = "sqlite"
MAX_TIMEOUT_S = 120.0
#: Largest single string/blob a query may build (SQLITE_LIMIT_LENGTH).
MAX_VALUE_BYTES = 1_000_000
#: Result size cap (approximate bytes of all values); more → truncated. Also the most a caller
#: may ask for with the ``max_result_bytes`` option (a server may set a lower ceiling).
MAX_RESULT_BYTES = 32_000_000
#: Most columns a statement may have (SQLITE_LIMIT_COLUMN): bounds the size of one result row to
#: MAX_COLUMNS × MAX_VALUE_BYTES before the byte cap can look at it.
MAX_COLUMNS = 256
#: Process-wide ceiling on SQLite's heap (``PRAGMA hard_heap_limit``), set when the first
#: connection opens unless already set: temp b-trees and sorters live in memory
#: (``PRAGMA temp_store=MEMORY``, nothing written to disk), so this bounds them too. A statement
#: that needs more fails as ``too_large``. Override with ``DEEPRETRIEVAL_SQL_HEAP_LIMIT`` (bytes).
HEAP_LIMIT_BYTES = 1 << 30
#: Seconds a statement may run over its limit (opening the file, the last row, a loaded machine).
TIME_MARGIN_S = 1.5
#: Longest SQL text accepted (characters).
MAX_SQL_CHARS = 100_000
#: VM instructions between two deadline checks.
PROGRESS_EVERY = 1000
#: Options ``search`` accepts.
OPTIONS = ("timeout_s", "max_result_bytes")
#: ``info["error_kind"]`` values for a failed execution.
ERROR_KINDS = ("empty", "too_long", "multiple_statements", "denied", "timeout", "syntax", "runtime",
               "too_large")

BUNDLED_DIR = bundled_path("spider")

# Authorizer ---------------------------------------------------------------------------------

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer",
                     "zipfile", "sqlar_compress", "sqlar_uncompress", "lsdir"}
_READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                 "foreign_key_list", "table_list", "collation_list"}


def _authorizer(action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if str(arg2).lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() in _READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _private_copy_authorizer(action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
    """For a connection to a private, throw-away copy (the ``paper`` profile's SQL): reads and
    writes of that database are allowed, nothing that reaches another file (``ATTACH``,
    ``VACUUM`` / ``VACUUM INTO``), pragma writes (``hard_heap_limit``…), extension or file
    functions are."""
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if str(arg2).lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        return sqlite3.SQLITE_OK if str(arg1).lower() in _READ_PRAGMAS and arg2 is None \
            else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def lock_down(conn: sqlite3.Connection, *, private_copy: bool = False) -> None:
    """Apply the sandbox to an open connection: no extensions, the process-wide heap ceiling,
    temp b-trees in memory, no attached databases, the value-length and column limits, and the
    authorizer — read-only (:func:`_authorizer` plus ``query_only``), or with ``private_copy``
    writes to that one database allowed (:func:`_private_copy_authorizer`)."""
    if hasattr(conn, "enable_load_extension"):
        conn.enable_load_extension(False)
    _set_heap_limit(conn)
    conn.execute("PRAGMA temp_store=MEMORY")   # no temp files; bounded by the heap limit
    if not private_copy:
        conn.execute("PRAGMA query_only=ON")
    if hasattr(conn, "setlimit"):  # Python >= 3.11
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_COLUMNS)
    conn.set_authorizer(_private_copy_authorizer if private_copy else _authorizer)


def release_free_memory_after(elapsed_s: float) -> None:
    """Give freed heap memory back to the OS after a statement that ran long enough to have
    allocated much (see :func:`deepretrieval.core.memory.release_free_memory`)."""
    if elapsed_s > TRIM_AFTER_S:
        release_free_memory()


# Execution ----------------------------------------------------------------------------------

@dataclass
class Execution:
    """What running one SQL statement gave."""

    rows: list[tuple] | None = None
    columns: list[str] = field(default_factory=list)
    truncated: bool = False
    elapsed_s: float = 0.0
    sql_error: str | None = None      # the SQL failed (the query writer's fault)
    error_kind: str | None = None     # one of ERROR_KINDS
    infra_error: str | None = None    # the database failed (not the query writer's fault)

    @property
    def ok(self) -> bool:
        return self.rows is not None


_INFRA_MARKERS = ("unable to open", "not a database", "malformed", "disk i/o", "locked",
                  "readonly_rollback", "no such file", "cannot open")


def _classify(exc: BaseException, timed_out: bool) -> tuple[str, str]:
    message = str(exc) or type(exc).__name__
    low = message.lower()
    if timed_out or "interrupted" in low:
        return "timeout", message
    if isinstance(exc, MemoryError) or "out of memory" in low or "too big" in low \
            or "too many columns" in low:
        # under the heap limit this is the statement's appetite, not a broken database
        return "too_large", message
    if "one statement at a time" in low:
        return "multiple_statements", message
    if "not authorized" in low or "authorization denied" in low or "prohibited" in low \
            or "readonly" in low and "rollback" not in low:
        return "denied", message
    if any(marker in low for marker in _INFRA_MARKERS):
        return "infra", message
    if "syntax error" in low or "no such" in low or "incomplete input" in low or "ambiguous" in low \
            or "unrecognized token" in low or "misuse" in low:
        return "syntax", message
    return "runtime", message


def value_size(value: Any) -> int:
    """Bytes of a value as the result will hold it (blobs become ``X'..'`` hex text: 2x)."""
    if isinstance(value, bytes):
        return 2 * len(value) + 11
    if isinstance(value, str):
        return len(value) + 8
    return 8


#: A statement that ran this long (s) may have allocated much: free memory is released after it.
TRIM_AFTER_S = 0.05


def _text_factory(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


_HEAP_LIMIT_SET = False


def _set_heap_limit(conn: sqlite3.Connection) -> None:
    global _HEAP_LIMIT_SET
    limit = settings.get_int("DEEPRETRIEVAL_SQL_HEAP_LIMIT", HEAP_LIMIT_BYTES)  # a bad value: an error
    if _HEAP_LIMIT_SET:
        return
    current = conn.execute("PRAGMA hard_heap_limit").fetchone()[0]
    if not current or current > limit:  # never raise a ceiling an operator set lower
        conn.execute(f"PRAGMA hard_heap_limit={limit}")
    _HEAP_LIMIT_SET = True


def connect_readonly(path: str | os.PathLike, *, immutable: bool = False,
                     busy_timeout_s: float = 1.0) -> sqlite3.Connection:
    """A locked-down read-only connection (see the module docstring). Raises :class:`SearchError`
    when the file does not exist or cannot be opened."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"SQLite database {str(path)!r} does not exist")
    uri = path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                               timeout=max(0.0, busy_timeout_s), cached_statements=0)
    except sqlite3.Error as exc:
        raise SearchError(f"cannot open SQLite database {str(path)!r}: {exc}") from exc
    try:
        conn.text_factory = _text_factory
        lock_down(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise SearchError(f"cannot prepare SQLite database {str(path)!r}: {exc}") from exc
    return conn


def execute_readonly(path: str | os.PathLike, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                     max_rows: int = DEFAULT_MAX_ROWS, max_result_bytes: int = MAX_RESULT_BYTES,
                     immutable: bool = False) -> Execution:
    """Run one statement read-only within ``timeout_s`` seconds, reading at most ``max_rows`` rows.
    Never raises for anything in ``sql``; a database that cannot be opened raises SearchError."""
    start = time.monotonic()
    if not isinstance(sql, str):
        return Execution(sql_error="SQL is not a string", error_kind="empty")
    if len(sql) > MAX_SQL_CHARS:
        return Execution(sql_error=f"SQL is longer than {MAX_SQL_CHARS} characters", error_kind="too_long")
    statements = split_statements(sql)
    if not statements:
        return Execution(sql_error="no SQL statement", error_kind="empty")
    if len(statements) > 1:
        return Execution(sql_error=f"only one statement is allowed (got {len(statements)})",
                         error_kind="multiple_statements")
    deadline = start + float(timeout_s)
    conn = connect_readonly(path, immutable=immutable, busy_timeout_s=min(1.0, float(timeout_s)))
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1
        return 0

    conn.set_progress_handler(progress, PROGRESS_EVERY)
    out = Execution()
    try:
        rows: list[tuple] = []
        cursor = conn.execute(statements[0])
        out.columns = [d[0] for d in (cursor.description or [])]
        size = 0
        # one row at a time: the byte cap and the deadline are checked after every row, so at
        # most one row (<= MAX_COLUMNS x MAX_VALUE_BYTES) is held beyond the caps
        while True:
            row = cursor.fetchone()
            if row is None:
                break
            if len(rows) >= max_rows:
                out.truncated = True
                break
            size += sum(value_size(v) for v in row)
            if size > max_result_bytes:
                out.truncated = True
                break
            rows.append(row)
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError("interrupted")
        row = None  # an over-cap last row is not kept
        out.rows = rows
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError,
            RecursionError) as exc:
        kind, message = _classify(exc, timed_out)
        out.rows, out.columns, rows = None, [], []
        if kind == "infra":
            out.infra_error = message
        else:
            out.sql_error, out.error_kind = message, kind
    finally:
        conn.close()
    out.elapsed_s = time.monotonic() - start
    if out.elapsed_s > TRIM_AFTER_S or out.error_kind == "too_large":
        release_free_memory()  # a big statement's freed memory back to the OS (glibc)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'" + bytes(value).hex().upper() + "'"
    return value


def to_search_result(ex: Execution, return_text: bool = False) -> SearchResult:
    info: dict[str, Any] = {"columns": ex.columns, "truncated": ex.truncated,
                            "elapsed_s": round(ex.elapsed_s, 6), "sql_error": ex.sql_error,
                            "error_kind": ex.error_kind}
    if ex.infra_error is not None:
        return SearchResult(error=ex.infra_error, info=info)
    if ex.rows is None:
        return SearchResult(rows=None, info=info)
    rows = [[_json_value(v) for v in row] for row in ex.rows]
    texts = [json.dumps(row, ensure_ascii=False) for row in rows] if return_text else None
    return SearchResult(ids=[str(i) for i in range(len(rows))], scores=[1.0] * len(rows),
                        texts=texts, rows=rows, info=info)


# Backend ------------------------------------------------------------------------------------

class SqliteBackend:
    """A SQLite database as a search backend: queries are SQL statements, ``k`` is the row cap."""

    def __init__(self, path: str | os.PathLike, name: str | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, immutable: bool = False,
                 workers: int | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.timeout_s = float(timeout_s)
        self.immutable = bool(immutable)
        self.workers = max(1, int(workers or min(4, os.cpu_count() or 1)))
        #: ceilings of the per-call options (a server lowers them: ``ServiceConfig``)
        self.max_timeout_s = MAX_TIMEOUT_S
        self.max_result_bytes = MAX_RESULT_BYTES
        # fail early (SearchError) when the file is missing or not a SQLite database
        self._tables = self._read_schema()

    def _read_schema(self) -> list[tuple[str, str, str]]:
        conn = connect_readonly(self.path, immutable=self.immutable)
        try:
            rows = conn.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall()
        except sqlite3.Error as exc:
            raise SearchError(f"{str(self.path)!r} is not a readable SQLite database: {exc}") from exc
        finally:
            conn.close()
        return [(t, n, s) for t, n, s in rows]

    def tables(self) -> list[str]:
        return [name for kind, name, _ in self._tables if kind == "table"]

    def schema_sql(self) -> str:
        """The database's ``CREATE TABLE`` (and ``CREATE VIEW``) statements, as stored in
        ``sqlite_master``, each ending with ``;``."""
        return "\n\n".join(sql.strip().rstrip(";") + ";" for _, _, sql in self._tables)

    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "path": str(self.path),
                "tables": self.tables(), "timeout_s": self.timeout_s, "immutable": self.immutable,
                "bytes": self.path.stat().st_size if self.path.exists() else None}

    def execute(self, sql: str, max_rows: int = DEFAULT_MAX_ROWS, *, timeout_s: float | None = None,
                max_result_bytes: int = MAX_RESULT_BYTES) -> Execution:
        return execute_readonly(self.path, sql, timeout_s=self.timeout_s if timeout_s is None else timeout_s,
                                max_rows=max_rows, max_result_bytes=max_result_bytes,
                                immutable=self.immutable)

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        options = dict(options or {})
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"unknown SQL search option(s) {sorted(unknown)}; known: {list(OPTIONS)}")
        if int(k) < 1:
            raise ValueError("k (the row cap) must be >= 1")
        try:
            timeout_s = float(options.get("timeout_s", self.timeout_s))
            max_bytes = int(options.get("max_result_bytes", self.max_result_bytes))
        except (TypeError, ValueError):
            raise ValueError("timeout_s and max_result_bytes must be numbers") from None
        if not 0 < timeout_s <= self.max_timeout_s:
            raise ValueError(f"timeout_s must be in (0, {self.max_timeout_s:g}] "
                             f"(the server's max_timeout_s), got {timeout_s:g}")
        if not 0 < max_bytes <= self.max_result_bytes:
            raise ValueError(f"max_result_bytes must be in (0, {self.max_result_bytes}] "
                             f"(the server's maximum), got {max_bytes}")
        if not self.path.is_file():
            raise SearchError(f"SQLite database {str(self.path)!r} does not exist")

        def run(sql: str) -> SearchResult:
            try:
                ex = self.execute(sql, int(k), timeout_s=timeout_s, max_result_bytes=max_bytes)
            except SearchError as exc:  # the file vanished or cannot be opened now
                return SearchResult(error=str(exc))
            return to_search_result(ex, return_text)

        queries = list(queries)
        if len(queries) <= 1 or self.workers == 1:
            return [run(q) for q in queries]
        # sqlite3 releases the GIL while a statement runs: a few threads overlap slow queries
        with ThreadPoolExecutor(max_workers=min(self.workers, len(queries))) as pool:
            return list(pool.map(run, queries))


# Index directories and bundled databases ---------------------------------------------------

def write_sqlite_index(directory: str | os.PathLike, database: str | os.PathLike, name: str,
                       **settings: Any) -> Path:
    """Write ``meta.json`` (atomically) making ``directory`` an index for ``database``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"type": INDEX_TYPE, "name": name, "path": str(Path(database).resolve()), **settings}
    write_atomic(directory / "meta.json", json.dumps(meta, indent=1))
    return directory


def load_sqlite_index(directory: str | os.PathLike) -> SqliteBackend:
    """Loader for ``INDEX_TYPES["sqlite"]``: ``meta.json`` gives ``path`` (absolute, or relative to
    the directory) and optionally ``name``, ``timeout_s``, ``immutable``."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    if not meta.get("path"):
        raise SearchError(f"{directory}/meta.json: a sqlite index needs 'path' (the database file)")
    path = Path(meta["path"])
    if not path.is_absolute():
        path = directory / path
    return SqliteBackend(path, name=meta.get("name") or directory.name,
                         timeout_s=float(meta.get("timeout_s", DEFAULT_TIMEOUT_S)),
                         immutable=bool(meta.get("immutable", False)))


def bundled_databases() -> dict[str, Path]:
    """Index name → file of the databases shipped in the package (``spider/<db_id>``)."""
    root = BUNDLED_DIR / "database"
    if not root.is_dir():
        return {}
    return {f"spider/{d.name}": spider_database_path(root, d.name) for d in sorted(root.iterdir())
            if spider_database_path(root, d.name).is_file()}


def open_bundled(name: str) -> SqliteBackend:
    databases = bundled_databases()
    if name not in databases:
        raise SearchError(f"no bundled SQL database {name!r} (bundled: {sorted(databases)})")
    return SqliteBackend(databases[name], name=name)


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
