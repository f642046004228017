"""Built-in indexes over the data shipped in the package, built under the index root on first use:
BM25 over each bundled BEIR collection (``scifact``) and the dense SciFact (``scifact_dense``)."""
from __future__ import annotations

import threading
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.beir_files import load_corpus
from deepretrieval.core.bundled import collection_dir
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.search.dense import SCIFACT_DENSE, DenseIndex

_lock = threading.Lock()


def bm25_index(name: str, rebuild: bool = False) -> BM25Index:
    """The BM25 index of a bundled collection, built under the index root on first use."""
    path = settings.index_dir() / name
    with _lock:
        if rebuild or not (path / "meta.json").exists():
            index = BM25Index.build(load_corpus(collection_dir(name)), name=name,
                                    show_progress=settings.progress_enabled())
            index.save(path)
        return BM25Index.load(path)


def scifact_dense_index(rebuild: bool = False, name: str = "scifact_dense", **overrides: Any):
    """The dense index of the bundled SciFact (the shipped all-MiniLM-L6-v2), built under the
    index root on first use (a few minutes on a CPU), then loaded from there. ``overrides`` change
    the build settings (e.g. ``precision="bfloat16"``). Needs the ``[dense]`` extra."""
    path = settings.index_dir() / name
    with _lock:
        if rebuild or not (path / "meta.json").exists():
            build = {**SCIFACT_DENSE, **overrides}
            index = DenseIndex.build(load_corpus(collection_dir("scifact")), name=name,
                                     show_progress=settings.progress_enabled(), **build)
            index.save(path)
        return DenseIndex.load(path)
