"""Answer exact match and token F1 with the SQuAD / KILT answer normalisation.

:func:`normalize_answer` follows the SQuAD v1.1 evaluation script (also used by KILT, DPR's
reader, Search-R1 and most agentic-search papers): lower-case, delete punctuation (so
"Henry's" → "henrys", "U.S.A." → "usa"), remove the articles a/an/the, collapse whitespace.
Two documented extensions, both no-ops on ASCII text: the text is Unicode-NFC normalised first,
and Unicode punctuation (general category ``P*``: “ ” ‘ ’ « » – — …) is deleted as well as
ASCII ``string.punctuation``. Accented letters are kept ("Café" ≠ "Cafe"), as in SQuAD.

:func:`exact_match` and :func:`f1_score` take the maximum over the gold answers; with no gold
answer (or a prediction of None) they are 0. Every function accepts any input and never raises.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: object) -> str:
    """SQuAD/KILT normalisation (see the module docstring)."""
    if text is None:
        return ""
    text = unicodedata.normalize("NFC", str(text)).lower()
    text = "".join(ch for ch in text if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golds: Iterable[object] | str | None) -> list[str]:
    if golds is None:
        return []
    if isinstance(golds, str):
        return [golds]
    return [str(g) for g in golds if g is not None]


def exact_match(prediction: object, golds: Iterable[object] | str | None) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        # SQuAD: both empty is a match, one empty is not
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: object, golds: Iterable[object] | str | None) -> float:
    """Token-level F1 of the normalised prediction against the best gold answer."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction).split()
    scores = [_f1(pred, normalize_answer(g).split()) for g in _golds(golds)]
    return max(scores, default=0.0)
