"""The retrieval service (FastAPI + uvicorn) and its clients.

* :func:`deepretrieval.service.app.create_app` — the app over named backends, with micro-batching.
* :class:`deepretrieval.service.client.ServiceSearcher` — what the reward function uses when
  ``DEEPRETRIEVAL_SEARCH_URL`` is set; :class:`~deepretrieval.service.client.AsyncServiceClient`
  and :class:`~deepretrieval.service.client.ServiceClient` for direct use.
* ``deepretrieval serve --index NAME[=PATH] ...`` (:mod:`deepretrieval.cli.serve`).
* :mod:`deepretrieval.service.ray_serve` — the same app as a Ray Serve application
  (``serve --ray``; imports Ray, import it only then) and
  :class:`deepretrieval.service.ray_client.RaySearcher` for ``DEEPRETRIEVAL_SEARCH_URL=ray://APP``
  (imports Ray only when it searches); docs/scale_out.md.
"""
