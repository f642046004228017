"""A loopback server speaking the OpenAI chat completions API, for tests and demos.

``with LoopbackChatServer(reply) as server: ...`` serves ``POST /v1/chat/completions`` on
``server.base_url`` (127.0.0.1, a free port) from a background thread. ``reply(body)`` gets the
parsed request body and returns the assistant text, a list of texts (one choice each), or an
``(http_status, payload)`` tuple to answer with an error (payload: dict → JSON, str → raw body,
which lets tests send malformed responses). Every request body is kept in ``server.requests``.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict], Any]


class LoopbackChatServer:
    def __init__(self, reply: Reply, *, api_key: str | None = None):
        self.reply = reply
        self.api_key = api_key
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "LoopbackChatServer":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: Any) -> None:
                raw = payload if isinstance(payload, str) else json.dumps(payload)
                data = raw.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "loopback", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if outer.api_key and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._send(401, {"error": {"message": "invalid api key"}})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                with outer._lock:
                    outer.requests.append(body)
                try:
                    result = outer.reply(body)
                except Exception as exc:  # a bug in the test's reply function → 500
                    self._send(500, {"error": {"message": f"reply failed: {exc}"}})
                    return
                if isinstance(result, tuple):
                    self._send(int(result[0]), result[1])
                    return
                texts = result if isinstance(result, list) else [result]
                self._send(200, {
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model", "loopback"),
                    "choices": [{"index": i, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}
                                for i, text in enumerate(texts)],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
