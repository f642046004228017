"""Boolean search with PubMed query syntax over a BM25 index (one engine: the BM25 index's
vocabulary, analyzer and term-score matrix; a small field store beside it).

Query syntax (PubMed's; see ``docs/boolean.md`` for the table and the differences from PubMed):

* terms are ANDed when no operator stands between them; ``AND``, ``OR``, ``NOT`` (upper case)
  are evaluated **left to right**, without precedence, as PubMed does (``a OR b AND c`` is
  ``(a OR b) AND c``); parentheses group. ``x AND NOT y`` is ``x NOT y``; a leading ``NOT y``
  is every document but those matching ``y``. Lower-case ``and``/``or``/``not`` are ordinary
  (stop) words.
* ``"quoted phrases"`` match consecutive index terms within one field value (checked against
  term positions); a bare word that analyses into several terms (``heart-attack``) is a phrase.
* field tags ``[tiab]`` (``[title/abstract]``), ``[ti]`` (``[title]``), ``[ab]`` (``[abstract]``),
  ``[mh]`` (``[mesh]``, ``[mesh terms]``; no explosion to narrower headings), ``[pt]``
  (``[publication type]``), ``[dp]`` (``[pdat]``, ``[publication date]``), ``[all]``
  (``[all fields]``); untagged terms search all text fields (title, abstract, MeSH, publication
  types).
* truncation ``term*`` (at least 3 characters before ``*``): every index term that starts with
  the prefix or with its stem.
* dates: ``2020[dp]``, ``2015:2020[dp]``, ``2015/03:2016/12/31[dp]``, ``"2015"[dp]:"2020"[dp]``;
  options ``mindate`` / ``maxdate`` cap the publication date (as the live PubMed backend does);
  documents without a date never match a date term or a date cap.
* terms analyse like the BM25 index (lower case, ``\\w\\w+`` words, English stop words dropped,
  Snowball stems); a term of stop words only is ignored, as PubMed ignores stop words.

Results are the matching documents ordered by BM25 (the summed BM25 scores, over title +
abstract, of the query's non-negated terms; ties by document order), or with option
``sort="pub_date"`` newest first. A malformed query (unbalanced parentheses or quotes, an unknown
tag, an operator without an operand, a bad date) is a per-query :class:`SearchResult` error with
``info["query_error"]`` set to its kind: the query writer's fault, which the reward scores as a
result without hits (see ``Family.query_error_metrics``), never a crash.

Index directory: ``meta.json`` (``type: boolean``), ``bm25/`` (a :class:`BM25Index`),
``fields.npz`` (per field: term ids with ``-1`` between values, per-document offsets, postings),
``dates.npy`` (``YYYYMMDD``, 0 = none), ``extra_terms.json`` (terms only in MeSH / publication
types, ids after BM25's), ``records.jsonl.gz`` (the field values of each document).
"""
from __future__ import annotations

import bisect
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepretrieval.core.deadline import check as check_deadline
from deepretrieval.core.io import atomic_dir, read_json_lines_gz, write_json_lines_gz
from deepretrieval.search.answer_ranks import search_ranking_answers
from deepretrieval.core.results import SearchResult
from deepretrieval.search.bm25 import BM25Index

INDEX_TYPE = "boolean"
FORMAT_VERSION = 2

#: Fields of a Boolean index: title, abstract, MeSH headings, publication types.
FIELDS = ("ti", "ab", "mh", "pt")
#: Tag (lower case, inside ``[...]``) → the fields it searches, or ``"dp"`` for dates.
TAGS: dict[str, tuple[str, ...] | str] = {
    "tiab": ("ti", "ab"), "title/abstract": ("ti", "ab"),
    "ti": ("ti",), "title": ("ti",),
    "ab": ("ab",), "abstract": ("ab",),
    "mh": ("mh",), "mesh": ("mh",), "mesh terms": ("mh",), "mesh term": ("mh",),
    "pt": ("pt",), "publication type": ("pt",),
    "all": FIELDS, "all fields": FIELDS,
    "dp": "dp", "pdat": "dp", "publication date": "dp",
}
DEFAULT_FIELDS = FIELDS
MIN_PREFIX = 3
MAX_QUERY_CHARS = 10_000
#: Deepest parenthesis nesting a query may have (deeper: query error ``too_deep``); keeps the
#: recursive parser and evaluator far from Python's recursion limit at any query length.
MAX_DEPTH = 100
#: Distinct words whose stem the analyzer remembers (least recently used ones are forgotten).
STEM_CACHE_SIZE = 65_536
OPTIONS = frozenset({"maxdate", "mindate", "sort"})
SORTS = ("relevance", "pub_date")
#: ``SearchResult.info`` key marking a malformed query (the writer's fault); value: the kind.
QUERY_ERROR = "query_error"
QUERY_ERROR_KINDS = ("unbalanced_parentheses", "unbalanced_quotes", "unknown_tag", "operator",
                     "empty_group", "bad_date", "short_prefix", "too_long", "too_deep",
                     "not_a_string")


class QueryError(ValueError):
    """A malformed query; ``kind`` is one of :data:`QUERY_ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# dates

_DATE = re.compile(r"^(\d{4})(?:[/-](\d{1,2})(?:[/-](\d{1,2}))?)?$")


def parse_date(text: str, *, end: bool = False) -> int:
    """``YYYY``, ``YYYY/MM``, ``YYYY/MM/DD`` (``-`` also) → ``YYYYMMDD``: the first day of the
    period, or with ``end`` the last (day 31 stands for any month's end). QueryError if bad."""
    m = _DATE.match(str(text).strip())
    if not m:
        raise QueryError("bad_date", f"bad date {text!r} (expected YYYY, YYYY/MM or YYYY/MM/DD)")
    year, month, day = int(m.group(1)), m.group(2), m.group(3)
    if month is None:
        return year * 10000 + (1231 if end else 101)
    month_i = int(month)
    if not 1 <= month_i <= 12:
        raise QueryError("bad_date", f"bad month in date {text!r}")
    if day is None:
        return year * 10000 + month_i * 100 + (31 if end else 1)
    day_i = int(day)
    if not 1 <= day_i <= 31:
        raise QueryError("bad_date", f"bad day in date {text!r}")
    return year * 10000 + month_i * 100 + day_i


def record_date(value: Any) -> int:
    """A record's date (``YYYY[-MM[-DD]]`` or None) → ``YYYYMMDD`` (missing parts: 01), 0 if none."""
    if value in (None, ""):
        return 0
    return parse_date(str(value))


# ---------------------------------------------------------------------------------------------
# parsing: query string → tree

@dataclass(frozen=True)
class Term:
    text: str                       # the word or phrase as written (without quotes)
    fields: tuple[str, ...]
    phrase: bool = False            # quoted
    prefix: bool = False            # truncated with *


@dataclass(frozen=True)
class DateRange:
    lo: int
    hi: int


@dataclass(frozen=True)
class Seq:
    """Operands combined left to right: ``first op1 x1 op2 x2 ...``; ``negated_first`` for a
    leading NOT."""
    first: Any
    rest: tuple[tuple[str, Any], ...] = ()
    negated_first: bool = False


_LEX = re.compile(r"""
    (?P<ws>\s+)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<colon>:)
  | (?P<tag>\[[^\[\]]*\])
  | (?P<quote>"[^"]*")
  | (?P<badquote>")
  | (?P<badtag>[\[\]])
  | (?P<word>[^\s()\[\]":]+)
""", re.VERBOSE)
_DATEWORD = re.compile(r"^\d{4}(?:[/-]\d{1,2}(?:[/-]\d{1,2})?)?$")


def _lex(query: str) -> list[tuple[str, str]]:
    out = []
    for m in _LEX.finditer(query):
        kind = m.lastgroup
        if kind == "ws":
            continue
        if kind == "badquote":
            raise QueryError("unbalanced_quotes", f"unbalanced quote at character {m.start()}")
        if kind == "badtag":
            raise QueryError("unknown_tag", f"unbalanced bracket at character {m.start()}")
        out.append((kind, m.group()))
    return out


def _tag_fields(tag: str) -> tuple[str, ...] | str:
    name = " ".join(tag[1:-1].strip().lower().split())
    if name not in TAGS:
        raise QueryError("unknown_tag", f"unknown field tag {tag!r}; known: "
                                        f"{', '.join('[' + t + ']' for t in TAGS)}")
    return TAGS[name]


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.pos = 0
        self.depth = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.toks[i] if i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def parse(self) -> Seq | None:
        seq = self.seq(top=True)
        if self.pos < len(self.toks):  # only a stray ')' stops a top-level sequence
            raise QueryError("unbalanced_parentheses", "')' without a matching '('")
        return seq

    @staticmethod
    def _op(tok: tuple[str, str] | None) -> str | None:
        return tok[1] if tok and tok[0] == "word" and tok[1] in ("AND", "OR", "NOT") else None

    def seq(self, top: bool) -> Seq | None:
        first = None
        negated_first = False
        rest: list[tuple[str, Any]] = []
        while True:
            tok = self.peek()
            if tok is None:
                if not top:
                    raise QueryError("unbalanced_parentheses", "'(' without a matching ')'")
                break
            if tok[0] == "rp":
                if top:
                    raise QueryError("unbalanced_parentheses", "')' without a matching '('")
                break
            op = self._op(tok)
            if op is not None:
                self.take()
                if self._op(self.peek()) == "NOT" and op == "AND":  # "AND NOT" is "NOT"
                    self.take()
                    op = "NOT"
                nxt = self.peek()
                if nxt is None or nxt[0] == "rp":
                    raise QueryError("operator", f"{op} without a right operand")
                if self._op(nxt) is not None:
                    raise QueryError("operator", f"{op} followed by {nxt[1]}")
                if first is None and not rest:
                    if op != "NOT" or negated_first:
                        raise QueryError("operator", f"{op} without a left operand")
                    negated_first = True
                    continue
            else:
                op = "AND"
            operand = self.operand()
            if first is None and not rest:
                first = operand
            else:
                rest.append((op, operand))
        if first is None:
            if negated_first:
                raise QueryError("operator", "NOT without an operand")
            if not top:
                raise QueryError("empty_group", "empty parentheses")
            return None
        return Seq(first, tuple(rest), negated_first)

    def _too_deep(self) -> None:
        """Nesting over :data:`MAX_DEPTH`: unbalanced parentheses if the whole query's are (what
        a shallower query would report), else ``too_deep``."""
        depth = 0
        for kind, _ in self.toks:
            depth += (kind == "lp") - (kind == "rp")
            if depth < 0:
                break
        if depth != 0:
            raise QueryError("unbalanced_parentheses", "unbalanced parentheses")
        raise QueryError("too_deep", f"parentheses nested deeper than {MAX_DEPTH} levels")

    def operand(self) -> Any:
        kind, text = self.take()
        if kind == "lp":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self._too_deep()
            inner = self.seq(top=False)
            self.take()  # the ')'
            self.depth -= 1
            if self.peek() and self.peek()[0] == "tag":
                raise QueryError("unknown_tag", "a field tag must follow a term, not ')'")
            return inner
        if kind == "colon":
            raise QueryError("bad_date", "':' outside a date range")
        if kind == "tag":
            raise QueryError("unknown_tag", f"field tag {text} without a term")
        if kind == "quote":
            value, phrase = text[1:-1], True
        else:
            value, phrase = text, False
        fields = DEFAULT_FIELDS
        nxt = self.peek()
        if nxt and nxt[0] == "tag":
            self.take()
            fields = _tag_fields(nxt[1])
        if self.peek() and self.peek()[0] == "colon":  # a range: lo[:dp]? ':' hi[dp]
            self.take()
            hi_tok = self.peek()
            if hi_tok is None or hi_tok[0] not in ("word", "quote"):
                raise QueryError("bad_date", "':' without an end date")
            self.take()
            hi = hi_tok[1].strip('"')
            if self.peek() and self.peek()[0] == "tag":
                tag_fields = _tag_fields(self.take()[1])
                if fields == DEFAULT_FIELDS:
                    fields = tag_fields
                elif tag_fields != fields:
                    raise QueryError("bad_date", "the two ends of a range have different tags")
            if fields != "dp":
                raise QueryError("bad_date", "a range needs the [dp] tag")
            return DateRange(parse_date(value), parse_date(hi, end=True))
        if fields == "dp":
            return DateRange(parse_date(value), parse_date(value, end=True))
        if not phrase and value.endswith("*"):
            stem = value[:-1]
            if "*" in stem or len(stem) < MIN_PREFIX or not re.fullmatch(r"\w+", stem):
                raise QueryError("short_prefix", f"truncation needs at least {MIN_PREFIX} letters "
                                                 f"or digits before '*' (got {value!r})")
            return Term(stem.lower(), fields, prefix=True)
        return Term(value, fields, phrase=phrase)


def parse_query(query: str) -> Seq | None:
    """The query tree (None: no operand at all); QueryError when malformed."""
    if not isinstance(query, str):
        raise QueryError("not_a_string", "the query is not a string")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError("too_long", f"the query is longer than {MAX_QUERY_CHARS} characters")
    return _Parser(_lex(query)).parse()


# ---------------------------------------------------------------------------------------------
# the analyzer shared with the BM25 index

class Analyzer:
    """The BM25 index's tokenizer as a function text → term ids (unknown terms: -2)."""

    UNKNOWN = -2

    def __init__(self, tokenizer, extra_terms: list[str] = ()) -> None:
        self.split = re.compile(r"(?u)\b\w\w+\b").findall
        self.stopwords = set(tokenizer.stopwords or ())
        self.stemmer = tokenizer.stemmer
        self.vocab: dict[str, int] = dict(tokenizer.get_vocab_dict())
        #: BM25's term ids are 0 .. bm25_size-1; terms only in MeSH / publication types follow
        self.bm25_size = max(self.vocab.values(), default=-1) + 1
        self.extra_terms = list(extra_terms)
        for i, term in enumerate(self.extra_terms):
            self.vocab[term] = self.bm25_size + i
        self.sorted_terms = sorted(t for t in self.vocab if t)
        #: word → stem, bounded (an LRU of :data:`STEM_CACHE_SIZE` words): queries bring words
        #: without end, a long-lived index (service, reward worker) must not keep them all
        self.stem = functools.lru_cache(maxsize=STEM_CACHE_SIZE)(
            self.stemmer if self.stemmer else str)

    def extend(self, texts: Iterable[str]) -> None:
        """Give ids to the terms of ``texts`` that BM25 does not know (MeSH, publication types)."""
        for text in texts:
            for stem in self.stems(text):
                if stem not in self.vocab:
                    self.vocab[stem] = self.bm25_size + len(self.extra_terms)
                    self.extra_terms.append(stem)
        self.sorted_terms = sorted(t for t in self.vocab if t)

    def stems(self, text: str) -> list[str]:
        out = []
        for word in self.split(text.lower()):
            if word in self.stopwords:
                continue
            out.append(self.stem(word))
        return out

    def ids(self, text: str) -> list[int]:
        return [self.vocab.get(s, self.UNKNOWN) for s in self.stems(text)]

    def prefix_ids(self, prefix: str) -> list[int]:
        """Ids of index terms starting with ``prefix`` or with its stem."""
        out: set[int] = set()
        stemmed = self.stems(prefix)
        for p in {prefix.lower(), *(stemmed[:1] if len(stemmed) == 1 else [])}:
            i = bisect.bisect_left(self.sorted_terms, p)
            while i < len(self.sorted_terms) and self.sorted_terms[i].startswith(p):
                out.add(self.vocab[self.sorted_terms[i]])
                i += 1
        return sorted(out)


# ---------------------------------------------------------------------------------------------
# the field store

class FieldStore:
    """Per field: ``tokens`` (term ids of all documents, ``-1`` after every value), ``offsets``
    (document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``), postings (``ptr``/``docs``: term id →
    sorted document indices)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], num_docs: int) -> None:
        self.a = dict(arrays)
        self.num_docs = num_docs
        self._doc_of: dict[str, np.ndarray] = {}

    @classmethod
    def build(cls, records: list[Mapping[str, list[str]]], analyzer: Analyzer,
              vocab_size: int) -> FieldStore:
        arrays: dict[str, np.ndarray] = {}
        for f in FIELDS:
            toks: list[int] = []
            offsets = [0]
            for rec in records:
                for value in rec.get(f) or ():
                    toks.extend(t for t in analyzer.ids(value) if t >= 0)
                    toks.append(-1)
                offsets.append(len(toks))
            tokens = np.asarray(toks, dtype=np.int32)
            offs = np.asarray(offsets, dtype=np.int64)
            doc = np.repeat(np.arange(len(records), dtype=np.int32), np.diff(offs))
            keep = tokens >= 0
            pairs = np.unique(tokens[keep].astype(np.int64) * len(records) + doc[keep])
            terms = (pairs // len(records)).astype(np.int64)
            ptr = np.zeros(vocab_size + 1, dtype=np.int64)
            np.add.at(ptr, terms + 1, 1)
            arrays[f"{f}_tokens"] = tokens
            arrays[f"{f}_offsets"] = offs
            arrays[f"{f}_ptr"] = np.cumsum(ptr)
            arrays[f"{f}_docs"] = (pairs % len(records)).astype(np.int32)
        return cls(arrays, len(records))

    def postings(self, field: str, term: int) -> np.ndarray:
        ptr = self.a[f"{field}_ptr"]
        if term < 0 or term + 1 >= len(ptr):
            return np.zeros(0, dtype=np.int32)
        return self.a[f"{field}_docs"][ptr[term]:ptr[term + 1]]

    def phrase_docs(self, field: str, terms: list[int]) -> np.ndarray:
        """Documents whose ``field`` has ``terms`` consecutively within one value."""
        tokens = self.a[f"{field}_tokens"]
        m = len(terms)
        if m == 0 or len(tokens) < m or any(t < 0 for t in terms):
            return np.zeros(0, dtype=np.int64)
        # start positions of the first term, narrowed term by term
        pos = np.flatnonzero(tokens[:len(tokens) - m + 1] == terms[0])
        for j, t in enumerate(terms[1:], 1):
            pos = pos[tokens[pos + j] == t]
            if not len(pos):
                break
        return np.unique(np.searchsorted(self.a[f"{field}_offsets"], pos, side="right") - 1)


# ---------------------------------------------------------------------------------------------
# the index

def _values(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v not in (None, "")]


def field_record(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The stored field values of a document dict (``_id``, ``title``, ``text``, optional
    ``mesh``, ``pub_types``, ``date``)."""
    return {"ti": _values(doc.get("title")), "ab": _values(doc.get("text")),
            "mh": _values(doc.get("mesh")), "pt": _values(doc.get("pub_types")),
            "date": doc.get("date") or None}


class BooleanIndex:
    """Boolean (PubMed syntax) search over a :class:`BM25Index` plus a field store."""

    def __init__(self, bm25: BM25Index, fields: FieldStore, dates: np.ndarray,
                 records: list[dict[str, Any]] | None = None, name: str = "boolean",
                 path: Path | None = None, extra_terms: list[str] = ()) -> None:
        self.bm25 = bm25
        self.fields = fields
        self.dates = dates
        self._records = records
        self.name = name
        self.path = path
        self.doc_ids = bm25.doc_ids
        self._ids = np.asarray(self.doc_ids, dtype=object)
        self.analyzer = Analyzer(bm25.tokenizer, extra_terms)
        self._data, self._indices, self._indptr = bm25.data, bm25.indices, bm25.indptr
        self.num_docs = len(self.doc_ids)
        self.has_dates = bool((dates > 0).any())

    def __len__(self) -> int:
        return self.num_docs

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Iterable[Mapping[str, Any]], name: str = "boolean", *,
              show_progress: bool = False, **bm25_params: Any) -> BooleanIndex:
        """Index document dicts (``_id``, ``title``, ``text``; optional ``mesh`` and
        ``pub_types`` lists, ``date`` ``YYYY[-MM[-DD]]``). BM25 ranks over title + text."""
        docs = list(docs)
        bm25 = BM25Index.build(docs, name=name, show_progress=show_progress, **bm25_params)
        records = [field_record(d) for d in docs]
        analyzer = Analyzer(bm25.tokenizer)
        analyzer.extend(v for r in records for f in ("mh", "pt") for v in r[f])
        fields = FieldStore.build(records, analyzer, len(analyzer.vocab) + 1)
        dates = np.asarray([record_date(r["date"]) for r in records], dtype=np.int32)
        return cls(bm25, fields, dates, records, name=name, extra_terms=analyzer.extra_terms)

    @property
    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            if self.path is None:
                raise RuntimeError("index has no stored records")
            self._records = read_json_lines_gz(self.path / "records.jsonl.gz")
        return self._records

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.bm25.save(tmp / "bm25")
            np.savez(tmp / "fields.npz", **self.fields.a)
            np.save(tmp / "dates.npy", self.dates)
            (tmp / "extra_terms.json").write_text(json.dumps(self.analyzer.extra_terms))
            write_json_lines_gz(tmp / "records.jsonl.gz", self.records)
            meta = {"type": INDEX_TYPE, "format": FORMAT_VERSION, "name": self.name,
                    "num_docs": self.num_docs, "fields": list(FIELDS),
                    "has_dates": self.has_dates}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        self.path = path
        self.bm25.path = path / "bm25"
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BooleanIndex:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("type") != INDEX_TYPE:
            raise ValueError(f"{path} is not a Boolean index (type={meta.get('type')!r})")
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: Boolean index format {meta.get('format')!r}, this version "
                             f"reads {FORMAT_VERSION}; rebuild it")
        bm25 = BM25Index.load(path / "bm25")
        with np.load(path / "fields.npz") as z:
            arrays = {k: z[k] for k in z.files}
        fields = FieldStore(arrays, meta["num_docs"])
        return cls(bm25, fields, np.load(path / "dates.npy"), name=meta.get("name", path.name),
                   path=path, extra_terms=json.loads((path / "extra_terms.json").read_text()))

    # ---- searching ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "num_docs": self.num_docs,
                "fields": list(FIELDS), "has_dates": self.has_dates,
                "path": str(self.path) if self.path else None}

    @property
    def texts(self) -> list[str]:
        return self.bm25.texts

    def documents(self, ids: list[str]) -> list[dict[str, str] | None]:
        """See :class:`deepretrieval.core.results.DocumentStore`."""
        return self.bm25.documents(ids)

    def _term_mask(self, term: Term, scoring: list[int] | None) -> np.ndarray | None:
        """Documents matching a term (None: a term of stop words only, ignored)."""
        check_deadline()  # the service's per-request compute deadline (core/deadline.py)
        mask = np.zeros(self.num_docs, dtype=bool)
        if term.prefix:
            ids = self.analyzer.prefix_ids(term.text)
            for f in term.fields:
                for n, t in enumerate(ids):
                    if n % 256 == 255:
                        check_deadline()
                    mask[self.fields.postings(f, t)] = True
            if scoring is not None:
                scoring.extend(ids)
            return mask
        ids = self.analyzer.ids(term.text)
        if not ids:
            return None
        if scoring is not None:
            scoring.extend(t for t in ids if t >= 0)
        if any(t < 0 for t in ids):  # a word the collection does not contain: no match
            return mask
        if len(ids) == 1:
            for f in term.fields:
                mask[self.fields.postings(f, ids[0])] = True
            return mask
        for f in term.fields:
            mask[self.fields.phrase_docs(f, ids)] = True
        return mask

    def _eval(self, node: Any, scoring: list[int] | None) -> np.ndarray | None:
        if isinstance(node, Term):
            return self._term_mask(node, scoring)
        if isinstance(node, DateRange):
            return (self.dates >= node.lo) & (self.dates <= node.hi)
        acc = self._eval(node.first, None if node.negated_first else scoring)
        if acc is not None and node.negated_first:
            acc = ~acc
        for op, operand in node.rest:
            value = self._eval(operand, None if op == "NOT" else scoring)
            if value is None:   # ignored operand: drops out with its operator
                continue
            if acc is None:     # everything before was ignored
                acc = ~value if op == "NOT" else value
            elif op == "AND":
                acc &= value
            elif op == "OR":
                acc |= value
            else:
                acc &= ~value
        return acc

    def match(self, query: str, *, mindate: int | None = None,
              maxdate: int | None = None) -> tuple[np.ndarray, list[int]]:
        """(boolean mask of matching documents, term ids that score); QueryError if malformed."""
        tree = parse_query(query)
        scoring: list[int] = []
        mask = self._eval(tree, scoring) if tree is not None else None
        if mask is None:
            mask = np.zeros(self.num_docs, dtype=bool)
        if mindate is not None or maxdate is not None:
            ok = self.dates > 0
            if mindate is not None:
                ok &= self.dates >= mindate
            if maxdate is not None:
                ok &= self.dates <= maxdate
            mask &= ok
        return mask, scoring

    def _scores(self, terms: list[int]) -> np.ndarray:
        acc = np.zeros(self.num_docs, dtype=np.float32)
        for t in dict.fromkeys(terms):
            if 0 <= t < len(self._indptr) - 1:
                a, b = self._indptr[t], self._indptr[t + 1]
                acc[self._indices[a:b]] += self._data[a:b]
        return acc

    def _options(self, options: Mapping[str, Any] | None) -> tuple[int | None, int | None, str]:
        options = dict(options or {})
        unknown = set(options) - OPTIONS
        if unknown:
            raise ValueError(f"boolean: unknown search option(s) {sorted(unknown)}; "
                             f"known: {sorted(OPTIONS)}")
        sort = options.get("sort") or "relevance"
        if sort not in SORTS:
            raise ValueError(f"boolean: unknown sort {sort!r}; known: {list(SORTS)}")
        try:
            lo = parse_date(options["mindate"]) if options.get("mindate") not in (None, "") else None
            hi = (parse_date(options["maxdate"], end=True)
                  if options.get("maxdate") not in (None, "") else None)
        except QueryError as exc:
            raise ValueError(f"boolean: {exc}") from None
        return lo, hi, sort

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        """Top-``k`` per query; the evidence option ``answers`` is applied here
        (:func:`~deepretrieval.search.answer_ranks.search_ranking_answers`)."""
        return search_ranking_answers(self._search, self.name, queries, k, return_text, options)

    def _search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        if k < 1:
            raise ValueError("k must be >= 1")
        lo, hi, sort = self._options(options)
        out = []
        for query in queries:
            try:
                mask, scoring = self.match(query, mindate=lo, maxdate=hi)
            except QueryError as exc:
                out.append(SearchResult(texts=[] if return_text else None,
                                        error=f"malformed query: {exc}",
                                        info={QUERY_ERROR: exc.kind}))
                continue
            cand = np.flatnonzero(mask)
            scores = self._scores(scoring)[cand]
            if sort == "pub_date":
                order = np.lexsort((cand, -self.dates[cand].astype(np.int64)))
            else:
                order = np.lexsort((cand, -scores))
            order = order[:k]
            idx = cand[order]
            result = SearchResult(ids=self._ids[idx].tolist(),
                                  scores=scores[order].astype(float).tolist(),
                                  info={"count": len(cand)})
            if return_text:
                texts = self.texts
                result.texts = [texts[j] for j in idx.tolist()]
            out.append(result)
        return out
