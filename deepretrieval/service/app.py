"""The retrieval service: one HTTP search API over several named backends.

``POST /retrieve`` speaks Search-R1's protocol::

    {"queries": ["..."], "topk": 10, "return_scores": true}

answers ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`` (one list per
query; ``contents`` is ``"Title"\ntext``, each passage cut to ``max_passage_chars``), and with
``"return_scores": false`` one list of documents ``{"id", "contents"}`` per query. Our extensions::

     "index": "scifact",            # may be omitted when exactly one index is served
     "options": {...},              # backend options (e.g. PubMed "maxdate")
     "max_passage_chars": 500,      # cut each passage to this many characters (<= the server's)
     "format": "search_r1",         # default; or a compact format: "hits", "columns", "packed"
     "return_text": false,          # compact formats only: add each hit's text

The compact formats carry no document objects: ``"hits"`` answers ``{"result": [[{"id",
"score"?, "contents"?}, ...], ...]}``, ``"columns"`` answers ``{"ids": [[...]], "scores": [[...]],
"contents": [[...]]?}``, and ``"packed"`` (what :mod:`deepretrieval.service.client` asks for) is
``columns`` with each query's ids joined by newlines into one string (a list when an id is empty or
contains a newline) and its scores as base64 of little-endian float64: at k=1000 this cuts encoding
plus decoding from ~200 µs to ~40 µs per query, with identical values. Their texts are whole unless
the request sets ``max_passage_chars`` (the reward path needs the texts the in-process index has).
Every format adds, only when present, ``"errors"`` (one entry per query, ``null`` when that query
succeeded), ``"rows"`` (SQL backends) and ``"info"`` (backend extras per query).

``GET /health`` reports the served indexes with their ``info()``, the limits, counters and the
package version.

Concurrent requests are coalesced: requests for the same (index, k, return_text, options) that
arrive within ``batch_wait_ms`` of each other, or while the backend is busy, go to the backend as
one batched call with identical queries searched once. Backend calls run in worker threads, so the
event loop keeps accepting requests.
"""
# (no `from __future__ import annotations`: FastAPI reads the handler annotations at runtime)

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from deepretrieval import __version__
from deepretrieval.core.answer import MAX_VALUE_CHARS
from deepretrieval.core.results import (
    Backend,
    SearchError,
    SearchResult,
    search_sendable,
    unencodable,
)
from deepretrieval.service.limits import (
    apply_backend_limits,
    guarded_protocol,
    json_error_handlers,
)

log = logging.getLogger(__name__)

try:  # orjson is much faster at encoding long hit lists; the stdlib is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None


def _json_default(obj: Any) -> Any:
    # SQL rows may hold Decimal, bytes, dates...; numpy scalars may slip through backends
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(obj, (bytes, bytearray)):
        return obj.decode("utf-8", "replace")
    return str(obj)


def dumps(obj: Any) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(obj, default=_json_default,
                             option=_orjson.OPT_SERIALIZE_NUMPY | _orjson.OPT_NON_STR_KEYS)
    return json.dumps(obj, default=_json_default, separators=(",", ":"),
                      ensure_ascii=False).encode()


def loads(data: bytes | str) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


@dataclass
class ServiceConfig:
    """Limits and batching knobs of one service process."""

    token: str | None = None          #: bearer token required on every request when set
    max_queries: int = 4096           #: queries per request
    max_query_chars: int = MAX_VALUE_CHARS  #: characters per query (the answer parser's bound)
    max_k: int = 10000                #: largest ``topk``
    max_body_bytes: int = 64 << 20    #: request body size
    batch_wait_ms: float = 2.0        #: how long a request waits for others to join its batch
    max_batch: int = 1024             #: most queries in one backend call
    max_passage_chars: int = 4096     #: characters per passage in Search-R1 answers (the most a
    #:                                   request's ``max_passage_chars`` may ask for)
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))  #: backend threads per index
    # connection limits and option ceilings (deepretrieval.service.limits)
    max_header_bytes: int = 64 << 10  #: request head size (more → 431)
    request_timeout_s: float = 10.0   #: time for a request to arrive, head and body (→ 408)
    max_connections: int = 1024       #: open connections (capped by the descriptor limit; → 503)
    max_timeout_s: float = 30.0       #: largest backend ``timeout_s`` option a client may ask
    max_result_bytes: int = 32_000_000  #: largest backend ``max_result_bytes`` option
    #: coalesce concurrent requests into batched backend calls (:class:`Batcher`); False: each
    #: request goes to its backend on its own (the Ray Serve ingress, whose backends are proxies
    #: to deployments that batch with ``@serve.batch``; ``deepretrieval.service.ray_serve``)
    batching: bool = True

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["token"] = bool(self.token)
        return out


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- micro-batching --------------------------------------------------------------------------

@dataclass
class _Job:
    queries: list[str]
    future: asyncio.Future
    arrived: float


class _Group:
    """Pending jobs that can share one backend call (same index, k, return_text, options)."""

    __slots__ = ("jobs", "n", "dispatcher")

    def __init__(self) -> None:
        self.jobs: deque[_Job] = deque()
        self.n = 0
        self.dispatcher: asyncio.Task | None = None


class Batcher:
    """Coalesces concurrent searches on one backend into batched backend calls."""

    def __init__(self, backend: Backend, executor: ThreadPoolExecutor, workers: int,
                 wait_s: float, max_batch: int):
        self.backend = backend
        self.executor = executor
        self.wait_s = max(0.0, wait_s)
        self.max_batch = max(1, max_batch)
        self.slots = asyncio.Semaphore(max(1, workers))
        self.groups: dict[tuple, _Group] = {}
        self.stats = {"batches": 0, "backend_queries": 0, "queries": 0, "failed_batches": 0}
        self._tasks: set[asyncio.Task] = set()

    async def search(self, queries: list[str], k: int, return_text: bool,
                     options: dict[str, Any] | None) -> list[SearchResult]:
        why = [unencodable(q) for q in queries]
        if any(why):  # never handed to the backend: each gets its own error, the rest is searched
            good = [q for q, w in zip(queries, why) if w is None]
            found = iter(await self.search(good, k, return_text, options) if good else [])
            return [SearchResult(error=w) if w else next(found) for w in why]
        key = (k, return_text, json.dumps(options, sort_keys=True) if options else "")
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group()
        loop = asyncio.get_running_loop()
        job = _Job(list(queries), loop.create_future(), loop.time())
        group.jobs.append(job)
        group.n += len(job.queries)
        self.stats["queries"] += len(job.queries)
        if group.dispatcher is None:
            group.dispatcher = loop.create_task(self._dispatch(key, group))
        return await job.future

    async def _dispatch(self, key: tuple, group: _Group) -> None:
        loop = asyncio.get_running_loop()
        try:
            while group.jobs:
                await self.slots.acquire()
                try:
                    # give others a moment to join, unless the batch is full or the oldest job
                    # already waited (e.g. for a free worker)
                    if group.n < self.max_batch:
                        remaining = group.jobs[0].arrived + self.wait_s - loop.time()
                        if remaining > 0:
                            await asyncio.sleep(remaining)
                    jobs: list[_Job] = []
                    taken = 0
                    while group.jobs and (not jobs or taken + len(group.jobs[0].queries)
                                          <= self.max_batch):
                        job = group.jobs.popleft()
                        group.n -= len(job.queries)
                        taken += len(job.queries)
                        if not job.future.cancelled():
                            jobs.append(job)
                except BaseException:
                    self.slots.release()
                    raise
                if not jobs:
                    self.slots.release()
                    continue
                task = loop.create_task(self._run(key, jobs))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            group.dispatcher = None
            if group.jobs:  # jobs that arrived while this dispatcher was being torn down
                group.dispatcher = loop.create_task(self._dispatch(key, group))

    async def _call(self, queries: list[str], key: tuple) -> list[SearchResult]:
        k, return_text, options = key
        opts = json.loads(options) if options else None
        loop = asyncio.get_running_loop()
        unique = list(dict.fromkeys(queries))
        results = await loop.run_in_executor(
            self.executor, lambda: self.backend.search(unique, k, return_text=return_text,
                                                       options=opts))
        if len(results) != len(unique):
            raise SearchError(f"backend {self.backend.name!r} returned {len(results)} results "
                              f"for {len(unique)} queries")
        self.stats["batches"] += 1
        self.stats["backend_queries"] += len(unique)
        by_query = dict(zip(unique, results))
        return [by_query[q] for q in queries]

    async def _run(self, key: tuple, jobs: list[_Job]) -> None:
        try:
            queries = [q for job in jobs for q in job.queries]
            try:
                results = await self._call(queries, key)
            except Exception as exc:  # noqa: BLE001
                self.stats["failed_batches"] += 1
                if len(jobs) == 1:
                    if not jobs[0].future.done():
                        jobs[0].future.set_exception(exc)
                    return
                # one request must not fail the others: retry each on its own
                for job in jobs:
                    try:
                        res = await self._call(job.queries, key)
                    except Exception as exc2:  # noqa: BLE001
                        if not job.future.done():
                            job.future.set_exception(exc2)
                    else:
                        if not job.future.done():
                            job.future.set_result(res)
                return
            start = 0
            for job in jobs:
                end = start + len(job.queries)
                if not job.future.done():
                    job.future.set_result(results[start:end])
                start = end
        finally:
            self.slots.release()


# ---- request handling ------------------------------------------------------------------------

def _check_token(config: ServiceConfig, authorization: str | None) -> None:
    if not config.token:
        return
    if not authorization:
        raise HTTPError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                             config.token.encode()):
        raise HTTPError(403, "invalid bearer token")


def parse_request(body: bytes, config: ServiceConfig, indexes: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``/retrieve`` body; raises :class:`HTTPError` with a message naming the problem."""
    if len(body) > config.max_body_bytes:
        raise HTTPError(413, f"request body of {len(body)} bytes exceeds the limit "
                             f"max_body_bytes={config.max_body_bytes}")
    try:
        req = loads(body)
    except (ValueError, TypeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise HTTPError(400, "request body must be a JSON object")
    queries = req.get("queries")
    if isinstance(queries, str):
        queries = [queries]
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise HTTPError(422, "'queries' must be a list of strings")
    if len(queries) > config.max_queries:
        raise HTTPError(413, f"{len(queries)} queries in one request exceed the limit "
                             f"max_queries={config.max_queries}")
    for i, q in enumerate(queries):
        if len(q) > config.max_query_chars:
            raise HTTPError(413, f"query {i} has {len(q)} characters, over the limit "
                                 f"max_query_chars={config.max_query_chars}")
    k = req.get("topk", req.get("k", 10))
    if isinstance(k, bool) or not isinstance(k, int):
        raise HTTPError(422, f"'topk' must be an integer (got {k!r})")
    if k < 1:
        raise HTTPError(422, f"'topk' must be >= 1 (got {k})")
    if k > config.max_k:
        raise HTTPError(422, f"topk={k} exceeds the limit max_k={config.max_k}")
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
    options = req.get("options")
    if options is not None and not isinstance(options, dict):
        raise HTTPError(422, "'options' must be a JSON object")
    fmt = req.get("format", SEARCH_R1)
    if fmt not in FORMATS:
        raise HTTPError(422, f"'format' must be one of {list(FORMATS)} (got {fmt!r})")
    for flag in ("return_scores", "return_text"):
        if flag in req and not isinstance(req[flag], bool):
            raise HTTPError(422, f"'{flag}' must be true or false")
    if fmt == SEARCH_R1 and req.get("return_text") is False:
        raise HTTPError(422, "format 'search_r1' always returns the passages; ask for "
                             "'format': 'hits' (or 'columns', 'packed') to get ids only")
    cap = req.get("max_passage_chars")
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise HTTPError(422, f"'max_passage_chars' must be a positive integer (got {cap!r})")
        if cap > config.max_passage_chars:
            raise HTTPError(422, f"max_passage_chars={cap} exceeds the limit "
                                 f"max_passage_chars={config.max_passage_chars}")
    elif fmt == SEARCH_R1:
        cap = config.max_passage_chars
    return {"queries": queries, "k": k, "index": index, "options": options or None,
            "return_text": fmt == SEARCH_R1 or bool(req.get("return_text", False)),
            "return_scores": bool(req.get("return_scores", True)), "format": fmt,
            "max_passage_chars": cap}


SEARCH_R1 = "search_r1"
FORMATS = (SEARCH_R1, "hits", "columns", "packed")
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
    import base64

    import numpy as np
    try:
        arr = np.asarray(scores, dtype="<f8")
    except (TypeError, ValueError):
        return scores
    if arr.ndim != 1:
        return scores
    return base64.b64encode(arr.tobytes()).decode("ascii")


def _cut(text: str, cap: int | None) -> str:
    return text if cap is None or len(text) <= cap else text[:cap]


def _title_and_body(text: str, title: str) -> tuple[str, str]:
    """Split a stored text (title and text joined by a space, see ``search.bm25.doc_text``)."""
    if title and text.startswith(title):
        return title, text[len(title):].lstrip()
    return title, text


def search_r1_documents(result: SearchResult, cap: int | None) -> list[dict[str, str]]:
    """Search-R1's documents ``{"id", "contents"}`` of one result: ``contents`` is the title in
    double quotes, a newline and the passage (cut to ``cap`` characters; the title is kept whole);
    the title is empty when the index stores none."""
    texts = result.texts if result.texts is not None else [""] * len(result.ids)
    titles = result.titles if result.titles is not None else [""] * len(result.ids)
    docs = []
    for doc_id, text, title in zip(result.ids, texts, titles):
        title, body = _title_and_body(text, title)
        docs.append({"id": doc_id, "contents": f'"{title}"\n{_cut(body, cap)}'})
    return docs


def render(results: list[SearchResult], return_scores: bool, fmt: str,
           max_passage_chars: int | None = None) -> dict[str, Any]:
    """The response body for ``results`` (see the module docstring)."""
    out: dict[str, Any]
    cap = max_passage_chars
    if cap is not None and fmt != SEARCH_R1:
        results = [r if r.texts is None else
                   SearchResult(ids=r.ids, scores=r.scores, texts=[_cut(t, cap) for t in r.texts],
                                rows=r.rows, error=r.error, info=r.info, titles=r.titles)
                   for r in results]
    if fmt == SEARCH_R1:
        hits = []
        for r in results:
            docs = search_r1_documents(r, cap)
            if return_scores:
                hits.append([{"document": d, "score": float(s)} for d, s in zip(docs, r.scores)])
            else:
                hits.append(docs)
        out = {"result": hits}
    elif fmt == "packed":
        out = {"ids": [pack_ids(r.ids) for r in results]}
        if return_scores:
            out["scores"] = [pack_scores(r.scores) for r in results]
        if any(r.texts is not None for r in results):
            out["contents"] = [r.texts for r in results]
    elif fmt == "columns":
        out = {"ids": [r.ids for r in results]}
        if return_scores:
            out["scores"] = [r.scores for r in results]
        if any(r.texts is not None for r in results):
            out["contents"] = [r.texts for r in results]
    else:
        hits = []
        for r in results:
            if r.texts is None and return_scores and len(r.scores) == len(r.ids):
                hits.append([{"id": i, "score": s} for i, s in zip(r.ids, r.scores)])
            else:
                hits.append(r.to_hits(return_scores))
        out = {"result": hits}
    if any(r.error for r in results):
        out["errors"] = [r.error for r in results]
    if any(r.rows is not None for r in results):
        out["rows"] = [r.rows for r in results]
    if any(r.info for r in results):
        out["info"] = [r.info or None for r in results]
    return out


async def _send_json(send, status: int, body: bytes,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(indexes: dict[str, Backend], config: ServiceConfig | None = None):
    """The FastAPI application serving ``indexes`` (name → loaded backend)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response


    config = config or ServiceConfig()
    if not indexes:
        raise ValueError("the service needs at least one index")
    state: dict[str, Any] = {"batchers": {}, "executors": {}, "started": time.time(),
                             "requests": 0, "client_errors": 0, "server_errors": 0,
                             "config": config}
    apply_backend_limits(indexes, config.max_timeout_s, config.max_result_bytes)

    def executor(name: str) -> ThreadPoolExecutor:
        # one worker pool per index: a slow index (long SQL) cannot starve another
        pool = state["executors"].get(name)
        if pool is None:
            pool = state["executors"][name] = ThreadPoolExecutor(
                max_workers=config.workers, thread_name_prefix=f"search-{name}")
        return pool

    def batcher(name: str) -> Batcher:
        b = state["batchers"].get(name)
        if b is None:
            b = state["batchers"][name] = Batcher(indexes[name], executor(name), config.workers,
                                                  config.batch_wait_ms / 1000.0, config.max_batch)
        return b

    async def search(name: str, queries: list[str], k: int, return_text: bool,
                     options: dict[str, Any] | None) -> list[SearchResult]:
        if config.batching:
            return await batcher(name).search(queries, k, return_text, options)
        backend = indexes[name]
        return await asyncio.get_running_loop().run_in_executor(
            executor(name), lambda: search_sendable(backend.search, queries, k,
                                                    return_text=return_text, options=options))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for executor in state["executors"].values():
            executor.shutdown(wait=False, cancel_futures=True)

    class ServiceApp(FastAPI):
        """FastAPI whose hot path (``POST /retrieve``) skips the middleware stack."""

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/retrieve":
                if scope["method"] != "POST":
                    status, body = error(405, f"/retrieve answers POST only "
                                              f"(got {scope['method']})")
                    await _send_json(send, status, body, [(b"allow", b"POST")])
                    return
                try:
                    return await fast_retrieve(scope, receive, send)
                except Exception:  # noqa: BLE001 - never leave a caller without an answer
                    log.exception("POST /retrieve failed")
                    status, body = error(500, "internal error while answering /retrieve")
                    await _send_json(send, status, body)
                    return
            await super().__call__(scope, receive, send)

    app = ServiceApp(title="deepretrieval search", version=__version__, lifespan=lifespan,
                     docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> tuple[int, bytes]:
        key = "client_errors" if status < 500 else "server_errors"
        state[key] += 1
        return status, dumps({"error": message, "status": status})

    json_error_handlers(app, lambda status: error(status, ""))

    async def handle_retrieve(body: bytes, authorization: str | None) -> tuple[int, bytes]:
        """``POST /retrieve`` → (status, JSON body)."""
        state["requests"] += 1
        try:
            _check_token(config, authorization)
            req = parse_request(body, config, indexes)
        except HTTPError as exc:
            return error(exc.status, exc.message)
        if not req["queries"]:
            return 200, dumps(render([], req["return_scores"], req["format"]))
        try:
            results = await search(req["index"], req["queries"], req["k"], req["return_text"],
                                   req["options"])
        except ValueError as exc:  # the backend rejected the request (e.g. unknown option)
            return error(422, f"index {req['index']!r} rejected the request: {exc}")
        except Exception as exc:  # noqa: BLE001 - the service keeps serving
            log.exception("search on %s failed", req["index"])
            return error(500, f"search on index {req['index']!r} failed: "
                              f"{type(exc).__name__}: {exc}")
        try:
            return 200, dumps(render(results, req["return_scores"], req["format"],
                                     req["max_passage_chars"]))
        except Exception as exc:  # noqa: BLE001
            log.exception("encoding the response failed")
            return error(500, f"could not encode the results: {type(exc).__name__}: {exc}")

    # ``POST /retrieve`` is the hot path (one request per reward call): ``ServiceApp.__call__``
    # answers it here, without FastAPI's middleware, routing and request/response objects. This
    # is its only implementation (there is no FastAPI route for it).
    async def fast_retrieve(scope, receive, send):
        authorization = length = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"content-length":
                length = value
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            status, body = error(413, f"request body of {int(length)} bytes exceeds the "
                                      f"limit max_body_bytes={config.max_body_bytes}")
        else:
            chunks = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= config.max_body_bytes:
                    chunks.append(chunk)
                more = message.get("more_body", False)
            if size > config.max_body_bytes:
                status, body = error(413, f"request body of {size} bytes exceeds the limit "
                                          f"max_body_bytes={config.max_body_bytes}")
            else:
                status, body = await handle_retrieve(b"".join(chunks), authorization)
        await _send_json(send, status, body)


    @app.get("/health")
    async def health(request: Request) -> Response:
        out: dict[str, Any] = {"status": "ok", "version": __version__,
                               "indexes": sorted(indexes)}
        try:
            _check_token(config, request.headers.get("authorization"))
        except HTTPError:
            # liveness stays public; details need the token
            return Response(dumps(out), media_type="application/json")
        details: dict[str, Any] = {}
        for name, backend in indexes.items():
            try:
                info = await asyncio.to_thread(backend.info)
            except Exception as exc:  # noqa: BLE001
                info = {"error": f"{type(exc).__name__}: {exc}"}
            b = state["batchers"].get(name)
            details[name] = {"info": info, "stats": dict(b.stats) if b else {}}
        out.update({"backends": details, "limits": config.public(),
                    "uptime_s": round(time.time() - state["started"], 3),
                    "requests": state["requests"], "client_errors": state["client_errors"],
                    "server_errors": state["server_errors"]})
        return Response(dumps(out), media_type="application/json")

    app.state.deepretrieval = state
    return app


# ---- running ---------------------------------------------------------------------------------

def _uvicorn_config(app, host: str, port: int, log_level: str = "warning"):
    import uvicorn

    config = app.state.deepretrieval["config"]
    protocol = guarded_protocol(config.max_header_bytes, config.request_timeout_s,
                                config.max_connections)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          lifespan="on", timeout_keep_alive=30, backlog=2048, http=protocol)


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn in the foreground until interrupted."""
    import uvicorn
    uvicorn.Server(_uvicorn_config(app, host, port, log_level)).run()


class ServerThread:
    """Run an app with uvicorn in a background thread on a loopback port (tests, benchmarks)::

        with ServerThread(create_app({"scifact": index})) as server:
            ServiceSearcher(server.url).search(...)
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0):
        import uvicorn
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(_uvicorn_config(app, self.host, self.port))
        self.start_timeout = start_timeout
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="deepretrieval-service")

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
