"""The service's own HTTP/1.1 client (deepretrieval.service._http) against a scripted loopback
server: framing (Content-Length, chunked with extensions and trailers, read-to-close, bodiless
statuses), keep-alive reuse and ``Connection: close``, stale connections, the size caps, malformed
answers, timeouts, refused connections, the connection limit and concurrent callers."""
from __future__ import annotations

import asyncio

import pytest

from deepretrieval.service._http import AsyncHTTP, TransportError


class Scripted:
    """A loopback HTTP server whose answer to each request is ``respond(request_head, body)``
    (raw bytes, or None to close without answering). Counts connections and requests."""

    def __init__(self, respond, close_after: bool = False):
        self.respond = respond
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.max_open = 0

    async def handle(self, reader, writer):
        self.connections += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = self.respond(head, body)
                if asyncio.iscoroutine(answer):
                    answer = await answer
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        finally:
            self.open_now -= 1
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


def ok(body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_content_length_keep_alive_reuses_one_connection():
    async def go():
        async with Scripted(lambda head, body: ok(b"echo:" + body)) as srv:
            client = AsyncHTTP(srv.url)
            out = [await client.request("POST", "/retrieve", f"b{i}".encode(), {"x-a": "1"}, 5)
                   for i in range(5)]
            await client.aclose()
            return srv, out
    srv, out = run(go())
    assert [r.content for r in out] == [f"echo:b{i}".encode() for i in range(5)]
    assert all(r.status_code == 200 for r in out) and out[0].headers["content-length"] == "7"
    assert srv.connections == 1
    first = srv.requests[0].decode()
    assert first.startswith("POST /retrieve HTTP/1.1\r\n") and "x-a: 1" in first
    assert "Content-Length: 2" in first and "Host: 127.0.0.1:" in first


def test_base_path_prefix_and_statuses_are_returned_not_raised():
    async def go():
        async with Scripted(lambda h, b: b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy") as srv:
            client = AsyncHTTP(srv.url + "/api/")
            r = await client.request("GET", "/health", b"", None, 5)
            await client.aclose()
            return srv, r
    srv, r = run(go())
    assert (r.status_code, r.text) == (503, "busy")
    assert srv.requests[0].startswith(b"GET /api/health HTTP/1.1")


def test_chunked_with_extensions_and_trailers():
    body = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")

    async def go():
        async with Scripted(lambda h, b: body) as srv:
            client = AsyncHTTP(srv.url)
            a = await client.request("GET", "/", b"", None, 5)
            b = await client.request("GET", "/", b"", None, 5)  # framing left the stream in sync
            await client.aclose()
            return srv, a, b
    srv, a, b = run(go())
    assert a.content == b.content == b"hello world"
    assert srv.connections == 1


def test_body_until_close_and_bodiless_statuses():
    async def go():
        async with Scripted(lambda h, b: b"HTTP/1.1 200 OK\r\n\r\nall of it", close_after=True) as srv:
            client = AsyncHTTP(srv.url)
            r = await client.request("GET", "/", b"", None, 5)
            r2 = await client.request("GET", "/", b"", None, 5)
            await client.aclose()
        async with Scripted(lambda h, b: b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n") as srv2:
            client = AsyncHTTP(srv2.url)
            r3 = await client.request("DELETE", "/", b"", None, 5)
            await client.aclose()
        return srv, r, r2, r3
    srv, r, r2, r3 = run(go())
    assert r.content == r2.content == b"all of it"
    assert srv.connections == 2  # a body read to the close cannot keep the connection
    assert (r3.status_code, r3.content) == (204, b"")


def test_connection_close_header_and_http10_open_a_new_connection():
    answers = iter([ok(b"1", "Connection: close\r\n"),
                    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n2", ok(b"3"), ok(b"4")])

    async def go():
        async with Scripted(lambda h, b: next(answers)) as srv:
            client = AsyncHTTP(srv.url)
            out = [(await client.request("GET", "/", b"", None, 5)).content for _ in range(4)]
            await client.aclose()
            return srv, out
    srv, out = run(go())
    assert out == [b"1", b"2", b"3", b"4"]
    assert srv.connections == 3  # closed after 1 and after 2; 3 and 4 share one


def test_stale_keep_alive_connection_is_retried_once_on_a_new_one():
    async def go():
        async with Scripted(lambda h, b: ok(b"fine"), close_after=True) as srv:
            client = AsyncHTTP(srv.url)
            a = await client.request("GET", "/", b"", None, 5)
            await asyncio.sleep(0.05)  # the server has closed the (kept) connection
            b = await client.request("GET", "/", b"", None, 5)
            await client.aclose()
            return srv, a, b
    srv, a, b = run(go())
    assert a.content == b.content == b"fine"
    assert len(srv.requests) == 2  # the stale connection cost no request


def test_a_fresh_connection_that_drops_is_an_error_not_a_loop():
    async def go():
        async with Scripted(lambda h, b: None) as srv:  # reads the request, closes, no answer
            client = AsyncHTTP(srv.url)
            with pytest.raises(TransportError, match="IncompleteRead"):
                await client.request("GET", "/", b"", None, 5)
            await client.aclose()
            return srv
    srv = run(go())
    assert len(srv.requests) == 1


@pytest.mark.parametrize("answer, body", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n01234567890", b"01234567890"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n67890\r\n0\r\n\r\n",
     b"01234567890"),
    (b"HTTP/1.1 200 OK\r\n\r\n01234567890", b"01234567890"),
], ids=["content-length", "chunked", "until-close"])
def test_response_over_the_size_cap_is_a_transport_error(answer, body):
    async def go():
        async with Scripted(lambda h, b: answer, close_after=True) as srv:
            small = AsyncHTTP(srv.url, max_response_bytes=10)
            with pytest.raises(TransportError, match="over"):
                await small.request("GET", "/", b"", None, 5)
            await small.aclose()
            exact = AsyncHTTP(srv.url, max_response_bytes=11)
            r = await exact.request("GET", "/", b"", None, 5)
            await exact.aclose()
            return r
    assert run(go()).content == body


def test_head_over_one_mib_and_malformed_answers_are_transport_errors():
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20) + b"\r\nContent-Length: 0\r\n\r\n"
    cases = [(huge, "Limit|chunk"), (b"SMTP ready\r\n\r\n", "malformed status"),
             (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n", "negative"),
             (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "ValueError")]

    async def go():
        for answer, words in cases:
            async with Scripted(lambda h, b, a=answer: a) as srv:
                client = AsyncHTTP(srv.url)
                with pytest.raises(TransportError, match=words):
                    await client.request("GET", "/", b"", None, 5)
                await client.aclose()
    run(go())


def test_timeout_refused_closed_and_bad_arguments():
    async def slow(head, body):
        await asyncio.sleep(5)
        return ok(b"late")

    async def go():
        async with Scripted(slow) as srv:
            client = AsyncHTTP(srv.url)
            with pytest.raises(TransportError, match="no answer within"):
                await client.request("GET", "/", b"", None, 0.2)
            await client.aclose()
            with pytest.raises(TransportError, match="closed"):
                await client.request("GET", "/", b"", None, 1)
            port = srv.server.sockets[0].getsockname()[1]
        refused = AsyncHTTP(f"http://127.0.0.1:{port}")  # nothing listens any more
        with pytest.raises(TransportError, match="cannot connect"):
            await refused.request("GET", "/", b"", None, 2)
    run(go())
    with pytest.raises(ValueError, match="scheme"):
        AsyncHTTP("ftp://example.org")
    with pytest.raises(ValueError, match="max_response_bytes"):
        AsyncHTTP("http://127.0.0.1:1", max_response_bytes=0)


def test_concurrent_callers_get_their_own_answers_within_the_connection_limit():
    async def echo(head, body):
        await asyncio.sleep(0.01)
        return ok(body[::-1])

    async def go():
        async with Scripted(echo) as srv:
            client = AsyncHTTP(srv.url, max_connections=4)
            bodies = [f"request-{i}".encode() for i in range(40)]
            out = await asyncio.gather(*(client.request("POST", "/", b, None, 10) for b in bodies))
            await client.aclose()
            return srv, bodies, out
    srv, bodies, out = run(go())
    assert [r.content for r in out] == [b[::-1] for b in bodies]
    assert srv.max_open <= 4 and srv.connections <= 4
