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
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
        plan = self.plan(answers)
        kernel = _kernel()
        docs = np.ascontiguousarray(docs, dtype=np.int64)
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
                return pos + 1
            pos += 1
