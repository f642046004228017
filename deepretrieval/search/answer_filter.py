"""The evidence reward's first answer-bearing rank, next to a BM25 index (search option
``answers``), without reading most passages.

DPR's rule (:func:`deepretrieval.core.dpr_match.has_answer`) needs the passage's text decoded,
NFD-normalised and tokenised; at the reward's depth (3,000 passages per query) that costs ~10 ms
per query when no passage has the answer. Here a numba kernel rules passages out first with two
necessary conditions, and only the passages it cannot rule out are checked with the rule itself,
in rank order, until one has an answer — so the rank is the rule's, exactly.

An answer can only be in a passage when each of its tokens is. For a passage without the
characters of :func:`~deepretrieval.core.dpr_match.ascii_token_hazards` (LOW LINE, KELVIN SIGN),
an answer token ``t`` made of ASCII letters and digits can only be there when

* ``t`` has two or more characters and is not a stopword: the passage is in the postings of the
  index term of ``t`` (the index's analyzer finds the word ``t`` in such a passage; see
  ``ascii_token_hazards``). A term the vocabulary lacks: no such passage has the answer;
* otherwise (``"2"``, ``"a"``, ``"the"``): the passage's UTF-8 bytes hold ``t``, ASCII
  case-insensitively, between two bytes that are not ASCII letters or digits.

An answer token with other characters (``"beyoncé"``, NFD ``beyonce`` + U+0301) can only be there
when the passage's bytes hold each of its :func:`~deepretrieval.core.dpr_match.ascii_pieces`
(``"beyonc"``), ASCII case-insensitively. Tokens without such pieces (``"β"``, punctuation) rule
nothing out. Whether a passage holds a hazard
is found from its bytes the first time it is a hit and kept (one byte per passage); a passage
that holds one is always checked with the rule.

Used only for format-2 indexes (texts in a :class:`~deepretrieval.core.docstore.StringColumn`,
analysed with the splitter these conditions assume); other indexes check every passage with the
rule.

Two ways to get the rank (:class:`AnswerFilter`):

* :meth:`~AnswerFilter.first_rank` walks a search's k hits in rank order (the top-k kernel
  ordered all of them);
* :meth:`~AnswerFilter.candidates` then :meth:`~AnswerFilter.first_of` (what the index uses when it runs the exhaustive kernel and keeps only
  a few hits, the evidence reward's call) never orders the k hits: when every answer the vocabulary
  allows has an index term (:attr:`AnswerPlan.by_postings`), only the passages in the postings of
  all of one answer's terms, and the hazard passages (:meth:`~AnswerFilter.hazard_docs`, found
  once), can hold an answer. The kernel scores the query exhaustively, ranks those candidates by
  counting the documents scored above each (same scores, ties in document order), keeps the top
  hits in a small sorted buffer, and the candidates are then checked in rank order as above. On
  SciFact at k=3000 the exhaustive kernel spends ~270 µs per claim, ~24 µs at k=10: ordering the
  k hits was most of it; the evidence reward in process went from 1.2–1.3 to 0.35–0.45 CPU-s per
  2,560 searches when no passage has the answer (``benchmarks/README.md``).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from deepretrieval.core import dpr_match
from deepretrieval.core.docstore import StringColumn

_KERNELS: dict[str, Callable] = {}

# a passage's state in the cache: not yet looked at, no hazard, holds a hazard
_UNKNOWN, _CLEAN, _HAZARD = 0, 1, 2


def _kernel() -> Callable:
    if "first" in _KERNELS:
        return _KERNELS["first"]
    import numba

    # one function, calling no other jitted function: numba's disk cache then finds it again in
    # the next process (a jitted closure calling jitted closures compiles anew in every process)
    @numba.njit(nogil=True, cache=True)
    def first_candidate(start, docs, state, blob, offsets, hazards, indptr, indices,
                        ans_term_ptr, terms, ans_tok_ptr, tok_ptr, tok_bytes, tok_bounded,
                        impossible):  # pragma: no cover - compiled
        # the first position >= start in docs whose passage the conditions cannot rule out
        # (-1: none). Answer j: index terms terms[ans_term_ptr[j]:ans_term_ptr[j + 1]] (rarest
        # first), byte strings ans_tok_ptr[j]..ans_tok_ptr[j + 1] (each tok_bytes[tok_ptr[t]:
        # tok_ptr[t + 1]], bounded or not), impossible[j]: a term the vocabulary lacks.
        # hazards: the hazard characters' UTF-8 encodings, one per row, zero-padded to 4 bytes
        n_ans = len(impossible)
        for pos in range(start, len(docs)):
            d = docs[pos]
            if d < 0:
                return -1
            a = offsets[d]
            b = offsets[d + 1]
            s = state[d]
            if s == 0:  # first time a hit: does the passage hold a hazard?
                s = 1
                for i in range(a, b):
                    c = blob[i]
                    for h in range(hazards.shape[0]):
                        if c != hazards[h, 0]:
                            continue
                        n = 1
                        while n < 4 and hazards[h, n] != 0:
                            n += 1
                        if i + n <= b:
                            same = True
                            for m in range(1, n):
                                if blob[i + m] != hazards[h, m]:
                                    same = False
                                    break
                            if same:
                                s = 2
                    if s == 2:
                        break
                state[d] = s
            if s == 2:
                return pos
            for j in range(n_ans):
                if impossible[j]:
                    continue
                ok = True
                for x in range(ans_term_ptr[j], ans_term_ptr[j + 1]):
                    # binary search in the term's postings (in document order)
                    t = terms[x]
                    lo = indptr[t]
                    hi = indptr[t + 1]
                    found = False
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        v = indices[mid]
                        if v < d:
                            lo = mid + 1
                        elif v > d:
                            hi = mid
                        else:
                            found = True
                            break
                    if not found:
                        ok = False
                        break
                if not ok:
                    continue
                for x in range(ans_tok_ptr[j], ans_tok_ptr[j + 1]):
                    # tok_bytes[ta:tb]: ASCII letters and digits, lower-case, found
                    # case-insensitively in blob[a:b] (bounded: no ASCII letter or digit just
                    # before or after)
                    ta = tok_ptr[x]
                    n = tok_ptr[x + 1] - ta
                    bounded = tok_bounded[x]
                    first = tok_bytes[ta]
                    found = False
                    for i in range(a, b - n + 1):
                        c = blob[i]
                        if 65 <= c <= 90:
                            c += 32
                        if c != first:
                            continue
                        if bounded and i > a:
                            c = blob[i - 1]
                            if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
                                continue
                        if bounded and i + n < b:
                            c = blob[i + n]
                            if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
                                continue
                        same = True
                        for m in range(1, n):
                            c = blob[i + m]
                            if 65 <= c <= 90:
                                c += 32
                            if c != tok_bytes[ta + m]:
                                same = False
                                break
                        if same:
                            found = True
                            break
                    if not found:
                        ok = False
                        break
                if ok:
                    return pos
        return -1

    _KERNELS["first"] = first_candidate
    return first_candidate


def _rank_kernel() -> Callable:
    if "ranks" in _KERNELS:
        return _KERNELS["ranks"]
    import numba

    @numba.njit(nogil=True, cache=True)
    def candidate_ranks(flat, k, h, data, indices, indptr, acc, touched, extra, ans_term_ptr,
                        terms, impossible):  # pragma: no cover - compiled
        # One query (flat: its index terms, in order) scored exhaustively as the exhaustive
        # top-k kernel scores it (float32 sums in the query's term order; acc: zeros, left
        # zero), but without ordering its k hits. Returns its best h hits (score descending,
        # then document ascending) and, in that order, the candidates — documents in the
        # postings of every index term of one answer (terms[ans_term_ptr[j]:ans_term_ptr[j+1]],
        # rarest first, at least one; impossible[j]: none) or in ``extra`` (sorted) — that are
        # among the k best, with their 1-based ranks.
        n = 0
        t = flat[0]
        for j in range(indptr[t], indptr[t + 1]):
            d = indices[j]
            touched[n] = d
            n += 1
            acc[d] = data[j]
        for x in range(1, len(flat)):
            t = flat[x]
            for j in range(indptr[t], indptr[t + 1]):
                d = indices[j]
                if acc[d] == 0.0:
                    touched[n] = d
                    n += 1
                acc[d] += data[j]
        # the candidates: a touched document (acc > 0) in every term list of an answer
        cap = len(extra)
        for a in range(len(impossible)):
            if not impossible[a]:
                t = terms[ans_term_ptr[a]]
                cap += indptr[t + 1] - indptr[t]
        found = np.empty(cap, dtype=np.int64)
        m = 0
        for a in range(len(impossible)):
            if impossible[a]:
                continue
            lo_t = ans_term_ptr[a]
            hi_t = ans_term_ptr[a + 1]
            t = terms[lo_t]
            for p in range(indptr[t], indptr[t + 1]):
                d = indices[p]
                if acc[d] == 0.0:
                    continue
                ok = True
                for x in range(lo_t + 1, hi_t):
                    u = terms[x]
                    lo = indptr[u]
                    hi = indptr[u + 1]
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if indices[mid] < d:
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo == indptr[u + 1] or indices[lo] != d:
                        ok = False
                        break
                if ok:
                    found[m] = d
                    m += 1
        for i in range(len(extra)):
            d = extra[i]
            if acc[d] != 0.0:
                found[m] = d
                m += 1
        cand = np.unique(found[:m])  # by document
        m = len(cand)
        cs = np.empty(m, dtype=np.float32)
        for i in range(m):
            cs[i] = acc[cand[i]]
        order = np.argsort(-cs, kind="mergesort")  # stable: equal scores stay by document
        cand = cand[order]
        cs = cs[order]
        # one pass over the touched documents: the best h (kept sorted), for each candidate
        # the count of documents ranked before it, and the accumulator reset
        ahead = np.zeros(m + 1, dtype=np.int64)
        hs = np.empty(h, dtype=np.float32)
        hd = np.empty(h, dtype=np.int64)
        size = 0
        for i in range(n):
            d = touched[i]
            s = acc[d]
            acc[d] = 0.0
            if size < h:
                pos = size
                size += 1
            elif s > hs[h - 1] or (s == hs[h - 1] and d < hd[h - 1]):
                pos = h - 1
            else:
                pos = -1
            if pos >= 0:
                while pos > 0 and (s > hs[pos - 1] or (s == hs[pos - 1] and d < hd[pos - 1])):
                    hs[pos] = hs[pos - 1]
                    hd[pos] = hd[pos - 1]
                    pos -= 1
                hs[pos] = s
                hd[pos] = d
            if m > 0 and (s > cs[m - 1] or (s == cs[m - 1] and d < cand[m - 1])):
                # the first candidate this document is ranked before
                lo = 0
                hi = m - 1
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if s > cs[mid] or (s == cs[mid] and d < cand[mid]):
                        hi = mid
                    else:
                        lo = mid + 1
                ahead[lo] += 1
        ranks = np.empty(m, dtype=np.int64)
        c = 0
        keep = 0
        for i in range(m):
            c += ahead[i]
            ranks[i] = c + 1
            if c + 1 <= k:
                keep = i + 1
        return hd[:size], hs[:size], cand[:keep], ranks[:keep]

    _KERNELS["ranks"] = candidate_ranks
    return candidate_ranks


@dataclass
class AnswerPlan:
    """The answers' conditions as the kernel reads them (see the module docstring)."""
    answers: list[str]
    term_ptr: np.ndarray
    terms: np.ndarray
    tok_ptr_by_answer: np.ndarray
    tok_ptr: np.ndarray
    tok_bytes: np.ndarray
    tok_bounded: np.ndarray
    impossible: np.ndarray

    #: whether the index's postings alone give every passage that may hold an answer (each
    #: answer the vocabulary does not rule out has an index term) besides the hazard passages:
    #: what :meth:`AnswerFilter.candidates` needs
    by_postings: bool = field(init=False)

    def __post_init__(self) -> None:
        self.by_postings = bool(np.all(self.impossible | (np.diff(self.term_ptr) > 0)))


class AnswerFilter:
    """First answer-bearing ranks over one index's hits. ``term_of(token)`` is the index term id
    of an ASCII answer token of two or more characters: ``>= 0``, ``-1`` when the vocabulary
    lacks it, None when the analyzer drops it (a stopword)."""

    def __init__(self, texts: StringColumn, indptr: np.ndarray, indices: np.ndarray,
                 term_of: Callable[[str], int | None]) -> None:
        self.texts = texts
        self.blob, self.offsets = texts.raw()
        self.indptr, self.indices = indptr, indices
        self.term_of = term_of
        self.df = np.diff(np.asarray(indptr))
        # per passage: _UNKNOWN / _CLEAN / _HAZARD (filled as passages are hits; concurrent
        # writers write the same value)
        self.state = np.zeros(len(texts), dtype=np.uint8)
        hazards = sorted(dpr_match.ascii_token_hazards())
        self.hazards = np.zeros((len(hazards), 4), dtype=np.uint8)
        for i, ch in enumerate(hazards):
            enc = ch.encode("utf-8")
            self.hazards[i, :len(enc)] = np.frombuffer(enc, dtype=np.uint8)
        self._plans: dict[tuple[str, ...], AnswerPlan] = {}
        self._lock = threading.Lock()
        self._hazard_docs: np.ndarray | None = None

    def hazard_docs(self) -> np.ndarray:
        """The passages (sorted) whose bytes hold a hazard character, found once over the whole
        column (numpy, 64 MB at a time) and recorded in ``state``: on the generated 1M-passage
        index (0.63 GB of text) 1.2 s with the text in the page cache, 3.8 s read from disk —
        so tens of seconds for wiki-18's ~13 GB, once per process, at its first ranked search."""
        with self._lock:
            if self._hazard_docs is None:
                blob, offsets = self.blob, self.offsets
                step, found = 1 << 26, []
                codes = [row[row != 0] for row in self.hazards]
                for start in range(0, len(blob), step):
                    chunk = np.asarray(blob[start:start + step + 3])
                    for code in codes:
                        pos = np.flatnonzero(chunk[:min(step, len(chunk))] == code[0])
                        for i in range(1, len(code)):
                            pos = pos[pos + i < len(chunk)]
                            pos = pos[chunk[pos + i] == code[i]]
                        found.append(pos + start)
                at = np.concatenate(found) if found else np.zeros(0, np.int64)
                docs = np.unique(np.searchsorted(offsets, at, side="right") - 1)
                # hazards first: a kernel reading the state meanwhile never sees one as clean
                self.state[docs] = _HAZARD
                self.state[self.state == _UNKNOWN] = _CLEAN
                self._hazard_docs = docs.astype(np.int64)
            return self._hazard_docs

    def candidates(self, flat: np.ndarray, k: int, hits: int, data: np.ndarray,
                   acc: np.ndarray, touched: np.ndarray, answers: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One query scored exhaustively (``flat``: its index terms in order; ``data``: the
        impacts; ``acc``/``touched``: the exhaustive kernel's scratch) without ordering its ``k``
        best: its best ``hits`` (documents, scores) and, in rank order with their 1-based ranks,
        the candidates among its ``k`` best — the passages in the postings of every index term of
        one answer, and the hazard passages (:meth:`first_of` then checks them). The plan of
        ``answers`` must be :attr:`AnswerPlan.by_postings`. Numba, without the GIL."""
        plan = self.plan(answers)
        extra = self.hazard_docs() if answers else np.zeros(0, np.int64)
        return _rank_kernel()(flat, k, hits, data, self.indices, self.indptr, acc, touched,
                              extra, plan.term_ptr, plan.terms, plan.impossible)

    def first_of(self, cand: np.ndarray, ranks: np.ndarray, answers: Sequence[str]
                 ) -> int | None:
        """The rank of the first of :meth:`candidates`' passages that has one of ``answers``
        (checked in rank order as :meth:`first_rank` checks hits); None when none does."""
        if not answers or not len(cand):
            return None
        pos = self._first(cand, self.plan(answers))
        return None if pos is None else int(ranks[pos])

    def plan(self, answers: Sequence[str]) -> AnswerPlan:
        key = tuple(answers)
        found = self._plans.get(key)
        if found is not None:
            return found
        term_ptr, terms, tok_ptr_by_answer, tok_ptr, tok_bytes = [0], [], [0], [0], []
        tok_bounded, impossible = [], []

        def byte_string(text: str, bounded: bool) -> None:
            tok_bytes.extend(text.encode("ascii"))
            tok_ptr.append(len(tok_bytes))
            tok_bounded.append(bounded)

        for answer in answers:
            mine, bad = [], False
            for t in dict.fromkeys(dpr_match.tokens(answer)):
                if not dpr_match.is_ascii_alnum(t):
                    for piece in dpr_match.ascii_pieces(t):
                        byte_string(piece, False)
                    continue
                term = self.term_of(t) if len(t) >= 2 else None
                if term is None:
                    byte_string(t, True)
                elif term < 0:
                    bad = True
                else:
                    mine.append(term)
            mine = sorted(set(mine), key=lambda x: int(self.df[x]))  # the rarest rules out most
            terms.extend(mine)
            term_ptr.append(len(terms))
            tok_ptr_by_answer.append(len(tok_ptr) - 1)
            impossible.append(bad)
        plan = AnswerPlan(list(answers), np.asarray(term_ptr, np.int64),
                          np.asarray(terms, np.int64), np.asarray(tok_ptr_by_answer, np.int64),
                          np.asarray(tok_ptr, np.int64), np.asarray(tok_bytes, np.uint8),
                          np.asarray(tok_bounded, np.bool_), np.asarray(impossible, np.bool_))
        with self._lock:
            if len(self._plans) > 4096:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def first_rank(self, docs: np.ndarray, answers: Sequence[str]) -> int | None:
        """1-based rank of the first of ``docs`` (passage numbers in rank order; ``-1`` ends
        them) whose passage has one of ``answers`` (DPR's rule; answers as
        :func:`~deepretrieval.core.dpr_match.answer_keys` gives them); None when none does."""
        if not answers:
            return None
        pos = self._first(np.ascontiguousarray(docs, dtype=np.int64), self.plan(answers))
        return None if pos is None else pos + 1

    def _first(self, docs: np.ndarray, plan: AnswerPlan) -> int | None:
        """Position of the first of ``docs`` whose passage has one of the plan's answers."""
        kernel = _kernel()
        pos = 0
        while True:
            pos = kernel(pos, docs, self.state, self.blob, self.offsets, self.hazards,
                         self.indptr, self.indices, plan.term_ptr, plan.terms,
                         plan.tok_ptr_by_answer, plan.tok_ptr, plan.tok_bytes, plan.tok_bounded,
                         plan.impossible)
            if pos < 0:
                return None
            d = int(docs[pos])
            text = self.texts.blob[int(self.offsets[d]):int(self.offsets[d + 1])].decode("utf-8")
            if dpr_match.has_answer(text, plan.answers):
                return pos
            pos += 1
