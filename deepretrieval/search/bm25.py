"""BM25 over a term-major impact matrix on disk (memory-mapped), with numba top-k kernels.

Format 2 (what :mod:`deepretrieval.search.bm25_build` writes): ``meta.json``, ``vocab.json``
(stems by term id), ``data.npy`` / ``indices.npy`` / ``indptr.npy`` (the CSC impact matrix:
float32 impacts, int32 documents, int64 term pointers), ``term_max.npy`` and ``block_max.npy`` /
``block_ptr.npy`` (bounds for the pruned kernel), and the string columns ``ids``, ``texts``
(and ``titles``) of :mod:`deepretrieval.core.docstore`. Format 1 (bm25s's files, ids and texts as
JSON) is still read. The scores are bm25s's ``lucene`` BM25 (k1, b; default 0.9 / 0.4).

Top-k: :mod:`deepretrieval.search.bm25_kernels` (exhaustive, or MaxScore with block-max bounds),
chosen per call (``DEEPRETRIEVAL_BM25_TOPK``: ``auto`` | ``exhaustive`` | ``pruned``); both give
the same ids and scores, ties in document order.

Search option ``answers`` (list of strings; the evidence reward): each result also carries
``info["first_answer_rank"]``, the 1-based rank of the first of its k passages that contains an
answer under DPR's ``has_answer`` rule (None when none does), computed here next to the texts so
that no passage text has to be returned (:mod:`deepretrieval.search.answer_filter` rules most
passages out without reading them). The result's ids and scores are then only the top
``answer_hits`` (option; default 10, 0: all k) — the rank is what the reward reads, the top ids
what evaluation runs record —, unless ``return_text`` asks for all k with their texts
(:mod:`deepretrieval.search.answer_ranks`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from deepretrieval.core import dpr_match, per_query, settings
from deepretrieval.core.docstore import StringColumn
from deepretrieval.core.io import atomic_dir, read_json_lines_gz
from deepretrieval.core.results import SearchResult, StoredDocs
from deepretrieval.search.answer_filter import AnswerFilter
from deepretrieval.search.answer_ranks import answer_hits
from deepretrieval.search.bm25_kernels import exhaustive_kernel, maxscore_kernel
from deepretrieval.search.bm25_build import (
    FORMAT_VERSION,
    INDEX_TYPE,
    SPLITTER,
    build_index,
    doc_text,
    english_stemmer,
    stopword_list,
)

TOPK_MODES = ("auto", "exhaustive", "pruned")
#: ``auto`` uses the pruned kernel on collections of at least PRUNE_MIN_DOCS documents when
#: k <= num_docs / PRUNE_DOCS_PER_K: pruning pays while the k-th score is a high bar, i.e. while k
#: is a small share of the collection (measured on the generated 1M corpus, CPU per query: pruned
#: 0.52 vs 0.94 ms at k=10, even at k=100, exhaustive ahead from k=200 — 1.34 vs 1.98 ms at k=1000;
#: at 5M exhaustive still ahead at k=1000, 6.98 vs 7.44 ms; at 21M pruned 12-14x ahead at k=3-10,
#: k=1000 there not timed with both kernels; see benchmarks/README.md)
PRUNE_DOCS_PER_K = 10_000
PRUNE_MIN_DOCS = 50_000
#: under the ``answers`` option, a search that keeps at most this many hits (``answer_hits``; the
#: default 10) and runs the exhaustive kernel is ranked by :meth:`AnswerFilter.candidates` (its k hits
#: never ordered) when the answers allow it (:attr:`AnswerPlan.by_postings`)
RANK_MAX_HITS = 64
OPTIONS = ("answers", "answer_hits")

__all__ = ["BM25Index", "FORMAT_VERSION", "INDEX_TYPE", "QueryAnalyzer", "collect_docs",
           "collect_titled_docs", "doc_text"]


def collect_docs(docs: Iterable[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(ids, texts) of BEIR-style docs; ValueError for an empty collection or repeated ids."""
    doc_ids, texts, _ = collect_titled_docs(docs)
    return doc_ids, texts


def collect_titled_docs(docs: Iterable[dict[str, Any]]
                        ) -> tuple[list[str], list[str], list[str] | None]:
    """(ids, texts, titles) of BEIR-style docs; titles is None when no document has one."""
    doc_ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    for doc in docs:
        doc_ids.append(str(doc["_id"]))
        texts.append(doc_text(doc))
        titles.append((doc.get("title") or "").strip())
    if not doc_ids:
        raise ValueError("cannot build an index from an empty collection")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("document ids are not unique")
    return doc_ids, texts, (titles if any(titles) else None)


class QueryAnalyzer:
    """The index's analysis of query text (bm25s's Tokenizer semantics: lower-case, words
    ``(?u)\\b\\w\\w+\\b``, stopwords dropped, stemmed) mapped to term ids. ``stopwords``,
    ``stemmer`` and :meth:`get_vocab_dict` are what the Boolean index's analyzer reads."""

    def __init__(self, vocab: dict[str, int], stopwords: Sequence[str], stem: bool = True) -> None:
        self.vocab = vocab
        self.stopwords = list(stopwords)
        self._stopset = frozenset(stopwords)
        self.stemmer = english_stemmer() if stem else None
        self._split = re.compile(SPLITTER).findall
        self._cache: dict[str, int] = {}

    def get_vocab_dict(self) -> dict[str, int]:
        return self.vocab

    def term(self, word: str) -> int | None:
        """The term id of one lower-case word as the index analysed it: None for a stopword,
        -1 when the vocabulary lacks its stem."""
        if word in self._stopset:
            return None
        return self.vocab.get(self.stemmer(word) if self.stemmer else word, -1)

    def ids(self, text: str) -> list[int]:
        """Known term ids of ``text`` in order (unknown words and stopwords dropped)."""
        out = []
        cache = self._cache
        for w in self._split(text.lower()):
            t = cache.get(w)
            if t is None:
                if w in self._stopset:
                    t = -1
                else:
                    t = self.vocab.get(self.stemmer(w) if self.stemmer else w, -1)
                if len(cache) < 1_000_000:
                    cache[w] = t
            if t >= 0:
                out.append(t)
        return out


class BM25Index(StoredDocs):
    """A BM25 index: build with :meth:`build` (in memory, small collections) or
    :func:`~deepretrieval.search.bm25_build.build_index` (streaming, any size), open with
    :meth:`load` (memory-mapped), persist with :meth:`save`."""

    name: str

    def __init__(self, matrix: dict[str, Any], analyzer: QueryAnalyzer, doc_ids: Sequence[str],
                 name: str = "bm25", path: Path | None = None,
                 params: dict[str, Any] | None = None, texts: Sequence[str] | None = None,
                 titles: Sequence[str] | None = None, doc_offset: int = 0,
                 tmp: tempfile.TemporaryDirectory | None = None) -> None:
        self.data, self.indices, self.indptr = matrix["data"], matrix["indices"], matrix["indptr"]
        self.num_docs = int(matrix["num_docs"])
        self.term_max = matrix.get("term_max")
        self.block_max = matrix.get("block_max")
        self.block_ptr = matrix.get("block_ptr")
        self.tokenizer = analyzer
        self.doc_ids = doc_ids
        self.name = name
        self._texts = texts
        self._titles = titles
        self._titles_read = titles is not None
        self.path = path
        self.params = params or {}
        self.doc_offset = doc_offset
        self._tmp = tmp  # the folder of an index built in memory (removed with the object)
        self.backend = "numba"
        # numba's parallel scorer changes a process-wide thread count: one parallel call at a time
        self._parallel = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # reused by every parallel kernel call
        self._pool_threads = 0
        self._local = threading.local()  # per-thread kernel scratch buffers
        self.threads = settings.get_int("DEEPRETRIEVAL_BM25_THREADS", os.cpu_count() or 1)
        self._answer_filter: AnswerFilter | None = None

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Iterable[dict[str, Any]], name: str = "bm25", *, k1: float = 0.9,
              b: float = 0.4, method: str = "lucene", stopwords: str | None = "en",
              show_progress: bool = True) -> "BM25Index":
        """Index BEIR-style docs (``_id``, ``title``, ``text``) with the streaming builder into a
        temporary folder and open it (save it with :meth:`save`). Defaults k1=0.9, b=0.4 are the
        Anserini/pyserini BM25 defaults used for published BEIR baselines."""
        if method != "lucene":
            raise ValueError(f"unknown BM25 method {method!r} (known: ['lucene'])")
        tmp = tempfile.TemporaryDirectory(prefix="bm25-")
        out = Path(tmp.name) / "index"
        build_index(docs, out, name=name, k1=k1, b=b, stopwords=stopwords,
                    show_progress=show_progress)
        index = cls.load(out)
        index._tmp = tmp
        index.path = None
        index._dir = out
        return index

    _dir: Path | None = None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically: into a temp dir beside ``path``, then rename."""
        path = Path(path)
        src = self._dir or self.path
        if src is None or Path(src).resolve() == path.resolve():
            raise ValueError("nothing to save: the index already lives at that path")
        with atomic_dir(path) as tmp:
            for item in Path(src).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
            meta = json.loads((tmp / "meta.json").read_text())
            meta["params"] = self.params  # what the caller set (e.g. the corpus's source)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "BM25Index":
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("type") != INDEX_TYPE:
            raise ValueError(f"{path} is not a BM25 index (type={meta.get('type')!r})")
        if meta.get("format") == 1:
            return cls._load_v1(path, meta, mmap)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: BM25 index format {meta.get('format')!r}; this version "
                             f"reads 1 and {FORMAT_VERSION}: rebuild it")
        mode = "r" if mmap else None
        matrix = {name: np.load(path / f"{name}.npy", mmap_mode=mode)
                  for name in ("data", "indices", "indptr", "term_max", "block_max", "block_ptr")}
        matrix["num_docs"] = meta["num_docs"]
        params = meta.get("params", {})
        vocab = {t: i for i, t in enumerate(json.loads((path / "vocab.json").read_text()))}
        analyzer = QueryAnalyzer(vocab, stopword_list(params.get("stopwords", "en")),
                                 stem=params.get("stemmer", "english") is not None)
        titles = StringColumn(path, "titles") if meta.get("titles") else None
        index = cls(matrix, analyzer, StringColumn(path, "ids"), name=meta.get("name", path.name),
                    path=path, params=params, texts=StringColumn(path, "texts"), titles=titles,
                    doc_offset=int(meta.get("doc_offset", 0)))
        if len(index.doc_ids) != index.num_docs:
            raise ValueError(f"{path}: {len(index.doc_ids)} ids for {index.num_docs} documents")
        return index

    @classmethod
    def _load_v1(cls, path: Path, meta: dict[str, Any], mmap: bool) -> "BM25Index":
        """A format-1 index (bm25s's files, ids and texts as JSON): read, not rewritten."""
        mode = "r" if mmap else None
        folder = path / "bm25"
        matrix = {name: np.load(folder / f"{name}.csc.index.npy", mmap_mode=mode)
                  for name in ("data", "indices", "indptr")}
        params = meta.get("params", {})
        if params.get("method", "lucene") != "lucene":
            raise ValueError(f"{path}: BM25 variant {params.get('method')!r} is not supported; "
                             f"rebuild the index")
        vocab = json.loads((path / "tokenizer" / "vocab.tokenizer.json").read_text())["stem_to_sid"]
        matrix["num_docs"] = meta["num_docs"]
        matrix.update(_bounds(matrix["data"], matrix["indptr"]))
        analyzer = QueryAnalyzer(vocab, stopword_list(params.get("stopwords", "en")))
        doc_ids = json.loads((path / "doc_ids.json").read_text())
        return cls(matrix, analyzer, doc_ids, name=meta.get("name", path.name), path=path,
                   params=params)

    @property
    def texts(self) -> Sequence[str]:
        if self._texts is None:
            if self.path is None:
                raise RuntimeError("index has no stored texts")
            self._texts = read_json_lines_gz(self.path / "texts.jsonl.gz")
        return self._texts

    def __len__(self) -> int:
        return self.num_docs

    # ---- searching ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "num_docs": self.num_docs,
                "scoring": self.backend, "kernel": True, "topk": self.topk_mode(),
                "params": self.params,
                "path": str(self.path) if self.path else None}

    @staticmethod
    def topk_mode() -> str:
        mode = (settings.get_str("DEEPRETRIEVAL_BM25_TOPK", "auto") or "auto").lower()
        if mode not in TOPK_MODES:
            raise settings.SettingError(f"DEEPRETRIEVAL_BM25_TOPK must be one of {TOPK_MODES}, "
                                        f"got {mode!r}")
        return mode

    def kernel_for(self, k: int) -> str:
        """Which top-k kernel a search with this k uses: ``pruned`` or ``exhaustive``."""
        mode = self.topk_mode()
        if mode != "auto":
            return mode
        pruned = self.num_docs >= PRUNE_MIN_DOCS and k * PRUNE_DOCS_PER_K <= self.num_docs
        return "pruned" if pruned else "exhaustive"

    def _search_kernel(self, batch: list[list[int]], k: int, kernel: str | None = None):
        ptr = np.cumsum([0] + [len(t) for t in batch], dtype=np.int64)
        flat = np.fromiter((t for toks in batch for t in toks), dtype=np.int64, count=int(ptr[-1]))
        kernel = kernel or self.kernel_for(k)
        if kernel == "pruned":
            fn = maxscore_kernel()

            def run(a: int, b: int):
                return fn(flat, ptr[a:b + 1], k, self.data, self.indices, self.indptr,
                          self.term_max, self.block_max, self.block_ptr, 128)
        else:
            fn = exhaustive_kernel()

            def run(a: int, b: int):
                acc, touched = self._scratch()
                return fn(flat, ptr[a:b + 1], k, self.data, self.indices, self.indptr, acc,
                          touched)

        n = len(batch)
        # large batches are split over the cores (the kernel releases the GIL); small ones, and
        # calls while another parallel call runs (e.g. service workers), stay on one thread
        if self.threads > 1 and n >= 64 and self._parallel.acquire(blocking=False):
            try:
                bounds = np.linspace(0, n, self.threads + 1).astype(int)
                parts = list(self._pool_for_threads().map(run, bounds[:-1], bounds[1:]))
            finally:
                self._parallel.release()
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return run(0, n)

    def _pool_for_threads(self) -> ThreadPoolExecutor:
        """The index's pool of ``threads`` threads. One pool per index, kept: starting threads
        for every batch cost the service ~5 % of its CPU at 64 single-query callers (py-spy)."""
        if self._pool is None or self._pool_threads != self.threads:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bm25")
            self._pool_threads = self.threads
        return self._pool

    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """This thread's accumulator (float32 zeros) and touched-list buffers for the exhaustive
        kernel, kept between calls (the kernel leaves the accumulator zeroed)."""
        local = self._local
        if getattr(local, "acc", None) is None:  # first use in this thread
            local.acc = np.zeros(self.num_docs, dtype=np.float32)
            local.touched = np.empty(self.num_docs, dtype=np.int32)
        return local.acc, local.touched

    def answer_filter(self) -> AnswerFilter | None:
        """The kernel-side answer check (:mod:`deepretrieval.search.answer_filter`) for a
        format-2 index analysed with the splitter it assumes; None for other indexes."""
        if self._answer_filter is None and isinstance(self._texts, StringColumn) \
                and self.params.get("splitter") == SPLITTER:
            self._answer_filter = AnswerFilter(self._texts, self.indptr, self.indices,
                                               self.tokenizer.term)
        return self._answer_filter

    def _search_ranked(self, ranker: AnswerFilter, todo: list[int], token_ids: list[list[int]],
                       answers: list[list[str]], k: int, hits: int,
                       out: list[SearchResult]) -> None:
        """The searches ``todo`` under the ``answers`` option without ordering their k hits
        (:meth:`AnswerFilter.candidates`, split over the cores like a batch: the kernel releases
        the GIL), then each first answer-bearing rank (:meth:`AnswerFilter.first_of`, DPR's rule:
        Python, one thread): the same top ``hits`` and rank as the exhaustive kernel's top k
        ranked by the filter."""
        found: dict[int, tuple] = {}

        def run(part: list[int]) -> None:
            acc, touched = self._scratch()
            for i in part:
                found[i] = ranker.candidates(np.asarray(token_ids[i], dtype=np.int64), k, hits,
                                             self.data, acc, touched, answers[i])

        if self.threads > 1 and len(todo) >= 64 and self._parallel.acquire(blocking=False):
            try:
                list(self._pool_for_threads().map(run, [todo[j::self.threads]
                                                        for j in range(self.threads)]))
            finally:
                self._parallel.release()
        else:
            run(todo)
        for i in todo:
            docs, scores, cand, ranks = found[i]
            out[i] = SearchResult(ids=_take(self.doc_ids, docs.tolist()),
                                  scores=scores.astype(float).tolist(),
                                  info={"first_answer_rank": ranker.first_of(cand, ranks,
                                                                             answers[i])})

    def _first_answer_rank(self, docs: np.ndarray, answers: list[str],
                           ranker: AnswerFilter | None, texts: list[str] | None) -> int | None:
        if not answers:
            return None
        if ranker is not None:
            return ranker.first_rank(docs, answers)
        if texts is None:
            texts = _lazy(self.texts, docs[docs >= 0].tolist())
        return dpr_match.first_answer_rank(texts, answers)

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None, kernel: str | None = None
               ) -> list[SearchResult]:
        answers = answers_option(options, "BM25", len(queries))
        hits = answer_hits(dict(options or {}))
        if k < 1:
            raise ValueError("k must be >= 1")
        if kernel is not None and kernel not in ("pruned", "exhaustive"):
            raise ValueError(f"unknown kernel {kernel!r} (known: pruned, exhaustive)")
        kernel = kernel or self.kernel_for(int(k))  # also: a bad setting fails every call
        if not queries:
            return []
        k_eff = min(int(k), self.num_docs)
        token_ids = [self.tokenizer.ids(q) for q in queries]
        # a query without index terms has no hits (and no answer rank)
        out: list[SearchResult] = [
            SearchResult(texts=[] if return_text else None,
                         info={} if answers is None else {"first_answer_rank": None})
            for _ in queries]
        todo = [i for i, toks in enumerate(token_ids) if toks]
        ranker = self.answer_filter() if answers is not None else None
        if ranker is not None and kernel == "exhaustive" and not return_text \
                and 0 < hits <= RANK_MAX_HITS and hits < k_eff:
            # the evidence reward's search: only the top hits and the rank, no k-hit ordering
            assert answers is not None
            ranked = [i for i in todo if ranker.plan(answers[i]).by_postings]
            self._search_ranked(ranker, ranked, token_ids, answers, k_eff, hits, out)
            done = set(ranked)
            todo = [i for i in todo if i not in done]
        if todo:
            docs, scores = self._search_kernel([token_ids[i] for i in todo], k_eff, kernel)
            ids = self.doc_ids
            for row, i in enumerate(todo):
                keep = docs[row] >= 0
                shown = keep if answers is None or return_text or not hits else keep[:hits]
                idx = docs[row][:len(shown)][shown].tolist()
                result = SearchResult(ids=_take(ids, idx),
                                      scores=scores[row][:len(shown)][shown].astype(float).tolist())
                if return_text:
                    result.texts = _take(self.texts, idx)
                    titles = self.titles
                    if titles is not None:
                        result.titles = _take(titles, idx)
                out[i] = result
                if answers is not None:
                    result.info["first_answer_rank"] = self._first_answer_rank(
                        docs[row], answers[i], ranker, result.texts if return_text else None)
        return out


def _take(column: Sequence[str], idx: list[int]) -> list[str]:
    if isinstance(column, StringColumn):
        return column.take(idx)
    return [column[j] for j in idx]


def _lazy(column: Sequence[str], idx: list[int]):
    """The strings at ``idx``, read one at a time as they are consumed."""
    return (column[j] for j in idx)


def answers_option(options: dict[str, Any] | None, who: str, n: int) -> list[list[str]] | None:
    """The ``answers`` search option as each of the ``n`` queries' answer keys
    (:func:`~deepretrieval.core.dpr_match.answer_keys`; the option is one list for every query
    or one list per query: :mod:`deepretrieval.core.per_query`), or None when it is absent.
    Unknown options are a ValueError naming the known ones."""
    unknown = set(options or {}) - set(OPTIONS)
    if unknown:
        raise ValueError(f"{who} takes only the search option(s) {list(OPTIONS)} "
                         f"(got {sorted(unknown)})")
    return per_query.answer_keys_per_query(options, n)


def _bounds(data: np.ndarray, indptr: np.ndarray) -> dict[str, np.ndarray]:
    """term_max and block maxima of a matrix that was written without them (format 1)."""
    block = 128
    df = np.diff(indptr)
    term_max = np.zeros(len(df), dtype=np.float32)
    nz = np.flatnonzero(df > 0)
    if len(nz):
        term_max[nz] = np.maximum.reduceat(np.asarray(data), indptr[:-1][nz])
    nblocks = (df + block - 1) // block
    block_ptr = np.zeros(len(df) + 1, dtype=np.int64)
    np.cumsum(nblocks, out=block_ptr[1:])
    starts = (np.repeat(indptr[:-1], nblocks)
              + (np.arange(int(block_ptr[-1])) - np.repeat(block_ptr[:-1], nblocks)) * block)
    block_max = (np.maximum.reduceat(np.asarray(data), starts) if len(starts)
                 else np.zeros(0, np.float32)).astype(np.float32)
    return {"term_max": term_max, "block_max": block_max, "block_ptr": block_ptr}
