"""The service's wire shapes: JSON codec, request parsing and answer encoding, one place per shape.

Every shape ends in the same search (same backends, micro-batching and limits); only the request
fields and the answer's JSON differ. See ``docs/service.md`` for the table.

* ``POST /retrieve`` — Search-R1 ``{"queries", "topk", "return_scores"}`` (and ASearcher, which
  sends ``return_scores: false`` and reads each document's ``url``), our compact formats
  (``"format": "hits" | "columns" | "packed"``), and ZeroSearch ``{"query": str, "top_k"}`` →
  a top-level list of ``{"text"}``;
* ``POST /queries`` — R1-Searcher ``{"queries", "k"}`` → ``{"answers": [[str, ...], ...]}``;
* ``POST /search`` / ``POST /batch_search`` — FlashRAG-style ``{"query", "top_n", "return_score"}``
  → documents (``[documents, scores]`` with ``return_score``);
* ``POST /access`` — ASearcher ``{"urls": [...]}`` → ``{"result": [{"contents", "url", "id"} | null]}``.

Per-query errors: shapes whose answer is a JSON object carry them as ``"errors"`` (one entry per
query, ``null`` where it succeeded) beside the results; shapes whose answer is a bare list
(ZeroSearch, ``/search``, ``/batch_search``) give a failed query an empty list and name the
failures in the headers ``x-deepretrieval-query-errors`` (how many) and
``x-deepretrieval-first-error`` (the first message, cut to 300 characters).

Answers are encoded one query at a time into byte pieces (:class:`Encoder`), counting their size:
past ``max_answer_bytes`` the encoding stops and the request gets a 413 (:class:`AnswerTooLarge`).
"""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepretrieval.core.results import SearchResult

try:  # orjson is much faster at encoding long hit lists; the stdlib is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


# ---- codec -----------------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    # SQL rows may hold Decimal, bytes, dates...; numpy scalars may slip through backends
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", "replace")
    return str(obj)


def dumps(obj: Any) -> bytes:
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, default=_json_default,
                                 option=_orjson.OPT_SERIALIZE_NUMPY | _orjson.OPT_NON_STR_KEYS)
        except _orjson.JSONEncodeError as exc:
            if "surrogate" not in str(exc):
                raise
    else:
        try:
            return json.dumps(obj, default=_json_default, separators=(",", ":"),
                              ensure_ascii=False).encode()
        except UnicodeEncodeError:
            pass
    # a lone surrogate (e.g. in an error message quoting a query): JSON allows it escaped
    return json.dumps(obj, default=_json_default, separators=(",", ":"),
                      ensure_ascii=True).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON. orjson refuses a lone surrogate escape (``"\\ud800"``), which the JSON grammar
    allows and Python clients send: for that case only, the stdlib parser reads the body, so the
    query holding it becomes that query's own error instead of failing the whole request."""
    if _orjson is None:
        return json.loads(data)
    try:
        return _orjson.loads(data)
    except _orjson.JSONDecodeError as exc:
        if "surrogate" not in str(exc):
            raise
    return json.loads(data)


# ---- errors ----------------------------------------------------------------------------------

class HTTPError(Exception):
    """A request the service refuses: ``status`` and a message naming the problem; ``limit`` names
    the configuration limit it ran into, when one did (``"limit"`` in the error body)."""

    def __init__(self, status: int, message: str, limit: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.limit = limit


class AnswerTooLarge(Exception):
    """Encoding the answer passed ``limit`` bytes (``size`` encoded when it stopped)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"answer over {limit} bytes")
        self.size = size
        self.limit = limit


# ---- encoding --------------------------------------------------------------------------------

class Encoder:
    """JSON answer as byte pieces, with a running size checked against ``limit``."""

    __slots__ = ("parts", "size", "limit")

    def __init__(self, limit: int):
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit

    def raw(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.limit:
            raise AnswerTooLarge(self.size, self.limit)

    def value(self, obj: Any) -> None:
        self.raw(dumps(obj))

    def items(self, values) -> None:
        """A JSON list whose items are encoded one by one (``values`` may be a generator)."""
        self.raw(b"[")
        for i, obj in enumerate(values):
            if i:
                self.raw(b",")
            self.value(obj)
        self.raw(b"]")

    def key(self, name: str, first: bool = False) -> None:
        self.raw((b"" if first else b",") + dumps(name) + b":")


def _cut(text: str, cap: int | None) -> str:
    return text if cap is None or len(text) <= cap else text[:cap]


def _title_and_body(text: str, title: str) -> tuple[str, str]:
    """Split a stored text (title and text joined by a space, see ``search.bm25.doc_text``)."""
    if title and text.startswith(title):
        return title, text[len(title):].lstrip()
    return title, text


def passages(result: SearchResult, cap: int | None) -> list[tuple[str, str, str]]:
    """``(id, title, passage)`` of each hit: the title ``""`` when the index stores none, the
    passage without the title, cut to ``cap`` characters."""
    texts = result.texts if result.texts is not None else [""] * len(result.ids)
    titles = result.titles if result.titles is not None else [""] * len(result.ids)
    out = []
    for doc_id, text, title in zip(result.ids, texts, titles):
        title, body = _title_and_body(text, title)
        out.append((doc_id, title, _cut(body, cap)))
    return out


def contents(title: str, passage: str) -> str:
    """Search-R1's ``contents``: the title in double quotes, a newline, the passage."""
    return f'"{title}"\n{passage}'


def search_r1_documents(result: SearchResult, cap: int | None) -> list[dict[str, str]]:
    """Search-R1's documents ``{"id", "contents", "url"}`` of one result. ``url`` is the document
    id (our indexes store no URLs; ASearcher's client needs the key and sends it back to
    ``/access``)."""
    return [{"id": i, "contents": contents(t, p), "url": i} for i, t, p in passages(result, cap)]


PACK_SEP = "\n"


def pack_ids(ids: list[str]) -> str | list[str]:
    """``ids`` as one newline-joined string when that is unambiguous (no id is empty or contains
    a newline), else the list itself."""
    if not ids:
        return ids
    try:
        joined = PACK_SEP.join(ids)
    except TypeError:  # not all strings
        return ids
    if (joined.count(PACK_SEP) != len(ids) - 1 or not joined or joined[0] == PACK_SEP
            or joined[-1] == PACK_SEP or PACK_SEP + PACK_SEP in joined):
        return ids
    return joined


def pack_scores(scores: list[float]) -> str | list:
    """Scores as base64 of little-endian float64 (exact), or the list when they are not numbers."""
    try:
        arr = np.asarray(scores, dtype="<f8")
    except (TypeError, ValueError):
        return scores
    if arr.ndim != 1:
        return scores
    return base64.b64encode(arr.tobytes()).decode("ascii")


def _extras(enc: Encoder, results: Sequence[SearchResult]) -> None:
    """``errors`` / ``rows`` / ``info`` columns, each only when some query has one."""
    if any(r.error for r in results):
        enc.key("errors")
        enc.value([r.error for r in results])
    if any(r.rows is not None for r in results):
        enc.key("rows")
        enc.items(r.rows for r in results)
    if any(r.info for r in results):
        enc.key("info")
        enc.value([r.info or None for r in results])


# ---- the search shapes -----------------------------------------------------------------------

SEARCH_R1 = "search_r1"
FORMATS = (SEARCH_R1, "hits", "columns", "packed")


@dataclass
class SearchRequest:
    """A parsed search request of any shape: what to search, and how to answer."""

    shape: str                     #: a key of SHAPES
    queries: list[str]
    k: int
    index: str
    options: dict[str, Any] | None = None
    return_text: bool = True
    return_scores: bool = True
    format: str = SEARCH_R1         #: ``/retrieve`` formats only
    max_passage_chars: int | None = None
    single: bool = False            #: the shape carries one query (answer for it alone)
    extra: dict[str, Any] = field(default_factory=dict)


def _encode_retrieve(enc: Encoder, req: SearchRequest, results: Sequence[SearchResult]) -> None:
    cap, fmt = req.max_passage_chars, req.format
    if cap is not None and fmt != SEARCH_R1:
        results = [r if r.texts is None else
                   SearchResult(ids=r.ids, scores=r.scores, texts=[_cut(t, cap) for t in r.texts],
                                rows=r.rows, error=r.error, info=r.info, titles=r.titles)
                   for r in results]
    enc.raw(b"{")
    if fmt == SEARCH_R1:
        def hits(r: SearchResult):
            docs = search_r1_documents(r, cap)
            if req.return_scores:
                return [{"document": d, "score": float(s)} for d, s in zip(docs, r.scores)]
            return docs
        enc.key("result", first=True)
        enc.items(hits(r) for r in results)
    elif fmt in ("packed", "columns"):
        packed = fmt == "packed"
        enc.key("ids", first=True)
        enc.items(pack_ids(r.ids) if packed else r.ids for r in results)
        if req.return_scores:
            enc.key("scores")
            enc.items(pack_scores(r.scores) if packed else r.scores for r in results)
        if any(r.texts is not None for r in results):
            enc.key("contents")
            enc.items(r.texts for r in results)
    else:  # hits
        def hits(r: SearchResult):
            if r.texts is None and req.return_scores and len(r.scores) == len(r.ids):
                return [{"id": i, "score": s} for i, s in zip(r.ids, r.scores)]
            return r.to_hits(req.return_scores)
        enc.key("result", first=True)
        enc.items(hits(r) for r in results)
    _extras(enc, results)
    enc.raw(b"}")


def _texts(r: SearchResult, cap: int | None) -> list[str]:
    return [contents(t, p) for _, t, p in passages(r, cap)]


def _encode_zerosearch(enc: Encoder, req: SearchRequest, results: Sequence[SearchResult]) -> None:
    enc.items({"text": text} for text in _texts(results[0], req.max_passage_chars))


def _encode_r1_searcher(enc: Encoder, req: SearchRequest, results: Sequence[SearchResult]) -> None:
    enc.raw(b"{")
    enc.key("answers", first=True)
    enc.items(_texts(r, req.max_passage_chars) for r in results)
    _extras(enc, results)
    enc.raw(b"}")


def flashrag_documents(r: SearchResult, cap: int | None) -> list[dict[str, str]]:
    """Documents as FlashRAG-style servers return corpus rows: ``id``, ``contents`` (title line +
    passage, like Search-R1), ``title`` and ``text``."""
    return [{"id": i, "contents": contents(t, p), "title": t, "text": p}
            for i, t, p in passages(r, cap)]


def _encode_flashrag(enc: Encoder, req: SearchRequest, results: Sequence[SearchResult]) -> None:
    cap = req.max_passage_chars
    if req.single:
        docs_of = flashrag_documents(results[0], cap)
        if req.return_scores:
            enc.raw(b"[")
            enc.value(docs_of)
            enc.raw(b",")
            enc.value([float(s) for s in results[0].scores])
            enc.raw(b"]")
        else:
            enc.value(docs_of)
        return
    if req.return_scores:
        enc.raw(b"[")
        enc.items(flashrag_documents(r, cap) for r in results)
        enc.raw(b",")
        enc.items([float(s) for s in r.scores] for r in results)
        enc.raw(b"]")
    else:
        enc.items(flashrag_documents(r, cap) for r in results)


#: shape → (encoder, whether the answer is a JSON object with room for ``"errors"``)
SHAPES: dict[str, tuple[Callable[[Encoder, SearchRequest, Sequence[SearchResult]], None], bool]] = {
    "retrieve": (_encode_retrieve, True),
    "zerosearch": (_encode_zerosearch, False),
    "r1_searcher": (_encode_r1_searcher, True),
    "flashrag": (_encode_flashrag, False),
}


def encode(req: SearchRequest, results: Sequence[SearchResult],
           limit: int) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """The answer to ``req`` as byte pieces and extra headers; :class:`AnswerTooLarge` past
    ``limit`` bytes."""
    encoder, has_errors = SHAPES[req.shape]
    enc = Encoder(limit)
    encoder(enc, req, results)
    headers: list[tuple[bytes, bytes]] = []
    failed = [r.error for r in results if r.error]
    if failed and not has_errors:
        first = bytes(b if 0x20 <= b < 0x7f else 0x20  # a header value: printable ASCII only
                      for b in failed[0][:300].encode("ascii", "backslashreplace"))
        headers = [(b"x-deepretrieval-query-errors", str(len(failed)).encode()),
                   (b"x-deepretrieval-first-error", first)]
    return enc.parts, headers


def render(results: list[SearchResult], return_scores: bool, fmt: str,
           max_passage_chars: int | None = None) -> dict[str, Any]:
    """The ``/retrieve`` answer for ``results`` as a Python object (tests, tools)."""
    req = SearchRequest("retrieve", [], 1, "", return_scores=return_scores, format=fmt,
                        max_passage_chars=max_passage_chars)
    parts, _ = encode(req, results, 1 << 62)
    return loads(b"".join(parts))


def min_hit_bytes(req: SearchRequest) -> int:
    """The fewest answer bytes one more hit adds in ``req``'s shape (a 1-character id, no text,
    score 0): ``queries x k x this`` is what the answer reaches when every query finds ``k``
    hits, checked against the limit before anything is searched."""
    one = SearchResult(ids=["0"], scores=[0.0], texts=[""] if req.return_text else None,
                       titles=None)
    none = SearchResult(ids=[], scores=[], texts=[] if req.return_text else None)
    probe = SearchRequest(req.shape, [], req.k, req.index, return_text=req.return_text,
                          return_scores=req.return_scores, format=req.format,
                          max_passage_chars=req.max_passage_chars, single=req.single)
    size = [sum(map(len, encode(probe, [r, none], 1 << 62)[0])) for r in (one, none)]
    return max(1, size[0] - size[1])


# ---- request parsing -------------------------------------------------------------------------

def _queries(value: Any, name: str, limits, single: bool = False) -> list[str]:
    if single:
        if not isinstance(value, str):
            raise HTTPError(422, f"'{name}' must be a string")
        queries = [value]
    else:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(q, str) for q in value):
            raise HTTPError(422, f"'{name}' must be a list of strings")
        queries = value
    if len(queries) > limits.max_queries:
        raise HTTPError(413, f"{len(queries)} queries in one request exceed the limit "
                             f"max_queries={limits.max_queries}", "max_queries")
    for i, q in enumerate(queries):
        if len(q) > limits.max_query_chars:
            raise HTTPError(413, f"query {i} has {len(q)} characters, over the limit "
                                 f"max_query_chars={limits.max_query_chars}", "max_query_chars")
    return queries


def _k(req: dict[str, Any], names: tuple[str, ...], limits, default: int = 10) -> int:
    name = next((n for n in names if n in req), names[0])
    k = req.get(name, default)
    if isinstance(k, bool) or not isinstance(k, int):
        raise HTTPError(422, f"'{name}' must be an integer (got {k!r})")
    if k < 1:
        raise HTTPError(422, f"'{name}' must be >= 1 (got {k})")
    if k > limits.max_k:
        raise HTTPError(422, f"{name}={k} exceeds the limit max_k={limits.max_k}", "max_k")
    return k


def _index(req: dict[str, Any], indexes) -> str:
    index = req.get("index")
    if index is None:
        if len(indexes) != 1:
            raise HTTPError(422, f"'index' is required when several indexes are served "
                                 f"(serving: {sorted(indexes)})")
        index = next(iter(indexes))
    if not isinstance(index, str):
        raise HTTPError(422, "'index' must be a string")
    if index not in indexes:
        raise HTTPError(404, f"unknown index {index!r}; serving: {sorted(indexes)}")
    return index


def _flag(req: dict[str, Any], name: str, default: bool) -> bool:
    value = req.get(name, default)
    if not isinstance(value, bool):
        raise HTTPError(422, f"'{name}' must be true or false")
    return value


def _passage_cap(req: dict[str, Any], limits, default: int | None) -> int | None:
    cap = req.get("max_passage_chars")
    if cap is None:
        return default
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise HTTPError(422, f"'max_passage_chars' must be a positive integer (got {cap!r})")
    if cap > limits.max_passage_chars:
        raise HTTPError(422, f"max_passage_chars={cap} exceeds the limit "
                             f"max_passage_chars={limits.max_passage_chars}", "max_passage_chars")
    return cap


def _options(req: dict[str, Any]) -> dict[str, Any] | None:
    options = req.get("options")
    if options is not None and not isinstance(options, dict):
        raise HTTPError(422, "'options' must be a JSON object")
    return options or None


def parse_retrieve(req: dict[str, Any], limits, indexes) -> SearchRequest:
    """``POST /retrieve``: Search-R1 / ASearcher / our formats, or ZeroSearch's one query."""
    if "queries" not in req and "query" in req:  # ZeroSearch: {"query": str, "top_k": int}
        return SearchRequest("zerosearch", _queries(req["query"], "query", limits, single=True),
                             _k(req, ("top_k", "topk"), limits), _index(req, indexes),
                             _options(req), max_passage_chars=_passage_cap(
                                 req, limits, limits.max_passage_chars), single=True)
    queries = _queries(req.get("queries"), "queries", limits)
    k = _k(req, ("topk", "k"), limits)
    index = _index(req, indexes)
    options = _options(req)
    fmt = req.get("format", SEARCH_R1)
    if fmt not in FORMATS:
        raise HTTPError(422, f"'format' must be one of {list(FORMATS)} (got {fmt!r})")
    return_scores = _flag(req, "return_scores", True)
    return_text = _flag(req, "return_text", fmt == SEARCH_R1)
    if fmt == SEARCH_R1 and not return_text:
        raise HTTPError(422, "format 'search_r1' always returns the passages; ask for "
                             "'format': 'hits' (or 'columns', 'packed') to get ids only")
    cap = _passage_cap(req, limits, limits.max_passage_chars if fmt == SEARCH_R1 else None)
    return SearchRequest("retrieve", queries, k, index, options, return_text=return_text,
                         return_scores=return_scores, format=fmt, max_passage_chars=cap)


def parse_queries(req: dict[str, Any], limits, indexes) -> SearchRequest:
    """``POST /queries`` (R1-Searcher): ``{"queries": [...], "k": int}``."""
    return SearchRequest("r1_searcher", _queries(req.get("queries"), "queries", limits),
                         _k(req, ("k", "topk"), limits), _index(req, indexes), _options(req),
                         max_passage_chars=_passage_cap(req, limits, limits.max_passage_chars))


def _parse_flashrag(req: dict[str, Any], limits, indexes, single: bool) -> SearchRequest:
    return SearchRequest("flashrag", _queries(req.get("query"), "query", limits, single=single),
                         _k(req, ("top_n",), limits), _index(req, indexes), _options(req),
                         return_scores=_flag(req, "return_score", False),
                         max_passage_chars=_passage_cap(req, limits, limits.max_passage_chars),
                         single=single)


def parse_search(req: dict[str, Any], limits, indexes) -> SearchRequest:
    """``POST /search`` (FlashRAG-style): ``{"query": str, "top_n", "return_score"}``."""
    return _parse_flashrag(req, limits, indexes, single=True)


def parse_batch_search(req: dict[str, Any], limits, indexes) -> SearchRequest:
    """``POST /batch_search`` (FlashRAG-style): ``{"query": [...], "top_n", "return_score"}``."""
    return _parse_flashrag(req, limits, indexes, single=False)


#: route → parser of its search request
SEARCH_ROUTES: dict[str, Callable[..., SearchRequest]] = {
    "/retrieve": parse_retrieve,
    "/queries": parse_queries,
    "/search": parse_search,
    "/batch_search": parse_batch_search,
}


# ---- /access ---------------------------------------------------------------------------------

def parse_access(req: dict[str, Any], limits, indexes) -> tuple[str, list[str]]:
    """``POST /access`` (ASearcher): ``{"urls": [...], "index"?}`` → (index, urls)."""
    urls = req.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise HTTPError(422, "'urls' must be a list of strings")
    if len(urls) > limits.max_queries:
        raise HTTPError(413, f"{len(urls)} urls in one request exceed the limit "
                             f"max_queries={limits.max_queries}", "max_queries")
    return _index(req, indexes), urls


def encode_access(urls: list[str], found: list[dict[str, str] | None], limit: int) -> list[bytes]:
    """``{"result": [{"id", "url", "contents"} | null, ...], "errors"?: [...]}``: ``contents``
    is the whole document (title line and text, not cut); an unknown url is ``null`` with its
    message in ``errors``."""
    enc = Encoder(limit)
    enc.raw(b"{")
    enc.key("result", first=True)
    enc.items(None if doc is None else
              {"id": doc["id"], "url": url, "contents": contents(doc["title"], doc["text"])}
              for url, doc in zip(urls, found))
    if any(doc is None for doc in found):
        enc.key("errors")
        enc.value([f"no document with id {url!r} in this index" if doc is None else None
                   for url, doc in zip(urls, found)])
    enc.raw(b"}")
    return enc.parts
