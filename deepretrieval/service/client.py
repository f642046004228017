"""Clients of the retrieval service.

* :class:`AsyncServiceClient` — httpx async client: timeouts, retries with exponential backoff on
  connection errors and 5xx answers, large query lists split into chunks sent concurrently.
* :class:`ServiceClient` — the same over a blocking httpx client.
* :class:`ServiceSearcher` — the :class:`deepretrieval.core.results.Searcher` the reward function uses when
  ``DEEPRETRIEVAL_SEARCH_URL`` is set (token from ``DEEPRETRIEVAL_SEARCH_TOKEN``, timeout and retries
  from ``DEEPRETRIEVAL_SEARCH_TIMEOUT`` / ``DEEPRETRIEVAL_SEARCH_RETRIES``).

``url`` is the service's base URL (``http://host:8000``) or its ``/retrieve`` URL as Search-R1
users write it (``http://host:8000/retrieve``). A query the service could not answer (its
``"errors"`` entry) is that query's ``SearchResult.error``; the other queries keep their
results. A chunk whose answer would pass the service's ``max_answer_bytes`` (413 naming that
limit) is asked again in halves, down to the single query, whose answer alone over the limit is
its own error. Every other failure (dead server, retries exhausted, 4xx) raises
:class:`deepretrieval.core.results.SearchError` with the server's message, within ``timeout`` seconds.
"""
from __future__ import annotations

import asyncio
import base64
import threading
import time
import weakref
from typing import Any

import httpx
import numpy as np

from deepretrieval.core import per_query, settings
from deepretrieval.core.results import SearchError, SearchResult
from deepretrieval.service._http import AsyncHTTP, TransportError
from deepretrieval.service.wire import dumps, loads

__all__ = ["AsyncServiceClient", "ServiceClient", "ServiceSearcher"]

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.1
DEFAULT_CHUNK = 1024


def _columns_from_result(result: Any) -> dict[str, Any]:
    """``ids``/``scores``/``contents`` columns of a ``"result"`` answer: Search-R1's
    ``[{"document": {"id", "contents"}, "score"}]`` (or bare documents) or our ``hits``."""
    if not isinstance(result, list) or not all(isinstance(row, list) for row in result):
        raise SearchError("malformed answer from the search service: 'result' is not a list of "
                          "hit lists")
    ids, scores, contents = [], [], []
    for row in result:
        row_ids, row_scores, row_contents = [], [], []
        for hit in row:
            doc = hit.get("document", hit) if isinstance(hit, dict) else None
            if not isinstance(doc, dict) or "id" not in doc:
                raise SearchError("malformed answer from the search service: a hit without a "
                                  "document id")
            row_ids.append(doc["id"])
            row_scores.append(hit.get("score"))
            row_contents.append(doc.get("contents"))
        ids.append(row_ids)
        scores.append(row_scores)
        contents.append(row_contents)
    out: dict[str, Any] = {"ids": ids, "scores": scores}
    if any(c is not None for row in contents for c in row):
        out["contents"] = contents
    return out


def _unpack_ids(value: Any) -> list:
    if isinstance(value, str):
        return value.split("\n")
    return value


def _unpack_scores(value: Any) -> list:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f8").tolist()
    return value


def _check_columns(n: int, ids, scores, contents, errors, rows, info) -> None:
    """Raise SearchError unless every column of an answer has the shape of the search API."""
    def bad(what: str) -> SearchError:
        return SearchError(f"malformed answer from the search service: {what}")

    for name, col in (("scores", scores), ("contents", contents), ("errors", errors),
                      ("rows", rows), ("info", info)):
        if not isinstance(col, list) or len(col) != n:
            raise bad(f"'{name}' is not a list of {n} entries")
    for i in range(n):
        if not isinstance(ids[i], list) or not all(isinstance(x, str) for x in ids[i]):
            raise bad(f"ids of query {i} are not a list of strings")
        if not isinstance(scores[i], list) or (scores[i] and len(scores[i]) != len(ids[i])) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) or x is None for x in scores[i]):
            raise bad(f"scores of query {i} are not {len(ids[i])} numbers")
        if contents[i] is not None and (not isinstance(contents[i], list)
                                        or len(contents[i]) != len(ids[i])):
            raise bad(f"contents of query {i} are not {len(ids[i])} entries")
        if errors[i] is not None and not isinstance(errors[i], str):
            raise bad(f"error of query {i} is not a string")
        if rows[i] is not None and not isinstance(rows[i], list):
            raise bad(f"rows of query {i} are not a list")
        if info[i] is not None and not isinstance(info[i], dict):
            raise bad(f"info of query {i} is not an object")


def base_url(url: str) -> str:
    """The service's base URL from what a user gives: ``host:port``, ``http://host:port``, or the
    search route itself as Search-R1 users write it, ``http://host:port/retrieve`` (a trailing
    ``/retrieve`` is dropped; any other path is kept as the prefix of the routes)."""
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    if url.endswith("/retrieve"):
        url = url[:-len("/retrieve")].rstrip("/")
    return url


#: one request's queries and their per-query answers (None: no answers, or the same for all)
_Chunk = tuple[list[str], list[list[str]] | None]


def _halves(chunk: _Chunk) -> tuple[_Chunk, _Chunk]:
    queries, answers = chunk
    mid = len(queries) // 2
    if answers is None:
        return (queries[:mid], None), (queries[mid:], None)
    return (queries[:mid], answers[:mid]), (queries[mid:], answers[mid:])


class _AnswerTooLarge(SearchError):
    """The service refused a chunk because its answer would pass ``max_answer_bytes``: the
    client searches the chunk again in halves."""


class _Base:
    def __init__(self, url: str, token: str | None = None, timeout: float | None = None,
                 retries: int | None = None, backoff: float = DEFAULT_BACKOFF,
                 chunk_size: int = DEFAULT_CHUNK):
        if not url:
            raise ValueError("the search service URL is empty")
        self.url = base_url(url)
        self.token = token or None
        self.timeout = float(timeout if timeout is not None
                             else settings.get_float("DEEPRETRIEVAL_SEARCH_TIMEOUT", DEFAULT_TIMEOUT))
        self.retries = max(0, int(retries if retries is not None
                                  else settings.get_int("DEEPRETRIEVAL_SEARCH_RETRIES", DEFAULT_RETRIES)))
        self.backoff = max(0.0, backoff)
        self.chunk_size = max(1, chunk_size)

    @property
    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/json"}
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        return h

    @staticmethod
    def _payload(index: str | None, queries: list[str], k: int, return_text: bool,
                 options: dict[str, Any] | None) -> bytes:
        body: dict[str, Any] = {"queries": queries, "topk": int(k), "return_scores": True,
                                "return_text": bool(return_text), "format": "packed"}
        if index is not None:
            body["index"] = index
        if options:
            body["options"] = options
        return dumps(body)

    @staticmethod
    def _message(response: httpx.Response) -> str:
        try:
            return str(loads(response.content).get("error") or response.text)
        except Exception:  # noqa: BLE001
            return response.text[:500]

    @staticmethod
    def _limit(response: httpx.Response) -> str | None:
        try:
            return loads(response.content).get("limit")
        except Exception:  # noqa: BLE001 - not our error shape
            return None

    @staticmethod
    def _parse(data: dict[str, Any], n: int) -> list[SearchResult]:
        ids = data.get("ids")
        if ids is None and "result" in data:  # a Search-R1 style server
            data = {**data, **_columns_from_result(data["result"])}
            ids = data["ids"]
        if not isinstance(ids, list) or len(ids) != n:
            raise SearchError(f"malformed answer from the search service: expected {n} results")
        ids = [_unpack_ids(x) for x in ids]
        scores = [_unpack_scores(x) for x in (data.get("scores") or [[] for _ in range(n)])]
        contents = data.get("contents") or [None] * n
        errors = data.get("errors") or [None] * n
        rows = data.get("rows") or [None] * n
        info = data.get("info") or [None] * n
        _check_columns(n, ids, scores, contents, errors, rows, info)
        return [SearchResult(ids=ids[i], scores=scores[i], texts=contents[i], rows=rows[i],
                             error=errors[i], info=info[i] or {}) for i in range(n)]

    def _fail(self, attempts: int, last: str) -> SearchError:
        return SearchError(f"search service at {self.url} failed after {attempts} attempt(s) "
                           f"(timeout {self.timeout:g}s, retries {self.retries}): {last}")

    def _plan(self, queries: list[str], options: dict[str, Any] | None
              ) -> tuple[per_query.Sendable, list[_Chunk]]:
        """The distinct searches (:func:`~deepretrieval.core.per_query.sendable`) in chunks."""
        plan = per_query.sendable(queries, options)
        size, unique, answers = self.chunk_size, plan.queries, plan.answers
        return plan, [(unique[i:i + size], None if answers is None else answers[i:i + size])
                      for i in range(0, len(unique), size)]

    def _retry_status(self, response: httpx.Response) -> bool:
        return response.status_code >= 500

    def _check(self, response: httpx.Response, n: int) -> list[SearchResult]:
        if response.status_code == 413 and self._limit(response) == "max_answer_bytes":
            raise _AnswerTooLarge(self._message(response))
        if response.status_code >= 400:
            raise SearchError(f"search service at {self.url} answered {response.status_code}: "
                              f"{self._message(response)}")
        try:
            return self._parse(loads(response.content), n)
        except SearchError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise SearchError(f"search service at {self.url} sent a malformed answer: "
                              f"{type(exc).__name__}: {exc}") from None


class AsyncServiceClient(_Base):
    """Async client of one service. Bound to the event loop it is first used in.

    ``transport="asyncio"`` (default) uses a lean keep-alive HTTP/1.1 client on asyncio streams
    (:mod:`deepretrieval.service._http`): at 64 concurrent callers httpx's async pool spends
    several times more CPU per request than the search itself. ``transport="httpx"`` uses
    ``httpx.AsyncClient`` (proxies, HTTP/2 servers in front of the service, ...)."""

    def __init__(self, url: str, token: str | None = None, timeout: float | None = None,
                 retries: int | None = None, backoff: float = DEFAULT_BACKOFF,
                 chunk_size: int = DEFAULT_CHUNK, max_connections: int = 256,
                 transport: str = "asyncio"):
        super().__init__(url, token, timeout, retries, backoff, chunk_size)
        if transport not in ("asyncio", "httpx"):
            raise ValueError(f"transport must be 'asyncio' or 'httpx', not {transport!r}")
        self.transport = transport
        if transport == "httpx":
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections),
                trust_env=False)
        else:
            self._client = AsyncHTTP(self.url, max_connections=max_connections)

    async def _request(self, method: str, path: str, content: bytes, timeout: float):
        """(response, None) or (None, transport error text)."""
        try:
            if self.transport == "httpx":
                return await self._client.request(method, f"{self.url}{path}", content=content,
                                                  headers=self.headers,
                                                  timeout=httpx.Timeout(timeout)), None
            return await self._client.request(method, path, content, self.headers, timeout), None
        except (httpx.TransportError, TransportError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    async def _post(self, content: bytes, n: int) -> list[SearchResult]:
        deadline = time.monotonic() + self.timeout
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(attempt, last)
            response, failure = await self._request("POST", "/retrieve", content, remaining)
            if response is not None:
                if not self._retry_status(response):
                    return self._check(response, n)
                last = f"HTTP {response.status_code}: {self._message(response)}"
            else:
                last = failure
            if attempt < self.retries:
                pause = min(self.backoff * (2 ** attempt), deadline - time.monotonic())
                if pause > 0:
                    await asyncio.sleep(pause)
        raise self._fail(self.retries + 1, last)

    async def search(self, index: str | None, queries: list[str], k: int, *,
                     return_text: bool = False,
                     options: dict[str, Any] | None = None) -> list[SearchResult]:
        queries = list(queries)
        if not queries:
            return []
        plan, chunks = self._plan(queries, options)
        if len(chunks) == 1:  # a reward call's one search: no task to gather (~15 % of the
            # client's CPU per request at 64 callers, bench-measured)
            return plan.assemble(await self._chunk(index, chunks[0], k, return_text,
                                                   plan.shared))
        parts = await asyncio.gather(*(self._chunk(index, chunk, k, return_text, plan.shared)
                                       for chunk in chunks))
        return plan.assemble([r for part in parts for r in part])

    async def _chunk(self, index, chunk: _Chunk, k: int, return_text: bool,
                     shared: dict[str, Any] | None) -> list[SearchResult]:
        """One chunk's results; an answer over the service's size limit is asked in halves."""
        queries, answers = chunk
        try:
            return await self._post(self._payload(index, queries, k, return_text,
                                                  per_query.join(shared, answers)), len(queries))
        except _AnswerTooLarge as exc:
            if len(queries) == 1:  # this query's answer alone is over the limit: its own error
                return [SearchResult(error=str(exc))]
            left, right = _halves(chunk)
            return (await self._chunk(index, left, k, return_text, shared)
                    + await self._chunk(index, right, k, return_text, shared))

    async def health(self) -> dict[str, Any]:
        response, failure = await self._request("GET", "/health", b"", self.timeout)
        if response is None:
            raise SearchError(f"search service at {self.url} is unreachable: {failure}")
        if response.status_code >= 400:
            raise SearchError(f"search service at {self.url} answered {response.status_code}: "
                              f"{self._message(response)}")
        return loads(response.content)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "AsyncServiceClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class ServiceClient(_Base):
    """Blocking client of one service (thread-safe)."""

    def __init__(self, url: str, token: str | None = None, timeout: float | None = None,
                 retries: int | None = None, backoff: float = DEFAULT_BACKOFF,
                 chunk_size: int = DEFAULT_CHUNK, max_connections: int = 64):
        super().__init__(url, token, timeout, retries, backoff, chunk_size)
        self._client = httpx.Client(
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            trust_env=False)

    def _post(self, content: bytes, n: int) -> list[SearchResult]:
        deadline = time.monotonic() + self.timeout
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(attempt, last)
            try:
                response = self._client.post(f"{self.url}/retrieve", content=content,
                                             headers=self.headers, timeout=httpx.Timeout(remaining))
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if not self._retry_status(response):
                    return self._check(response, n)
                last = f"HTTP {response.status_code}: {self._message(response)}"
            if attempt < self.retries:
                pause = min(self.backoff * (2 ** attempt), deadline - time.monotonic())
                if pause > 0:
                    time.sleep(pause)
        raise self._fail(self.retries + 1, last)

    def search(self, index: str | None, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        queries = list(queries)
        if not queries:
            return []
        plan, chunks = self._plan(queries, options)
        parts = [self._chunk(index, chunk, k, return_text, plan.shared) for chunk in chunks]
        return plan.assemble([r for part in parts for r in part])

    def _chunk(self, index, chunk: _Chunk, k: int, return_text: bool,
               shared: dict[str, Any] | None) -> list[SearchResult]:
        """One chunk's results; an answer over the service's size limit is asked in halves."""
        queries, answers = chunk
        try:
            return self._post(self._payload(index, queries, k, return_text,
                                            per_query.join(shared, answers)), len(queries))
        except _AnswerTooLarge as exc:
            if len(queries) == 1:  # this query's answer alone is over the limit: its own error
                return [SearchResult(error=str(exc))]
            left, right = _halves(chunk)
            return (self._chunk(index, left, k, return_text, shared)
                    + self._chunk(index, right, k, return_text, shared))

    def health(self) -> dict[str, Any]:
        try:
            response = self._client.get(f"{self.url}/health", headers=self.headers,
                                        timeout=self.timeout)
        except httpx.TransportError as exc:
            raise SearchError(f"search service at {self.url} is unreachable: {exc}") from None
        if response.status_code >= 400:
            raise SearchError(f"search service at {self.url} answered {response.status_code}: "
                              f"{self._message(response)}")
        return loads(response.content)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServiceSearcher:
    """:class:`deepretrieval.core.results.Searcher` over the HTTP service: same results as the in-process
    :class:`~deepretrieval.search.LocalSearcher`. ``search`` is blocking (any thread);
    ``asearch`` uses one async client per event loop."""

    def __init__(self, url: str, token: str | None = None, timeout: float | None = None,
                 retries: int | None = None, backoff: float = DEFAULT_BACKOFF,
                 chunk_size: int = DEFAULT_CHUNK):
        self._kw = {"token": token, "timeout": timeout, "retries": retries, "backoff": backoff,
                    "chunk_size": chunk_size}
        self.sync = ServiceClient(url, **self._kw)
        self.url = self.sync.url
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ServiceSearcher({self.url!r})"

    @property
    def timeout(self) -> float:
        return self.sync.timeout

    def search(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        return self.sync.search(index, queries, k, return_text=return_text, options=options)

    def async_client(self) -> AsyncServiceClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                client = self._async[loop] = AsyncServiceClient(self.url, **self._kw)
            return client

    async def asearch(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
                      options: dict[str, Any] | None = None) -> list[SearchResult]:
        return await self.async_client().search(index, queries, k, return_text=return_text,
                                                options=options)

    def health(self) -> dict[str, Any]:
        return self.sync.health()

    def close(self) -> None:
        self.sync.close()
