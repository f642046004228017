"""The searcher of a Ray Serve retrieval application, through deployment handles (no HTTP).

``DEEPRETRIEVAL_SEARCH_URL=ray://APP`` makes :func:`deepretrieval.catalog.get_searcher` return a
:class:`RaySearcher` for the application named APP (``deepretrieval serve --ray --app-name APP``,
default ``deepretrieval``). It is meant for processes inside the same Ray cluster — verl's reward
workers and agent loops — and calls the index (or shard router) deployments directly: no HTTP
encoding, no proxy hop. A process that is not yet connected to Ray joins the cluster with
``ray.init(address="auto")`` (``RAY_ADDRESS`` wins when set).

Results equal those of the HTTP service and of the in-process searcher. Failures of the cluster
rather than the search — a replica that died mid-call, a replica being replaced, back-pressure —
are retried on another replica (``DEEPRETRIEVAL_SEARCH_RETRIES`` times, with exponential backoff,
within ``DEEPRETRIEVAL_SEARCH_TIMEOUT`` seconds); errors of the search itself (a bad option, a
failed shard) are raised as they are in process. Ray is imported only when a search is made.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core import per_query
from deepretrieval.core.per_query import search_sendable
from deepretrieval.core.results import SearchError, SearchResult

__all__ = ["RAY_SCHEME", "RaySearcher", "transient_errors", "unwrap"]

#: ``DEEPRETRIEVAL_SEARCH_URL`` prefix naming a Ray Serve application.
RAY_SCHEME = "ray://"
#: ``0`` before Ray is imported: Ray's single-node mode, every Ray process of a local cluster on
#: 127.0.0.1 (Ray otherwise binds the machine's address even for a one-machine cluster).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.1


def transient_errors() -> tuple[type[BaseException], ...]:
    """Ray failures of a replica or node (not of the search): worth retrying on another replica."""
    from ray import exceptions as rx
    from ray.serve import exceptions as sx

    return (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError,
            sx.ReplicaUnavailableError, sx.BackPressureError)


def unwrap(exc: BaseException) -> BaseException:
    """The exception a deployment raised (``RayTaskError.cause``), else ``exc`` itself."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    return exc


def check_app_name(app: str) -> str:
    if not app or any(c in app for c in ":/?#@ "):
        raise ValueError(f"{RAY_SCHEME}{app}: expected {RAY_SCHEME}APP with APP the name of a Ray "
                         f"Serve application (e.g. {RAY_SCHEME}deepretrieval); a Ray Client "
                         "address (ray://host:port) is not a search URL: set RAY_ADDRESS for that")
    return app


def ensure_ray() -> None:
    """Connect this process to the Ray cluster unless it already is (a Ray worker always is)."""
    import ray

    if not ray.is_initialized():  # "auto": RAY_ADDRESS, else the cluster started on this node
        ray.init(address="auto", log_to_driver=False, ignore_reinit_error=True)


class _Failover:
    """The retry policy of :func:`call_with_failover` and :func:`call_with_failover_sync`."""

    def __init__(self, what: str, timeout: float, retries: int, backoff: float):
        self.what, self.timeout, self.retries, self.backoff = what, timeout, retries, backoff
        self.transient = transient_errors()
        self.deadline = time.monotonic() + timeout
        self.last = "no attempt made"
        self.attempts = 0

    def remaining(self) -> float:
        """Seconds left for the next attempt (<= 0: give up)."""
        if self.attempts > self.retries:
            return 0.0
        self.attempts += 1
        return self.deadline - time.monotonic()

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; raise unless it is worth retrying; the pause before the next."""
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):  # asyncio's, Ray's (GetTimeoutError)
            self.last = f"no answer within {self.timeout:g}s"
            self.attempts = self.retries + 1
            return 0.0
        if not isinstance(exc, self.transient):
            raise unwrap(exc) from None  # the deployment's own error, as in process
        self.last = f"{type(exc).__name__}: {exc}"
        return max(0.0, min(self.backoff * (2 ** (self.attempts - 1)),
                            self.deadline - time.monotonic()))

    def error(self) -> SearchError:
        return SearchError(f"{self.what} failed after {self.attempts} attempt(s) (timeout "
                           f"{self.timeout:g}s, retries {self.retries}): {self.last}")


async def call_with_failover(call: Callable[[], Awaitable[Any]], what: str, timeout: float,
                             retries: int, backoff: float = DEFAULT_BACKOFF) -> Any:
    """Await ``call()``; retry it (at most ``retries`` times, within ``timeout`` seconds in all)
    when it fails for a reason of the cluster (:func:`transient_errors`). The deployment's own
    exception is raised unwrapped; the last cluster failure or the timeout as SearchError."""
    policy = _Failover(what, timeout, retries, backoff)
    while (remaining := policy.remaining()) > 0:
        try:
            return await asyncio.wait_for(call(), remaining)
        except Exception as exc:  # noqa: BLE001 - sorted by the policy
            pause = policy.failed(exc)
        if pause > 0 and policy.attempts <= policy.retries:
            await asyncio.sleep(pause)
    raise policy.error()


def call_with_failover_sync(call: Callable[[float], Any], what: str, timeout: float,
                            retries: int, backoff: float = DEFAULT_BACKOFF) -> Any:
    """:func:`call_with_failover` for a blocking ``call(timeout_s)``."""
    policy = _Failover(what, timeout, retries, backoff)
    while (remaining := policy.remaining()) > 0:
        try:
            return call(remaining)
        except Exception as exc:  # noqa: BLE001 - sorted by the policy
            pause = policy.failed(exc)
        if pause > 0 and policy.attempts <= policy.retries:
            time.sleep(pause)
    raise policy.error()


class RaySearcher:
    """:class:`deepretrieval.core.results.Searcher` over a Ray Serve application's handles.

    ``search`` blocks (any thread but a running event loop's); ``asearch`` runs on the caller's
    event loop. Each index resolves once to its deployment (the ingress's ``routes``)."""

    def __init__(self, app: str, timeout: float | None = None, retries: int | None = None,
                 backoff: float = DEFAULT_BACKOFF):
        self.app = check_app_name(app)
        self.url = RAY_SCHEME + app
        self.timeout = float(timeout if timeout is not None
                             else settings.get_float("DEEPRETRIEVAL_SEARCH_TIMEOUT", DEFAULT_TIMEOUT))
        self.retries = max(0, int(retries if retries is not None
                                  else settings.get_int("DEEPRETRIEVAL_SEARCH_RETRIES",
                                                        DEFAULT_RETRIES)))
        self.backoff = max(0.0, backoff)
        self._routes: dict[str, str] | None = None
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RaySearcher({self.url!r})"

    def routes(self) -> dict[str, str]:
        """Index name → the deployment that answers it (asked of the application once)."""
        with self._lock:
            if self._routes is None:
                from ray import serve

                ensure_ray()
                try:
                    handle = serve.get_app_handle(self.app)
                except Exception as exc:  # noqa: BLE001 - no such application (or no Serve)
                    raise SearchError(f"no Ray Serve application {self.app!r} in this Ray "
                                      f"cluster ({type(exc).__name__}: {exc}); start it with "
                                      f"`deepretrieval serve --ray --app-name {self.app}`") from None
                self._routes = dict(handle.routes.remote().result(timeout_s=self.timeout))
            return self._routes

    def _handle(self, index: str):
        routes = self.routes()
        if index not in routes:
            raise SearchError(f"unknown index {index!r}; Ray Serve application {self.app!r} "
                              f"serves: {sorted(routes)}")
        with self._lock:
            handle = self._handles.get(index)
            if handle is None:
                from ray import serve

                handle = self._handles[index] = serve.get_deployment_handle(routes[index],
                                                                            app_name=self.app)
            return handle

    async def _search(self, index: str, queries: list[str], k: int, return_text: bool,
                      options: dict[str, Any] | None) -> list[SearchResult]:
        handle = self._handle(index)
        results = await call_with_failover(
            lambda: handle.search.remote(queries, k, return_text, options),
            self._what(index), self.timeout, self.retries, self.backoff)
        if len(results) != len(queries):
            raise SearchError(f"index {index!r} returned {len(results)} results for "
                              f"{len(queries)} queries")
        return results

    def _what(self, index: str) -> str:
        return f"search on index {index!r} of Ray Serve application {self.app!r}"

    async def asearch(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
                      options: dict[str, Any] | None = None) -> list[SearchResult]:
        plan = per_query.sendable(list(queries), options)
        if plan.queries and self._routes is None:
            await asyncio.to_thread(self.routes)  # the first call asks the application (blocking)
        return plan.assemble(await self._search(index, plan.queries, k, return_text,
                                                plan.options()) if plan.queries else [])

    def search(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        def run(unique: list[str], k: int, *, options: dict[str, Any] | None,
                **_: Any) -> list[SearchResult]:
            handle = self._handle(index)
            return call_with_failover_sync(
                lambda timeout_s: handle.search.remote(unique, k, return_text, options).result(
                    timeout_s=timeout_s),
                self._what(index), self.timeout, self.retries, self.backoff)

        return search_sendable(run, list(queries), k, return_text=return_text, options=options)
