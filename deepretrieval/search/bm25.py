"""BM25 over bm25s (sparse matrices; numba scoring when installed, numpy otherwise)."""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from deepretrieval.core import settings
from deepretrieval.core.io import atomic_dir
from deepretrieval.core.results import SearchResult, StoredDocs

INDEX_TYPE = "bm25"
FORMAT_VERSION = 1


def _stemmer():
    try:
        import Stemmer  # PyStemmer
    except ImportError:  # pragma: no cover - PyStemmer is a core dependency
        return None
    return Stemmer.Stemmer("english")


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


_KERNEL = None

#: The bm25s versions whose precomputed-score layout :class:`Bm25sScores` reads (pyproject pins
#: the same range).
BM25S_SUPPORTED = ((0, 2, 14), (0, 4, 0))


class Bm25sScores:
    """The one adapter over bm25s's internal state that our top-k kernel reads: the CSC arrays of
    precomputed term scores (``retriever.scores``: data, indices, indptr, num_docs), the set of
    known token ids, and whether the BM25 variant scores non-matching documents
    (``nonoccurrence_array``; our kernel then does not apply). Raises RuntimeError naming the
    bm25s version when the layout is not the expected one, so an upgrade cannot silently switch
    the kernel off."""

    def __init__(self, retriever) -> None:
        import bm25s

        version = tuple(int(x) for x in bm25s.__version__.split(".")[:3])
        if not BM25S_SUPPORTED[0] <= version < BM25S_SUPPORTED[1]:
            raise RuntimeError(f"bm25s {bm25s.__version__} is outside the supported range "
                               f"{BM25S_SUPPORTED}; the score layout may have changed")
        scores = retriever.scores
        missing = {"data", "indices", "indptr", "num_docs"} - set(scores)
        if missing:
            raise RuntimeError(f"bm25s {bm25s.__version__}: the score matrix lacks {sorted(missing)}")
        self.data, self.indices, self.indptr = scores["data"], scores["indices"], scores["indptr"]
        self.num_docs = int(scores["num_docs"])
        self.known_tokens = retriever.unique_token_ids_set
        self.scores_nonmatching = retriever.nonoccurrence_array is not None


def _topk_kernel():
    """A numba kernel scoring a batch of queries against bm25s's precomputed CSC term-score matrix.

    Per query it accumulates term scores into a dense buffer, remembers the documents it touched,
    selects the top k of those with a partition, sorts them (score descending, document index
    ascending), and resets only the touched entries. Scores equal bm25s's (same float32 sums in
    the same term order); which of several documents tied exactly at the k-th score are kept, and
    the order of tied scores, may differ (ours: deterministic, ties in document order). None
    without numba."""
    global _KERNEL
    if _KERNEL is not None or not _numba_available():
        return _KERNEL or None
    import numba

    @numba.njit(nogil=True, cache=True)
    def search_batch(flat, ptr, k, data, indices, indptr, num_docs):  # pragma: no cover - jitted
        nq = len(ptr) - 1
        acc = np.zeros(num_docs, dtype=np.float32)
        touched = np.empty(num_docs, dtype=np.int64)
        out_docs = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.zeros((nq, k), dtype=np.float32)
        for q in range(nq):
            n = 0
            for t in flat[ptr[q]:ptr[q + 1]]:
                for j in range(indptr[t], indptr[t + 1]):
                    d = indices[j]
                    if acc[d] == 0.0:
                        touched[n] = d
                        n += 1
                    acc[d] += data[j]
            cand = touched[:n]
            scores = np.empty(n, dtype=np.float32)
            for i in range(n):
                scores[i] = acc[cand[i]]
                acc[cand[i]] = 0.0
            if n > k:
                threshold = np.partition(scores, n - k)[n - k]
                keep = np.empty(k, dtype=np.int64)
                m = 0
                for i in range(n):  # strictly above the threshold first ...
                    if scores[i] > threshold:
                        keep[m] = i
                        m += 1
                for i in range(n):  # ... then ties at the threshold, in the order first touched
                    if m >= k:
                        break
                    if scores[i] == threshold:
                        keep[m] = i
                        m += 1
                cand, scores = cand[keep[:m]], scores[keep[:m]]
            by_doc = np.argsort(cand)
            cand, scores = cand[by_doc], scores[by_doc]
            order = np.argsort(-scores, kind="mergesort")  # stable: ties in document order
            m = min(k, len(order))
            for i in range(m):
                out_docs[q, i] = cand[order[i]]
                out_scores[q, i] = scores[order[i]]
        return out_docs, out_scores

    _KERNEL = search_batch
    return _KERNEL


def doc_text(doc: dict[str, Any]) -> str:
    """BEIR convention: title and text joined by a space."""
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip()


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


class BM25Index(StoredDocs):
    """A BM25 index over a document collection. Build with :meth:`build`, persist with
    :meth:`save`, reopen with :meth:`load` (memory-mapped)."""

    name: str

    def __init__(self, retriever, tokenizer, doc_ids: list[str], name: str = "bm25",
                 texts: list[str] | None = None, path: Path | None = None,
                 params: dict[str, Any] | None = None, titles: list[str] | None = None):
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.doc_ids = doc_ids
        self._doc_ids_arr = np.asarray(doc_ids, dtype=object)
        self.name = name
        self._texts = texts
        self._titles = titles
        self.path = path
        self.params = params or {}
        self.backend = "numba" if _numba_available() else "numpy"
        self.state = Bm25sScores(retriever)
        # numba's parallel scorer changes a process-wide thread count: one parallel call at a time
        self._parallel = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # reused by every parallel kernel call
        self._pool_threads = 0
        self.threads = settings.get_int("DEEPRETRIEVAL_BM25_THREADS", os.cpu_count() or 1)

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Iterable[dict[str, Any]], name: str = "bm25", *, k1: float = 0.9,
              b: float = 0.4, method: str = "lucene", stopwords: str | None = "en",
              show_progress: bool = True) -> "BM25Index":
        """Index BEIR-style docs (``_id``, ``title``, ``text``). Defaults k1=0.9, b=0.4 are the
        Anserini/pyserini BM25 defaults used for published BEIR baselines."""
        import bm25s
        from bm25s.tokenization import Tokenizer

        doc_ids, texts, titles = collect_titled_docs(docs)
        tokenizer = Tokenizer(stemmer=_stemmer(), stopwords=stopwords, splitter=r"(?u)\b\w\w+\b")
        tokens = tokenizer.tokenize(texts, show_progress=show_progress, return_as="tuple")
        retriever = bm25s.BM25(k1=k1, b=b, method=method)
        retriever.index(tokens, show_progress=show_progress)
        params = {"k1": k1, "b": b, "method": method, "stopwords": stopwords}
        return cls(retriever, tokenizer, doc_ids, name=name, texts=texts, params=params,
                   titles=titles)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically: into a temp dir beside ``path``, then rename."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.retriever.save(tmp / "bm25", show_progress=False)
            self.tokenizer.save_vocab(tmp / "tokenizer")
            self.tokenizer.save_stopwords(tmp / "tokenizer")
            self.save_docs(tmp)
            meta = {"type": INDEX_TYPE, "format": FORMAT_VERSION, "name": self.name,
                    "num_docs": len(self.doc_ids), "params": self.params,
                    "vocab_size": len(self.tokenizer.get_vocab_dict())}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "BM25Index":
        import bm25s
        from bm25s.tokenization import Tokenizer

        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("type") != INDEX_TYPE:
            raise ValueError(f"{path} is not a BM25 index (type={meta.get('type')!r})")
        retriever = bm25s.BM25.load(path / "bm25", mmap=mmap, show_progress=False)
        params = meta.get("params", {})
        tokenizer = Tokenizer(stemmer=_stemmer(), stopwords=params.get("stopwords", "en"),
                              splitter=r"(?u)\b\w\w+\b")
        tokenizer.load_vocab(path / "tokenizer")
        tokenizer.load_stopwords(path / "tokenizer")
        doc_ids = json.loads((path / "doc_ids.json").read_text())
        return cls(retriever, tokenizer, doc_ids, name=meta.get("name", path.name), path=path,
                   params=params)

    # ---- searching ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "num_docs": len(self.doc_ids),
                "scoring": self.backend, "kernel": self.kernel_disabled_reason() is None,
                "params": self.params,
                "path": str(self.path) if self.path else None}

    def kernel_disabled_reason(self) -> str | None:
        """Why our top-k kernel is not used for this index (None: it is used)."""
        if self.backend != "numba":
            return "numba is not installed"
        if not settings.get_bool("DEEPRETRIEVAL_BM25_KERNEL", True):
            return "DEEPRETRIEVAL_BM25_KERNEL is off"
        if self.state.scores_nonmatching:
            return f"BM25 variant {self.params.get('method')!r} scores non-matching documents"
        return None

    def _search_kernel(self, batch: list[list[int]], k: int):
        known = self.state.known_tokens
        ids = [[t for t in toks if t in known] for toks in batch]
        ptr = np.cumsum([0] + [len(t) for t in ids], dtype=np.int64)
        flat = np.fromiter((t for toks in ids for t in toks), dtype=np.int64, count=int(ptr[-1]))
        st = self.state
        kernel = _topk_kernel()

        def run(a: int, b: int):
            return kernel(flat, ptr[a:b + 1], k, st.data, st.indices, st.indptr, st.num_docs)

        n = len(ids)
        # large batches are split over the cores (the kernel releases the GIL); small ones, and
        # calls while another parallel call runs (e.g. service workers), stay on one thread
        if self.threads > 1 and n >= 64 and self._parallel.acquire(blocking=False):
            try:
                bounds = np.linspace(0, n, self.threads + 1).astype(int)
                # one pool per index, kept: starting threads for every batch cost the service
                # ~5 % of its CPU at 64 single-query callers (py-spy)
                if self._pool is None or self._pool_threads != self.threads:
                    if self._pool is not None:
                        self._pool.shutdown(wait=False)
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bm25")
                    self._pool_threads = self.threads
                parts = list(self._pool.map(run, bounds[:-1], bounds[1:]))
            finally:
                self._parallel.release()
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return run(0, n)

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        if options:
            raise ValueError(f"BM25 takes no search options (got {sorted(options)})")
        if k < 1:
            raise ValueError("k must be >= 1")
        if not queries:
            return []
        k_eff = min(int(k), len(self.doc_ids))
        token_ids = self.tokenizer.tokenize(list(queries), update_vocab=False, show_progress=False,
                                            return_as="ids")
        out: list[SearchResult | None] = [None] * len(queries)
        todo = [i for i, toks in enumerate(token_ids) if toks]
        for i, toks in enumerate(token_ids):
            if not toks:  # no known term: nothing matches
                out[i] = SearchResult(texts=[] if return_text else None)
        if todo and self.kernel_disabled_reason() is None:
            docs, scores = self._search_kernel([token_ids[i] for i in todo], k_eff)
        elif todo:
            batch = [token_ids[i] for i in todo]
            # large batches use all cores; small ones (and concurrent callers) stay serial
            parallel = (self.backend == "numba" and self.threads > 1 and len(batch) >= 32
                        and self._parallel.acquire(blocking=False))
            try:
                docs, scores = self.retriever.retrieve(
                    batch, k=k_eff, show_progress=False, return_as="tuple",
                    backend_selection=self.backend, n_threads=self.threads if parallel else 0)
            finally:
                if parallel:
                    self._parallel.release()
        if todo:
            for row, i in enumerate(todo):
                row_scores = scores[row]
                keep = row_scores > 0  # documents sharing no term with the query are not hits
                idx = docs[row][keep]
                result = SearchResult(ids=self._doc_ids_arr[idx].tolist(),
                                      scores=row_scores[keep].astype(float).tolist())
                if return_text:
                    texts, titles = self.texts, self.titles
                    result.texts = [texts[j] for j in idx.tolist()]
                    if titles is not None:
                        result.titles = [titles[j] for j in idx.tolist()]
                out[i] = result
        return out  # type: ignore[return-value]
