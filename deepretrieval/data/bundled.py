"""Built-in indexes over the data shipped in the package, built under the index root on first use:
BM25 over each bundled BEIR collection (``scifact``), the dense SciFact (``scifact_dense``) and the
Boolean SciFact (``scifact_boolean``)."""
from __future__ import annotations

import json
import threading
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.beir_files import load_corpus
from deepretrieval.core.bundled import collection_dir
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.search.boolean import FORMAT_VERSION as BOOLEAN_FORMAT_VERSION
from deepretrieval.search.boolean import BooleanIndex
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


def scifact_boolean_index(rebuild: bool = False) -> BooleanIndex:
    """The bundled SciFact collection as a Boolean index (title, abstract; no MeSH, no dates),
    built under the index root on first use."""
    path = settings.index_dir() / "scifact_boolean"
    with _lock:
        meta = path / "meta.json"
        stale = meta.exists() and json.loads(meta.read_text()).get("format") != BOOLEAN_FORMAT_VERSION
        if rebuild or stale or not meta.exists():
            BooleanIndex.build(load_corpus(collection_dir("scifact")), name="scifact_boolean").save(path)
    return BooleanIndex.load(path)
