"""A small HTTP/1.1 client on asyncio streams with a keep-alive connection pool.

The service's async client sends many small requests from one event loop (64+ concurrent reward
calls); httpx's async pool costs a millisecond or more of CPU per request at that concurrency, this
one about a tenth of that. It speaks just what the service needs: one request at a time per
connection, ``Content-Length`` or chunked bodies, ``http`` and ``https``. Response heads are
capped at 1 MiB and bodies at ``max_response_bytes`` (default 1 GiB): a larger answer is a
:class:`TransportError`, never an unbounded read. ``benchmarks/bench_http_clients.py`` measures it
against aiohttp and httpx on the service's own requests.
"""
from __future__ import annotations

import asyncio
import ssl as _ssl
from urllib.parse import urlsplit


#: Default cap on one response body (a batch of 64 queries x 3,000 passages with text is ~300 MB).
MAX_RESPONSE_BYTES = 1 << 30
_HEAD_LIMIT = 1 << 20


class TransportError(OSError):
    """The request did not get an HTTP answer (refused, reset, timed out, malformed)."""


class _TooLarge(ValueError):
    """The response is over the client's size cap (reported as a TransportError)."""


class Response:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001
            pass


class AsyncHTTP:
    """Keep-alive pool towards one origin (``scheme://host:port``)."""

    def __init__(self, base_url: str, max_connections: int = 256,
                 max_response_bytes: int = MAX_RESPONSE_BYTES):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = _ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._closed = False
        if int(max_response_bytes) < 1:
            raise ValueError("max_response_bytes must be >= 1")
        self.max_response_bytes = int(max_response_bytes)

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                       limit=_HEAD_LIMIT)
        return _Conn(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Response:
        """One request; raises :class:`TransportError` when no HTTP answer came back."""
        if self._closed:
            raise TransportError("client is closed")
        head = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}",
                f"Content-Length: {len(body)}"]
        for key, value in (headers or {}).items():
            head.append(f"{key}: {value}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        try:
            return await asyncio.wait_for(self._send(data, method), timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"no answer within {timeout:.3g}s") from None

    async def _send(self, data: bytes, method: str) -> Response:
        async with self._slots:
            while True:
                reused = bool(self._idle)
                try:
                    conn = self._idle.pop() if reused else await self._connect()
                except OSError as exc:
                    raise TransportError(f"cannot connect to {self.host}:{self.port}: "
                                         f"{exc}") from None
                try:
                    conn.writer.write(data)
                    response, keep = await self._read(conn, method, self.max_response_bytes)
                except asyncio.CancelledError:
                    conn.close()
                    raise
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ValueError) as exc:
                    conn.close()
                    if reused and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                        continue  # the server closed an idle keep-alive connection: reconnect
                    raise TransportError(f"{type(exc).__name__}: {exc}") from None
                if keep and not self._closed:
                    self._idle.append(conn)
                else:
                    conn.close()
                return response

    @staticmethod
    async def _read(conn: _Conn, method: str, cap: int) -> tuple[Response, bool]:
        reader = conn.reader
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
            raise ValueError(f"malformed status line {lines[0]!r}")
        status = int(status_line[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and status_line[0] != "HTTP/1.0"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b""), keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            total = 0
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                total += size
                if size < 0 or total > cap:
                    raise _TooLarge(f"chunked response body over {cap:,} bytes")
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            return Response(status, headers, b"".join(parts)), keep
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise ValueError(f"negative Content-Length {length}")
            if length > cap:
                raise _TooLarge(f"response body of {length:,} bytes is over the cap of {cap:,}")
            content = await reader.readexactly(length)
            return Response(status, headers, content), keep
        parts, total = [], 0  # body until the server closes the connection
        while chunk := await reader.read(1 << 16):
            total += len(chunk)
            if total > cap:
                raise _TooLarge(f"response body over {cap:,} bytes")
            parts.append(chunk)
        return Response(status, headers, b"".join(parts)), False

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
