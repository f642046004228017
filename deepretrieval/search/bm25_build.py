"""Streaming, bounded-memory BM25 index build: tokenize in chunks, write each chunk's postings to
disk, merge them into one term-major (CSC) impact matrix with the statistics of the whole
collection.

The scores are bm25s's ``lucene`` BM25, bit for bit (same float32 impacts): ``idf = log(1 + (N -
df + 0.5) / (df + 0.5))`` rounded to float32, ``impact = float32(idf * tf / (tf + k1 * (1 - b + b
* dl / avgdl)))`` with the intermediate arithmetic in float64 exactly as bm25s's numpy code does
it, ``avgdl`` the mean token count per document. The analysis is bm25s's ``Tokenizer`` with the
PyStemmer English stemmer: lower-case, words ``(?u)\\b\\w\\w+\\b``, English stopwords dropped,
each word stemmed; a document without any remaining token counts as one empty-string token (as in
bm25s). ``tests/test_bm25_streaming_build.py`` checks all of this against bm25s itself.

Phases:

1. *Chunks* (``<out>.partial/chunks/NNNNN``): the documents are read once, in order; their ids,
   texts and titles are appended to on-disk string columns (:mod:`deepretrieval.core.docstore`);
   every chunk of texts is tokenized by a worker process (``workers`` of them: ASCII texts by a
   numba scan of their bytes, the others by the regex; postings counted by counting sorts, all
   in :func:`tokenize_chunk`), the main process
   gives the chunk's stems global term ids (first seen, first numbered) and writes the chunk's
   postings (term, document, tf) and document lengths atomically. A build that is interrupted
   resumes after its last complete chunk (the columns are cut back to it).
2. *Merge*: N, avgdl and df of the whole collection give every term's idf; the impact matrix is
   written term range by term range (each range's postings gathered from every chunk into a
   buffer of bounded size; impacts, term and block maxima by one numba pass). With ``shards`` >
   1 each shard (a contiguous range of documents) gets its own matrix with the global
   statistics, written by parallel processes, so that merged shard results equal one index's.

Memory is bounded by ``memory_mb`` (``DEEPRETRIEVAL_BM25_BUILD_MB``, default 1024): it sets the
chunk size (text bytes per chunk) and the merge buffer, not the corpus size. What does grow with
the corpus: the vocabulary (a dict of stems in the main process) and one int32 length per
document during the merge (84 MB at 21M documents).
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from deepretrieval.core import settings
from deepretrieval.core.docstore import StringColumn, StringColumnWriter, column_exists
from deepretrieval.core.io import atomic_dir, write_atomic

INDEX_TYPE = "bm25"
#: the on-disk format this module writes (format 1: bm25s's files, still read by BM25Index)
FORMAT_VERSION = 2
SPLITTER = r"(?u)\b\w\w+\b"
#: the same matches as SPLITTER (maximal runs of >= 2 word characters), found faster: without
#: the \b checks (a greedy run of \w that starts a match can only end at a word boundary, and a
#: match can only start where a run starts; tests/test_bm25_streaming_build.py checks it)
_SPLIT = re.compile(r"(?u)\w\w+").findall
#: between two documents' lower-cased texts when a batch is split at once: upper-case letters
#: cannot occur in lower-cased text, so this word marks the boundary and nothing else
_SEP_WORD = "ZZ"
_SEP = f" {_SEP_WORD} "
#: the files of a finished BM25 index (format 2) besides meta.json
STOPWORD_SETS = ("en",)
DEFAULT_MEMORY_MB = 1024
_BASE_MB = 300           # interpreter, numpy, the pool: what a build costs before any chunk
_WORKER_BYTES_PER_TEXT_BYTE = 12  # worker peak per byte of chunk text (measured: ~11 at 1M)
_MERGE_BYTES_PER_POSTING = 128    # merge buffer per posting (measured peak ~80: temporaries)


def stopword_list(stopwords: str | None) -> list[str]:
    """The stopwords of a named set (``en``: bm25s's English list) or none."""
    if stopwords is None:
        return []
    if stopwords in ("en", "english"):
        from bm25s.stopwords import STOPWORDS_EN  # only where text is tokenized

        return list(STOPWORDS_EN)
    raise ValueError(f"unknown stopword set {stopwords!r} (known: {list(STOPWORD_SETS)} or None)")


def english_stemmer():
    import Stemmer  # PyStemmer: only where text is tokenized (a GPU check never does)

    return Stemmer.Stemmer("english").stemWord


def doc_text(doc: dict[str, Any], title: str | None = None) -> str:
    """BEIR convention: title and text joined by a space (``title``: the doc's stripped title,
    when the caller has it already)."""
    if title is None:
        title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


# ---- worker side: a chunk of texts → postings ------------------------------------------------

_STEM_CACHE: dict[str, str] = {}
_STEMMER = None


def _stem_fn(stem: bool):
    global _STEMMER
    if not stem:
        return None
    if _STEMMER is None:
        _STEMMER = english_stemmer()
    return _STEMMER


@dataclass
class ChunkPostings:
    """One chunk's postings: ``stems[t]`` is local term ``t``; postings sorted by (term, doc)."""
    stems: list[str]
    terms: np.ndarray    # int32, local term of each posting
    docs: np.ndarray     # int32, chunk-local document
    tfs: np.ndarray      # int32
    lengths: np.ndarray  # int32 per document (bm25s's token count; 1 for an empty document)


class _Numbering(dict):
    """word → id, a new word numbered on first lookup (``__getitem__`` at C speed for the rest)."""

    def __missing__(self, word: str) -> int:
        value = self[word] = len(self)
        return value


_ASCII_KERNELS: list = []


def _ascii_kernels():
    """numba kernels of :func:`_ascii_words` (compiled once, cached on disk)."""
    if _ASCII_KERNELS:
        return _ASCII_KERNELS
    import numba

    # No array is reassigned inside the scan: numba then counts references on every pass of the
    # loop (measured 3x slower); the table grows between calls instead.
    @numba.njit(nogil=True, cache=True)
    def scan(buf, ends, i, d, tok_word, tok_doc, n_tok, slot_id, slot_hash, arena, w_off,
             w_hash, w_doc, n_words):  # pragma: no cover - jitted
        cap = len(slot_id)
        mask = np.uint64(cap - 1)
        while d < len(ends):
            end = ends[d]
            while i < end:
                c = buf[i]
                if not (97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c == 95):
                    i += 1
                    continue
                j = i
                h = np.uint64(14695981039346656037)  # FNV-1a of the lower-cased bytes
                while j < end:
                    c = buf[j]
                    if 65 <= c <= 90:
                        c += 32
                    elif not (97 <= c <= 122 or 48 <= c <= 57 or c == 95):
                        break
                    h = (h ^ np.uint64(c)) * np.uint64(1099511628211)
                    j += 1
                length = j - i
                if length < 2:
                    i = j
                    continue
                h ^= h >> np.uint64(33)  # finalized: FNV's low bits alone fill neighbouring slots
                h *= np.uint64(0xFF51AFD7ED558CCD)
                h ^= h >> np.uint64(33)
                s = np.int64(h & mask)
                while True:
                    w = slot_id[s]
                    if w < 0:
                        break
                    if slot_hash[s] == h and w_off[w + 1] - w_off[w] == length:
                        a = w_off[w]
                        same = True
                        for t in range(length):
                            y = buf[i + t]
                            if 65 <= y <= 90:
                                y += 32
                            if arena[a + t] != y:
                                same = False
                                break
                        if same:
                            break
                    s = (s + 1) & (cap - 1)
                if w < 0:  # a new word: its lower-cased bytes to the arena
                    if 2 * (n_words + 1) > cap:
                        return i, d, n_tok, n_words  # the table is half full: grow, then resume
                    w = n_words
                    a = w_off[w]
                    for t in range(length):
                        y = buf[i + t]
                        if 65 <= y <= 90:
                            y += 32
                        arena[a + t] = y
                    w_off[w + 1] = a + length
                    w_hash[w] = h
                    w_doc[w] = d
                    slot_id[s] = w
                    slot_hash[s] = h
                    n_words += 1
                tok_word[n_tok] = w
                tok_doc[n_tok] = d
                n_tok += 1
                i = j
            i = end
            d += 1
        return i, d, n_tok, n_words

    @numba.njit(nogil=True, cache=True)
    def rehash(w_hash, n_words, slot_id, slot_hash):  # pragma: no cover - jitted
        cap = len(slot_id)
        for w in range(n_words):
            s = np.int64(w_hash[w] & np.uint64(cap - 1))
            while slot_id[s] >= 0:
                s = (s + 1) & (cap - 1)
            slot_id[s] = w
            slot_hash[s] = w_hash[w]

    _ASCII_KERNELS.extend((scan, rehash))
    return _ASCII_KERNELS


def _ascii_words(buf: np.ndarray, ends: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """The words of ASCII texts as ``_SPLIT`` finds them in the lower-cased texts: ``buf`` holds
    the texts' bytes, text ``d`` ending at ``ends[d]``.

    One numba scan finds the maximal runs of ``[A-Za-z0-9_]`` of length >= 2 — for ASCII text
    exactly ``(?u)\\w\\w+`` — and numbers each distinct lower-cased word in order of first
    occurrence through an open-addressing table whose keys are compared byte for byte (a hash
    collision costs a compare, never a wrong id). Returns (word of each token, text of each
    token, the words, the text of each word's first occurrence)."""
    scan, rehash = _ascii_kernels()
    bound = len(buf) // 3 + len(ends) + 1  # >= 3 bytes per token but the last of a text
    # untouched pages of np.empty cost no memory: these grow in RSS with what is written
    tok_word = np.empty(bound, np.int32)
    tok_doc = np.empty(bound, np.int32)
    arena = np.empty(len(buf), np.uint8)
    w_off = np.zeros(bound + 1, np.int64)
    w_hash = np.empty(bound, np.uint64)
    w_doc = np.empty(bound, np.int32)
    cap = 1 << 14
    slot_id = np.full(cap, -1, np.int32)
    slot_hash = np.empty(cap, np.uint64)
    i = d = n_tok = n_words = 0
    while True:
        i, d, n_tok, n_words = scan(buf, ends, i, d, tok_word, tok_doc, n_tok, slot_id,
                                    slot_hash, arena, w_off, w_hash, w_doc, n_words)
        if d == len(ends):
            break
        cap *= 2
        slot_id = np.full(cap, -1, np.int32)
        slot_hash = np.empty(cap, np.uint64)
        rehash(w_hash, n_words, slot_id, slot_hash)
    text = arena[:w_off[n_words]].tobytes().decode("ascii")
    offs = w_off[:n_words + 1].tolist()
    return (tok_word[:n_tok], tok_doc[:n_tok],
            [text[offs[w]:offs[w + 1]] for w in range(n_words)], w_doc[:n_words])


def _regex_words(texts: list[str], rows: list[int], batch: int
                 ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """:func:`_ascii_words` for any texts (``texts[r]`` for ``r`` in ``rows``; documents are
    ``rows``' values): each batch lower-cased text by text, joined with a marker word and split
    with one regex call; words numbered by one dict in order of first occurrence."""
    numbering = _Numbering({_SEP_WORD: 0})
    tok_words, tok_docs, first_docs = [], [], []
    for s in range(0, len(rows), batch):
        part = np.asarray(rows[s:s + batch], dtype=np.int32)
        found = _SPLIT(_SEP.join([texts[r].lower() for r in part.tolist()]))
        before = len(numbering)
        ids = np.fromiter(map(numbering.__getitem__, found), dtype=np.int32, count=len(found))
        sep = ids == 0
        doc = part[np.cumsum(sep)]
        if len(numbering) > before:
            # new words are numbered at their first occurrence, so in increasing order there
            at = np.flatnonzero(ids >= before)
            vals = ids[at]
            firsts = np.flatnonzero(vals > np.maximum.accumulate(np.concatenate([[before - 1],
                                                                              vals[:-1]])))
            first_docs.append(doc[at[firsts]])
        keep = ~sep
        tok_words.append(ids[keep] - 1)
        tok_docs.append(doc[keep])
        del found, ids, sep, doc, keep
    words = list(numbering)[1:]
    first = np.concatenate(first_docs) if first_docs else np.zeros(0, np.int32)
    if len(first) != len(words):
        raise AssertionError("first occurrences do not match the words")
    return (np.concatenate(tok_words), np.concatenate(tok_docs), words, first)


def tokenize_chunk(texts: list[str], stopwords: frozenset[str] | list[str], stem: bool = True,
                   batch: int = 4096) -> ChunkPostings:
    """Tokenize ``texts`` as bm25s's Tokenizer does and count term frequencies per document.

    ASCII texts (``str.isascii``) go through one numba scan (:func:`_ascii_words`), the others
    through the regex (:func:`_regex_words`); their words are numbered in order of first
    occurrence (so stems, and the global term ids after them, are too, whatever the chunking and
    the mix of texts); the postings are counted by :func:`_postings_kernel`."""
    stopwords = frozenset(stopwords)
    stemmer = _stem_fn(stem)
    n = len(texts)
    plain: list[int] = []
    rest: list[int] = []
    for i, t in enumerate(texts):
        (plain if t.isascii() else rest).append(i)
    parts = []  # per path: word of each token, document of each token, words, first documents
    if plain:
        block = "".join([texts[i] for i in plain]).encode("ascii")
        ends = np.cumsum(np.fromiter((len(texts[i]) for i in plain), np.int64, len(plain)))
        tok_word, tok_doc, found, first = _ascii_words(np.frombuffer(block, np.uint8), ends)
        del block
        if len(plain) == n:  # the documents are the ASCII texts' numbers
            parts.append((tok_word, tok_doc, found, first))
        else:
            rows = np.asarray(plain, dtype=np.int32)
            parts.append((tok_word, rows[tok_doc], found, rows[first]))
        del tok_word, tok_doc
    if rest:
        parts.append(_regex_words(texts, rest, batch))
    if not parts:
        word_ids, doc_ids, words = np.zeros(0, np.int32), np.zeros(0, np.int32), []
    elif len(parts) == 1:
        word_ids, doc_ids, words, _ = parts[0]
    else:
        # one numbering in order of first occurrence (document, then position: a document is
        # in one part, whose numbering follows position), as one pass over the texts gives it
        (aw, ad, a_words, a_first), (rw, rd, r_words, r_first) = parts
        first = {w: (d, 0, i) for i, (w, d) in enumerate(zip(a_words, a_first.tolist()))}
        for j, (w, d) in enumerate(zip(r_words, r_first.tolist())):
            f = first.get(w)
            if f is None or d < f[0]:
                first[w] = (d, 1, j)
        words = sorted(first, key=first.__getitem__)
        final = {w: k for k, w in enumerate(words)}
        word_ids = np.concatenate([
            np.array([final[w] for w in a_words], dtype=np.int32)[aw],
            np.array([final[w] for w in r_words], dtype=np.int32)[rw]])
        doc_ids = np.concatenate([ad, rd])
        del first, final, aw, ad, rw, rd
    del parts
    # words → local stem ids (-1: stopword), stems numbered in the words' order
    stems: dict[str, int] = {}
    word_to_term = np.full(len(words), -1, dtype=np.int32)
    cache = _STEM_CACHE
    if len(cache) > 2_000_000:
        cache.clear()
    for i, w in enumerate(words):
        if w in stopwords:
            continue
        if stemmer is None:
            st = w
        else:
            st = cache.get(w)
            if st is None:
                st = cache[w] = stemmer(w)
        word_to_term[i] = stems.setdefault(st, len(stems))
    del words
    # bm25s: a document without tokens holds one "" token (the id "" gets if one is needed)
    empty = stems.get("", len(stems))
    terms, docs, tfs, lengths, n_empty = _postings_kernel()(
        word_ids, doc_ids, word_to_term, n, len(stems) + 1, empty)
    if n_empty:
        stems.setdefault("", empty)
    return ChunkPostings(stems=list(stems), terms=terms, docs=docs, tfs=tfs, lengths=lengths)


_POSTINGS_KERNEL: list = []


def _postings_kernel():
    """numba kernel: a chunk's postings from its tokens, in O(tokens) (counting sorts, no
    general sort). ``postings(word_ids, doc_ids, word_to_term, n_docs, n_terms, empty)`` →
    (term, document, tf) sorted by term then document, the token count of each document, and
    the number of documents that had no token (given one ``empty`` token each)."""
    if _POSTINGS_KERNEL:
        return _POSTINGS_KERNEL[0]
    import numba

    @numba.njit(nogil=True, cache=True)
    def postings(word_ids, doc_ids, word_to_term, n_docs, n_terms, empty):  # pragma: no cover
        lengths = np.zeros(n_docs, np.int32)
        for i in range(len(word_ids)):
            if word_to_term[word_ids[i]] >= 0:
                lengths[doc_ids[i]] += 1
        # the kept tokens' terms, in document order (one slot for an empty document's token)
        start = np.zeros(n_docs + 1, np.int64)
        for d in range(n_docs):
            start[d + 1] = start[d] + max(lengths[d], 1)
        by_doc = np.empty(start[n_docs], np.int32)
        fill = start[:n_docs].copy()
        for i in range(len(word_ids)):
            t = word_to_term[word_ids[i]]
            if t >= 0:
                d = doc_ids[i]
                by_doc[fill[d]] = t
                fill[d] += 1
        n_empty = 0
        for d in range(n_docs):
            if lengths[d] == 0:
                by_doc[start[d]] = empty
                lengths[d] = 1
                n_empty += 1
        # (term, document, tf) per document, in document order; then by term (stable)
        seen = np.full(n_terms, -1, np.int64)
        at = np.empty(n_terms, np.int64)
        per_term = np.zeros(n_terms + 1, np.int64)
        p_term = np.empty(len(by_doc), np.int32)
        p_doc = np.empty(len(by_doc), np.int32)
        p_tf = np.zeros(len(by_doc), np.int32)
        n_pairs = 0
        for d in range(n_docs):
            for k in range(start[d], start[d + 1]):
                t = by_doc[k]
                if seen[t] != d:
                    seen[t] = d
                    at[t] = n_pairs
                    p_term[n_pairs] = t
                    p_doc[n_pairs] = d
                    n_pairs += 1
                    per_term[t + 1] += 1
                p_tf[at[t]] += 1
        for t in range(n_terms):
            per_term[t + 1] += per_term[t]
        terms = np.empty(n_pairs, np.int32)
        docs = np.empty(n_pairs, np.int32)
        tfs = np.empty(n_pairs, np.int32)
        for j in range(n_pairs):
            t = p_term[j]
            q = per_term[t]
            per_term[t] = q + 1
            terms[q] = t
            docs[q] = p_doc[j]
            tfs[q] = p_tf[j]
        return terms, docs, tfs, lengths, n_empty

    _POSTINGS_KERNEL.append(postings)
    return postings


# ---- main side --------------------------------------------------------------------------------

def _id_hashes(ids: list[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(),
                                    "little") for i in ids], dtype=np.uint64)


class _Vocab:
    """Global term ids: the empty-document token first (as in bm25s), then stems numbered in the
    order the collection introduces them (the same for any chunking)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"": 0}

    def add(self, stems: list[str]) -> tuple[np.ndarray, list[str]]:
        """Global ids of ``stems`` and the stems that are new (in their new ids' order)."""
        ids = self.ids
        start = len(ids)
        out = np.array([ids.setdefault(s, len(ids)) for s in stems], dtype=np.int64)
        new = [s for s, g in zip(stems, out.tolist()) if g >= start]
        return out, new


def _save_chunk(path: Path, post: ChunkPostings, gid: np.ndarray, new_stems: list[str],
                doc_start: int, id_hashes: np.ndarray) -> dict[str, Any]:
    """Write one chunk (term-major by global id) atomically; returns its manifest."""
    # the postings are sorted by local term; order the local terms' runs by global id
    counts = np.bincount(post.terms, minlength=len(post.stems)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.argsort(gid, kind="stable")
    run_len = counts[order]
    run_start = starts[order]
    total = int(run_len.sum())
    out_start = np.concatenate([[0], np.cumsum(run_len)[:-1]])
    perm = np.repeat(run_start - out_start, run_len) + np.arange(total, dtype=np.int64)
    nonzero = run_len > 0
    manifest = {"doc_start": doc_start, "n_docs": int(len(post.lengths)),
                "postings": total, "tokens": int(post.lengths.astype(np.int64).sum())}
    with atomic_dir(path) as tmp:
        np.save(tmp / "terms.npy", gid[order][nonzero].astype(np.int32))
        np.save(tmp / "counts.npy", run_len[nonzero])
        np.save(tmp / "docs.npy", post.docs[perm])
        np.save(tmp / "tfs.npy", post.tfs[perm])
        np.save(tmp / "lengths.npy", post.lengths)
        np.save(tmp / "idhash.npy", id_hashes)
        (tmp / "new_stems.json").write_text(json.dumps(new_stems, ensure_ascii=False))
        (tmp / "chunk.json").write_text(json.dumps(manifest))
    return manifest


def _chunk_dirs(work: Path) -> list[Path]:
    folder = work / "chunks"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "chunk.json").exists())


@dataclass
class BuildPlan:
    memory_mb: int
    workers: int
    chunk_bytes: int
    merge_postings: int

    @classmethod
    def from_settings(cls, memory_mb: int | None = None, workers: int | None = None) -> "BuildPlan":
        memory_mb = int(memory_mb if memory_mb is not None else
                        settings.get_int("DEEPRETRIEVAL_BM25_BUILD_MB", DEFAULT_MEMORY_MB))
        if memory_mb < 400:
            raise ValueError(f"the BM25 build needs at least 400 MB (got {memory_mb})")
        workers = int(workers if workers is not None else
                      settings.get_int("DEEPRETRIEVAL_BM25_BUILD_WORKERS", os.cpu_count() or 1))
        if workers < 0:
            raise ValueError(f"build workers must be >= 0 (got {workers})")
        room = (memory_mb - _BASE_MB) * 2**20
        # per chunk in flight: the worker's peak, plus the chunk's texts held in the main process
        per_chunk = _WORKER_BYTES_PER_TEXT_BYTE * max(workers, 1) + (max(workers, 1) + 1) * 2
        return cls(memory_mb=memory_mb, workers=workers,
                   chunk_bytes=max(1 << 20, room // per_chunk),
                   merge_postings=max(1 << 20, room // _MERGE_BYTES_PER_POSTING))


def _progress(total: int | None, desc: str, unit: str, show: bool):
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, smoothing=0.05,
                dynamic_ncols=True, mininterval=1.0)


def build_chunks(docs: Iterable[dict[str, Any]], work: Path, *, stopwords: str | None,
                 plan: BuildPlan, total: int | None = None, show_progress: bool = True,
                 stop_after_chunks: int | None = None, source: str | None = None) -> int:
    """Phase 1 (resumable): columns and chunk postings under ``work``; returns the number of
    documents. ``stop_after_chunks`` ends the phase early (tests of the resume path)."""
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "build.json"
    state = {"stopwords": stopwords, "stem": "english", "splitter": SPLITTER, "source": source}
    done = _chunk_dirs(work)
    if state_file.exists() and json.loads(state_file.read_text()) != state:
        # another corpus or analysis: start over
        if show_progress:
            print(f"{work}: left by a build of another corpus or analysis; starting over",
                  file=sys.stderr, flush=True)
        shutil.rmtree(work / "chunks", ignore_errors=True)
        done = []
    write_atomic(state_file, json.dumps(state))
    vocab = _Vocab()
    n_done = 0
    for i, d in enumerate(done):
        m = json.loads((d / "chunk.json").read_text())
        if m["doc_start"] != n_done or d.name != f"{i:05d}":
            raise RuntimeError(f"{work}: chunk {d.name} does not continue the ones before it; "
                               f"delete {work} and build again")
        vocab.add(json.loads((d / "new_stems.json").read_text()))
        n_done += m["n_docs"]
    has_columns = all(column_exists(work, c) for c in ("ids", "texts", "titles"))
    if n_done and not has_columns:
        raise RuntimeError(f"{work}: chunks without their text columns; delete it and rebuild")
    writers = {c: StringColumnWriter(work, c, resume_at=n_done) for c in ("ids", "texts", "titles")}
    stops = sorted(stopword_list(stopwords))
    bar = _progress(total, "BM25 build", "doc", show_progress)
    bar.update(n_done)
    pool: ProcessPoolExecutor | None = None
    pending: list[tuple[Future | ChunkPostings, list[str], int]] = []
    chunk_no = len(done)
    n_seen = 0
    stopped = False

    def finish_one() -> None:
        nonlocal chunk_no
        fut, ids, start = pending.pop(0)
        post = fut.result() if isinstance(fut, Future) else fut
        gid, new = vocab.add(post.stems)
        for w in writers.values():   # the columns hold at least this chunk before it counts
            w.flush()
        _save_chunk(work / "chunks" / f"{chunk_no:05d}", post, gid, new, start, _id_hashes(ids))
        chunk_no += 1
        bar.update(len(post.lengths))

    try:
        texts: list[str] = []
        ids: list[str] = []
        titles: list[str] = []
        size = 0
        start = n_done

        held: list[tuple[list[str], list[str], int]] = []  # the first chunk, until a second

        def submit(final: bool = False) -> None:
            nonlocal pool, texts, ids, titles, size, start
            for name, column in (("ids", ids), ("texts", texts), ("titles", titles)):
                writers[name].extend(column)   # a chunk's strings at once
            job = (texts, ids, start)
            start += len(texts)
            texts, ids, titles, size = [], [], [], 0
            if plan.workers == 0 or (final and pool is None and not held):
                # no workers, or the whole collection is one chunk: tokenize here
                pending.append((tokenize_chunk(job[0], stops), job[1], job[2]))
            elif pool is None and not held and not final:
                held.append(job)  # a process pool only pays off from the second chunk on
                return
            else:
                if pool is None:
                    # fork: the workers need nothing but this module (and no __main__ guard)
                    pool = ProcessPoolExecutor(plan.workers,
                                               mp_context=multiprocessing.get_context("fork"))
                for t, i, st in held + ([job] if job[0] else []):
                    pending.append((pool.submit(tokenize_chunk, t, stops), i, st))
                held.clear()
            while len(pending) > max(plan.workers, 1) - (0 if plan.workers else 1):
                finish_one()

        for doc in docs:
            n_seen += 1
            if n_seen <= n_done:
                continue
            doc_id = str(doc["_id"])
            title = (doc.get("title") or "").strip()
            text = doc_text(doc, title)
            texts.append(text)
            ids.append(doc_id)
            titles.append(title)
            size += len(text) + 64
            if size >= plan.chunk_bytes:
                submit()
                if stop_after_chunks is not None and chunk_no + len(pending) + len(held) >= stop_after_chunks:
                    stopped = True
                    break
        if (texts or held) and not stopped:
            submit(final=True)
        while pending:
            finish_one()
    finally:
        bar.close()
        for w in writers.values():
            w.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if stopped:
        return -1
    n = sum(json.loads((d / "chunk.json").read_text())["n_docs"] for d in _chunk_dirs(work))
    if n == 0:
        raise ValueError("cannot build an index from an empty collection")
    return n


def _check_unique_ids(work: Path, chunks: list[Path]) -> None:
    hashes = np.concatenate([np.load(d / "idhash.npy") for d in chunks])
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    if not len(same):
        return
    ids = StringColumn(work, "ids")
    for j in same.tolist():
        a, b = int(order[j]), int(order[j + 1])
        if ids[a] == ids[b]:
            raise ValueError(f"document ids are not unique: {ids[a]!r} at documents {a} and {b}")


@dataclass
class Stats:
    num_docs: int
    avgdl: float
    df: np.ndarray       # int64 per term
    idf: np.ndarray      # float32 per term


def collection_stats(chunks: list[Path], vocab_size: int) -> tuple[Stats, np.ndarray]:
    """N, avgdl, df and idf of the whole collection, and every document's length."""
    df = np.zeros(vocab_size, dtype=np.int64)
    lengths = []
    for d in chunks:
        terms, counts = np.load(d / "terms.npy"), np.load(d / "counts.npy")
        df[terms] += counts
        lengths.append(np.load(d / "lengths.npy"))
    dl = np.concatenate(lengths)
    n = len(dl)
    # bm25s: np.array(lengths).mean() (exact: integer partial sums below 2**53), idf per term
    # with math.log in float64, stored as float32
    avgdl = np.float64(dl.astype(np.int64).sum()) / n
    idf = np.array([math.log(1 + (n - f + 0.5) / (f + 0.5)) for f in df.tolist()],
                   dtype=np.float32)
    return Stats(num_docs=n, avgdl=float(avgdl), df=df, idf=idf), dl


def impacts(tf: np.ndarray, dl: np.ndarray, idf: np.ndarray, k1: float, b: float,
            avgdl: float) -> np.ndarray:
    """float32 BM25 impacts, the same arithmetic as bm25s's lucene scoring (see the module doc)."""
    l_avg = np.float64(avgdl)
    tf32 = tf.astype(np.float32)
    tfc = tf32 / (k1 * ((1 - b) + b * dl.astype(np.int64) / l_avg) + tf32)
    return (idf * tfc).astype(np.float32)


_IMPACT_KERNEL: list = []


def _term_impacts():
    """numba kernel of the merge: :func:`impacts` of a term range's postings (the same float64
    operations in the same order, so the same float32 impacts; tested against :func:`impacts`),
    with each term's largest impact and the block maxima, in one pass."""
    if _IMPACT_KERNEL:
        return _IMPACT_KERNEL[0]
    import numba

    @numba.njit(nogil=True, cache=True)
    def term_impacts(tfs, docs, dl, idf, ptr, k1, b, l_avg, block, scores, term_max,
                     block_max):  # pragma: no cover - jitted
        nb = 0
        for t in range(len(ptr) - 1):
            w = np.float64(idf[t])
            best = np.float32(0.0)
            for p in range(ptr[t], ptr[t + 1]):
                tf = np.float64(np.float32(tfs[p]))
                s = np.float32(w * (tf / (k1 * ((1.0 - b) + b * np.float64(dl[docs[p]]) / l_avg)
                                          + tf)))
                scores[p] = s
                if p == ptr[t] or s > best:
                    best = s
                if (p - ptr[t]) % block == 0:
                    block_max[nb] = s
                    nb += 1
                elif s > block_max[nb - 1]:
                    block_max[nb - 1] = s
            term_max[t] = best
        return nb

    _IMPACT_KERNEL.append(term_impacts)
    return term_impacts


def _npy_writer(path: Path, dtype, n: int):
    f = open(path, "wb")
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": (int(n),)})
    return f


BLOCK = 128  # postings per block of the block-max table


def write_matrix(chunks: list[Path], out: Path, stats: Stats, dl: np.ndarray, doc_lo: int,
                 doc_hi: int, k1: float, b: float, merge_postings: int) -> dict[str, Any]:
    """The impact matrix of documents ``[doc_lo, doc_hi)`` (indices relative to ``doc_lo``):
    ``data.npy`` (float32), ``indices.npy`` (int32), ``indptr.npy`` (int64), ``term_max.npy``
    (float32 per term) and the block maxima (``block_max.npy`` per :data:`BLOCK` postings,
    ``block_ptr.npy`` per term)."""
    vocab = len(stats.df)
    metas = [json.loads((d / "chunk.json").read_text()) for d in chunks]
    use = [(d, m) for d, m in zip(chunks, metas)
           if m["doc_start"] < doc_hi and m["doc_start"] + m["n_docs"] > doc_lo]
    # postings per term in this document range
    df = np.zeros(vocab, dtype=np.int64)
    for d, m in use:
        terms, counts = np.load(d / "terms.npy"), np.load(d / "counts.npy")
        if m["doc_start"] >= doc_lo and m["doc_start"] + m["n_docs"] <= doc_hi:
            df[terms] += counts
        else:
            docs = np.load(d / "docs.npy") + m["doc_start"]
            inside = (docs >= doc_lo) & (docs < doc_hi)
            np.add.at(df, np.repeat(terms, counts)[inside], 1)
    indptr = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    total = int(indptr[-1])
    nblocks = (df + BLOCK - 1) // BLOCK
    block_ptr = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(nblocks, out=block_ptr[1:])
    term_max = np.zeros(vocab, dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    fdata = _npy_writer(out / "data.npy", np.float32, total)
    findices = _npy_writer(out / "indices.npy", np.int32, total)
    fblock = _npy_writer(out / "block_max.npy", np.float32, int(block_ptr[-1]))
    try:
        t0 = 0
        while t0 < vocab:
            # the next term range whose postings fit the buffer (at least one term)
            t1 = int(np.searchsorted(indptr, indptr[t0] + merge_postings, side="right")) - 1
            t1 = min(max(t1, t0 + 1), vocab)
            base = int(indptr[t0])
            n = int(indptr[t1]) - base
            buf_docs = np.empty(n, dtype=np.int32)
            buf_tf = np.empty(n, dtype=np.int32)
            fill = indptr[t0:t1] - base
            for d, m in use:
                terms = np.load(d / "terms.npy")
                i0, i1 = np.searchsorted(terms, [t0, t1])
                if i0 == i1:
                    continue
                counts = np.load(d / "counts.npy")
                cum = np.concatenate([[0], np.cumsum(counts)])
                a, z = int(cum[i0]), int(cum[i1])
                docs = np.add(np.load(d / "docs.npy", mmap_mode="r")[a:z], m["doc_start"],
                              dtype=np.int32)
                tfs = np.load(d / "tfs.npy", mmap_mode="r")[a:z]
                tt = terms[i0:i1].astype(np.int64) - t0
                cc = counts[i0:i1]
                if not (m["doc_start"] >= doc_lo and m["doc_start"] + m["n_docs"] <= doc_hi):
                    inside = (docs >= doc_lo) & (docs < doc_hi)
                    run = np.repeat(np.arange(len(tt)), cc)[inside]
                    cc = np.bincount(run, minlength=len(tt)).astype(np.int64)
                    docs, tfs = docs[inside], tfs[inside]
                    nz = cc > 0
                    tt, cc = tt[nz], cc[nz]
                if not len(tt):
                    continue
                starts = fill[tt]
                rel = np.concatenate([[0], np.cumsum(cc)[:-1]])
                dest = np.repeat(starts - rel, cc) + np.arange(int(cc.sum()), dtype=np.int64)
                buf_docs[dest] = docs
                buf_tf[dest] = tfs
                fill[tt] += cc
            local = indptr[t0:t1 + 1] - base
            scores = np.empty(n, dtype=np.float32)
            bmax = np.empty(int(nblocks[t0:t1].sum()), dtype=np.float32)
            _term_impacts()(buf_tf, buf_docs, dl, stats.idf[t0:t1], local, float(k1), float(b),
                            stats.avgdl, BLOCK, scores, term_max[t0:t1], bmax)
            del buf_tf
            bmax.tofile(fblock)  # the arrays' bytes as they are (no copies)
            scores.tofile(fdata)
            if doc_lo:
                buf_docs -= doc_lo
            buf_docs.tofile(findices)
            del scores, buf_docs
            t0 = t1
    finally:
        fdata.close()
        findices.close()
        fblock.close()
    np.save(out / "indptr.npy", indptr)
    np.save(out / "block_ptr.npy", block_ptr)
    np.save(out / "term_max.npy", term_max)
    return {"postings": total, "num_docs": doc_hi - doc_lo}


def _copy_column_range(src: Path, name: str, dst: Path, lo: int, hi: int) -> None:
    """Documents ``[lo, hi)`` of column ``name`` in ``src`` as a new column in ``dst``."""
    offsets = np.fromfile(src / f"{name}.idx", dtype="<u8")
    part = offsets[lo:hi + 1]
    (part - part[0]).astype("<u8").tofile(dst / f"{name}.idx")
    with open(src / f"{name}.bin", "rb") as fin, open(dst / f"{name}.bin", "wb") as fout:
        fin.seek(int(part[0]))
        left = int(part[-1] - part[0])
        while left:
            data = fin.read(min(left, 16 << 20))
            if not data:
                raise OSError(f"{src / name}.bin is shorter than its offsets")
            fout.write(data)
            left -= len(data)


def _has_titles(work: Path) -> bool:
    offsets = np.fromfile(work / "titles.idx", dtype="<u8")
    return bool(offsets[-1] > 0)


def _write_shard(args: tuple) -> str:
    (work, out, chunk_names, stats_file, lo, hi, k1, b, merge_postings, meta, move_columns) = args
    work, out = Path(work), Path(out)
    chunks = [work / "chunks" / c for c in chunk_names]
    with np.load(stats_file) as z:
        stats = Stats(num_docs=int(z["n"]), avgdl=float(z["avgdl"]), df=z["df"], idf=z["idf"])
        dl = z["dl"]
    with atomic_dir(out) as tmp:
        info = write_matrix(chunks, tmp, stats, dl, lo, hi, k1, b, merge_postings)
        for c in ("ids", "texts", "titles"):
            if c == "titles" and not meta["has_titles"]:
                continue
            if move_columns:  # a link: the work folder keeps its copy until the build is done
                for ext in ("bin", "idx"):
                    os.link(work / f"{c}.{ext}", tmp / f"{c}.{ext}")
            else:
                _copy_column_range(work, c, tmp, lo, hi)
        (tmp / "vocab.json").write_text(json.dumps(meta["vocab"], ensure_ascii=False))
        shard_meta = {k: v for k, v in meta.items() if k not in ("vocab", "has_titles")}
        shard_meta.update(num_docs=hi - lo, postings=info["postings"], doc_offset=lo,
                          titles=meta["has_titles"])
        (tmp / "meta.json").write_text(json.dumps(shard_meta, indent=2))
    return str(out)


def build_index(docs: Iterable[dict[str, Any]], out: str | os.PathLike, *, name: str,
                k1: float = 0.9, b: float = 0.4, stopwords: str | None = "en",
                shards: int = 1, memory_mb: int | None = None, workers: int | None = None,
                total: int | None = None, show_progress: bool = True,
                chunk_bytes: int | None = None, merge_postings: int | None = None,
                stop_after_chunks: int | None = None, source: str | None = None) -> Path | None:
    """Build a BM25 index directory (format 2) at ``out`` from BEIR-style document dicts
    (``_id``, ``title``, ``text``), resumably (work folder ``<out>.partial``). With ``shards`` >
    1, ``out`` is a sharded index (``meta.json`` type ``sharded``) whose shards use the global
    statistics. ``source`` names the corpus (e.g. its path, size and mtime): a work folder left
    by a build of another source is started over instead of resumed. ``total`` (the number of documents, when known) gives the progress bar its ETA.
    ``chunk_bytes`` and ``merge_postings`` override the chunk size and the merge buffer the
    memory budget gives (tests). Returns ``out``
    (None when ``stop_after_chunks`` stopped it early, as an interrupted build would)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1 (got {shards})")
    if not (k1 >= 0 and 0 <= b <= 1):
        raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1 (got k1={k1}, b={b})")
    stopword_list(stopwords)  # a clear error before any work
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    plan = BuildPlan.from_settings(memory_mb, workers)
    if chunk_bytes is not None:
        plan.chunk_bytes = int(chunk_bytes)
    if merge_postings is not None:
        plan.merge_postings = int(merge_postings)
    t_start = time.perf_counter()
    n = build_chunks(docs, work, stopwords=stopwords, plan=plan, total=total,
                     show_progress=show_progress, stop_after_chunks=stop_after_chunks,
                     source=source)
    if n < 0:
        return None
    chunks = _chunk_dirs(work)
    _check_unique_ids(work, chunks)
    vocab: list[str] = [""]
    for d in chunks:
        vocab.extend(json.loads((d / "new_stems.json").read_text()))
    stats, dl = collection_stats(chunks, len(vocab))
    stats_file = work / "stats.npz"
    np.savez(stats_file, n=stats.num_docs, avgdl=stats.avgdl, df=stats.df, idf=stats.idf, dl=dl)
    params = {"k1": k1, "b": b, "method": "lucene", "stopwords": stopwords, "stemmer": "english",
              "splitter": SPLITTER}
    meta = {"type": INDEX_TYPE, "format": FORMAT_VERSION, "name": name, "params": params,
            "collection_docs": n, "avgdl": stats.avgdl, "vocab_size": len(vocab),
            "vocab": vocab, "has_titles": _has_titles(work)}
    # shard boundaries: equal numbers of documents
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    if shards > 1 and any(hi <= lo for lo, hi in zip(bounds, bounds[1:])):
        raise ValueError(f"{shards} shards for {n} documents: some shard would be empty")
    names = [c.name for c in chunks]
    per_shard_mb = plan.merge_postings // max(1, min(shards, max(plan.workers, 1)))
    jobs = [(str(work), str(work / "shards" / f"shard-{i:03d}" if shards > 1 else work / "index"),
             names, str(stats_file), bounds[i], bounds[i + 1], k1, b, per_shard_mb, meta,
             shards == 1) for i in range(shards)]
    todo = [j for j in jobs if not (Path(j[1]) / "meta.json").exists()]
    if shards > 1 and plan.workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(plan.workers, len(todo)),
                                 mp_context=multiprocessing.get_context("forkserver")) as pool:
            list(pool.map(_write_shard, todo))
    else:
        for j in todo:
            _write_shard(j)
    with atomic_dir(out) as tmp:
        if shards == 1:
            for item in (work / "index").iterdir():
                os.replace(item, tmp / item.name)
        else:
            dirs = []
            for i, j in enumerate(jobs):
                os.replace(j[1], tmp / f"shard-{i:03d}")
                dirs.append(f"shard-{i:03d}")
            (tmp / "meta.json").write_text(json.dumps(
                {"type": "sharded", "name": name, "shards": dirs, "num_docs": n,
                 "bm25_params": params}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    if show_progress:
        print(f"BM25 index: {n:,} documents, {len(vocab):,} terms, {shards} shard(s), "
              f"{time.perf_counter() - t_start:.1f}s", file=sys.stderr, flush=True)
    return out


def count_lines(path: str | os.PathLike) -> int | None:
    """Lines of an uncompressed file (cheap: counts newlines in binary blocks); None for .gz."""
    path = Path(path)
    if path.suffix == ".gz":
        return None
    n = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(16 << 20)
            if not block:
                break
            n += block.count(b"\n")
    return n

