"""Search backends and the searcher that reaches them (in-process or through the service).

* ``INDEX_TYPES``: on-disk index types by ``meta.json`` ``type`` → loader (``bm25``, more added by
  other modules, e.g. ``dense``).
* ``BUILTIN_INDEXES``: names that need no path: bundled collections built on first use
  (``scifact``) and live engines (``pubmed``, ``ctgov``).
* :func:`open_index` resolves a name or a path to a loaded backend.
* :func:`get_searcher` returns the process-wide searcher: the HTTP service client when
  ``DEEPRETRIEVAL_SEARCH_URL`` is set, the in-process :class:`LocalSearcher` otherwise.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from deepretrieval.core.results import Backend, SearchError, SearchResult

__all__ = ["Backend", "SearchError", "SearchResult", "Searcher", "LocalSearcher", "open_index",
           "register_index", "index_root", "get_searcher", "set_searcher", "INDEX_TYPES",
           "BUILTIN_INDEXES"]


def _load_bm25(path: Path) -> Backend:
    from deepretrieval.search.bm25 import BM25Index
    return BM25Index.load(path)


def _load_dense(path: Path) -> Backend:
    from deepretrieval.search.dense import DenseIndex  # torch/faiss are imported only when a dense index is opened
    return DenseIndex.load(path)


def _load_boolean(path: Path) -> Backend:
    from deepretrieval.search.boolean import BooleanIndex
    return BooleanIndex.load(path)


def _load_sqlite(path: Path) -> Backend:
    from deepretrieval.search.sql import load_sqlite_index
    return load_sqlite_index(path)


INDEX_TYPES: dict[str, Callable[[Path], Backend]] = {"bm25": _load_bm25, "dense": _load_dense,
                                                     "sqlite": _load_sqlite, "boolean": _load_boolean}
BUILTIN_INDEXES: dict[str, Callable[[], Backend]] = {}
_REGISTERED: dict[str, Path] = {}


def index_root() -> Path:
    """Where named indexes live: ``$DEEPRETRIEVAL_INDEX_DIR`` or ``~/.cache/deepretrieval/indexes``."""
    root = os.environ.get("DEEPRETRIEVAL_INDEX_DIR")
    return Path(root) if root else Path.home() / ".cache" / "deepretrieval" / "indexes"


def register_index(name: str, path: str | os.PathLike) -> None:
    """Make ``name`` resolve to the index at ``path`` in this process."""
    _REGISTERED[name] = Path(path)


def _env_indexes() -> dict[str, Path]:
    # DEEPRETRIEVAL_INDEXES="scifact=/data/idx/scifact,nq=/data/idx/nq"
    out = {}
    for item in filter(None, os.environ.get("DEEPRETRIEVAL_INDEXES", "").split(",")):
        name, _, path = item.partition("=")
        if name and path:
            out[name.strip()] = Path(path.strip())
    return out


def load_index_dir(path: str | os.PathLike) -> Backend:
    import json
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise SearchError(f"{path} is not an index directory (no meta.json)")
    kind = json.loads(meta_file.read_text()).get("type")
    if kind not in INDEX_TYPES:
        raise SearchError(f"{path}: unknown index type {kind!r} (known: {sorted(INDEX_TYPES)})")
    return INDEX_TYPES[kind](path)


def open_index(name_or_path: str) -> Backend:
    """Resolve an index name (registered, ``DEEPRETRIEVAL_INDEXES``, under :func:`index_root`,
    or built in) or a directory path to a loaded backend."""
    registered = {**_env_indexes(), **_REGISTERED}
    if name_or_path in registered:
        return load_index_dir(registered[name_or_path])
    candidate = index_root() / name_or_path
    if (candidate / "meta.json").exists():
        return load_index_dir(candidate)
    if name_or_path in BUILTIN_INDEXES:
        return BUILTIN_INDEXES[name_or_path]()
    if Path(name_or_path).is_dir():
        return load_index_dir(name_or_path)
    known = sorted(set(registered) | set(BUILTIN_INDEXES))
    raise SearchError(f"unknown index {name_or_path!r}; known names: {known}, "
                      f"or build one under {index_root()} with `deepretrieval index`")


class Searcher(Protocol):
    def search(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]: ...

    async def asearch(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
                      options: dict[str, Any] | None = None) -> list[SearchResult]: ...


class LocalSearcher:
    """Searches in this process; each index is opened once and kept."""

    def __init__(self) -> None:
        self._indexes: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def backend(self, index: str) -> Backend:
        with self._lock:
            if index not in self._indexes:
                self._indexes[index] = open_index(index)
            return self._indexes[index]

    def search(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        backend = self.backend(index)
        # identical queries are searched once
        unique = list(dict.fromkeys(queries))
        results = backend.search(unique, k, return_text=return_text, options=options)
        by_query = dict(zip(unique, results))
        return [by_query[q] for q in queries]

    async def asearch(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
                      options: dict[str, Any] | None = None) -> list[SearchResult]:
        return await asyncio.to_thread(self.search, index, queries, k, return_text=return_text,
                                       options=options)


_SEARCHER: Searcher | None = None
_SEARCHER_URL: str | None = None


def set_searcher(searcher: Searcher | None) -> None:
    """Override the process-wide searcher (tests, custom deployments)."""
    global _SEARCHER, _SEARCHER_URL
    _SEARCHER, _SEARCHER_URL = searcher, None


def get_searcher() -> Searcher:
    global _SEARCHER, _SEARCHER_URL
    url = os.environ.get("DEEPRETRIEVAL_SEARCH_URL") or None
    if _SEARCHER is None or url != _SEARCHER_URL:
        if url:
            from deepretrieval.service.client import ServiceSearcher  # noqa: PLC0415
            _SEARCHER = ServiceSearcher(url, token=os.environ.get("DEEPRETRIEVAL_SEARCH_TOKEN"))
        else:
            _SEARCHER = LocalSearcher()
        _SEARCHER_URL = url
    return _SEARCHER


def _register_builtins() -> None:
    from deepretrieval.data import bundled
    for name in bundled.COLLECTIONS:
        BUILTIN_INDEXES.setdefault(name, lambda name=name: bundled.bm25_index(name))

    def scifact_dense():  # SciFact encoded with the shipped all-MiniLM-L6-v2, built on first use
        from deepretrieval.search.dense import scifact_dense_index
        return scifact_dense_index()
    BUILTIN_INDEXES.setdefault("scifact_dense", scifact_dense)

    def scifact_boolean():  # SciFact with PubMed query syntax (search/boolean.py), built on first use
        from deepretrieval.search.boolean import scifact_boolean_index
        return scifact_boolean_index()
    BUILTIN_INDEXES.setdefault("scifact_boolean", scifact_boolean)

    def pubmed():  # live NCBI E-utilities (env: DEEPRETRIEVAL_PUBMED_URL, NCBI_API_KEY, ...)
        from deepretrieval.search.live import pubmed_from_env
        return pubmed_from_env()

    def ctgov():  # live ClinicalTrials.gov API v2 (env: DEEPRETRIEVAL_CTGOV_URL, ...)
        from deepretrieval.search.live import ctgov_from_env
        return ctgov_from_env()
    BUILTIN_INDEXES.setdefault("pubmed", pubmed)
    BUILTIN_INDEXES.setdefault("ctgov", ctgov)

    # bundled Spider databases as SQL indexes `spider/<db_id>` (opened on first use)
    from deepretrieval.search.sql import register_builtins as register_sql_builtins
    register_sql_builtins(BUILTIN_INDEXES)


_register_builtins()
