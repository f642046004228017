"""The retrieval service (FastAPI + uvicorn) and its clients.

* :func:`deepretrieval.service.app.create_app` — the app over named backends, with micro-batching.
* :class:`deepretrieval.service.client.ServiceSearcher` — what the reward function uses when
  ``DEEPRETRIEVAL_SEARCH_URL`` is set; :class:`~deepretrieval.service.client.AsyncServiceClient`
  and :class:`~deepretrieval.service.client.ServiceClient` for direct use.
* ``deepretrieval serve --index NAME[=PATH] ...`` (:mod:`deepretrieval.service.cli`).

Imports are lazy so ``import deepretrieval.service`` stays cheap.
"""
from __future__ import annotations

__all__ = ["create_app", "ServiceConfig", "ServerThread", "ServiceSearcher", "ServiceClient",
           "AsyncServiceClient"]


def __getattr__(name: str):
    if name in ("create_app", "ServiceConfig", "ServerThread"):
        from . import app
        return getattr(app, name)
    if name in ("ServiceSearcher", "ServiceClient", "AsyncServiceClient"):
        from . import client
        return getattr(client, name)
    raise AttributeError(name)
