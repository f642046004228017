"""numba top-k kernels over a term-major (CSC) BM25 impact matrix.

Both kernels return, per query, the top ``k`` documents by **score descending, then document
index ascending** (ties in document order everywhere, including which of several documents tied
at the k-th score are kept), with the score of a document the float32 sum of its impacts **in the
query's term order** (a repeated query term counts each time). So the two kernels return
identical ids and scores (``tests/test_bm25_streaming_build.py``).

* :func:`exhaustive_kernel`: term at a time; every posting of every query term is added into a
  dense accumulator, then one pass over the touched documents keeps the best k in a bounded heap
  (and resets the accumulator). Cost: all postings.
  Best for large k (the reward's k=1000-3000) and small collections.
* :func:`maxscore_kernel`: document at a time with MaxScore (Turtle & Flood 1995): terms sorted
  by their largest impact; the terms whose bounds together cannot lift a document above the
  current k-th score are *non-essential* — only documents in the essential terms' lists are
  candidates, and a candidate stops being scored as soon as its partial score plus the remaining
  terms' largest impacts cannot beat the k-th score. (Block maxima per 128 postings are stored
  with the index; bounding candidates by them instead measured no faster on the generated 1M
  corpus, where the median block maximum is 0.88 of its term's, so the kernel does not use
  them.) Bounds are computed in float64 and widened by the float32 rounding a sum of the query's
  length can make, so pruning never drops a document that the exhaustive kernel would return
  (rank-safe). Best for small k
  on large collections.

The jitted code is in :mod:`deepretrieval.search._bm25_jit` (module level: numba caches it on disk;
jitted closures calling jitted closures, as these were, were compiled again in every process, ~1.5
s at its first search). These functions import it on first use, so importing this module does not
import numba.
"""
from __future__ import annotations


def exhaustive_kernel():
    """The exhaustive kernel (numba; compiled or loaded from numba's cache on first use)."""
    from deepretrieval.search._bm25_jit import exhaustive
    return exhaustive


def maxscore_kernel():
    """The MaxScore kernel (numba; compiled or loaded from numba's cache on first use)."""
    from deepretrieval.search._bm25_jit import maxscore
    return maxscore
