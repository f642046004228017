"""``ServiceConfig.batching=False`` (the Ray Serve ingress's mode): each request goes straight to its
backend, with the same answers as the micro-batched service."""
from __future__ import annotations

import json

import httpx

from deepretrieval.service.app import ServerThread, ServiceConfig, create_app


class Counting:
    """The SciFact index, counting calls."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, "counting", []

    def search(self, queries, k, *, return_text=False, options=None):
        self.calls.append(list(queries))
        return self.inner.search(queries, k, return_text=return_text, options=options)

    def info(self):
        return self.inner.info()


def test_unbatched_app_answers_like_the_batched_one(scifact_index):
    direct = Counting(scifact_index)
    bodies = [{"queries": ["vitamin D", "cancer risk", "vitamin D"], "topk": 5},
              {"queries": ["vitamin D", "vitamin D"], "topk": 3, "format": "hits"},
              {"queries": ["p53"], "topk": 4, "format": "packed", "return_text": True},
              {"queries": ["p53"], "topk": 3, "options": {"nope": 1}}]
    with ServerThread(create_app({"sf": scifact_index}, ServiceConfig())) as batched, \
            ServerThread(create_app({"sf": direct}, ServiceConfig(batching=False))) as unbatched:
        for body in bodies:
            data = json.dumps(body).encode()
            a = httpx.post(batched.url + "/retrieve", content=data, timeout=30)
            b = httpx.post(unbatched.url + "/retrieve", content=data, timeout=30)
            assert (a.status_code, a.content) == (b.status_code, b.content)
        health = httpx.get(unbatched.url + "/health", timeout=30).json()
    # one backend call per request, identical queries searched once
    assert direct.calls == [["vitamin D", "cancer risk"], ["vitamin D"], ["p53"], ["p53"]]
    assert health["limits"]["batching"] is False
