"""BM25 over bm25s (sparse matrices; numba scoring when installed, numpy otherwise)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .base import SearchResult

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


def doc_text(doc: dict[str, Any]) -> str:
    """BEIR convention: title and text joined by a space."""
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip()


class BM25Index:
    """A BM25 index over a document collection. Build with :meth:`build`, persist with
    :meth:`save`, reopen with :meth:`load` (memory-mapped)."""

    name: str

    def __init__(self, retriever, tokenizer, doc_ids: list[str], name: str = "bm25",
                 texts: list[str] | None = None, path: Path | None = None,
                 params: dict[str, Any] | None = None):
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.doc_ids = doc_ids
        self._doc_ids_arr = np.asarray(doc_ids, dtype=object)
        self.name = name
        self._texts = texts
        self.path = path
        self.params = params or {}
        self.backend = "numba" if _numba_available() else "numpy"
        # numba's parallel scorer changes a process-wide thread count: one parallel call at a time
        self._parallel = threading.Lock()
        self.threads = int(os.environ.get("DEEPRETRIEVAL_BM25_THREADS", os.cpu_count() or 1))

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Iterable[dict[str, Any]], name: str = "bm25", *, k1: float = 0.9,
              b: float = 0.4, method: str = "lucene", stopwords: str | None = "en",
              show_progress: bool = True) -> "BM25Index":
        """Index BEIR-style docs (``_id``, ``title``, ``text``). Defaults k1=0.9, b=0.4 are the
        Anserini/pyserini BM25 defaults used for published BEIR baselines."""
        import bm25s
        from bm25s.tokenization import Tokenizer

        doc_ids: list[str] = []
        texts: list[str] = []
        for doc in docs:
            doc_ids.append(str(doc["_id"]))
            texts.append(doc_text(doc))
        if not doc_ids:
            raise ValueError("cannot build a BM25 index from an empty collection")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("document ids are not unique")
        tokenizer = Tokenizer(stemmer=_stemmer(), stopwords=stopwords, splitter=r"(?u)\b\w\w+\b")
        tokens = tokenizer.tokenize(texts, show_progress=show_progress, return_as="tuple")
        retriever = bm25s.BM25(k1=k1, b=b, method=method)
        retriever.index(tokens, show_progress=show_progress)
        params = {"k1": k1, "b": b, "method": method, "stopwords": stopwords}
        return cls(retriever, tokenizer, doc_ids, name=name, texts=texts, params=params)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically: into a temp dir beside ``path``, then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.retriever.save(tmp / "bm25", show_progress=False)
            self.tokenizer.save_vocab(tmp / "tokenizer")
            self.tokenizer.save_stopwords(tmp / "tokenizer")
            (tmp / "doc_ids.json").write_text(json.dumps(self.doc_ids))
            with gzip.open(tmp / "texts.jsonl.gz", "wt", encoding="utf-8") as fh:
                for text in self.texts:
                    fh.write(json.dumps(text) + "\n")
            meta = {"type": INDEX_TYPE, "format": FORMAT_VERSION, "name": self.name,
                    "num_docs": len(self.doc_ids), "params": self.params,
                    "vocab_size": len(self.tokenizer.get_vocab_dict())}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            if self.path is None:
                raise RuntimeError("index has no stored texts")
            with gzip.open(self.path / "texts.jsonl.gz", "rt", encoding="utf-8") as fh:
                self._texts = [json.loads(line) for line in fh]
        return self._texts

    def __len__(self) -> int:
        return len(self.doc_ids)

    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "num_docs": len(self.doc_ids),
                "scoring": self.backend, "params": self.params,
                "path": str(self.path) if self.path else None}

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
        if todo:
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
            for row, i in enumerate(todo):
                row_scores = scores[row]
                keep = row_scores > 0  # documents sharing no term with the query are not hits
                idx = docs[row][keep]
                result = SearchResult(ids=self._doc_ids_arr[idx].tolist(),
                                      scores=row_scores[keep].astype(float).tolist())
                if return_text:
                    texts = self.texts
                    result.texts = [texts[j] for j in idx.tolist()]
                out[i] = result
        return out  # type: ignore[return-value]
