"""Rate governor: one token bucket per engine, shared by every caller in the process.

The bucket hands out *reservations*: a caller takes the next free slot under a lock (never
sleeping while holding it) and then waits until its slot, with ``time.sleep`` in threads or
``asyncio.sleep`` in coroutines. Slots are spaced ``1 / rate`` seconds apart (times a small safety
``margin`` so network jitter cannot squeeze ``rate + 1`` requests into one second at the server).

:func:`bucket_for` returns the process-wide bucket of an engine, so every backend instance (and
every reward worker that reaches the engines through the retrieval service) shares one budget.
A server's ``Retry-After`` pauses the whole bucket (:meth:`TokenBucket.pause`).
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass

__all__ = ["TokenBucket", "bucket_for", "Backoff"]


class TokenBucket:
    """Thread-safe, asyncio-friendly request spacer (``rate`` requests per second, ``burst``
    requests may go at once after an idle period)."""

    def __init__(self, rate: float, burst: int = 1, margin: float = 0.05,
                 clock=time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.margin = float(margin)
        self.interval = (1.0 + self.margin) / self.rate
        self._clock = clock
        self._lock = threading.Lock()
        self._next = clock()          # earliest time the next slot may start
        self.granted = 0
        self.waited_s = 0.0
        self.paused_s = 0.0

    def reserve(self) -> float:
        """Take the next slot; returns how many seconds the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            # an idle bucket refills up to ``burst`` slots
            earliest = now - (self.burst - 1) * self.interval
            slot = max(self._next, earliest)
            self._next = slot + self.interval
            self.granted += 1
            wait = max(0.0, slot - now)
            self.waited_s += wait
            return wait

    def acquire(self) -> None:
        """Block the calling thread until it may send one request."""
        wait = self.reserve()
        if wait > 0:
            time.sleep(wait)

    async def acquire_async(self) -> None:
        """Wait (without blocking the event loop) until the caller may send one request."""
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """No slot starts within ``seconds`` from now (the server asked us to back off)."""
        if seconds <= 0:
            return
        with self._lock:
            until = self._clock() + seconds
            if until > self._next:
                self.paused_s += until - self._next
                self._next = until

    def stats(self) -> dict:
        return {"rate_rps": self.rate, "burst": self.burst, "granted": self.granted,
                "waited_s": round(self.waited_s, 3), "paused_s": round(self.paused_s, 3)}


_BUCKETS: dict[str, TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def bucket_for(engine: str, rate: float, burst: int = 1, margin: float = 0.05) -> TokenBucket:
    """The process-wide bucket of ``engine`` (keyed by engine and rate: two configurations with
    different rates — e.g. with and without an API key — get different buckets)."""
    key = f"{engine}@{float(rate)}/{int(burst)}/{float(margin)}"
    with _BUCKETS_LOCK:
        if key not in _BUCKETS:
            _BUCKETS[key] = TokenBucket(rate, burst=burst, margin=margin)
        return _BUCKETS[key]


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: ``retries`` further attempts after the first; attempt ``n`` (0-based) waits
    a uniformly random time in ``[0, min(cap, base * 2**n)]`` ("full jitter"), but at least what
    the server's ``Retry-After`` asked for."""

    retries: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None, rng=random) -> float:
        bound = min(self.cap, self.base * (2 ** attempt))
        delay = rng.uniform(0, bound)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap * 4))
        return delay


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime
        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None
