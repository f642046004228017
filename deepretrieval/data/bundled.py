"""Collections shipped inside the package (see deepretrieval/bundled/*/SOURCE.md)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
COLLECTIONS = ("scifact",)
_lock = threading.Lock()


def collection_dir(name: str) -> Path:
    if name not in COLLECTIONS:
        raise KeyError(f"no bundled collection {name!r} (bundled: {list(COLLECTIONS)})")
    return BUNDLED_DIR / name


def bm25_index(name: str, rebuild: bool = False):
    """The BM25 index of a bundled collection, built under the index root on first use."""
    from ..search import index_root
    from ..search.bm25 import BM25Index
    from .beir import load_corpus

    path = index_root() / name
    with _lock:
        if rebuild or not (path / "meta.json").exists():
            index = BM25Index.build(load_corpus(collection_dir(name)), name=name,
                                    show_progress=bool(os.environ.get("DEEPRETRIEVAL_PROGRESS", "1") != "0"))
            index.save(path)
        return BM25Index.load(path)
