"""Search backends: one module per backend (``bm25``, ``dense``, ``sql``, ``live``), each
implementing :class:`~deepretrieval.core.results.Backend`, and the in-process searcher.

* :data:`INDEX_TYPES`: on-disk index types by ``meta.json`` ``type`` → loader.
* :func:`load_index_dir` opens an index directory.
* :class:`LocalSearcher` searches in this process over an ``open_index`` function.

Which names mean which index (built-ins, named indexes, the index root) is decided in
:mod:`deepretrieval.catalog`.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepretrieval.core.results import (
    Backend,
    DamagedIndex,
    SearchError,
    SearchResult,
)
from deepretrieval.core.per_query import search_sendable
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.search.boolean import BooleanIndex
from deepretrieval.search.dense import DenseIndex
from deepretrieval.search.shards import ShardedBackend
from deepretrieval.search.sql import load_sqlite_index

__all__ = ["Backend", "DamagedIndex", "SearchError", "SearchResult", "LocalSearcher", "load_index_dir",
           "INDEX_TYPES"]

#: Index types by ``meta.json`` ``type``. Dense indexes import torch/faiss only when opened.
INDEX_TYPES: dict[str, Callable[[Path], Backend]] = {"bm25": BM25Index.load, "dense": DenseIndex.load,
                                                     "sqlite": load_sqlite_index,
                                                     "boolean": BooleanIndex.load,
                                                     "sharded": lambda p: ShardedBackend.load(
                                                         p, load_index_dir)}


def load_index_dir(path: str | os.PathLike) -> Backend:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise SearchError(f"{path} is not an index directory (no meta.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise DamagedIndex(path, f"meta.json is unreadable: {exc}") from None
    kind = meta.get("type") if isinstance(meta, dict) else None
    if not isinstance(meta, dict):
        raise DamagedIndex(path, "meta.json is not a JSON object")
    if kind not in INDEX_TYPES:
        raise SearchError(f"{path}: unknown index type {kind!r} (known: {sorted(INDEX_TYPES)})")
    try:
        return INDEX_TYPES[kind](path)
    except SearchError:
        raise
    except (OSError, ValueError, KeyError, IndexError, EOFError) as exc:  # a file missing or cut short
        raise DamagedIndex(path, f"{type(exc).__name__}: {exc}") from None


class LocalSearcher:
    """Searches in this process; each index is opened once (with ``open_index``) and kept."""

    def __init__(self, open_index: Callable[[str], Backend]) -> None:
        self._open = open_index
        self._indexes: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def backend(self, index: str) -> Backend:
        with self._lock:
            if index not in self._indexes:
                self._indexes[index] = self._open(index)
            return self._indexes[index]

    def search(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        backend = self.backend(index)
        return search_sendable(backend.search, queries, k, return_text=return_text,
                               options=options)

    async def asearch(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
                      options: dict[str, Any] | None = None) -> list[SearchResult]:
        return await asyncio.to_thread(self.search, index, queries, k, return_text=return_text,
                                       options=options)
