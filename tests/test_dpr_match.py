"""What the evidence option's kernel relies on (``deepretrieval.search.answer_filter``): in a passage
without ``dpr_match.ascii_token_hazards()``, every DPR token of ASCII letters and digits is plain in
the passage's bytes (case aside, with no ASCII letter or digit beside it) and is one of the words
the BM25 analyzer finds; every token's ``ascii_pieces`` are in the bytes. Checked on every SciFact
passage, on crafted text for each branch (Kelvin sign, Greek final sigma, combining marks, 'U.S.',
underscores, non-ASCII letters) and on random strings of such characters; the hazard set itself
is recomputed over all of Unicode.
"""
from __future__ import annotations

import random
import re

import pytest

from deepretrieval.core import dpr_match
from deepretrieval.search.bm25_build import SPLITTER

_WORDS = re.compile(SPLITTER).findall
_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")


def _bytes_hold(text: str, token: str, bounded: bool) -> bool:
    """The kernel's byte test, written plainly: ``token`` (ASCII, lower-case) in the text's UTF-8
    bytes ASCII-case-insensitively (bounded: no ASCII letter or digit just before or after)."""
    low = text.encode("utf-8").translate(_ASCII_LOWER)
    needle = token.encode("ascii")
    start = low.find(needle)
    while start >= 0:
        end = start + len(needle)
        before = low[start - 1:start]
        after = low[end:end + 1]
        if not bounded or not ((before and before.isalnum() and before.isascii())
                               or (after and after.isalnum() and after.isascii())):
            return True
        start = low.find(needle, start + 1)
    return False


def _statement_holds(text: str, tokens=dpr_match.tokens_by_char) -> bool:
    words = set(_WORDS(text.lower()))
    for tok in dict.fromkeys(tokens(text)):
        if dpr_match.is_ascii_alnum(tok):
            if not _bytes_hold(text, tok, bounded=True):
                return False
            if len(tok) >= 2 and tok not in words:
                return False
        for piece in dpr_match.ascii_pieces(tok):
            if not _bytes_hold(text, piece, bounded=False):
                return False
    return True


def _has_hazard(text: str) -> bool:
    return any(ch in text for ch in dpr_match.ascii_token_hazards())


def test_the_stored_hazards_are_what_unicode_gives():
    assert dpr_match.compute_ascii_token_hazards() == dpr_match.ascii_token_hazards() \
        == frozenset({"_", "\u212a"})


def test_every_scifact_passage_shows_its_ascii_tokens(scifact_corpus):
    texts = [f"{(d.get('title') or '').strip()} {(d.get('text') or '').strip()}".strip()
             for d in scifact_corpus.values()]
    checked = 0
    for text in texts:
        if _has_hazard(text):
            continue
        # dpr_match.tokens equals tokens_by_char (test_bm25_streaming_build.py), and is faster
        assert _statement_holds(text, dpr_match.tokens), text[:80]
        checked += 1
    assert checked > 5000


@pytest.mark.parametrize("text", [
    "the U.S. Army and the US army",                    # punctuation tokens, one-letter tokens
    "ΟΔΟΣ ὁδός σοφίας ς Σ",                             # Greek, final sigma
    "cafe\u0301 café CAFÉ naïve nai\u0308ve Beyoncé BEYONCÉ",  # combining marks, precomposed
    "İstanbul ISTANBUL i\u0307stanbul",                  # dotted capital I (lower: i + mark)
    "54\xa0Mbit/s at 5\u2009km — x\u00b2 ½ ① Ⅻ",         # separators, super/sub, numerals
    "e\u0301\u0302x x\u0301y AT&T p53-mediated α-helix",
    "ﬁnal ﬀ Ǆemal Ǆ",                                    # ligatures: no canonical decomposition
    "異世界はスマートフォンとともに 123",
    "",
])
def test_crafted_text_shows_its_ascii_tokens(text):
    assert not _has_hazard(text)
    assert _statement_holds(text)


@pytest.mark.parametrize("text, why", [
    ("t_cells in vivo", "DPR splits at LOW LINE; the analyzer keeps 't_cells' as one word"),
    ("5 \u212a and \u212aelvin", "KELVIN SIGN is 'k' to DPR, not an ASCII byte"),
])
def test_hazards_are_real(text, why):
    assert _has_hazard(text)
    assert not _statement_holds(text), why


def test_random_strings_of_tricky_characters():
    rng = random.Random(0)
    pool = list("aAbBzZ09 _.-'&\u212a\u0301\u0307\u0308éÉİıΣσςβ\xa0\u2009ﬁ½²Ǆ異Kk")
    hazards = 0
    for _ in range(20000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 14)))
        if _has_hazard(text):
            hazards += 1
            continue
        assert _statement_holds(text), repr(text)
    assert 0 < hazards < 20000


@pytest.mark.parametrize("token, pieces", [
    ("beyonce\u0301", ["beyonc"]),
    ("mu\u0308ller", ["m", "ller"]),
    ("i\u0307stanbul", ["stanbul"]),
    ("β", []),
    ("cells", ["cells"]),
    ("ab\u0301\u0302cd", ["a", "cd"]),
])
def test_ascii_pieces(token, pieces):
    assert dpr_match.ascii_pieces(token) == pieces


def test_has_answer_equals_the_plain_rule_on_random_ascii_text():
    """has_answer gives the rule's verdict read plainly (tokens_by_char) on random ASCII text
    with separators, control characters, punctuation, digits and both cases — answers cut from
    the passage (so that many match, across token edges) and random ones."""
    rng = random.Random(1)
    pool = list("aAbBcZ09 \t\n\x01\x7f.-'&,$_") + ["ab", "Ab", "b c", "a-b", "9.5"]
    matched = 0
    for _ in range(20000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.7 and text:
            i = rng.randrange(len(text))
            answer = text[i:i + rng.randint(1, 6)]
        else:
            answer = "".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3:
            answer = answer.swapcase()
        want = dpr_match.contains(dpr_match.tokens_by_char(text), dpr_match.tokens_by_char(answer))
        assert dpr_match.has_answer(text, [answer]) is want, (text, answer)
        matched += want
    assert 3000 < matched < 17000
    # a non-ASCII answer never matches an ASCII passage; an answer without tokens matches all
    assert not dpr_match.has_answer("cafe au lait", ["café"])
    assert dpr_match.has_answer("cafe au lait", ["  "]) and dpr_match.has_answer("", [""])


def test_separators_fold_to_themselves_and_are_not_word_characters():
    """What has_answer's pre-check of a multi-token answer rests on (dpr_match._folded): every
    separator or control character (Unicode Z*, C* — what may stand between two tokens) is its
    own lower case and a regex non-word character, so the answer's folded tokens occur in the
    folded passage with only ``\\W`` characters between them."""
    import re
    import sys
    import unicodedata

    bad = [hex(cp) for cp in range(sys.maxunicode + 1)
           if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp))[0] in "ZC"
           and (chr(cp).lower() != chr(cp) or not re.fullmatch(r"\W", chr(cp)))]
    assert bad == []


def test_has_answer_equals_the_plain_rule_on_random_unicode_text():
    """The same as for ASCII, with the characters the pre-check must survive: accents
    (precomposed and combining), İ (two characters when lower-cased), Greek sigmas, a Kelvin
    sign, non-breaking and zero-width spaces, punctuation tokens — answers of several tokens,
    cut from the passage (so that many match) or with their separators changed."""
    rng = random.Random(2)
    pool = (list("aAéE\u0301İiΣσς\u212akK0 9\xa0\u200b\t.-%&") +
            ["ab", "Ab c", "é-é", "ΟΔΟΣ", "3 to 6%", "x\u00b2"])
    matched = multi = 0
    for _ in range(20000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 14)))
        if rng.random() < 0.7 and text:
            i = rng.randrange(len(text))
            answer = text[i:i + rng.randint(1, 8)]
            if rng.random() < 0.3:
                answer = answer.replace(" ", rng.choice(["\xa0", "  ", "\t", ""]))
        else:
            answer = "".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3:
            answer = answer.upper()
        needle = dpr_match.tokens_by_char(answer)
        want = dpr_match.contains(dpr_match.tokens_by_char(text), needle)
        assert dpr_match.has_answer(text, [answer]) is want, (text, answer)
        matched += want
        multi += want and len(needle) > 1
    assert 3000 < matched < 17000 and multi > 1000
