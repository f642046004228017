"""Answer exact match, token F1, sub-EM and cover-EM with the SQuAD v1.1 answer normalisation.

:func:`normalize_answer` is the SQuAD v1.1 evaluation script's rule, exactly — the one Search-R1's
``qa_em.py``, verl's ``search_r1_like_qa_em.py``, KILT and DPR's reader use, so our EM is the
number the published tables report: lower-case, delete ASCII punctuation (``string.punctuation``:
"Henry's" → "henrys", "U.S.A." → "usa"), replace the articles a/an/the (whole words) by a space,
collapse whitespace. Accented letters are kept ("Café" ≠ "Cafe"); Unicode punctuation (“ ” – …)
is kept too, as in the SQuAD script.

``unicode=True`` (the reward tables ``agent_em_unicode`` / ``agent_f1_unicode``) is this project's
extension, opt-in: the text is NFC-normalised first ("Cafe" + combining acute == "Café") and every
Unicode punctuation character (general category ``P*``) is deleted as well (“Bono” == Bono,
1939–1945 == 1939-1945 after both lose their dashes). Identical to the SQuAD rule on ASCII text.

* :func:`exact_match`: the normalised answer equals a normalised gold answer;
* :func:`sub_exact_match` (sub-EM, Search-R1's / verl's ``subem_check``): a normalised gold answer
  is a substring of the normalised answer ("the Eiffel Tower in Paris" ⊇ "eiffel tower");
* :func:`cover_exact_match` (cover-EM): every token of a normalised gold answer occurs among the
  answer's tokens, in any order ("Tower, Eiffel" covers "Eiffel Tower"). Some papers call the
  substring rule "cover EM"; that one is :func:`sub_exact_match` here;
* :func:`f1_score`: SQuAD token F1.

Each takes the maximum over the gold answers; with no gold answer (or a prediction of None) it is
0. Every function accepts any input and never raises.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_unicode_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: object, *, unicode: bool = False) -> str:
    """SQuAD v1.1 normalisation; ``unicode``: our NFC + Unicode-punctuation extension (see the
    module docstring)."""
    if text is None:
        return ""
    text = str(text)
    if unicode:
        text = unicodedata.normalize("NFC", text).lower()
        text = "".join(ch for ch in text if not _is_unicode_punct(ch))
    else:
        text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golds: Iterable[object] | str | None) -> list[str]:
    if golds is None:
        return []
    if isinstance(golds, str):
        return [golds]
    return [str(g) for g in golds if g is not None]


def exact_match(prediction: object, golds: Iterable[object] | str | None, *,
                unicode: bool = False) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction, unicode=unicode)
    return float(any(pred == normalize_answer(g, unicode=unicode) for g in _golds(golds)))


def sub_exact_match(prediction: object, golds: Iterable[object] | str | None, *,
                    unicode: bool = False) -> float:
    """1.0 when a normalised gold answer is contained in the normalised prediction (sub-EM). A
    gold answer that normalises to nothing ("The") is contained in nothing (Search-R1's and verl's
    ``subem_check`` would count it as contained in every answer)."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction, unicode=unicode)
    for gold in _golds(golds):
        norm = normalize_answer(gold, unicode=unicode)
        if norm and norm in pred:
            return 1.0
    return 0.0


def cover_exact_match(prediction: object, golds: Iterable[object] | str | None, *,
                      unicode: bool = False) -> float:
    """1.0 when every token of a normalised gold answer occurs among the normalised
    prediction's tokens (cover-EM); a gold answer that normalises to nothing covers nothing."""
    if prediction is None:
        return 0.0
    pred = set(normalize_answer(prediction, unicode=unicode).split())
    for gold in _golds(golds):
        tokens = normalize_answer(gold, unicode=unicode).split()
        if tokens and all(t in pred for t in tokens):
            return 1.0
    return 0.0


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


def f1_score(prediction: object, golds: Iterable[object] | str | None, *,
             unicode: bool = False) -> float:
    """Token-level F1 of the normalised prediction against the best gold answer."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction, unicode=unicode).split()
    scores = [_f1(pred, normalize_answer(g, unicode=unicode).split()) for g in _golds(golds)]
    return max(scores, default=0.0)
