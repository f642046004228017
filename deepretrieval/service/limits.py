"""Connection-level limits of the retrieval service, enforced before a request reaches the app.

uvicorn bounds neither the size of a request head (with httptools) nor the time a client may take
to send it, so a few slow or huge requests can hold the event loop or every file descriptor
before authentication. :func:`guarded_protocol` returns uvicorn's httptools protocol with:

* **a bounded head**: more than ``max_header_bytes`` before the head is complete → ``431`` and
  the connection is closed;
* **a request deadline**: a request (head and body) must arrive within ``request_timeout_s`` of
  its first byte (of the connection, for the first request) → ``408`` and close. Waiting for the
  app (a slow search) does not count; idle keep-alive connections are uvicorn's
  ``timeout_keep_alive``;
* **a connection cap**: past ``max_connections`` open connections, the oldest connection that
  is not waiting for the app (idle, or still sending its request) is closed to make room; when
  every connection is busy in the app the new one is answered ``503`` in the service's JSON
  error shape (``{"error", "status"}``) and closed.

:func:`apply_backend_limits` lowers the ceilings of backend options a client may raise (SQL
``timeout_s`` / ``max_result_bytes``) to the server's settings. :func:`json_error_handlers` make
unknown routes and methods answer in the same JSON error shape.
"""
from __future__ import annotations

import json
import logging
import resource
import time
from typing import Any

log = logging.getLogger(__name__)

#: Seconds a refused connection is drained before it is closed.
LINGER_S = 0.5
#: File descriptors kept free for the index files, the backend pools and logging.
FD_RESERVE = 64


def fd_connection_ceiling() -> int:
    """The most connections this process can hold open: its descriptor limit minus a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(1, soft - FD_RESERVE)


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode()


_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
_HEAD_END = b"\r\n\r\n"


def raw_response(status: int, message: str) -> bytes:
    body = error_body(status, message)
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(max_header_bytes: int, request_timeout_s: float, max_connections: int):
    """uvicorn's httptools protocol class with the limits of the module docstring."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    cap = max(1, min(int(max_connections), fd_connection_ceiling()))

    class GuardedProtocol(HttpToolsProtocol):
        limits = {"max_header_bytes": int(max_header_bytes),
                  "request_timeout_s": float(request_timeout_s), "max_connections": cap}

        def connection_made(self, transport) -> None:  # type: ignore[override]
            self._guard = None
            self._refused = False
            self._head_bytes = 0
            self._head_tail = b""
            self._in_head = True
            self._since = time.monotonic()
            super().connection_made(transport)
            if len(self.connections) > cap and not self._make_room():
                log.warning("connection cap of %d reached: answering 503", cap)
                self._refuse(503, f"the service holds its maximum of {cap} connections; "
                                  "retry shortly")
                return
            self._arm()

        # -- the guard over one incoming request ------------------------------------------
        def _arm(self) -> None:
            self._disarm()
            self._since = time.monotonic()
            self._guard = self.loop.call_later(self.limits["request_timeout_s"], self._expired)

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
                self._guard = None

        def _expired(self) -> None:
            self._guard = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle.response_started:
                return
            self._refuse(408, f"the request did not arrive within "
                              f"{self.limits['request_timeout_s']:g} s")

        def _refuse(self, status: int, message: str) -> None:
            """Answer ``status`` and close. Whatever the client still sends is read and dropped
            for a moment (LINGER_S), so the answer is not lost to a reset."""
            self._disarm()
            self._refused = True
            if self.cycle is not None:
                self.cycle.response_complete = True  # the app must not write after us
                self.cycle.disconnected = True
            try:
                self.transport.write(raw_response(status, message))
                if self.transport.can_write_eof():
                    self.transport.write_eof()
            except (OSError, RuntimeError):
                self.transport.close()
                return
            self.loop.call_later(LINGER_S, self.transport.close)

        def _make_room(self) -> bool:
            """Close the oldest other connection that is not waiting for the app."""
            idle = [c for c in self.connections
                    if c is not self and isinstance(c, GuardedProtocol) and c._evictable()]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c._since)
            oldest._disarm()
            oldest.transport.close()
            oldest.connections.discard(oldest)
            return True

        def _evictable(self) -> bool:
            if self._refused or self.transport is None or self.transport.is_closing():
                return False
            return self.cycle is None or self.cycle.response_complete or self._guard is not None

        # -- uvicorn hooks ------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._guard is None:  # first byte of the next keep-alive request
                self._in_head, self._head_bytes, self._head_tail = True, 0, b""
                self._arm()
            if self._in_head:
                # the head's size so far, up to its end when this chunk completes it: checked
                # before the parser sees the chunk, the completing chunk included
                seen = self._head_tail + data
                end = seen.find(_HEAD_END)
                if end >= 0:
                    head = self._head_bytes - len(self._head_tail) + end + len(_HEAD_END)
                else:
                    head = self._head_bytes + len(data)
                    self._head_tail = seen[-(len(_HEAD_END) - 1):]
                self._head_bytes = head
                if head > self.limits["max_header_bytes"]:
                    if not self.transport.is_closing():
                        self._refuse(431, f"the request head exceeds "
                                          f"{self.limits['max_header_bytes']} bytes")
                    return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:  # type: ignore[override]
            """A request httptools cannot parse (e.g. ``Content-Length: -1``): 400 in the
            service's JSON error shape, not uvicorn's plain text."""
            self._refuse(400, f"invalid HTTP request (the request line or a header could not "
                              f"be parsed, e.g. a negative Content-Length): {msg}")

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()  # the whole request is in: the app's time is not the client's
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedProtocol


def apply_backend_limits(indexes: dict[str, Any], max_timeout_s: float,
                         max_result_bytes: int) -> None:
    """Lower the option ceilings of backends that have them (SQL) to the server's settings."""
    for backend in indexes.values():
        if hasattr(backend, "max_timeout_s"):
            backend.max_timeout_s = min(backend.max_timeout_s, float(max_timeout_s))
        if hasattr(backend, "max_result_bytes"):
            backend.max_result_bytes = min(backend.max_result_bytes, int(max_result_bytes))


def json_error_handlers(app, count_error, routes: list[str]) -> None:
    """Unknown routes (404) and methods (405), and any other HTTP error FastAPI raises, answer
    ``{"error", "status"}`` like the service's own errors (a 404 lists ``routes``)."""
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    async def http_error(request, exc: HTTPException):
        status = exc.status_code
        if status == 404:
            message = f"no route {request.url.path!r}; routes: {', '.join(routes)}"
        elif status == 405:
            allow = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
            message = (f"method {request.method} is not allowed on {request.url.path!r}; "
                       f"allowed: {allow}")
        else:
            message = str(exc.detail)
        count_error(status)
        return Response(error_body(status, message), status_code=status,
                        media_type="application/json", headers=exc.headers)

    app.add_exception_handler(HTTPException, http_error)
