"""The retrieval service: one HTTP search API over several named backends, in the field's shapes.

Routes (``docs/service.md`` has the table; :mod:`deepretrieval.service.wire` the shapes):

* ``POST /retrieve`` — Search-R1 ``{"queries", "topk", "return_scores"}`` → ``{"result":
  [[{"document": {"id", "contents", "url"}, "score"}, ...], ...]}`` (bare documents with
  ``"return_scores": false``, as ASearcher asks), our compact formats (``"format"``), and
  ZeroSearch ``{"query", "top_k"}`` → ``[{"text"}, ...]``;
* ``POST /queries`` (R1-Searcher), ``POST /search`` and ``POST /batch_search`` (FlashRAG-style),
  ``POST /access`` (ASearcher: a document's full text by url/id);
* ``GET /health`` — the served indexes with their ``info()``, the limits, counters, version.

Every search route goes through the same :class:`~deepretrieval.service.batcher.Batcher` per
index (micro-batching, per-query isolation, the compute deadline ``request_deadline_s``) and the
same limits; each answer is bounded by ``max_answer_bytes`` (checked before searching from
queries x k, and while encoding, which stops at the limit), encoded in a worker thread when it
is large, and the heap is trimmed (glibc) after large answers.
"""
# (no `from __future__ import annotations`: FastAPI reads the handler annotations at runtime)

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from deepretrieval import __version__
from deepretrieval.core.answer import MAX_VALUE_CHARS
from deepretrieval.core.memory import release_free_memory
from deepretrieval.core.results import Backend, DocumentStore
from deepretrieval.service.batcher import Batcher, Rejected, empty_stats
from deepretrieval.service.limits import (
    apply_backend_limits,
    guarded_protocol,
    json_error_handlers,
)
from deepretrieval.service.wire import (  # noqa: F401 - re-exported: the service's codec and shapes
    FORMATS,
    SEARCH_R1,
    SEARCH_ROUTES,
    AnswerTooLarge,
    HTTPError,
    SearchRequest,
    dumps,
    encode,
    encode_access,
    loads,
    min_hit_bytes,
    pack_ids,
    pack_scores,
    parse_access,
    render,
    search_r1_documents,
)

log = logging.getLogger(__name__)

#: Every POST route the service answers (the search routes and ``/access``).
ROUTES = (*SEARCH_ROUTES, "/access")
#: Answers with more hits than this are encoded in a worker thread, off the event loop.
INLINE_ENCODE_HITS = 2048
#: After an answer (or a refused one) of at least this many bytes, free heap goes back to the OS.
TRIM_AFTER_BYTES = 32 << 20


@dataclass
class ServiceConfig:
    """Limits and batching knobs of one service process."""

    token: str | None = None          #: bearer token required on every request when set
    open_routes: tuple[str, ...] = ()  #: routes answered without the token (peer clients)
    trusted_networks: tuple[str, ...] = ()  #: client networks (CIDR) that need no token
    max_queries: int = 4096           #: queries per request
    max_query_chars: int = MAX_VALUE_CHARS  #: characters per query (the answer parser's bound)
    max_k: int = 10000                #: largest ``topk``
    max_body_bytes: int = 64 << 20    #: request body size
    max_answer_bytes: int = 256 << 20  #: answer size (more → 413, before or while encoding)
    request_deadline_s: float = 60.0  #: backend compute per request, from its arrival
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


# ---- auth ------------------------------------------------------------------------------------

class _Auth:
    """Who may call without the token: ``open_routes`` and clients in ``trusted_networks``."""

    def __init__(self, config: ServiceConfig):
        self.token = config.token or None
        unknown = sorted(set(config.open_routes) - set(ROUTES) - {"/health"})
        if unknown:
            raise ValueError(f"open_routes: unknown route(s) {unknown}; routes: "
                             f"{[*ROUTES, '/health']}")
        self.open_routes = frozenset(config.open_routes)
        try:
            self.networks = [ipaddress.ip_network(n, strict=False) for n in config.trusted_networks]
        except ValueError as exc:
            raise ValueError(f"trusted_networks: {exc}") from None

    def trusted(self, client: tuple | None) -> bool:
        if not self.networks or not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)

    def check(self, route: str, authorization: str | None, client: tuple | None) -> None:
        """Raise :class:`HTTPError` 401/403 unless the request may proceed."""
        if self.token is None or route in self.open_routes or self.trusted(client):
            return
        if not authorization:
            raise HTTPError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                 self.token.encode()):
            raise HTTPError(403, "invalid bearer token")


# ---- the app ---------------------------------------------------------------------------------

def _body_of(body: bytes, config: ServiceConfig) -> dict[str, Any]:
    if len(body) > config.max_body_bytes:
        raise HTTPError(413, f"request body of {len(body)} bytes exceeds the limit "
                             f"max_body_bytes={config.max_body_bytes}", "max_body_bytes")
    try:
        req = loads(body)
    except (ValueError, TypeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise HTTPError(400, "request body must be a JSON object")
    return req


def parse_request(body: bytes, config: ServiceConfig, indexes: dict[str, Any],
                  route: str = "/retrieve") -> SearchRequest:
    """Validate the body of a search route; raises :class:`HTTPError` naming the problem."""
    return SEARCH_ROUTES[route](_body_of(body, config), config, indexes)


async def _send(send, status: int, parts: list[bytes],
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    size = sum(map(len, parts))
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(size).encode()), *(extra or [])]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if not parts:
        await send({"type": "http.response.body", "body": b""})
    for i, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})


def create_app(indexes: dict[str, Backend], config: ServiceConfig | None = None):
    """The FastAPI application serving ``indexes`` (name → loaded backend)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    config = config or ServiceConfig()
    if not indexes:
        raise ValueError("the service needs at least one index")
    auth = _Auth(config)
    state: dict[str, Any] = {"batchers": {}, "executors": {}, "started": time.time(),
                             "requests": 0, "client_errors": 0, "server_errors": 0,
                             "config": config}
    apply_backend_limits(indexes, config.max_timeout_s, config.max_result_bytes)
    # large answers are encoded here, off the event loop (one request at a time per thread)
    encoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
    hit_bytes: dict[tuple, int] = {}

    def executor(name: str) -> ThreadPoolExecutor:
        pool = state["executors"].get(name)
        if pool is None:
            # one worker pool per index: a slow index (long SQL) cannot starve another
            pool = state["executors"][name] = ThreadPoolExecutor(
                max_workers=config.workers, thread_name_prefix=f"search-{name}")
        return pool

    def batcher(name: str) -> Batcher:
        b = state["batchers"].get(name)
        if b is None:
            b = state["batchers"][name] = Batcher(
                indexes[name], executor(name), config.workers, config.batch_wait_ms / 1000.0,
                config.max_batch, config.request_deadline_s, coalesce=config.batching)
        return b

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for pool in [*state["executors"].values(), encoders]:
            pool.shutdown(wait=False, cancel_futures=True)

    class ServiceApp(FastAPI):
        """FastAPI whose hot paths (the POST routes) skip the middleware stack."""

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"] in ROUTES:
                path = scope["path"]
                if scope["method"] != "POST":
                    status, body = error(405, f"{path} answers POST only "
                                              f"(got {scope['method']})")
                    await _send(send, status, [body], [(b"allow", b"POST")])
                    return
                try:
                    return await answer(path, scope, receive, send)
                except Exception:  # noqa: BLE001 - never leave a caller without an answer
                    log.exception("POST %s failed", path)
                    status, body = error(500, f"internal error while answering {path}")
                    await _send(send, status, [body])
                    return
            await super().__call__(scope, receive, send)

    app = ServiceApp(title="deepretrieval search", version=__version__, lifespan=lifespan,
                     docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str, limit: str | None = None) -> tuple[int, bytes]:
        key = "client_errors" if status < 500 else "server_errors"
        state[key] += 1
        out: dict[str, Any] = {"error": message, "status": status}
        if limit:
            out["limit"] = limit
        return status, dumps(out)

    json_error_handlers(app, lambda status: error(status, ""),
                        routes=[f"POST {r}" for r in ROUTES] + ["GET /health"])

    def too_large(size: int, what: str) -> tuple[int, bytes]:
        return error(413, f"the answer {what} {size:,} bytes, over the limit max_answer_bytes="
                          f"{config.max_answer_bytes:,}; ask for fewer queries, a smaller k or "
                          f"shorter passages", "max_answer_bytes")

    async def search(req: SearchRequest, arrived: float):
        """(status, parts, extra headers) of a parsed search request."""
        key = (req.shape, req.format, req.return_text, req.return_scores, req.single)
        per_hit = hit_bytes.get(key)
        if per_hit is None:
            per_hit = hit_bytes[key] = min_hit_bytes(req)
        least = len(req.queries) * req.k * per_hit
        if least > config.max_answer_bytes:
            status, body = error(413, (
                f"the answer could reach {least:,} bytes ({len(req.queries)} queries x k="
                f"{req.k} x at least {per_hit} bytes per hit), over the limit max_answer_bytes="
                f"{config.max_answer_bytes:,}; ask for fewer queries or a smaller k"),
                "max_answer_bytes")
            return status, [body], None
        results = []
        if req.queries:
            try:
                results = await batcher(req.index).search(req.queries, req.k, req.return_text,
                                                          req.options, arrived)
            except Rejected as exc:  # the backend refused the request (e.g. unknown option)
                status, body = error(422, f"index {req.index!r} rejected the request: {exc}")
                return status, [body], None
        hits = sum(len(r.ids) for r in results)
        try:
            if hits <= INLINE_ENCODE_HITS:
                parts, headers = encode(req, results, config.max_answer_bytes)
            else:
                parts, headers = await asyncio.get_running_loop().run_in_executor(
                    encoders, encode, req, results, config.max_answer_bytes)
        except AnswerTooLarge as exc:
            del results
            await asyncio.get_running_loop().run_in_executor(encoders, release_free_memory)
            status, body = too_large(exc.size, "passed")
            return status, [body], None
        return 200, parts, headers

    async def access(body: dict[str, Any]):
        index, urls = parse_access(body, config, indexes)
        backend = indexes[index]
        if not isinstance(backend, DocumentStore):
            raise HTTPError(422, f"index {index!r} ({type(backend).__name__}) keeps no documents "
                                 f"to access; /access needs a local BM25, dense or Boolean index")
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                executor(index), backend.documents, urls)
        except TypeError as exc:  # e.g. a sharded index over shards that keep no documents
            raise HTTPError(422, f"index {index!r}: {exc}") from None
        try:
            return 200, encode_access(urls, found, config.max_answer_bytes), None
        except AnswerTooLarge as exc:
            status, body = too_large(exc.size, "passed")
            return status, [body], None

    async def handle(path: str, body: bytes, authorization: str | None, client, arrived: float):
        state["requests"] += 1
        try:
            auth.check(path, authorization, client)
            if path == "/access":
                return await access(_body_of(body, config))
            return await search(parse_request(body, config, indexes, path), arrived)
        except HTTPError as exc:
            status, data = error(exc.status, exc.message, exc.limit)
            return status, [data], None

    # The POST routes are the hot path (one request per reward call): ``ServiceApp.__call__``
    # answers them here, without FastAPI's middleware, routing and request/response objects.
    # This is their only implementation (there are no FastAPI routes for them).
    async def answer(path: str, scope, receive, send):
        arrived = time.monotonic()
        authorization = length = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"content-length":
                length = value
        extra = None
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            status, body = error(413, f"request body of {int(length)} bytes exceeds the "
                                      f"limit max_body_bytes={config.max_body_bytes}",
                                 "max_body_bytes")
            parts = [body]
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
                                          f"max_body_bytes={config.max_body_bytes}",
                                     "max_body_bytes")
                parts = [body]
            else:
                status, parts, extra = await handle(path, b"".join(chunks), authorization,
                                                    scope.get("client"), arrived)
        sent = sum(map(len, parts))
        try:
            await _send(send, status, parts, extra)
        finally:
            del parts
            if sent >= TRIM_AFTER_BYTES:  # a large answer's memory back to the OS (glibc)
                await asyncio.get_running_loop().run_in_executor(encoders, release_free_memory)

    @app.get("/health")
    async def health(request: Request) -> Response:
        out: dict[str, Any] = {"status": "ok", "version": __version__,
                               "indexes": sorted(indexes)}
        try:
            client = request.client
            auth.check("/health", request.headers.get("authorization"),
                       (client.host, client.port) if client else None)
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
            details[name] = {"info": info, "stats": dict(b.stats) if b else empty_stats()}
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
