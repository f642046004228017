"""Service limits before and around the app: bounded request heads, deadlines for slow or
half-sent requests, a connection cap (503 in the JSON error shape), JSON errors for unknown routes
and methods, per-index worker pools, and the server's ceiling on ``timeout_s``. All on loopback."""
from __future__ import annotations

import json
import resource
import socket
import threading
import time

import httpx
import pytest

from deepretrieval.catalog import open_index
from deepretrieval.core.results import SearchResult
from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
from deepretrieval.service.client import ServiceClient

TOKEN = "s3cret-token"


def _connect(server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def _read_answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


class Gate:
    """A backend that blocks every search until ``release`` (a slow index)."""

    name = "gate"

    def __init__(self):
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)

    def search(self, queries, k, *, return_text=False, options=None):
        self.entered.release()
        self.open.wait(30)
        return [SearchResult(ids=["d"], scores=[1.0]) for _ in queries]

    def info(self):
        return {"type": "gate"}


@pytest.fixture(scope="module")
def server(scifact_index):
    config = ServiceConfig(token=TOKEN, request_timeout_s=1.0, max_header_bytes=16 << 10)
    with ServerThread(create_app({"scifact": scifact_index}, config)) as srv:
        yield srv


def test_unknown_routes_and_methods_answer_in_the_json_error_shape(server):
    r = httpx.get(server.url + "/nope")
    assert r.status_code == 404 and r.json()["status"] == 404 and "/nope" in r.json()["error"]
    r = httpx.get(server.url + "/retrieve")
    assert r.status_code == 405 and r.json()["status"] == 405 and "POST" in r.json()["error"]
    r = httpx.delete(server.url + "/health")
    assert r.status_code == 405 and set(r.json()) == {"error", "status"}


def test_oversized_head_is_431_and_others_are_served(server):
    sock = _connect(server)
    sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nX-Big: ")
    try:
        for _ in range(64 * 16):  # up to 64 MB; the server stops reading long before
            sock.sendall(b"a" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        status, body = _read_answer(sock)
        assert status == 431 and body["status"] == 431 and "16384" in body["error"]
    except (ConnectionResetError, ValueError):
        pass  # the server may reset a client that keeps writing after the answer
    sock.close()
    out = ServiceClient(server.url, token=TOKEN, retries=0).search("scifact", ["stem cells"], 3)
    assert len(out[0].ids) == 3


def test_half_sent_request_times_out_with_408(server):
    head_only = _connect(server)
    head_only.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n")           # head never finished
    body_short = _connect(server)
    body_short.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                       b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n{\"queries\"")
    for sock in (head_only, body_short):
        status, body = _read_answer(sock)        # closed by the server after ~request_timeout_s
        assert status == 408 and body["status"] == 408, body
        sock.close()


def test_trickled_head_is_not_kept_alive_forever(server):
    sock = _connect(server)
    started = time.monotonic()
    try:
        for c in b"POST /retrieve HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            sock.sendall(bytes([c]))
            time.sleep(0.05)
            if time.monotonic() - started > 30:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, _ = _read_answer(sock)
    assert status == 408
    sock.close()


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.slow
@pytest.mark.parametrize("max_connections", [256, 1024])
def test_1000_stalled_connections_do_not_stop_an_authenticated_client(scifact_index, max_connections):
    _raise_fd_limit(2 * 1000 + 512)
    config = ServiceConfig(token=TOKEN, request_timeout_s=60.0, max_connections=max_connections)
    stalled: list[socket.socket] = []
    with ServerThread(create_app({"scifact": scifact_index}, config)) as srv:
        try:
            for i in range(1000):
                s = _connect(srv)
                s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"P")
                stalled.append(s)
            client = ServiceClient(srv.url, token=TOKEN, timeout=30, retries=2)
            for _ in range(3):
                out = client.search("scifact", ["stem cells", "vitamin d"], 5)
                assert all(len(r.ids) == 5 for r in out)
            health = httpx.get(srv.url + "/health", headers={"authorization": f"Bearer {TOKEN}"},
                               timeout=30)
            assert health.status_code == 200 and "backends" in health.json()
            client.close()
        finally:
            for s in stalled:
                s.close()


SERVER_UNDER_FD_LIMIT = """
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from deepretrieval.catalog import open_index
from deepretrieval.service.app import ServiceConfig, create_app, ServerThread
srv = ServerThread(create_app({"scifact": open_index("scifact")}, ServiceConfig(token=%r))).start()
print(srv.port, flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_stalled_connections_under_a_1024_descriptor_server(scifact_index):
    """The server process has 1,024 descriptors, the attackers 1,000 stalled connections plus more:
    the connection cap (descriptors minus a reserve) and eviction keep the real client served."""
    import os
    import subprocess
    import sys
    _raise_fd_limit(1200 + 256)
    proc = subprocess.Popen([sys.executable, "-c", SERVER_UNDER_FD_LIMIT % TOKEN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    stalled = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n")
            stalled.append(s)
        client = ServiceClient(f"http://127.0.0.1:{port}", token=TOKEN, timeout=30, retries=2)
        for _ in range(3):
            assert len(client.search("scifact", ["stem cells"], 5)[0].ids) == 5
        client.close()
    finally:
        for s in stalled:
            s.close()
        proc.stdin.close()
        proc.wait(30)


def test_connection_cap_answers_503_when_every_connection_is_busy(scifact_index):
    gate = Gate()
    config = ServiceConfig(max_connections=2, workers=2)
    with ServerThread(create_app({"gate": gate, "scifact": scifact_index}, config)) as srv:
        busy = []
        for i in range(2):  # different topk: two backend calls, not one coalesced batch
            body = json.dumps({"queries": ["a"], "index": "gate", "topk": i + 1}).encode()
            s = _connect(srv)
            s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                      + body)
            busy.append(s)
        for _ in range(2):
            assert gate.entered.acquire(timeout=30)   # both are in the app now
        third = _connect(srv)
        third.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, answer = _read_answer(third)
        assert status == 503 and answer["status"] == 503 and "maximum of 2 connections" in answer["error"]
        gate.open.set()
        for s in busy:
            status, answer = _read_answer_keepalive(s)
            assert status == 200
            s.close()


def _read_answer_keepalive(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


def test_a_slow_index_does_not_starve_another(scifact_index):
    gate = Gate()
    config = ServiceConfig(workers=1, batch_wait_ms=0)
    with ServerThread(create_app({"gate": gate, "scifact": scifact_index}, config)) as srv:
        results = []

        def slow():
            results.append(ServiceClient(srv.url, timeout=60, retries=0).search("gate", ["q"], 1))

        thread = threading.Thread(target=slow)
        thread.start()
        assert gate.entered.acquire(timeout=30)       # the slow index holds its only worker
        out = ServiceClient(srv.url, timeout=30, retries=0).search("scifact", ["stem cells"], 3)
        assert len(out[0].ids) == 3 and not results   # served while the gate is still closed
        gate.open.set()
        thread.join(60)
        assert results and results[0][0].ids == ["d"]


def test_max_timeout_s_is_a_server_setting():
    db = open_index("spider/singer")
    config = ServiceConfig(max_timeout_s=5.0)
    with ServerThread(create_app({"spider/singer": db}, config)) as srv:
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["SELECT 1"], "topk": 5, "format": "hits",
                                                     "options": {"timeout_s": 120}})
        assert r.status_code == 422 and "max_timeout_s" in r.json()["error"]
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["SELECT 1"], "topk": 5, "format": "hits",
                                                     "options": {"max_result_bytes": 5_600_000_000}})
        assert r.status_code == 422 and "max_result_bytes" in r.json()["error"]
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["SELECT 1"], "topk": 5, "format": "hits",
                                                     "options": {"timeout_s": 5}})
        assert r.status_code == 200
