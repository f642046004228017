"""Boolean backend (PubMed query syntax): syntax table on a small collection with fields and
dates, brute-force equality on SciFact for generated queries, malformed queries."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

from deepretrieval.search.boolean import (
    QUERY_ERROR,
    BooleanIndex,
    DateRange,
    QueryError,
    Seq,
    Term,
    parse_query,
)

DOCS = [
    {"_id": "1", "title": "Aspirin for heart attack prevention", "text": "A randomized trial of aspirin in adults.",
     "mesh": ["Aspirin", "Myocardial Infarction"], "pub_types": ["Randomized Controlled Trial"], "date": "2010-05-02"},
    {"_id": "2", "title": "Statins and stroke", "text": "Statin therapy lowers the risk of heart disease.",
     "mesh": ["Stroke"], "pub_types": ["Review"], "date": "2015-01-20"},
    {"_id": "3", "title": "Cancer screening", "text": "Breast cancer screening with mammography in women.",
     "mesh": ["Breast Neoplasms", "Mammography"], "pub_types": ["Journal Article"], "date": "2018-11"},
    {"_id": "4", "title": "Heart failure", "text": "Attack rates of influenza and heart failure admissions.",
     "mesh": ["Heart Failure", "Influenza, Human"], "pub_types": ["Journal Article"], "date": "2020"},
    {"_id": "5", "title": "Cancers of the breast", "text": "Screening trials for cancer; aspirin was not studied.",
     "mesh": [], "pub_types": ["Randomized Controlled Trial", "Review"], "date": None},
]


@pytest.fixture(scope="module")
def small():
    return BooleanIndex.build(DOCS, name="small")


def ids(index, query, **options):
    result = index.search([query], 100, options=options or None)[0]
    assert result.error is None, result.error
    return sorted(result.ids)


# query, expected ids (sorted)
TABLE = [
    # implicit AND, operators, case
    ("aspirin", ["1", "5"]),
    ("aspirin trial", ["1", "5"]),
    ("aspirin heart", ["1"]),
    ("aspirin AND heart", ["1"]),
    ("aspirin OR statin", ["1", "2", "5"]),
    ("heart NOT aspirin", ["2", "4"]),
    ("heart AND NOT aspirin", ["2", "4"]),
    ("NOT heart", ["3", "5"]),
    ("aspirin and heart", ["1"]),          # lower-case 'and' is a stop word: implicit AND
    # left to right, no precedence (PubMed)
    ("statin OR aspirin AND heart", ["1", "2"]),
    ("aspirin AND heart OR cancer", ["1", "3", "5"]),
    ("cancer OR heart NOT aspirin", ["2", "3", "4"]),
    # parentheses
    ("statin OR (aspirin AND heart)", ["1", "2"]),
    ("aspirin AND (heart OR cancer)", ["1", "5"]),
    ("(cancer OR (statin AND stroke)) NOT screening", ["2"]),
    ("((((aspirin))))", ["1", "5"]),
    # phrases: consecutive terms within one field value (stop words dropped, stems)
    ('"heart attack"', ["1"]),
    ('"attack heart"', []),
    ('"heart attack"[ti]', ["1"]),
    ('"heart attack"[ab]', []),
    ("heart-attack", ["1"]),               # a word with several terms is a phrase
    ('"breast cancer"', ["3"]),            # "Cancers of the breast" is not the phrase...
    ('"cancers breast"', ["5"]),           # ... its terms are, stop word dropped
    ('"failure attack"', []),              # ab of 4 ends "... failure admissions"; ti/ab don't join
    ('"heart failure admissions"', ["4"]),
    # field tags
    ("heart[ti]", ["1", "4"]),
    ("heart[ab]", ["2", "4"]),
    ("heart[tiab]", ["1", "2", "4"]),
    ("heart[Title/Abstract]", ["1", "2", "4"]),
    ("neoplasms[mh]", ["3"]),
    ('"myocardial infarction"[mh]', ["1"]),
    ('"infarction aspirin"[mh]', []),      # phrases do not span two headings
    ("neoplasms", ["3"]),                  # untagged: all fields, MeSH included
    ("review[pt]", ["2", "5"]),
    ('"randomized controlled trial"[pt]', ["1", "5"]),
    ("randomized[ti]", []),
    # truncation
    ("canc*", ["3", "5"]),
    ("screen*[ti]", ["3"]),
    ("stati*", ["2"]),
    ("studies*", ["5"]),                   # matches the stem 'studi' of 'studied'
    # dates
    ("2015[dp]", ["2"]),
    ("2018/11[dp]", ["3"]),
    ("2010:2015[dp]", ["1", "2"]),
    ('"2016"[dp]:"2020"[dp]', ["3", "4"]),
    ("2010/05/03:2020/01/01[dp]", ["2", "3", "4"]),
    ("heart AND 2011:2030[dp]", ["2", "4"]),
    # stop words only / unknown words
    ("the", []),
    ("the OR aspirin", ["1", "5"]),
    ("aspirin AND zzzunknownword", []),
]


@pytest.mark.parametrize("query,expected", TABLE)
def test_syntax_table(small, query, expected):
    assert ids(small, query) == expected


def test_date_cap_options(small):
    assert ids(small, "heart OR cancer", maxdate="2015") == ["1", "2"]
    assert ids(small, "heart OR cancer", mindate="2016", maxdate="2018/12") == ["3"]
    assert ids(small, "heart OR cancer", mindate="2015/01/21") == ["3", "4"]  # no date: excluded
    with pytest.raises(ValueError, match="unknown search option"):
        small.search(["heart"], 10, options={"datetype": "edat"})
    with pytest.raises(ValueError, match="bad date"):
        small.search(["heart"], 10, options={"maxdate": "last year"})


def test_sort_by_date_and_by_bm25(small):
    r = small.search(["heart OR cancer OR aspirin"], 10, options={"sort": "pub_date"})[0]
    assert r.ids == ["4", "3", "2", "1", "5"]  # newest first, no date last
    r = small.search(["aspirin"], 10)[0]
    assert r.scores == sorted(r.scores, reverse=True) and r.scores[0] > 0
    r = small.search(["aspirin NOT heart", "heart"], 1)
    assert r[0].ids == ["5"] and len(r[1].ids) == 1 and r[1].info["count"] == 3


MALFORMED = [
    ("(aspirin OR heart", "unbalanced_parentheses"),
    ("aspirin OR heart)", "unbalanced_parentheses"),
    ("((aspirin) OR (heart)", "unbalanced_parentheses"),
    ('"heart attack', "unbalanced_quotes"),
    ("heart[xyz]", "unknown_tag"),
    ("heart[tiab", "unknown_tag"),
    ("[tiab]", "unknown_tag"),
    ("(heart OR aspirin)[tiab]", "unknown_tag"),
    ("AND heart", "operator"),
    ("heart OR", "operator"),
    ("heart AND OR aspirin", "operator"),
    ("(heart NOT)", "operator"),
    ("NOT", "operator"),
    ("heart AND ()", "empty_group"),
    ("20x5[dp]", "bad_date"),
    ("2015/13[dp]", "bad_date"),
    ("heart:2015", "bad_date"),
    ("2010:2015", "bad_date"),
    ("ca*", "short_prefix"),
    ("*", "short_prefix"),
    ("x" * 20_000, "too_long"),
]


@pytest.mark.parametrize("query,kind", MALFORMED)
def test_malformed_queries_are_per_query_errors(small, query, kind):
    good, bad = small.search(["aspirin", query], 10)
    assert good.error is None and good.ids
    assert bad.error and bad.error.startswith("malformed query") and bad.ids == []
    assert bad.info[QUERY_ERROR] == kind
    with pytest.raises(QueryError):
        parse_query(query)


def test_parse_tree_shapes():
    assert parse_query("") is None
    tree = parse_query('a OR "b c"[ti] NOT ddd*')
    assert tree == Seq(Term("a", ("ti", "ab", "mh", "pt")),
                       (("OR", Term("b c", ("ti",), phrase=True)),
                        ("NOT", Term("ddd", ("ti", "ab", "mh", "pt"), prefix=True))))
    assert parse_query("2019:2020[dp]") == Seq(DateRange(20190101, 20201231))


def test_save_load_round_trip(small, tmp_path):
    small.save(tmp_path / "ix")
    again = BooleanIndex.load(tmp_path / "ix")
    for query, expected in TABLE:
        assert ids(again, query) == expected
    assert again.records == small.records
    assert again.info()["type"] == "boolean"


# ---------------------------------------------------------------------------------------------
# brute force on SciFact

@pytest.fixture(scope="module")
def scifact_bool(_index_dir):
    from deepretrieval.catalog import open_index
    return open_index("scifact_boolean")


class BruteForce:
    """Evaluates a parsed query over the stored field values with its own analysis (PyStemmer +
    the index's stop words) and its own per-field term → documents map built from the records."""

    def __init__(self, index: BooleanIndex) -> None:
        import Stemmer
        self.stem = Stemmer.Stemmer("english").stemWord
        self.stop = set(index.bm25.tokenizer.stopwords)
        self.n = len(index.records)
        self.docs = []
        self.where: dict[str, dict[str, set[int]]] = {f: {} for f in ("ti", "ab", "mh", "pt")}
        for i, rec in enumerate(index.records):
            doc = {f: [tuple(self.analyze(v)) for v in rec[f]] for f in ("ti", "ab", "mh", "pt")}
            self.docs.append(doc)
            for f, values in doc.items():
                for v in values:
                    for s in v:
                        self.where[f].setdefault(s, set()).add(i)

    def analyze(self, text: str) -> list[str]:
        return [self.stem(w) for w in re.findall(r"(?u)\b\w\w+\b", text.lower()) if w not in self.stop]

    def term(self, node: Term) -> set[int] | None:
        out: set[int] = set()
        if node.prefix:
            p = node.text.lower()
            sp = self.analyze(p)
            prefixes = tuple({p} | ({sp[0]} if len(sp) == 1 else set()))
            for f in node.fields:
                for s, docs in self.where[f].items():
                    if s.startswith(prefixes):
                        out |= docs
            return out
        terms = tuple(self.analyze(node.text))
        if not terms:
            return None
        m = len(terms)
        for f in node.fields:
            cand = set.intersection(*(self.where[f].get(t, set()) for t in terms))
            out |= {i for i in cand if any(v[j:j + m] == terms for v in self.docs[i][f]
                                           for j in range(len(v) - m + 1))}
        return out

    def eval(self, node) -> set[int] | None:
        if isinstance(node, Term):
            return self.term(node)
        every = set(range(self.n))
        acc = self.eval(node.first)
        if acc is not None and node.negated_first:
            acc = every - acc
        for op, operand in node.rest:
            value = self.eval(operand)
            if value is None:
                continue
            if acc is None:
                acc = (every - value) if op == "NOT" else value
            elif op == "AND":
                acc = acc & value
            elif op == "OR":
                acc = acc | value
            else:
                acc = acc - value
        return acc

    def match(self, query: str) -> set[int]:
        tree = parse_query(query)
        return (self.eval(tree) or set()) if tree is not None else set()


def generate_queries(records, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = []
    for rec in records[:400]:
        words.extend(w for w in re.findall(r"[A-Za-z][A-Za-z-]+", " ".join(rec["ti"] + rec["ab"])))
    tags = ["", "", "", "[tiab]", "[ti]", "[ab]", "[Title/Abstract]", "[all]"]

    def atom(depth: int) -> str:
        r = rng.random()
        if r < 0.15 and depth < 2:
            return "(" + expr(depth + 1) + ")"
        if r < 0.3:  # a phrase taken from a document
            rec = rng.choice(records)
            toks = " ".join(rec["ti"] + rec["ab"]).split()
            i = rng.randrange(max(1, len(toks) - 3))
            return '"' + re.sub(r'["()\[\]:*]', " ", " ".join(toks[i:i + rng.randint(2, 3)])) + '"' + rng.choice(tags)
        w = rng.choice(words)
        if r < 0.4 and len(w) >= 5 and w.isalpha():
            return w[:rng.randint(3, min(6, len(w)))].lower() + "*" + rng.choice(tags)
        return w + rng.choice(tags)

    def expr(depth: int) -> str:
        parts = [("NOT " if rng.random() < 0.05 else "") + atom(depth)]
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
            parts.append(rng.choice(["AND", "OR", "NOT", "", "OR", "AND"]))
            parts.append(atom(depth))
        return " ".join(p for p in parts if p)

    return [expr(0) for _ in range(n)]


@pytest.mark.slow
def test_equals_brute_force_on_scifact(scifact_bool):
    brute = BruteForce(scifact_bool)
    queries = generate_queries(scifact_bool.records, 240)
    index_of = {d: i for i, d in enumerate(scifact_bool.doc_ids)}
    nonempty = 0
    for query in queries:
        result = scifact_bool.search([query], len(scifact_bool))[0]
        assert result.error is None, (query, result.error)
        got = {index_of[d] for d in result.ids}
        assert got == brute.match(query), query
        assert result.info["count"] == len(got)
        nonempty += bool(got) and len(got) < len(scifact_bool)
    assert nonempty >= 100  # the generated queries exercise real, selective matches


def test_ranking_is_bm25_of_the_positive_terms(scifact_bool):
    bm25 = scifact_bool.bm25
    vocab = bm25.tokenizer.get_vocab_dict()

    def bm25_scores(terms):  # BM25 of every document: the impacts of the terms, summed
        out = np.zeros(bm25.num_docs, dtype=np.float32)
        for t in terms:
            a, b = bm25.indptr[t], bm25.indptr[t + 1]
            out[bm25.indices[a:b]] += bm25.data[a:b]
        return out

    for query, positive in [("vitamin AND (calcium OR bone) NOT fracture", "vitamin calcium bone"),
                            ('"breast cancer" mortality', "breast cancer mortality")]:
        result = scifact_bool.search([query], 3000)[0]
        assert len(result.ids) > 3
        stems = list(dict.fromkeys(scifact_bool.analyzer.stems(positive)))
        expected = bm25_scores([vocab[s] for s in stems])
        index_of = {d: i for i, d in enumerate(scifact_bool.doc_ids)}
        got = np.array([expected[index_of[d]] for d in result.ids])
        np.testing.assert_allclose(result.scores, got, rtol=1e-5)
        assert all(a >= b for a, b in zip(got, got[1:]))


def test_index_terms_match_the_bm25_vocabulary(scifact_bool):
    # the field store sees the same terms as BM25: title+abstract postings equal BM25's matrix
    s = {"indices": scifact_bool.bm25.indices, "indptr": scifact_bool.bm25.indptr}
    vocab = scifact_bool.bm25.tokenizer.get_vocab_dict()
    for stem in ["cancer", "vitamin", "cell", "protein", "mortal"]:
        t = vocab[stem]
        bm25_docs = set(s["indices"][s["indptr"][t]:s["indptr"][t + 1]].tolist())
        field_docs = set(scifact_bool.fields.postings("ti", t).tolist()) | set(
            scifact_bool.fields.postings("ab", t).tolist())
        assert field_docs == bm25_docs and bm25_docs


def _hostile_nesting(rng: random.Random) -> list[tuple[str, str | None]]:
    """Generated deeply nested queries (seeded) with the outcome each must have: a query-error
    kind, or None for a query that parses. Every one fits the 10,000-character cap."""
    words = ["aspirin", "heart", "cancer", "screening", "stroke"]
    out: list[tuple[str, str | None]] = [("(" * 5000, "unbalanced_parentheses"),
                                         ("(" * 9999, "unbalanced_parentheses"),
                                         (")" * 4999, "unbalanced_parentheses")]
    for _ in range(40):
        depth = rng.choice([101, 200, 495, 496, 1000, rng.randint(102, 4000)])
        w = rng.choice(words)
        shape = rng.randrange(6)
        if shape == 0:     # balanced ((…(w)…))
            q, kind = "(" * depth + w + ")" * depth, "too_deep"
        elif shape == 1:   # right-nested (w OR (w OR …))
            depth = min(depth, 9000 // (len(w) + 6))
            q, kind = f"({w} OR " * depth + w + ")" * depth, "too_deep"
        elif shape == 2:   # one ')' missing
            q, kind = "(" * depth + w + ")" * (depth - 1), "unbalanced_parentheses"
        elif shape == 3:   # one ')' too many
            q, kind = "(" * depth + w + ")" * (depth + 1), "unbalanced_parentheses"
        elif shape == 4:   # NOT ( … chains, unclosed
            depth = min(depth, 9000 // 5)
            q, kind = "NOT (" * depth + w, "unbalanced_parentheses"
        else:              # (a AND (a AND … unclosed
            depth = min(depth, 9000 // (len(w) + 6))
            q, kind = f"({w} AND " * depth, "unbalanced_parentheses"
        assert len(q) <= 10_000
        out.append((q, kind))
    for depth in (1, 50, 100):   # within the limit: parses and matches like the flat query
        out.append(("(" * depth + "aspirin" + ")" * depth, None))
    return out


def test_nesting_at_any_depth_is_a_query_error_never_a_crash(small):
    """Issue 29 item 3: ≥ 496 nested parentheses raised RecursionError (parser and evaluator);
    now every depth is a per-query error of a defined kind, and the batch's other queries stand."""
    flat = small.search(["aspirin"], 10)[0]
    for query, kind in _hostile_nesting(random.Random(29)):
        good, res = small.search(["heart", query], 10)
        assert good.error is None and good.ids
        if kind is None:
            assert res.error is None and res.ids == flat.ids
        else:
            assert res.error and res.error.startswith("malformed query"), query[:40]
            assert res.info[QUERY_ERROR] == kind, (query[:40], res.error)


def test_stem_cache_is_bounded(small, monkeypatch):
    """Issue 29 item 10: the analyzer's word → stem cache was never evicted (+353 MB per 20k
    queries); it is an LRU of STEM_CACHE_SIZE words now."""
    from deepretrieval.search import boolean
    analyzer = boolean.Analyzer(small.bm25.tokenizer)
    size = analyzer.stem.cache_info().maxsize
    assert size == boolean.STEM_CACHE_SIZE
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(size // 200 + 50):  # more distinct words than the cache holds
        analyzer.ids(" ".join("".join(rng.choice(letters) for _ in range(8)) for _ in range(200)))
    info = analyzer.stem.cache_info()
    assert info.currsize == size and info.misses > size
    assert analyzer.ids("aspirin hearts") == small.analyzer.ids("aspirin heart")[:1] + small.analyzer.ids("hearts")
