"""The retrieval service as a Ray Serve application (``deepretrieval serve --ray``).

The same indexes, wire formats and limits as ``deepretrieval serve``, spread over a Ray cluster:

* **one deployment per index** (``index-<i>``), or, for a sharded index (``meta.json`` type
  ``sharded``, :mod:`deepretrieval.search.shards`), **one deployment per shard** (``shard-<i>-<s>``)
  plus a **router** (``router-<i>``) that sends each call to every shard and merges the top-k with
  :func:`~deepretrieval.search.shards.merge_results` (the one merge rule; a failed shard fails the
  query with its name, never a partial result). Each has ``replicas`` replicas; the index and shard
  replicas coalesce concurrent calls with Ray Serve's ``@serve.batch`` (``max_batch`` calls per
  batch, ``batch_wait_ms``, ``workers`` batches at once; identical queries searched once, at most
  ``max_batch`` queries per backend call);
* **the ingress** (``ingress``): the very ASGI application :func:`~deepretrieval.service.app.create_app`
  builds — every wire format, the bearer token, the body/query/k/passage limits — over backends
  that are proxies to those deployments, with ``ServiceConfig.batching`` off (the deployments
  batch). Ray Serve runs an HTTP proxy on every node (``proxy_location="EveryNode"``), so
  ``http://127.0.0.1:PORT/retrieve`` answers on every node of the cluster;
* **failover**: a call that fails because a replica or node died (or is being replaced, or pushes
  back) is retried on another replica by the ingress and the router
  (:func:`~deepretrieval.service.ray_client.call_with_failover`); errors of the search itself are
  returned as the single-process service returns them.

Processes inside the cluster (verl reward workers, agent loops) search through the handles with
``DEEPRETRIEVAL_SEARCH_URL=ray://<app name>`` (:class:`~deepretrieval.service.ray_client.RaySearcher`).

Differences from the single-process service: the connection-level limits of
:mod:`deepretrieval.service.limits` (head size, request deadline, connection cap) are those of Ray
Serve's proxy, and ``/health`` reports no batch statistics. This module imports Ray at import time:
import it only when Ray Serve is used (``pip install "deepretrieval[scale]"``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ray import serve

from deepretrieval.core import per_query
from deepretrieval.core.results import Backend, SearchError, SearchResult
from deepretrieval.search import load_index_dir
from deepretrieval.search.answer_ranks import answer_hits, keep_top_hits, merge_answer_ranks
from deepretrieval.search.shards import INDEX_TYPE as SHARDED, merge_results
from deepretrieval.service.app import ServiceConfig, create_app
from deepretrieval.service.limits import apply_backend_limits
from deepretrieval.service.ray_client import (
    DEFAULT_RETRIES,
    call_with_failover,
    call_with_failover_sync,
    check_app_name,
)

log = logging.getLogger(__name__)

DEFAULT_APP = "deepretrieval"


@dataclass
class RayOptions:
    """How the application is laid out on the cluster."""

    app_name: str = DEFAULT_APP       #: Ray Serve application name (``ray://<app_name>``)
    replicas: int = 1                 #: replicas of each index (of each shard of a sharded one)
    #: replicas of one index by name (its shards too), overriding ``replicas``
    index_replicas: dict[str, int] = field(default_factory=dict)
    ingress_replicas: int | None = None  #: replicas of the ingress and of each router (None: ``replicas``)
    host: str = "127.0.0.1"           #: interface of the HTTP proxy on every node
    port: int = 8000                  #: port of the HTTP proxy on every node
    replica_cpus: float = 1.0         #: CPUs reserved by each index/shard replica
    replica_gpus: float = 0.0         #: GPUs reserved by each index/shard replica (dense indexes)
    #: extra Ray resources each shard replica needs, to pin shards to nodes; ``{i}`` in a resource
    #: name is replaced by the shard's number (e.g. ``{"shard{i}": 1}``: shard 0 only on nodes
    #: started with ``--resources '{"shard0": 1}'``)
    shard_resources: dict[str, float] = field(default_factory=dict)
    max_ongoing_requests: int = 256   #: requests a replica holds at once (Serve queues the rest)
    call_timeout_s: float = 60.0      #: how long the ingress/router waits for a deployment
    retries: int = DEFAULT_RETRIES    #: failover retries after a replica or node died
    warmup: bool = True               #: a first query on BM25 indexes before serving (JIT)


# ---- deployments -----------------------------------------------------------------------------

class IndexReplica:
    """One replica of an index (or shard) deployment: the loaded backend behind ``@serve.batch``."""

    def __init__(self, label: str, target: str, opener: Callable[[str], Backend],
                 limits: tuple[float, int], batching: tuple[int, float, int], warmup: bool):
        self.label = label
        self.backend = opener(target)
        apply_backend_limits({label: self.backend}, *limits)
        if warmup and self.backend.info().get("type") == "bm25":
            self.backend.search(["warm up"], 10)  # compile the scoring kernel before serving
        max_batch, wait_s, concurrent = batching
        self.max_batch = max_batch

        async def run_batch(calls: list[tuple]) -> list:
            return await self._run_batch(calls)

        self._batched = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s,
                                    max_concurrent_batches=concurrent)(run_batch)

    async def search(self, queries: list[str], k: int, return_text: bool = False,
                     options: dict[str, Any] | None = None) -> list[SearchResult]:
        out = await self._batched((list(queries), int(k), bool(return_text), options or None))
        if isinstance(out, BaseException):
            raise out
        return out

    async def info(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.backend.info)

    def pid(self) -> int:
        """This replica's process id (fault tests kill it)."""
        return os.getpid()

    async def _call(self, queries: list[str], answers: list[list[str]] | None, k: int,
                    return_text: bool, shared: dict[str, Any] | None) -> list[SearchResult]:
        """Each search once (a query with per-query answers once per answer list), in backend
        calls of at most ``max_batch`` queries."""
        unique, unique_answers, keys = per_query.unique_items(queries, answers)
        results: list[SearchResult] = []
        for start in range(0, len(unique), self.max_batch):
            chunk = unique[start:start + self.max_batch]
            opts = per_query.join(shared, None if unique_answers is None
                                  else unique_answers[start:start + self.max_batch])
            part = await asyncio.to_thread(self.backend.search, chunk, k,
                                           return_text=return_text, options=opts)
            if len(part) != len(chunk):
                raise SearchError(f"backend {self.label!r} returned {len(part)} results for "
                                  f"{len(chunk)} queries")
            results += part
        found = dict(zip(dict.fromkeys(keys), results))
        return [found[key] for key in keys]

    async def _run_batch(self, calls: list[tuple]) -> list:
        """One result list (or the exception) per call; calls that can share a backend call
        (same k, return_text, options but the per-query ``answers``) share it, and one failing
        call never fails another."""
        out: list[Any] = [None] * len(calls)
        groups: dict[tuple, list[int]] = {}
        split: dict[int, tuple] = {}
        for i, (queries, k, return_text, options) in enumerate(calls):
            try:
                shared, answers = per_query.split(options, len(queries))
            except ValueError as exc:
                out[i] = exc
                continue
            split[i] = (shared, answers)
            groups.setdefault((k, return_text, *per_query.shared_key(shared, answers)),
                              []).append(i)
        for (k, return_text, _, _), members in groups.items():
            shared = split[members[0]][0]

            def answers_of(ids: list[int]) -> list[list[str]] | None:
                if split[ids[0]][1] is None:
                    return None
                return [a for i in ids for a in split[i][1]]

            queries = [q for i in members for q in calls[i][0]]
            try:
                results = await self._call(queries, answers_of(members), k, return_text, shared)
            except Exception as exc:  # noqa: BLE001 - sorted out per call below
                if len(members) == 1:
                    out[members[0]] = exc
                    continue
                for i in members:  # one call must not fail the others: each on its own
                    try:
                        out[i] = await self._call(calls[i][0], answers_of([i]), k, return_text,
                                                  shared)
                    except Exception as exc2:  # noqa: BLE001
                        out[i] = exc2
                continue
            start = 0
            for i in members:
                end = start + len(calls[i][0])
                out[i] = results[start:end]
                start = end
        return out


class ShardRouter:
    """Sends each call to every shard deployment and merges with ``merge_results``."""

    def __init__(self, name: str, shard_names: list[str], path: str, shards: list,
                 timeout_s: float, retries: int):
        self.name = name
        self.shard_names = shard_names
        self.path = path
        self.shards = shards
        self.timeout_s = timeout_s
        self.retries = retries

    async def search(self, queries: list[str], k: int, return_text: bool = False,
                     options: dict[str, Any] | None = None) -> list[SearchResult]:
        options = dict(options or {}) or None
        answers = options is not None and "answers" in options
        hits = answer_hits(options) if options is not None else 0
        if answers:  # every shard ranks its own top k and sends all k scores (answer_ranks)
            options["answer_hits"] = 0

        async def one(s: int) -> list[SearchResult]:
            return await call_with_failover(
                lambda: self.shards[s].search.remote(queries, k, return_text, options),
                f"{self.name}: {self.shard_names[s]}", self.timeout_s, self.retries)

        per_shard = await asyncio.gather(*(one(s) for s in range(len(self.shards))),
                                         return_exceptions=True)
        for s, answer in enumerate(per_shard):  # the first failed shard, in shard order
            if isinstance(answer, ValueError):
                raise answer  # bad arguments: the same for every shard, reported as such
            if isinstance(answer, BaseException):
                raise SearchError(f"{self.name}: {self.shard_names[s]} failed: "
                                  f"{type(answer).__name__}: {answer}")
        merged = merge_results(per_shard, k, self.shard_names)
        if answers:
            merge_answer_ranks(per_shard, merged, k)
            if not return_text:
                for r in merged:
                    keep_top_hits(r, hits)
        return merged

    async def info(self) -> dict[str, Any]:
        infos = await asyncio.gather(*(shard.info.remote() for shard in self.shards))
        return {"type": SHARDED, "name": self.name, "shards": len(self.shards),
                "shard_info": list(infos), "path": self.path}


class DeploymentBackend:
    """A :class:`~deepretrieval.core.results.Backend` in the ingress that calls an index (or
    router) deployment through its handle, with failover. Blocking: the app calls it in its
    worker threads."""

    def __init__(self, name: str, handle, timeout_s: float, retries: int):
        self.name = name
        self.handle = handle
        self.timeout_s = timeout_s
        self.retries = retries

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        return call_with_failover_sync(
            lambda t: self.handle.search.remote(queries, k, return_text, options).result(
                timeout_s=t), f"index {self.name!r}", self.timeout_s, self.retries)

    def info(self) -> dict[str, Any]:
        return call_with_failover_sync(lambda t: self.handle.info.remote().result(timeout_s=t),
                                       f"index {self.name!r}", self.timeout_s, self.retries)


class Ingress:
    """The ingress deployment's class (its ASGI app comes from :func:`_app_builder`); its
    ``routes`` tell :class:`~deepretrieval.service.ray_client.RaySearcher` which deployment
    answers which index."""

    def __init__(self, routes: dict[str, str], *deployments) -> None:
        self._routes = dict(routes)
        self._deployments = deployments  # bound so that Serve deploys them with the application

    async def routes(self) -> dict[str, str]:
        return dict(self._routes)


def _app_builder(app_name: str, routes: dict[str, str], config: ServiceConfig,
                 timeout_s: float, retries: int) -> Callable[[], Any]:
    def build():
        proxies = {index: DeploymentBackend(index, serve.get_deployment_handle(dep, app_name),
                                            timeout_s, retries)
                   for index, dep in routes.items()}
        return create_app(proxies, config)

    return build


# ---- the application -------------------------------------------------------------------------

@dataclass
class IndexLayout:
    """How one served index maps onto deployments."""

    name: str                          #: the name clients ask for
    target: str                        #: what ``open_index`` opens (unsharded)
    shards: list[tuple[str, str]] | None = None  #: (shard name, shard directory), sharded only
    sharded_name: str = ""             #: the sharded index's own name (its errors say it)
    path: str | None = None


def layout(specs: dict[str, str], locate: Callable[[str], Path | None]) -> list[IndexLayout]:
    """Each served index (name → target) with its shards when its directory is a sharded index."""
    out = []
    for name, target in specs.items():
        directory = locate(target)
        meta: dict[str, Any] = {}
        if directory is not None:
            try:
                meta = json.loads((directory / "meta.json").read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"--index {name}: {directory}/meta.json is unreadable: "
                                 f"{exc}") from None
        if isinstance(meta, dict) and meta.get("type") == SHARDED:
            dirs = meta.get("shards")
            if not isinstance(dirs, list) or not dirs:
                raise ValueError(f"--index {name}: {directory}/meta.json lists no shards")
            out.append(IndexLayout(name, target, [(str(d), str(directory / d)) for d in dirs],
                                   meta.get("name", directory.name), str(directory)))
        else:
            out.append(IndexLayout(name, target))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40]


def check_options(layouts: list[IndexLayout], options: RayOptions) -> int:
    """Raise ValueError for a layout the options cannot deploy; the ingress replica count."""
    names = [lay.name for lay in layouts]
    unknown = sorted(set(options.index_replicas) - set(names))
    if unknown:
        raise ValueError(f"replicas given for indexes that are not served: {unknown} "
                         f"(serving: {names})")
    front = options.ingress_replicas if options.ingress_replicas is not None else options.replicas
    if min([options.replicas, front, *options.index_replicas.values()]) < 1:
        raise ValueError("replica counts must be >= 1")
    if options.replica_cpus < 0 or options.replica_gpus < 0:
        raise ValueError("replica CPUs and GPUs must be >= 0")
    check_app_name(options.app_name)
    return front


def build_application(layouts: list[IndexLayout], config: ServiceConfig, options: RayOptions,
                      open_index: Callable[[str], Backend]):
    """The bound Ray Serve application (``serve.run`` it)."""
    if not layouts:
        raise ValueError("the service needs at least one index")
    front = check_options(layouts, options)
    limits = (config.max_timeout_s, config.max_result_bytes)
    batch_calls = max(1, min(config.max_batch, options.max_ongoing_requests))
    batching = (batch_calls, config.batch_wait_ms / 1000.0, max(1, config.workers))
    replica_opts = {"num_cpus": options.replica_cpus}
    if options.replica_gpus:
        replica_opts["num_gpus"] = options.replica_gpus
    light = {"num_replicas": front, "max_ongoing_requests": options.max_ongoing_requests,
             "ray_actor_options": {"num_cpus": 0}}
    index_dep = serve.deployment(IndexReplica)
    routes: dict[str, str] = {}
    bound = []
    for i, lay in enumerate(layouts):
        common = {"num_replicas": options.index_replicas.get(lay.name, options.replicas),
                  "max_ongoing_requests": options.max_ongoing_requests}
        if lay.shards is None:
            dep = f"index-{i}-{_slug(lay.name)}"
            bound.append(index_dep.options(name=dep, ray_actor_options=replica_opts, **common)
                         .bind(lay.name, lay.target, open_index, limits, batching,
                               options.warmup))
        else:
            shards = []
            for s, (shard_name, shard_dir) in enumerate(lay.shards):
                resources = {key.replace("{i}", str(s)): amount
                             for key, amount in options.shard_resources.items()}
                actor = {**replica_opts, **({"resources": resources} if resources else {})}
                shards.append(index_dep.options(name=f"shard-{i}-{s}-{_slug(lay.name)}",
                                                ray_actor_options=actor, **common)
                              .bind(f"{lay.sharded_name}: {shard_name}", shard_dir,
                                    load_index_dir, limits, batching, options.warmup))
            dep = f"router-{i}-{_slug(lay.name)}"
            bound.append(serve.deployment(ShardRouter).options(name=dep, **light).bind(
                lay.sharded_name, [n for n, _ in lay.shards], lay.path, shards,
                options.call_timeout_s, options.retries))
        routes[lay.name] = dep
    ingress_config = replace(config, batching=False,
                             workers=max(config.workers, options.max_ongoing_requests))
    builder = _app_builder(options.app_name, routes, ingress_config, options.call_timeout_s,
                           options.retries)
    ingress = serve.deployment(serve.ingress(builder)(Ingress))
    return ingress.options(name="ingress", **light).bind(routes, *bound)


def _too_few_cpus(demand: float, have: float, options: RayOptions) -> str:
    return (f"the application reserves {demand:g} CPUs (--replica-cpus {options.replica_cpus:g} "
            f"× its index/shard replicas) but the Ray cluster has {have:g}: lower "
            "--replica-cpus or --replicas")


def cpu_demand(layouts: list[IndexLayout], options: RayOptions) -> float:
    """CPUs the index and shard replicas reserve (the ingress and routers reserve none)."""
    replicas = sum(options.index_replicas.get(lay.name, options.replicas)
                   * (len(lay.shards) if lay.shards else 1) for lay in layouts)
    return replicas * options.replica_cpus


def start(specs: dict[str, str], config: ServiceConfig, options: RayOptions, *,
          open_index: Callable[[str], Backend], locate: Callable[[str], Path | None],
          ray_address: str | None = None, num_cpus: int | None = None,
          ray_init: dict[str, Any] | None = None) -> str:
    """Connect to (``ray_address``) or start a Ray cluster, start Serve with an HTTP proxy on
    every node, and deploy the application; returns the HTTP URL (on this node). A local cluster
    (no ``ray_address``) is always a new one (on 127.0.0.1 when :data:`~deepretrieval.service.ray_client.LOOPBACK_ENV` is ``0``
    before Ray is imported: ``serve --ray`` sets it for a loopback ``--host``); a process already
    connected to Ray deploys there. ``open_index``
    opens an index by name or path inside each replica (``deepretrieval.catalog.open_index``),
    ``locate`` finds an index's directory (``deepretrieval.catalog.index_directory``)."""
    import ray

    layouts = layout(specs, locate)
    check_options(layouts, options)
    demand = cpu_demand(layouts, options)
    if ray_address is None and not ray.is_initialized():
        have = num_cpus if num_cpus is not None else os.cpu_count() or 1
        if demand > have:  # a local cluster never grows: Serve would wait forever
            raise ValueError(_too_few_cpus(demand, have, options))
    if not ray.is_initialized():
        init: dict[str, Any] = {"address": ray_address or "local", "include_dashboard": False,
                                "log_to_driver": False}
        if ray_address is None and num_cpus is not None:
            init["num_cpus"] = num_cpus
        ray.init(**{**init, **(ray_init or {})})
    have = ray.cluster_resources().get("CPU", 0.0)
    if demand > have:
        log.warning("%s, unless the cluster autoscales", _too_few_cpus(demand, have, options))
    serve.start(proxy_location="EveryNode",
                http_options={"host": options.host, "port": options.port})
    app = build_application(layouts, config, options, open_index)
    serve.run(app, name=options.app_name, route_prefix="/", blocking=False)
    return f"http://{options.host}:{options.port}"


def stop(app_name: str = DEFAULT_APP, *, shutdown_serve: bool = True) -> None:
    """Delete the application; with ``shutdown_serve`` also Serve itself (its proxies and
    controller) when no other application is left on the cluster."""
    serve.delete(app_name)
    if shutdown_serve and not serve.status().applications:
        serve.shutdown()


def replica_pids(deployment: str, want: int, app_name: str = DEFAULT_APP,
                 timeout: float = 120.0) -> set[int]:
    """Process ids of a deployment's replicas: asks ``pid`` until ``want`` distinct replicas
    answered or ``timeout`` passed (for fault drills: which process to kill, and whether Serve
    replaced it)."""
    handle = serve.get_deployment_handle(deployment, app_name=app_name)
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < want and time.monotonic() < deadline:
        pids |= {r.result(timeout_s=30) for r in [handle.pid.remote() for _ in range(8)]}
    return pids
