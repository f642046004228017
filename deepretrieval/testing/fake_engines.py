"""Loopback fake PubMed (E-utilities ``esearch``, JSON) and ClinicalTrials.gov (API v2
``studies``) servers for tests and benchmarks.

They speak the real protocols (response shapes as recorded from NCBI, see
``shared/data/pubmed_eutils_fixtures``; CT.gov v2 ``studies`` with ``nextPageToken``), answer
deterministically from a small real collection, enforce a rate limit with HTTP 429 +
``Retry-After``, can be told to fail, and record every request they received.

Collections (see :func:`pubmed_collection`, :func:`ctgov_collection`):

* PubMed: the included trials of the bundled TrialMind-SLR reviews (real PMIDs and titles) plus
  the bundled SciFact abstracts (ids used as they are). Publication years are *approximated*
  from the id (PMIDs grow with time; anchors in ``_PMID_YEAR``), only so the date cap can be
  exercised.
* ClinicalTrials.gov: the TrialMind-SLR trials that have an NCT id, plus the SciFact abstracts
  under ids ``NCT`` + 8 digits derived from their SciFact id (not real trials).

Queries are evaluated by the real Boolean backend (``deepretrieval/search/boolean.py``: PubMed
syntax, left-to-right ``AND``/``OR``/``NOT``, phrases, ``term*``, field tags, stop words ignored);
results are ranked by BM25 within the matching set, ties in collection order, so paging is
stable. A malformed query matches nothing.

Faults (:meth:`FakeEngine.fail`): ``"500"``, ``"502"``, ``"503"``, ``"429"`` (status codes),
``"slow"`` (answers after ``slow_s`` seconds), ``"truncated"`` (a JSON body cut in half, with a
matching Content-Length), ``"cut"`` (the connection closes mid-body), ``"empty"`` (a well-formed
answer with no ids although there are hits), ``"error"`` (PubMed: ``{"esearchresult": {"ERROR":
"Search Backend failed: ..."}}``; CT.gov: HTTP 400).

Usage::

    with FakePubMed(rate_limit=10) as fake:
        os.environ["DEEPRETRIEVAL_PUBMED_URL"] = fake.url
        fake.fail("503", times=2)
        ...
        fake.requests  # [Received(method, path, params, raw, time, status), ...]
"""
from __future__ import annotations

import base64
import collections
import gzip
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from deepretrieval.core.bundled import BUNDLED_DIR
from deepretrieval.search.boolean import BooleanIndex

__all__ = ["FakePubMed", "FakeCTGov", "FakeEngine", "Received", "Collection",
           "pubmed_collection", "ctgov_collection", "FAULTS", "FINAL_FAULTS"]

FAULTS = ("500", "502", "503", "429", "slow", "truncated", "cut", "empty", "error")
#: Faults a client must not retry: "echo" answers 400 with the request echoed in the body.
FINAL_FAULTS = ("echo",)
_BUNDLED = BUNDLED_DIR

# approximate (PMID, year) anchors; only used to give fake documents a publication year
_PMID_YEAR = [(0, 1950), (1_000_000, 1976), (5_000_000, 1990), (10_000_000, 1999),
              (15_000_000, 2004), (20_000_000, 2010), (25_000_000, 2014),
              (30_000_000, 2018), (35_000_000, 2022), (40_000_000, 2025)]


def _year_of(doc_id: str) -> int:
    digits = re.sub(r"\D", "", doc_id)
    n = int(digits) if digits else 0
    for (a, ya), (b, yb) in zip(_PMID_YEAR, _PMID_YEAR[1:]):
        if n < b:
            return int(ya + (yb - ya) * (n - a) / (b - a))
    return _PMID_YEAR[-1][1]


class Collection:
    """Documents ``(id, text, year)`` searched with the real Boolean backend
    (:class:`deepretrieval.search.boolean.BooleanIndex`, PubMed query syntax; the text is the
    title field, the year the publication date)."""

    def __init__(self, docs: list[tuple[str, str, int]]) -> None:
        self.ids = [d[0] for d in docs]
        self.years = [d[2] for d in docs]
        self.n = len(docs)
        self.index = BooleanIndex.build(
            [{"_id": d[0], "title": d[1], "text": "", "date": str(d[2]) if d[2] else None}
             for d in docs], name="fake")

    def __len__(self) -> int:
        return self.n

    def match(self, query: str) -> list[str]:
        """Ids of the documents matching ``query``, best BM25 first; a malformed query matches
        nothing (never raises)."""
        result = self.index.search([query], self.n)[0]
        return result.ids


def _num(doc_id: str) -> int:
    digits = re.sub(r"\D", "", doc_id)
    return int(digits) if digits else 0


def _trialmind_trials() -> list[dict]:
    trials = []
    with open(_BUNDLED / "trialmind_slr" / "reviews.jsonl", encoding="utf-8") as fh:
        for line in fh:
            trials.extend(json.loads(line)["trials"])
    return trials


def _scifact_docs() -> list[tuple[str, str]]:
    out = []
    with gzip.open(_BUNDLED / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            out.append((str(d["_id"]), f"{d.get('title', '')} {d.get('text', '')}"))
    return out


@lru_cache(maxsize=1)
def pubmed_collection() -> Collection:
    docs: dict[str, tuple[str, str, int]] = {}
    for t in _trialmind_trials():
        if t["pmid"]:
            docs.setdefault(t["pmid"], (t["pmid"], t["title"], _year_of(t["pmid"])))
    for doc_id, text in _scifact_docs():
        docs.setdefault(doc_id, (doc_id, text, _year_of(doc_id)))
    return Collection(list(docs.values()))


@lru_cache(maxsize=1)
def ctgov_collection() -> Collection:
    docs: dict[str, tuple[str, str, int]] = {}
    for t in _trialmind_trials():
        if t["nctid"]:
            docs.setdefault(t["nctid"], (t["nctid"], t["title"], 0))
    for doc_id, text in _scifact_docs():
        nct = f"NCT{int(doc_id) % 10**8:08d}"
        docs.setdefault(nct, (nct, text, 0))
    return Collection(list(docs.values()))


@dataclass
class Received:
    method: str
    path: str
    params: dict[str, list[str]]     # decoded query string / form body
    raw: str                         # the raw (still encoded) query string or body
    time: float
    status: int = 0

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None


@dataclass
class _Fault:
    kind: str
    remaining: int | None            # None: until cleared


class FakeEngine:
    """Base of the fake servers: HTTP plumbing, rate limit, faults, request log."""

    name = "fake"

    def __init__(self, *, rate_limit: float | None = None, window: float = 1.0,
                 retry_after: str = "1", slow_s: float = 2.0, collection: Collection | None = None,
                 max_request_s: float = 30.0) -> None:
        self.rate_limit = rate_limit
        self.window = float(window)
        self.retry_after = retry_after
        self.slow_s = float(slow_s)
        self._collection = collection
        self.requests: list[Received] = []
        self.count_429 = 0
        self.max_in_window = 0         # most requests seen (served or not) in any window
        self._arrivals: collections.deque[float] = collections.deque()
        self._served: collections.deque[float] = collections.deque()
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._match_cache: dict[tuple, list[str]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.max_request_s = max_request_s

    @property
    def collection(self) -> Collection:
        if self._collection is None:
            self._collection = self._default_collection()
        return self._collection

    def _default_collection(self) -> Collection:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeEngine":
        _ = self.collection  # load before serving: the first request must not be slow
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = engine.max_request_s

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                split = urlsplit(self.path)
                engine._handle(self, "GET", split.path, split.query)

            def do_POST(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                raw = "&".join(p for p in (split.query, body) if p)
                engine._handle(self, "POST", split.path, raw)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"{self.name}-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeEngine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.base_path}"

    base_path = ""

    # -- control -----------------------------------------------------------------------------
    def fail(self, kind: str, times: int | None = 1) -> None:
        """The next ``times`` requests (None: all, until :meth:`clear_faults`) fail with ``kind``."""
        if kind not in FAULTS + FINAL_FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULTS + FINAL_FAULTS}")
        with self._lock:
            self._faults.append(_Fault(kind, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.count_429 = 0
            self.max_in_window = 0
            self._arrivals.clear()

    def _next_fault(self) -> str | None:
        with self._lock:
            while self._faults:
                fault = self._faults[0]
                if fault.remaining is None:
                    return fault.kind
                if fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.pop(0)
                    return fault.kind
                self._faults.pop(0)
        return None

    def _admit(self, now: float) -> bool:
        """Record the arrival; False when the rate limit is exceeded (→ 429)."""
        with self._lock:
            self._arrivals.append(now)
            while self._arrivals and self._arrivals[0] <= now - self.window:
                self._arrivals.popleft()
            self.max_in_window = max(self.max_in_window, len(self._arrivals))
            if self.rate_limit is None:
                return True
            while self._served and self._served[0] <= now - self.window:
                self._served.popleft()
            if len(self._served) >= self.rate_limit * self.window:
                self.count_429 += 1
                return False
            self._served.append(now)
            return True

    def match(self, query: str, maxyear: int | None = None, minyear: int | None = None) -> list[str]:
        key = (query, maxyear, minyear)
        with self._lock:
            hit = self._match_cache.get(key)
        if hit is not None:
            return hit
        ids = self.collection.match(query)
        if maxyear is not None or minyear is not None:
            year = dict(zip(self.collection.ids, self.collection.years))
            ids = [i for i in ids if (maxyear is None or year[i] <= maxyear)
                   and (minyear is None or year[i] >= minyear)]
        with self._lock:
            if len(self._match_cache) > 4096:
                self._match_cache.clear()
            self._match_cache[key] = ids
        return ids

    # -- request handling --------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str, path: str, raw: str) -> None:
        now = time.monotonic()
        params = parse_qs(raw, keep_blank_values=True)
        record = Received(method, path, params, raw, now)
        with self._lock:
            self.requests.append(record)
        if not self._admit(now):
            record.status = 429
            self._send(h, 429, b"Too Many Requests", "text/plain",
                       {"Retry-After": self.retry_after})
            return
        fault = self._next_fault()
        if fault in ("500", "502", "503", "429"):
            record.status = int(fault)
            headers = {"Retry-After": self.retry_after} if fault in ("429", "503") else {}
            self._send(h, int(fault), f"fault {fault}".encode(), "text/plain", headers)
            return
        if fault == "echo":  # a 4xx whose body echoes the request, as some proxies do
            record.status = 400
            self._send(h, 400, f"bad request: {method} {path}?{raw} "
                               f"{dict(h.headers)}".encode(), "text/plain")
            return
        if fault == "slow":
            time.sleep(self.slow_s)
        try:
            status, body = self._answer(path, params, fault)
        except Exception as exc:  # the fake must not die on odd input
            status, body = 400, f"bad request: {exc}".encode()
        record.status = status
        ctype = "application/json" if status == 200 else "text/plain"
        if status == 200 and fault == "truncated":
            body = body[: max(1, len(body) // 2)]
        if status == 200 and fault == "cut":
            h.send_response(200)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, status, body, ctype)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _answer(self, path: str, params: dict[str, list[str]], fault: str | None) -> tuple[int, bytes]:
        raise NotImplementedError


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out (``slow``) or go away are normal here


def _first(params: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = params.get(name)
    return values[0] if values else default


class FakePubMed(FakeEngine):
    """``GET|POST /entrez/eutils/esearch.fcgi`` with ``db=pubmed&retmode=json``."""

    name = "fake-pubmed"
    base_path = "/entrez/eutils"
    max_results = 10_000

    def _default_collection(self) -> Collection:
        return pubmed_collection()

    def _answer(self, path, params, fault):
        if not path.endswith("/esearch.fcgi"):
            return 404, b"not found"
        if _first(params, "db", "pubmed") != "pubmed":
            return 200, _json({"header": {"type": "esearch", "version": "0.3"},
                               "esearchresult": {"ERROR": f"Invalid db name specified: {_first(params, 'db')}"}})
        if fault == "error":
            return 200, _json({"header": {"type": "esearch", "version": "0.3"},
                               "esearchresult": {"ERROR": "Search Backend failed: fake backend failure"}})
        term = _first(params, "term", "") or ""
        if not term.strip():
            return 200, _json({"header": {"type": "esearch", "version": "0.3"},
                               "esearchresult": {"ERROR": "Empty term and query_key - nothing todo"}})
        retstart = int(_first(params, "retstart", "0"))
        retmax = int(_first(params, "retmax", "20"))
        if retstart > self.max_results - 1:
            return 200, _json({"header": {"type": "esearch", "version": "0.3"}, "esearchresult": {
                "ERROR": f"Search Backend failed: Exception:\n'retstart' cannot be larger than "
                         f"{self.max_results - 1}. For PubMed, ESearch can only retrieve the first "
                         f"{self.max_results - 1} records matching the query."}})
        retmax = max(0, min(retmax, self.max_results))
        maxyear = minyear = None
        if _first(params, "datetype") == "pdat":
            if _first(params, "maxdate"):
                maxyear = int(_first(params, "maxdate")[:4])
            if _first(params, "mindate"):
                minyear = int(_first(params, "mindate")[:4])
        ids = self.match(term, maxyear, minyear)
        page = [] if fault == "empty" else ids[retstart: retstart + retmax]
        result: dict[str, Any] = {"count": str(len(ids)), "retmax": str(len(page)),
                                  "retstart": str(retstart), "idlist": page,
                                  "translationset": [], "querytranslation": term}
        if not ids:
            result["warninglist"] = {"phrasesignored": [], "quotedphrasesnotfound": [],
                                     "outputmessages": ["No items found."]}
        return 200, _json({"header": {"type": "esearch", "version": "0.3"}, "esearchresult": result})


class FakeCTGov(FakeEngine):
    """``GET /api/v2/studies`` with ``query.term``, ``pageSize`` (≤ 1000), ``pageToken``."""

    name = "fake-ctgov"
    base_path = "/api/v2"
    max_page_size = 1000

    def _default_collection(self) -> Collection:
        return ctgov_collection()

    def _answer(self, path, params, fault):
        if not path.endswith("/studies"):
            return 404, b"not found"
        if fault == "error":
            return 400, b"fake: invalid request"
        term = _first(params, "query.term", "") or ""
        if term.count("(") != term.count(")"):
            return 400, b"query.term: unbalanced parentheses"
        size = int(_first(params, "pageSize", "10"))
        if not 0 < size <= self.max_page_size:
            return 400, f"pageSize must be between 1 and {self.max_page_size}".encode()
        digest = hashlib.sha1(term.encode()).hexdigest()[:12]
        offset = 0
        token = _first(params, "pageToken")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                offset, token_digest = int(state["o"]), state["h"]
            except (ValueError, KeyError, TypeError):
                return 400, b"pageToken: invalid"
            if token_digest != digest:
                return 400, b"pageToken: does not belong to this query"
        ids = self.match(term) if term.strip() else list(self.collection.ids)
        page = [] if fault == "empty" else ids[offset: offset + size]
        out: dict[str, Any] = {"studies": [{"protocolSection": {"identificationModule": {"nctId": i}}}
                                           for i in page]}
        if _first(params, "countTotal") == "true":
            out["totalCount"] = len(ids)
        if fault != "empty" and offset + size < len(ids):
            out["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"o": offset + size, "h": digest}).encode()).decode()
        return 200, _json(out)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
