"""Micro-batching of concurrent searches on one backend, with per-query isolation and a deadline.

Requests for the same (k, return_text, options) that arrive within ``wait_s`` of each other, or
while every worker is busy, go to the backend as one batched call with identical queries searched
once. The evidence option ``answers`` is not part of "the same options": requests with different
answers share a call, each query with its own answers (:mod:`deepretrieval.core.per_query`; a
query searched with two different answer lists is two searches). The call runs in a worker thread
(:meth:`Batcher._search_all`):

* **in chunks** sized from the measured time per query (a running mean over the backend's
  calls; ``FIRST_CHUNK`` queries before any was measured) so one chunk takes about
  ``CHUNK_TARGET_S`` (at most ``max_batch``: a fast backend gets the whole batch at once);
* **under a compute deadline**: the latest deadline of the batch's requests is set for the
  thread (:mod:`deepretrieval.core.deadline`, which long backend loops check) and checked
  between chunks; the queries not searched when it passes get their own error;
* **with per-query isolation**: when a backend call raises, its queries are split in halves and
  searched again, down to the one query that fails, which gets ``SearchResult(error=...)`` —
  the others keep their results. A ``ValueError`` means the backend rejected the request itself
  (an unknown option, a bad ``k``): when every query of the batch is rejected the requests fail
  with it (422); when only some are, those queries get their own error.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from deepretrieval.core import per_query
from deepretrieval.core.deadline import DeadlineExceeded, deadline_scope
from deepretrieval.core.results import Backend, SearchError, SearchResult, unencodable

log = logging.getLogger(__name__)

#: Queries in the first backend call of a batcher (later chunks are sized from measured times).
FIRST_CHUNK = 8
#: Seconds one chunk of a batch should take: the granularity of the deadline between chunks.
CHUNK_TARGET_S = 0.5


class Rejected(Exception):
    """Every query of a batch was refused by the backend with this ``ValueError``."""

    def __init__(self, error: ValueError):
        super().__init__(str(error))
        self.error = error


@dataclass
class _Job:
    queries: list[str]
    answers: list[list[str]] | None  # per query (the evidence option), or None
    future: asyncio.Future
    arrived: float
    deadline: float


class _Group:
    """Pending jobs that can share one backend call (same index, k, return_text, options but
    the per-query ``answers``)."""

    __slots__ = ("jobs", "n", "dispatcher")

    def __init__(self) -> None:
        self.jobs: deque[_Job] = deque()
        self.n = 0
        self.dispatcher: asyncio.Task | None = None


def empty_stats() -> dict[str, int]:
    return {"batches": 0, "backend_queries": 0, "queries": 0, "failed_batches": 0,
            "isolated_failures": 0, "deadline_misses": 0}


class Batcher:
    """Coalesces concurrent searches on one backend into batched backend calls."""

    def __init__(self, backend: Backend, executor: ThreadPoolExecutor, workers: int,
                 wait_s: float, max_batch: int, deadline_s: float | None = None,
                 coalesce: bool = True):
        self.backend = backend
        #: False: each request is searched on its own (per-query isolation, chunks and the
        #: deadline still apply) — for a front whose backends batch themselves (Ray Serve)
        self.coalesce = coalesce
        self.executor = executor
        self.wait_s = max(0.0, wait_s)
        self.max_batch = max(1, max_batch)
        self.deadline_s = deadline_s
        self.slots = asyncio.Semaphore(max(1, workers))
        self.groups: dict[tuple, _Group] = {}
        self.stats = empty_stats()
        self._tasks: set[asyncio.Task] = set()
        self._per_query: float | None = None  # running mean of backend seconds per query

    async def search(self, queries: list[str], k: int, return_text: bool,
                     options: dict[str, Any] | None,
                     arrived: float | None = None) -> list[SearchResult]:
        """One result per query; a query the backend could not answer has its ``error``.
        Raises :class:`Rejected` when the backend refused the request itself. ``arrived``
        (``time.monotonic()``) starts the compute deadline; default now."""
        try:
            shared, answers = per_query.split(options, len(queries))
        except ValueError as exc:
            raise Rejected(exc) from None
        why = [unencodable(q) for q in queries]
        if any(why):  # never handed to the backend: each gets its own error, the rest is searched
            good = [i for i, w in enumerate(why) if w is None]
            found = iter(await self.search(
                [queries[i] for i in good], k, return_text,
                per_query.join(shared, None if answers is None else [answers[i] for i in good]),
                arrived) if good else [])
            return [SearchResult(error=w) if w else next(found) for w in why]
        key = (k, return_text, *per_query.shared_key(shared, answers))
        loop = asyncio.get_running_loop()
        start = time.monotonic() if arrived is None else arrived
        job = _Job(list(queries), answers, loop.create_future(), loop.time(),
                   start + self.deadline_s if self.deadline_s else float("inf"))
        self.stats["queries"] += len(job.queries)
        if not self.coalesce:
            await self.slots.acquire()
            await self._run(key, [job])  # releases the slot
            return await job.future
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group()
        group.jobs.append(job)
        group.n += len(job.queries)
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

    async def _run(self, key: tuple, jobs: list[_Job]) -> None:
        try:
            k, return_text, shared, with_answers = key
            opts = json.loads(shared) or None
            queries = [q for job in jobs for q in job.queries]
            answers = ([a for job in jobs for a in (job.answers or [])] if with_answers
                       else None)
            unique, unique_answers, keys = per_query.unique_items(queries, answers)
            deadline = max(job.deadline for job in jobs)
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(
                    self.executor, self._search_all, unique, unique_answers, k, return_text,
                    opts, deadline)
            except Exception as exc:  # noqa: BLE001 - Rejected, or a bug: every job learns it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                return
            by_item = dict(zip(dict.fromkeys(keys), results))
            at = 0
            for job in jobs:
                mine = keys[at:at + len(job.queries)]
                at += len(job.queries)
                if not job.future.done():
                    job.future.set_result([by_item[key] for key in mine])
        finally:
            self.slots.release()

    # ---- in the worker thread ------------------------------------------------------------
    def _search_all(self, queries: list[str], answers: list[list[str]] | None, k: int,
                    return_text: bool, options: dict[str, Any] | None,
                    deadline: float) -> list[SearchResult]:
        out: list[SearchResult] = []
        rejected: list[ValueError] = []
        failed = False
        size = self._chunk_size()
        at = None if deadline == float("inf") else deadline
        with deadline_scope(at):
            i = 0
            while i < len(queries):
                if at is not None and time.monotonic() > at:
                    out.extend(self._late(len(queries) - i))
                    break
                chunk = queries[i:i + size]
                chunk_answers = None if answers is None else answers[i:i + size]
                t0 = time.monotonic()
                try:
                    part, bad = self._isolated(chunk, chunk_answers, k, return_text, options,
                                               rejected)
                except DeadlineExceeded:
                    out.extend(self._late(len(queries) - i))
                    break
                failed |= bad
                out.extend(part)
                i += len(chunk)
                per_query = (time.monotonic() - t0) / len(chunk)
                self._per_query = (per_query if self._per_query is None
                                   else 0.5 * self._per_query + 0.5 * per_query)
                size = self._chunk_size()
        self.stats["batches"] += 1
        self.stats["backend_queries"] += len(queries)
        if failed:
            self.stats["failed_batches"] += 1
        if rejected and len(rejected) == len(queries):
            raise Rejected(rejected[0])
        return out

    def _chunk_size(self) -> int:
        if self._per_query is None:
            return min(FIRST_CHUNK, self.max_batch)
        if self._per_query <= 0:
            return self.max_batch
        return max(1, min(self.max_batch, int(CHUNK_TARGET_S / self._per_query)))

    def _late(self, n: int) -> list[SearchResult]:
        self.stats["deadline_misses"] += n
        return [SearchResult(error=f"not searched: the request's compute deadline "
                                   f"(request_deadline_s={self.deadline_s:g}) passed")
                for _ in range(n)]

    def _isolated(self, queries: list[str], answers: list[list[str]] | None, k: int,
                  return_text: bool, options: dict[str, Any] | None,
                  rejected: list[ValueError]) -> tuple[list[SearchResult], bool]:
        """(results, whether some call failed): a failing call is split in halves down to the
        query that fails, which gets its own error (``rejected`` collects ValueErrors).
        ``options`` are the shared ones, ``answers`` each query's (or None)."""
        try:
            results = self.backend.search(queries, k, return_text=return_text,
                                          options=per_query.join(options, answers))
            if len(results) != len(queries):
                raise SearchError(f"backend {self.backend.name!r} returned {len(results)} "
                                  f"results for {len(queries)} queries")
            return results, False
        except DeadlineExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - isolated below
            if len(queries) > 1:
                mid = len(queries) // 2
                halves = (None, None) if answers is None else (answers[:mid], answers[mid:])
                left, _ = self._isolated(queries[:mid], halves[0], k, return_text, options,
                                         rejected)
                right, _ = self._isolated(queries[mid:], halves[1], k, return_text, options,
                                          rejected)
                return left + right, True
            if isinstance(exc, ValueError):
                rejected.append(exc)
            else:
                self.stats["isolated_failures"] += 1
                log.warning("search on %s failed for one query (%s: %s): that query gets the "
                            "error, the others are answered", self.backend.name,
                            type(exc).__name__, exc)
            return [SearchResult(error=f"search failed: {type(exc).__name__}: {exc}")], True
