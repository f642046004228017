"""The numba kernels of :mod:`deepretrieval.search.bm25_kernels`, at module level (imported on a
process's first search: it imports numba).

Module level so that numba's disk cache holds them: a jitted function calling jitted closures (how
these were written before) cannot be cached and was compiled again in every process (~1.5 s at a
process's first search). All of them live in this one file on purpose: numba invalidates a cached
function when its own file changes, not when a function it calls in another file does.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, inline="always")
def _worse(s1, d1, s2, d2):  # pragma: no cover - jitted
    # is (s1, d1) ranked below (s2, d2)?
    return s1 < s2 or (s1 == s2 and d1 > d2)

@numba.njit(nogil=True, cache=True)
def _sift_down(hs, hd, size, i):  # pragma: no cover - jitted
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        w = left
        r = left + 1
        if r < size and _worse(hs[r], hd[r], hs[left], hd[left]):
            w = r
        if _worse(hs[w], hd[w], hs[i], hd[i]):
            hs[w], hs[i] = hs[i], hs[w]
            hd[w], hd[i] = hd[i], hd[w]
            i = w
        else:
            return

@numba.njit(nogil=True, cache=True)
def _sift_up(hs, hd, i):  # pragma: no cover - jitted
    while i > 0:
        p = (i - 1) // 2
        if _worse(hs[i], hd[i], hs[p], hd[p]):
            hs[i], hs[p] = hs[p], hs[i]
            hd[i], hd[p] = hd[p], hd[i]
            i = p
        else:
            return

@numba.njit(nogil=True, cache=True)
def _emit(hs, hd, size, out_docs, out_scores, q):  # pragma: no cover - jitted
    # the kept hits, best first: score descending, then document ascending
    sel_s = hs[:size].copy()
    sel_d = hd[:size].copy()
    by_doc = np.argsort(sel_d)
    sel_s, sel_d = sel_s[by_doc], sel_d[by_doc]
    o = np.argsort(-sel_s, kind="mergesort")
    for i in range(size):
        out_docs[q, i] = sel_d[o[i]]
        out_scores[q, i] = sel_s[o[i]]


@numba.njit(nogil=True, cache=True)
def exhaustive(flat, ptr, k, data, indices, indptr, acc, touched):  # pragma: no cover
    # acc: float32 zeros, one per document (left all zero again on return); touched: int32
    # scratch of the same length — both reused across calls (allocating and zeroing them
    # per call costs more than a small query at millions of documents)
    nq = len(ptr) - 1
    out_docs = np.full((nq, k), -1, dtype=np.int64)
    out_scores = np.zeros((nq, k), dtype=np.float32)
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    for q in range(nq):
        lo, hi = ptr[q], ptr[q + 1]
        if hi == lo:
            continue
        # the first term's documents are all new (impacts are > 0, so a zero accumulator
        # means "not touched yet"): no check
        t = flat[lo]
        n = 0
        for j in range(indptr[t], indptr[t + 1]):
            d = indices[j]
            touched[n] = d
            n += 1
            acc[d] = data[j]
        for t in flat[lo + 1:hi]:
            for j in range(indptr[t], indptr[t + 1]):
                d = indices[j]
                if acc[d] == 0.0:
                    touched[n] = d
                    n += 1
                acc[d] += data[j]
        # one pass over the touched documents: a bounded heap of the best k (its top, the
        # worst kept hit, is the bar a document must pass), and the accumulator reset
        size = 0
        for i in range(n):
            d = touched[i]
            s = acc[d]
            acc[d] = 0.0
            if size < k:
                hs[size] = s
                hd[size] = d
                _sift_up(hs, hd, size)
                size += 1
            elif _worse(hs[0], hd[0], s, d):
                hs[0] = s
                hd[0] = d
                _sift_down(hs, hd, size, 0)
        _emit(hs, hd, size, out_docs, out_scores, q)
    return out_docs, out_scores


@numba.njit(nogil=True, cache=True)
def _seek(indices, pos, end, d):  # pragma: no cover - jitted
    # first position in [pos, end) with indices >= d (galloping, then binary search)
    if pos >= end or indices[pos] >= d:
        return pos
    step = 1
    lo = pos
    hi = pos + 1
    while hi < end and indices[hi] < d:
        lo = hi
        step *= 2
        hi = lo + step
    if hi > end:
        hi = end
    # indices[lo] < d; answer in (lo, hi]
    lo += 1
    while lo < hi:
        mid = (lo + hi) // 2
        if indices[mid] < d:
            lo = mid + 1
        else:
            hi = mid
    return lo

@numba.njit(nogil=True, cache=True)
def maxscore(flat, ptr, k, data, indices, indptr, term_max, block_max,
                 block_ptr, block):  # pragma: no cover - jitted
    nq = len(ptr) - 1
    out_docs = np.full((nq, k), -1, dtype=np.int64)
    out_scores = np.zeros((nq, k), dtype=np.float32)
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    for q in range(nq):
        qt = flat[ptr[q]:ptr[q + 1]]
        m = len(qt)
        if m == 0:
            continue
        # unique terms, their multiplicity, and each query position's unique slot
        uniq = np.unique(qt)
        nu = len(uniq)
        slot_of = np.empty(m, dtype=np.int64)
        mult = np.zeros(nu, dtype=np.float64)
        for i in range(m):
            s = np.searchsorted(uniq, qt[i])
            slot_of[i] = s
            mult[s] += 1.0
        # order unique terms by their bound (ascending): non-essential terms come first
        ub = np.empty(nu, dtype=np.float64)
        for s in range(nu):
            ub[s] = mult[s] * term_max[uniq[s]]
        order = np.argsort(ub, kind="mergesort")
        terms = uniq[order]
        tmult = mult[order]
        tub = ub[order]
        slot_pos = np.empty(nu, dtype=np.int64)  # sorted position of each unique slot
        for i in range(nu):
            slot_pos[order[i]] = i
        cum = np.empty(nu, dtype=np.float64)
        acc = 0.0
        for i in range(nu):
            acc += tub[i]
            cum[i] = acc
        # float32 sums of m terms can exceed the exact sum by ~m ulp-halves: widen bounds
        widen = 1.0 + (m + 2) * 1.2e-7
        cur = np.empty(nu, dtype=np.int64)
        end = np.empty(nu, dtype=np.int64)
        for i in range(nu):
            cur[i] = indptr[terms[i]]
            end[i] = indptr[terms[i] + 1]
        imp = np.zeros(nu, dtype=np.float32)
        size = 0
        theta = -1.0
        first_ess = 0  # terms [first_ess, nu) are essential
        while True:
            # next candidate: the smallest current document among essential terms
            d = -1
            for i in range(first_ess, nu):
                if cur[i] < end[i]:
                    di = indices[cur[i]]
                    if d < 0 or di < d:
                        d = di
            if d < 0:
                break
            partial = 0.0
            for i in range(first_ess, nu):
                imp[i] = 0.0
                if cur[i] < end[i] and indices[cur[i]] == d:
                    v = data[cur[i]]
                    imp[i] = v
                    partial += tmult[i] * v
                    cur[i] += 1
            # non-essential terms, largest bound first, while the document can still enter
            alive = True
            for i in range(first_ess - 1, -1, -1):
                imp[i] = 0.0
            for i in range(first_ess - 1, -1, -1):
                if size == k and (partial + cum[i]) * widen <= theta:
                    alive = False
                    break
                p = _seek(indices, cur[i], end[i], d)
                cur[i] = p
                if p < end[i] and indices[p] == d:
                    v = data[p]
                    imp[i] = v
                    partial += tmult[i] * v
            if not alive:
                continue
            # the exact score: float32 sum in the query's term order
            score = np.float32(0.0)
            for j in range(m):
                score += imp[slot_pos[slot_of[j]]]
            if size < k:
                hs[size] = score
                hd[size] = d
                _sift_up(hs, hd, size)
                size += 1
            elif score > hs[0]:  # equal scores: the earlier document stays
                hs[0] = score
                hd[0] = d
                _sift_down(hs, hd, size, 0)
            else:
                continue
            if size == k:
                theta = hs[0]
                while first_ess < nu and cum[first_ess] * widen <= theta:
                    first_ess += 1
                if first_ess >= nu:
                    break
        _emit(hs, hd, size, out_docs, out_scores, q)
    return out_docs, out_scores
