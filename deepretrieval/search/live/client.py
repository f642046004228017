"""What the live engines share: governed, retried HTTP; the cache; batching; statistics.

:class:`LiveBackend` implements the :class:`~deepretrieval.core.results.Backend` protocol. A
subclass says how one query is fetched (:meth:`LiveBackend._fetch`, any number of requests via
:meth:`LiveBackend._get_json`) and which per-call options it accepts. Everything else is here:

* every HTTP request first takes a slot from the engine's token bucket (:mod:`.governor`);
* 429, 5xx, timeouts, connection errors and unreadable (e.g. truncated) JSON are retried with
  exponential backoff and full jitter; ``Retry-After`` is honoured and pauses the whole bucket;
* a query whose retries are exhausted comes back as ``SearchResult(error=...)``, never as an
  empty result;
* results go through the persistent cache (:mod:`.cache`); identical queries that are in
  flight at the same time are fetched once;
* the queries of one call run concurrently on a small thread pool (the bucket sets the pace).
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx

from deepretrieval import __version__
from deepretrieval.core.results import SearchResult, unencodable
from deepretrieval.search.live.cache import SearchCache, cache_key
from deepretrieval.search.live.governor import (
    Backoff,
    TokenBucket,
    bucket_for,
    parse_retry_after,
)

log = logging.getLogger(__name__)

__all__ = ["LiveBackend", "LiveError", "RetryableError"]

MAX_QUERY_CHARS = 16384


class LiveError(RuntimeError):
    """A request failed for good (client error, or retries exhausted)."""


class RetryableError(LiveError):
    """A request failed in a way worth retrying (throttled, server error, bad body)."""

    def __init__(self, message: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class _RedactSecrets(logging.Filter):
    """httpx logs request URLs at INFO; keep API keys out of every log."""

    pattern = re.compile(r"(api_key=)[^&\s\"']+")

    def _clean(self, value: Any) -> Any:
        if isinstance(value, (str, httpx.URL)):
            return self.pattern.sub(r"\1***", str(value))
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        record.msg = self._clean(record.msg)
        return True


_REDACT = _RedactSecrets()
for _name in ("httpx", "httpcore"):
    if not any(isinstance(f, _RedactSecrets) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_REDACT)
# a live search is thousands of requests: httpx's one INFO line per request is opt-in
# (``logging.getLogger("httpx").setLevel(logging.INFO)``); keys are redacted either way
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)


class LiveBackend:
    """Base of the live engines. See the module docstring."""

    name = "live"
    engine = "live"
    #: per-call options the engine understands (others raise ValueError)
    allowed_options: frozenset[str] = frozenset()
    #: deepest result list the engine can return
    max_depth = 10_000

    def __init__(self, base_url: str, *, rate: float, burst: int = 1, margin: float = 0.05,
                 cache: SearchCache | None = None, backoff: Backoff | None = None,
                 timeout: float = 30.0, max_workers: int = 16, name: str | None = None,
                 bucket: TokenBucket | None = None, user_agent: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        if name:
            self.name = name
        self.bucket = bucket or bucket_for(f"{self.engine}:{self.base_url}", rate, burst, margin)
        self.cache = cache
        self.backoff = backoff or Backoff()
        self.timeout = float(timeout)
        self._http = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=max_workers, max_keepalive_connections=max_workers),
            headers={"User-Agent": user_agent or f"deepretrieval/{__version__}"},
            follow_redirects=True)
        self._pool = ThreadPoolExecutor(max_workers=max_workers,
                                        thread_name_prefix=f"{self.engine}-search")
        self._inflight: dict[str, Future] = {}
        self._inflight_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: Counter = Counter()

    # -- secrets -----------------------------------------------------------------------------
    #: values that must never appear in an error text or log line (subclasses add API keys)
    secrets: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """``text`` without the engine's secrets (raw, URL-encoded, or as ``api_key=...``)."""
        from urllib.parse import quote, quote_plus
        text = _RedactSecrets.pattern.sub(r"\1***", str(text))
        for secret in self.secrets:
            if secret:
                for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                    text = text.replace(form, "***")
        return text

    # -- subclass interface ------------------------------------------------------------------
    def _params(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validated per-call options → the parameters that become part of the cache key."""
        return {}

    def _fetch(self, query: str, k: int, params: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """Run one query to depth ``k``: ranked ids and debugging info. Raise LiveError."""
        raise NotImplementedError

    # -- Backend protocol ----------------------------------------------------------------------
    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        if return_text:
            raise ValueError(f"{self.name}: return_text is not supported by a live engine "
                             "(it returns identifiers only)")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{self.name}: k must be a positive integer, got {k!r}")
        options = dict(options or {})
        unknown = set(options) - self.allowed_options
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {sorted(unknown)}; "
                             f"accepted: {sorted(self.allowed_options)}")
        params = self._params(options)
        depth = min(k, self.max_depth)
        queries = list(queries)
        if len(queries) == 1:
            return [self._one(queries[0], depth, k, params)]
        futures = [self._pool.submit(self._one, q, depth, k, params) for q in queries]
        return [f.result() for f in futures]

    def info(self) -> dict[str, Any]:
        with self._stats_lock:
            stats = dict(self._stats)
        return {"type": "live", "engine": self.engine, "name": self.name,
                "base_url": self.base_url, "rate": self.bucket.stats(),
                "cache": self.cache.counters() if self.cache is not None else None,
                "requests": stats.pop("requests", 0), "retries": stats.pop("retries", 0),
                "failed_queries": stats.pop("failed_queries", 0),
                "errors": {k[6:]: v for k, v in stats.items() if k.startswith("error:")}}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # -- one query ---------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def _one(self, query: Any, depth: int, k: int, params: Mapping[str, Any]) -> SearchResult:
        if not isinstance(query, str) or not query.strip():
            return SearchResult(error=f"{self.name}: empty query")
        if len(query) > MAX_QUERY_CHARS:
            return SearchResult(error=f"{self.name}: query longer than {MAX_QUERY_CHARS} characters")
        why = unencodable(query)
        if why is not None:  # would fail in the cache key and the URL: this query's own error
            return SearchResult(error=f"{self.name}: {why}")
        cache_params = {**params, "depth": depth}
        key = cache_key(self.engine, query, cache_params)
        with self._inflight_lock:
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = self._inflight[key] = Future()
        if not owner:
            shared: SearchResult = future.result()
            return SearchResult(ids=list(shared.ids), scores=list(shared.scores),
                                error=shared.error, info=dict(shared.info))
        try:
            result = self._lookup(query, depth, k, params, cache_params, key)
        except Exception as exc:  # noqa: BLE001 - one query's failure is that query's result
            message = self.redact(f"{type(exc).__name__}: {exc}")
            log.warning("%s: query failed: %s", self.name, message)
            self._count("failed_queries")
            result = SearchResult(error=f"{self.name}: {message}")
            future.set_result(result)
        except BaseException as exc:  # keep waiters from hanging, then re-raise
            future.set_result(SearchResult(error=self.redact(f"{self.name}: {type(exc).__name__}: {exc}")))
            raise
        else:
            future.set_result(result)
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
        return result

    def _lookup(self, query: str, depth: int, k: int, params: Mapping[str, Any],
                cache_params: Mapping[str, Any], key: str) -> SearchResult:
        if self.cache is not None:
            hit = self.cache.get_key(key)
            if hit is not None:
                return _result(hit.ids[:k], {**hit.info, "cached": True})
            if self.cache.frozen:
                self._count("failed_queries")
                return SearchResult(error=f"{self.name}: cache miss in frozen mode",
                                    info={"cached": False})
        try:
            ids, info = self._fetch(query, depth, params)
        except LiveError as exc:
            self._count("failed_queries")
            return SearchResult(error=self.redact(f"{self.name}: {exc}"), info={"cached": False})
        if depth < k:
            info.setdefault("warnings", []).append(
                f"depth capped at {depth} (the engine returns at most {self.max_depth} results)")
        if self.cache is not None:
            try:
                self.cache.put(self.engine, query, cache_params, ids, info)
            except Exception as exc:  # a cache failure must not fail the search
                log.warning("%s: could not write the cache: %s", self.name, exc)
                self._count("error:cache_write")
        return _result(ids[:k], {**info, "cached": False})

    # -- HTTP --------------------------------------------------------------------------------
    def _get_json(self, path: str, params: Mapping[str, Any], *, post: bool = False,
                  check: Callable[[Any], Any] | None = None) -> Any:
        """One governed request, retried; the decoded JSON body, or what ``check(body)``
        returns (``check`` may raise RetryableError for a well-formed but unusable answer, or
        LiveError for a final one). Raises LiveError."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        last = "no attempt"
        attempts = self.backoff.retries + 1
        for attempt in range(attempts):
            if attempt:
                self._count("retries")
            self.bucket.acquire()
            self._count("requests")
            try:
                body = self._attempt(url, params, post)
                return check(body) if check is not None else body
            except RetryableError as exc:
                self._count(f"error:{exc.kind}")
                last = str(exc)
                if attempt + 1 >= attempts:
                    break
                delay = self.backoff.delay(attempt, exc.retry_after)
                if exc.retry_after is not None:
                    self.bucket.pause(exc.retry_after)
                log.debug("%s: %s; retry %d/%d in %.2fs", self.name, self.redact(str(exc)), attempt + 1,
                          self.backoff.retries, delay)
                time.sleep(delay)
        raise LiveError(f"gave up after {attempts} attempt(s): {last}")

    def _attempt(self, url: str, params: Mapping[str, Any], post: bool) -> Any:
        try:
            if post:
                response = self._http.post(url, data=dict(params))
            else:
                response = self._http.get(url, params=dict(params))
            body = response.content
        except httpx.TimeoutException as exc:
            raise RetryableError(f"timeout ({type(exc).__name__})", "timeout") from None
        except httpx.TransportError as exc:
            # a body cut short by the server also lands here (RemoteProtocolError)
            raise RetryableError(f"connection error ({type(exc).__name__})", "transport") from None
        status = response.status_code
        if status == 429:
            raise RetryableError("HTTP 429 (rate limited)", "429",
                                 parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            raise RetryableError(f"HTTP {status}", "5xx",
                                 parse_retry_after(response.headers.get("Retry-After")))
        if status >= 400:
            self._count(f"error:{status}")
            snippet = self.redact(body[:4096].decode("utf-8", "replace").strip())[:300]
            raise LiveError(f"HTTP {status}: {snippet}")
        try:
            return json.loads(body)
        except ValueError:
            raise RetryableError(f"unreadable JSON body ({len(body)} bytes)", "bad_json") from None


def _result(ids: list[str], info: dict[str, Any]) -> SearchResult:
    # rank-based scores: the engines return an order, not a score
    return SearchResult(ids=list(ids), scores=list(map(float, range(len(ids), 0, -1))), info=info)
