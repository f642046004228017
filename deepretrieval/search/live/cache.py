"""Persistent result cache of the live engines (SQLite in WAL mode).

* Key: sha256 of engine + normalised query (Unicode NFC, whitespace collapsed; case kept, since
  PubMed's Boolean operators are case-sensitive) + parameters (depth, date cap, ...). Credentials
  are never part of a key or stored.
* Several processes may read and write one file at once (WAL, busy timeout); every write is one
  SQLite transaction, so a process killed mid-write leaves the file consistent (the unfinished
  write is simply absent).
* *Frozen* mode (``frozen=True``, env ``DEEPRETRIEVAL_CACHE_FROZEN=1``): the backends serve only
  from the cache and report a miss as a search error — deterministic, free re-evaluation.
* :meth:`SearchCache.export` / :meth:`SearchCache.import_` move entries as JSON lines
  (``.gz`` compressed when the file name says so); ``deepretrieval cache export|import|stats``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepretrieval.core import settings

__all__ = ["SearchCache", "CachedResult", "normalize_query", "cache_key", "default_cache_path"]

SCHEMA_VERSION = 1


def default_cache_path() -> Path:
    """``$DEEPRETRIEVAL_CACHE`` or ``<cache folder>/live_cache.sqlite``; ValueError when the
    cache is switched off (``DEEPRETRIEVAL_CACHE=off``)."""
    path = settings.live_cache_file()
    if path is None:
        raise ValueError("the live cache is off (DEEPRETRIEVAL_CACHE=off)")
    return path


def normalize_query(query: str) -> str:
    return " ".join(unicodedata.normalize("NFC", str(query)).split())


def _params_json(params: Mapping[str, Any] | None) -> str:
    clean = {k: v for k, v in (params or {}).items() if v is not None}
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(engine: str, query: str, params: Mapping[str, Any] | None = None) -> str:
    blob = json.dumps([engine, normalize_query(query), _params_json(params)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class CachedResult:
    ids: list[str]
    info: dict[str, Any]
    created: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key     TEXT PRIMARY KEY,
    engine  TEXT NOT NULL,
    query   TEXT NOT NULL,
    params  TEXT NOT NULL,
    ids     TEXT NOT NULL,
    info    TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_engine ON results(engine);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SearchCache:
    """SQLite result cache shared by threads and processes. Open it once per process; each
    thread gets its own connection."""

    def __init__(self, path: str | os.PathLike | None = None, *, frozen: bool = False,
                 timeout: float = 60.0, memory_entries: int = 4096) -> None:
        self.path = Path(path) if path else default_cache_path()
        self.frozen = bool(frozen)
        self.timeout = float(timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._schema_ready = False
        self.hits = 0
        self.misses = 0
        self.writes = 0
        # hot layer: recent entries decoded, in this process (entries are immutable once written)
        self._memory: OrderedDict[str, CachedResult] = OrderedDict()
        self.memory_entries = int(memory_entries)
        if self.frozen and not self.path.exists():
            raise FileNotFoundError(f"frozen cache {self.path} does not exist")
        self._connect()  # create the file and schema now: errors show up at startup

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        if not self.frozen and not self._schema_ready:
            self._init_schema(conn)
            self._schema_ready = True
        if not self.frozen:
            conn.execute("PRAGMA synchronous=NORMAL")  # per connection; WAL itself is persistent
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL and create the schema. Several processes opening a new file at once can
        get SQLITE_BUSY here without the busy handler being consulted (changing the journal mode
        needs an exclusive lock), so this retries with backoff until ``timeout``."""
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"database is locked (journal mode {mode})")
                with self._tx(conn):
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', ?)",
                                 (str(SCHEMA_VERSION),))
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"cache {self.path}: could not set up WAL and schema "
                                       f"within {self.timeout:g}s ({exc})") from None
                time.sleep(delay + random.random() * delay)
                delay = min(delay * 2, 0.5)

    class _tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            return False

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- get / put ---------------------------------------------------------------------------
    def get(self, engine: str, query: str, params: Mapping[str, Any] | None = None) -> CachedResult | None:
        return self.get_key(cache_key(engine, query, params))

    def get_key(self, key: str) -> CachedResult | None:
        """The entry under ``key`` (see :func:`cache_key`) or None. Treat the result as
        read-only: it may be shared with other callers."""
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return hit
        row = self._connect().execute("SELECT ids, info, created FROM results WHERE key = ?",
                                      (key,)).fetchone()
        if row is None:
            with self._lock:
                self.misses += 1
            return None
        hit = CachedResult(json.loads(row[0]), json.loads(row[1]), float(row[2]))
        with self._lock:
            self.hits += 1
            self._remember(key, hit)
        return hit

    def _remember(self, key: str, entry: CachedResult) -> None:
        if self.memory_entries <= 0:
            return
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_entries:
            self._memory.popitem(last=False)

    def put(self, engine: str, query: str, params: Mapping[str, Any] | None, ids: list[str],
            info: Mapping[str, Any] | None = None) -> None:
        if self.frozen:
            return
        key = cache_key(engine, query, params)
        ids = [str(i) for i in ids]
        info_json = json.dumps(dict(info or {}), default=str)
        now = time.time()
        record = (key, engine, normalize_query(query), _params_json(params), json.dumps(ids),
                  info_json, now)
        conn = self._connect()
        with self._tx(conn):
            conn.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", record)
        with self._lock:
            self.writes += 1
            self._remember(key, CachedResult(ids, json.loads(info_json), now))

    def __len__(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    # -- stats / export / import ---------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        with self._lock:
            total = self.hits + self.misses
            return {"path": str(self.path), "frozen": self.frozen, "hits": self.hits,
                    "misses": self.misses, "writes": self.writes,
                    "hit_rate": round(self.hits / total, 4) if total else None}

    def stats(self) -> dict[str, Any]:
        """Entries per engine, file size and this process's hit/miss counts."""
        conn = self._connect()
        per_engine = dict(conn.execute(
            "SELECT engine, COUNT(*) FROM results GROUP BY engine ORDER BY engine").fetchall())
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                   if p.exists())
        return {**self.counters(), "entries": sum(per_engine.values()), "by_engine": per_engine,
                "size_bytes": size}

    def iter_entries(self, engine: str | None = None) -> Iterator[dict[str, Any]]:
        sql = "SELECT key, engine, query, params, ids, info, created FROM results"
        args: tuple = ()
        if engine:
            sql, args = sql + " WHERE engine = ?", (engine,)
        for key, eng, query, params, ids, info, created in self._connect().execute(sql + " ORDER BY created", args):
            yield {"key": key, "engine": eng, "query": query, "params": json.loads(params),
                   "ids": json.loads(ids), "info": json.loads(info), "created": created}

    def export(self, path: str | os.PathLike, engine: str | None = None) -> int:
        """Write every entry (or one engine's) as JSON lines, atomically; returns the count."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        n = 0
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(tmp, "wt", encoding="utf-8") as fh:
                for entry in self.iter_entries(engine):
                    fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    n += 1
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return n

    def import_(self, path: str | os.PathLike, *, overwrite: bool = False) -> int:
        """Add the entries of an export file (keys are recomputed, so a corrupted or foreign
        key cannot poison the cache); existing entries are kept unless ``overwrite``.
        Returns the number of entries read."""
        if self.frozen:
            raise ValueError("cannot import into a frozen cache")
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        records = []
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    params = e.get("params") or {}
                    records.append((cache_key(e["engine"], e["query"], params), e["engine"],
                                    normalize_query(e["query"]), _params_json(params),
                                    json.dumps([str(i) for i in e["ids"]]),
                                    json.dumps(e.get("info") or {}), float(e.get("created") or time.time())))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: not a cache export line ({exc})") from None
        conn = self._connect()
        with self._tx(conn):
            conn.executemany(f"{verb} INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", records)
        with self._lock:
            self._memory.clear()
        return len(records)

    def integrity_ok(self) -> bool:
        return self._connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
