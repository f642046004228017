"""A cooperative compute deadline for long backend loops.

The retrieval service gives each request a compute deadline (``ServiceConfig.request_deadline_s``)
and runs the backend call inside :func:`deadline_scope`. Code that can loop for long on one query
(the Boolean evaluator, ...) calls :func:`check` now and then: past the deadline it raises
:class:`DeadlineExceeded`, which the service turns into an error for the queries that were not
answered in time. Outside a scope :func:`check` costs one thread-local read and never raises.
The deadline is per thread: work handed to another thread does not see it.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from deepretrieval.core.results import SearchError

_local = threading.local()


class DeadlineExceeded(SearchError):
    """The compute deadline of the current request passed."""


def current() -> float | None:
    """The deadline of this thread (``time.monotonic()`` seconds), or None."""
    return getattr(_local, "at", None)


def check() -> None:
    """Raise :class:`DeadlineExceeded` when this thread's deadline has passed."""
    at = getattr(_local, "at", None)
    if at is not None and time.monotonic() > at:
        raise DeadlineExceeded(f"the compute deadline passed {time.monotonic() - at:.2f} s ago")


@contextlib.contextmanager
def deadline_scope(at: float | None) -> Iterator[None]:
    """Run the block with deadline ``at`` (monotonic seconds; None: none) for this thread."""
    previous = getattr(_local, "at", None)
    _local.at = at
    try:
        yield
    finally:
        _local.at = previous
