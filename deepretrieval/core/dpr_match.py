"""Answer matching as DPR / pyserini ``has_answers`` define it (non-regex mode).

A passage *has* an answer when the answer's token sequence occurs as a contiguous run of the
passage's tokens, where both texts are

1. Unicode NFD-normalised (so "é" is "e" + a combining accent, and stays different from "e"),
2. split into tokens: a maximal run of letters, digits and combining marks (Unicode categories
   L*, N*, M*) is one token; every other character that is neither a separator (Z*) nor a
   control/format/unassigned character (C*) is a token on its own (``.``, ``&``, ``-``, ``,``);
   separators and control characters only separate,
3. lower-cased token by token.

Articles are kept and punctuation is matched as tokens, so "The Who" does not match "who is
there", "U.S." (``u . s .``) does not match "US", "Jean-Paul" does not match "jean paul", while
"AT&T" matches "at & t". An empty answer (no tokens) matches every passage, as in pyserini.

This is the definition the evidence-seeking reward uses in every profile.
"""
from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np


def _kind(ch: str) -> int:
    """2: part of an alphanumeric run; 1: a one-character token; 0: a separator."""
    cat = unicodedata.category(ch)[0]
    if cat in "LNM":
        return 2
    if cat in "ZC":
        return 0
    return 1


class _Kinds(dict):
    """code point → ``"0"``/``"1"``/``"2"`` (its :func:`_kind`), filled as characters are seen:
    ``str.translate`` with it maps a text to its kinds at C speed."""

    def __missing__(self, cp: int) -> str:
        value = self[cp] = "012"[_kind(chr(cp))]
        return value


_KINDS = _Kinds()


def tokens(text: str) -> list[str]:
    """DPR ``SimpleTokenizer`` tokens of NFD-normalised ``text``, lower-cased. The text is mapped
    to its characters' kinds (``str.translate``), the token boundaries are found in that with
    numpy, and the tokens cut from the text: the rule of :func:`tokens_by_char`, several times
    faster."""
    text = unicodedata.normalize("NFD", text)
    if not text:
        return []
    kind = np.frombuffer(text.translate(_KINDS).encode("ascii"), dtype=np.uint8)
    run = kind == 50                                   # "2": inside an alphanumeric run
    prev = np.concatenate(([False], run[:-1]))
    nxt = np.concatenate((run[1:], [False]))
    single = np.flatnonzero(kind == 49)                # "1": a one-character token
    starts = np.concatenate((np.flatnonzero(run & ~prev), single))
    ends = np.concatenate((np.flatnonzero(run & ~nxt) + 1, single + 1))
    order = np.argsort(starts, kind="stable")
    return [text[a:b].lower() for a, b in zip(starts[order].tolist(), ends[order].tolist())]


def tokens_by_char(text: str) -> list[str]:
    """:func:`tokens`, written as the rule reads (the reference the regex is tested against)."""
    text = unicodedata.normalize("NFD", text)
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == 2:
            j = i + 1
            while j < n and _kind(text[j]) == 2:
                j += 1
            out.append(text[i:j].lower())
            i = j
        else:
            if kind == 1:
                out.append(text[i].lower())
            i += 1
    return out


@lru_cache(maxsize=65536)
def _passage_tokens(text: str) -> tuple[str, ...]:
    return tuple(tokens(text))


def clear_passage_cache() -> None:
    """Forget the tokens of the passages seen so far (:func:`has_answer` keeps the last 65,536):
    what a benchmark does to time the cold path, where few passages repeat (wiki-18)."""
    _passage_tokens.cache_clear()


def contains(hay: Sequence[str], needle: Sequence[str]) -> bool:
    """Whether ``needle`` occurs as a contiguous run of ``hay`` (an empty needle always does)."""
    m = len(needle)
    if m == 0:
        return True
    hay, needle = tuple(hay), tuple(needle)
    first, i = needle[0], 0
    last = len(hay) - m
    while i <= last:
        try:
            i = hay.index(first, i, last + 1)  # C speed
        except ValueError:
            return False
        if hay[i:i + m] == needle:
            return True
        i += 1
    return False


class _InOrder:
    """The pre-check of an answer of several tokens on a folded passage: every folded token
    occurs in it, and they occur in order with only non-word characters between them
    (``\\W*``). The pattern is compiled only when a passage passes the first, cheap test
    (compiling is ~50 µs; with one answer list per sample, most answers never get that far)."""

    __slots__ = ("parts", "_pattern")

    def __init__(self, parts: list[str]) -> None:
        self.parts = parts
        self._pattern: re.Pattern[str] | None = None

    def found(self, folded: str) -> bool:
        if not all(p in folded for p in self.parts):
            return False
        if self._pattern is None:
            self._pattern = re.compile(r"\W*".join(re.escape(t) for t in self.parts))
        return self._pattern.search(folded) is not None


@lru_cache(maxsize=4096)
def _answer_tokens(answer: str) -> tuple[tuple[str, ...], _InOrder | str | None]:
    """An answer's tokens, and its pre-check on the folded passage (see :func:`_folded`): the
    one folded token as a substring, or for several tokens an :class:`_InOrder`; None for no
    token."""
    toks = tuple(tokens(answer))
    folded = [t.replace("ς", "σ") for t in toks]
    if len(folded) < 2:
        return toks, folded[0] if folded else None
    return toks, _InOrder(folded)


def _folded(passage: str) -> str:
    """The passage NFD-normalised, lower-cased character by character (``str.lower`` plus
    ς → σ: Python's only context-dependent lower-casing is Greek final sigma). Every token of
    the passage, folded the same way, is a substring of it, and between two tokens that follow
    each other there are only separator and control characters (Unicode Z*, C*: none has a
    lower-case form or is a regex word character — ``tests/test_dpr_match.py`` checks every
    one). So an answer whose folded tokens do not occur in it in order, with only non-word
    characters between them, cannot match: most passages are ruled out without being
    tokenised."""
    return unicodedata.normalize("NFD", passage).lower().replace("ς", "σ")


def has_answer(passage: str, answers: Iterable[str]) -> bool:
    """Does ``passage`` contain one of ``answers`` (see the module docstring)?

    Answers are tried in order; a non-string answer raises ``TypeError`` when it is reached
    (as in pyserini) — callers that accept loose input convert answers to ``str`` first."""
    if not isinstance(passage, str):
        raise TypeError(f"passage must be a string, not {type(passage).__name__}")
    folded = None
    for answer in answers:
        if not isinstance(answer, str):
            raise TypeError(f"answer must be a string, not {type(answer).__name__}")
        toks, check = _answer_tokens(answer)
        if check is None:
            return True  # no token: matches every passage
        if folded is None:
            folded = _folded(passage)
        seen = check in folded if isinstance(check, str) else check.found(folded)
        if seen and contains(_passage_tokens(passage), toks):
            return True
    return False


def first_answer_rank(passages: Iterable[str], answers: Sequence[str],
                      depth: int | None = None) -> int | None:
    """1-based rank of the first passage (within ``depth``) that has one of ``answers``;
    ``passages`` may be any iterable (it is consumed only up to the first hit)."""
    answers = list(answers)
    for rank, passage in enumerate(passages, start=1):
        if depth is not None and rank > depth:
            break
        if has_answer(passage, answers):
            return rank
    return None


def answer_keys(answers: Iterable[object]) -> list[str]:
    """The answers the evidence reward matches: as strings, each once, in order, without those
    that have no token (an empty answer would match every passage)."""
    return [a for a in dict.fromkeys(str(a) for a in answers) if _answer_tokens(a)[0]]


# ---- where a passage's ASCII tokens are visible in its bytes -----------------------------------

#: :func:`ascii_token_hazards` as computed for Unicode 14.0.0 (Python 3.11's ``unicodedata``):
#: LOW LINE and KELVIN SIGN. Another Unicode version computes the set afresh (once, ~2 s).
_HAZARDS = {"14.0.0": "_\u212a"}
_WORD = re.compile(r"\w")


def is_ascii_alnum(s: str) -> bool:
    """Whether ``s`` is made of ASCII letters and digits only (and not empty)."""
    return s.isascii() and s.isalnum()


def _hazard(ch: str) -> bool:
    """Whether ``ch`` can break the statement of :func:`ascii_token_hazards` (see there)."""
    nfd = unicodedata.normalize("NFD", ch)
    low = ch.lower()
    if not ch.isascii():
        run = ""
        for c in nfd + "\x00":  # the runs of letters/digits/marks inside the decomposition
            if _kind(c) == 2:
                run += c
            elif run:
                if is_ascii_alnum(run.lower()):
                    return True
                run = ""
    if _kind(nfd[-1]) != 2 and _WORD.match(low[-1]):
        return True
    return _kind(nfd[0]) != 2 and _WORD.match(low[0]) is not None


@lru_cache(maxsize=1)
def ascii_token_hazards() -> frozenset[str]:
    """The characters whose absence makes a passage's ASCII tokens plain in its text.

    For a passage ``P`` without any of these characters, every token of ``P`` (:func:`tokens`)
    made only of ASCII letters and digits, ``t``,

    * is an ASCII substring of ``P`` (case aside): ``P`` has a run of ASCII letters and digits
      equal to ``t`` when lower-cased, and the characters just before and after that run (if
      any) are not ASCII letters or digits — so in ``P``'s UTF-8 bytes, ``t`` occurs (ASCII
      case-insensitively) between two bytes that are not ASCII letters or digits;
    * is one of the words bm25s's analyzer finds in ``P`` (``(?u)\\b\\w\\w+\\b`` over
      ``P.lower()``) when it has two or more characters.

    A character is a hazard when it is not ASCII and a run of letters/digits/marks in its NFD
    decomposition lower-cases to ASCII letters and digits (KELVIN SIGN: "k" — it would make an
    ASCII token out of non-ASCII text), or when its decomposition starts or ends with a character
    that separates tokens while its lower-case form starts or ends with a regex word character
    (LOW LINE: a token boundary for DPR, part of a word for the analyzer). The proof that no
    other character can break the statement rests on NFD keeping ASCII letters and digits (and
    every character of combining class 0) in place. Computed over all of Unicode with
    ``unicodedata`` (the rule's own database) and ``re``; stored for the known Unicode version
    (``tests/test_dpr_match.py`` recomputes it)."""
    known = _HAZARDS.get(unicodedata.unidata_version)
    if known is not None:
        return frozenset(known)
    return compute_ascii_token_hazards()


def compute_ascii_token_hazards() -> frozenset[str]:
    """:func:`ascii_token_hazards` computed over every code point (~2 s)."""
    return frozenset(chr(cp) for cp in range(sys.maxunicode + 1)
                     if not 0xD800 <= cp <= 0xDFFF and _hazard(chr(cp)))


def ascii_pieces(token: str) -> list[str]:
    """The runs of ASCII letters and digits of a token (as :func:`tokens` gives it) that a
    passage without :func:`ascii_token_hazards` holding the token holds as such in its text,
    ASCII case aside: each run, less its last character where a combining mark follows it (that
    character may be part of a precomposed one, "é" for "e" + U+0301). In such a passage an
    ASCII letter or digit of a token not followed by a mark is the passage's own ASCII character
    (or its upper case): NFD decomposes no other character into an ASCII letter or digit alone
    (KELVIN SIGN, the one that does, is a hazard), and lower-casing gives one only from ASCII
    (or KELVIN SIGN; "İ" gives "i" + a mark)."""
    out, run = [], ""
    for i, ch in enumerate(token + " "):
        if ch.isascii() and ch.isalnum():
            run += ch
            continue
        if run and i < len(token) and unicodedata.category(ch)[0] == "M":
            run = run[:-1]
        if run:
            out.append(run)
        run = ""
    return out
