"""``deepretrieval serve``: run the retrieval service.

    deepretrieval serve --index scifact                      # bundled/registered name
    deepretrieval serve --index sf=/data/indexes/scifact --index pubmed --port 8000 --token s3cret
    deepretrieval serve --ray --ray-address auto --index wiki=/data/wiki18_sharded --replicas 2
"""
from __future__ import annotations

import ipaddress
import logging
import sys
import time

from deepretrieval.catalog import index_available, index_directory, open_index
from deepretrieval.core import settings
from deepretrieval.core.results import SearchError
from deepretrieval.service.app import ROUTES, ServiceConfig, create_app, serve
from deepretrieval.service.lifeline import watch
from deepretrieval.service.ray_client import LOOPBACK_ENV

log = logging.getLogger(__name__)


def register(sub) -> None:

    d = ServiceConfig()
    p = sub.add_parser(
        "serve", help="run the HTTP retrieval service",
        description="Serve one or more indexes over HTTP (POST /retrieve, GET /health). "
                    "Concurrent requests are micro-batched into one backend call.")
    p.add_argument("--index", action="append", required=True, metavar="NAME[=PATH]",
                   help="index to serve; repeatable. NAME alone resolves a built-in or registered "
                        "index (e.g. scifact, pubmed); NAME=PATH serves the index directory (or "
                        "built-in name) PATH under NAME")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=settings.get_str("DEEPRETRIEVAL_SEARCH_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' (default: $DEEPRETRIEVAL_SEARCH_TOKEN)")
    p.add_argument("--open-route", action="append", default=[], metavar="ROUTE",
                   choices=[*ROUTES, "/health"],
                   help="with --token: answer this route without the token (peer clients such as "
                        "Search-R1's, verl's and ASearcher's cannot send one); repeatable")
    p.add_argument("--trust-network", action="append", default=[], metavar="CIDR",
                   help="with --token: clients from this network need no token (e.g. 127.0.0.1/32 "
                        "for the trainer on this machine, 10.0.0.0/8 for the cluster); repeatable")
    p.add_argument("--max-answer-bytes", type=int, default=d.max_answer_bytes,
                   help=f"largest answer; a request whose answer would pass it gets 413 (default "
                        f"{d.max_answer_bytes})")
    p.add_argument("--request-deadline-s", type=float, default=d.request_deadline_s,
                   help=f"backend compute per request, from its arrival; queries not searched by "
                        f"then get their own error (default {d.request_deadline_s:g})")
    p.add_argument("--max-queries", type=int, default=d.max_queries,
                   help=f"queries per request (default {d.max_queries})")
    p.add_argument("--max-query-chars", type=int, default=d.max_query_chars,
                   help=f"characters per query (default {d.max_query_chars})")
    p.add_argument("--max-k", type=int, default=d.max_k, help=f"largest top-k (default {d.max_k})")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help=f"how long a request waits for others to batch with (default "
                        f"{d.batch_wait_ms:g} ms)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"most queries per backend call (default {d.max_batch})")
    p.add_argument("--max-passage-chars", type=int, default=d.max_passage_chars,
                   help="characters per passage in Search-R1 answers, and the most a request's "
                        f"max_passage_chars may ask for (default {d.max_passage_chars})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help=f"threads running backend calls (default: CPU count, {d.workers})")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"open connections; past it idle ones are closed, else 503 (default "
                        f"{d.max_connections}, capped by the descriptor limit)")
    p.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s,
                   help=f"seconds for a request to arrive, head and body (default "
                        f"{d.request_timeout_s:g}; slower → 408)")
    p.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes,
                   help=f"largest request head (default {d.max_header_bytes}; more → 431)")
    p.add_argument("--max-timeout-s", type=float, default=d.max_timeout_s,
                   help=f"largest backend timeout_s a client may ask (SQL; default "
                        f"{d.max_timeout_s:g})")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the warm-up query on local indexes (JIT compilation)")
    r = p.add_argument_group(
        "Ray Serve (--ray; pip install 'deepretrieval[scale]'; docs/scale_out.md)",
        "Deploy the same service as a Ray Serve application: one deployment per index (per shard "
        "of a sharded index, with a router that merges), batched with @serve.batch, an HTTP proxy "
        "on every node at --host:--port, handles for ray://APP searchers.")
    r.add_argument("--ray", action="store_true", help="serve as a Ray Serve application")
    ray_flags = [
        (("--ray-address",), dict(default=None, metavar="ADDR",
                                  help="an existing Ray cluster ('auto', or host:port of its "
                                       "head); default: start a local one (ended with this "
                                       "command)")),
        (("--ray-num-cpus",), dict(type=int, default=None, metavar="N",
                                   help="CPUs of the local Ray cluster (default: all)")),
        (("--app-name",), dict(default="deepretrieval",
                               help="Ray Serve application name; searchers use ray://APP "
                                    "(default deepretrieval)")),
        (("--replicas",), dict(type=int, default=1,
                               help="replicas of each index, or of each shard of a sharded "
                                    "index (default 1)")),
        (("--index-replicas",), dict(action="append", default=[], metavar="NAME=N",
                                     help="replicas of one index (and of each of its shards); "
                                          "repeatable")),
        (("--ingress-replicas",), dict(type=int, default=None, metavar="N",
                                       help="replicas of the HTTP ingress and of each shard "
                                            "router (default: --replicas)")),
        (("--replica-cpus",), dict(type=float, default=1.0,
                                   help="CPUs reserved by each index/shard replica (default 1)")),
        (("--replica-gpus",), dict(type=float, default=0.0,
                                   help="GPUs reserved by each index/shard replica (dense "
                                        "indexes; default 0)")),
        (("--shard-resource",), dict(action="append", default=[], metavar="NAME=AMOUNT",
                                     help="a custom Ray resource each shard replica needs, '{i}' "
                                          "standing for the shard number (e.g. 'shard{i}=0.01' "
                                          "puts shard 0 on nodes started with --resources "
                                          "'{\"shard0\": 1}'); repeatable")),
        (("--detach",), dict(action="store_true",
                             help="deploy and exit, leaving the application running on the "
                                  "cluster (needs --ray-address; docs/scale_out.md says how "
                                  "to remove it)")),
    ]
    ray_only = [r.add_argument(*flags, **kw) for flags, kw in ray_flags]
    p.set_defaults(ray_only=[(a.dest, a.default) for a in ray_only])
    p.set_defaults(func=cmd_serve)


def parse_index_specs(specs: list[str]) -> dict[str, str]:
    """``["scifact", "nq=/data/nq"]`` → ``{"scifact": "scifact", "nq": "/data/nq"}``."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        name, target = name.strip(), target.strip()
        if not name or (sep and not target):
            raise ValueError(f"--index {spec!r}: expected NAME or NAME=PATH")
        if name in out:
            raise ValueError(f"--index {name!r} given twice")
        out[name] = target or name
    return out


def load_indexes(specs: dict[str, str], warmup: bool = True) -> dict:

    indexes = {}
    for name, target in specs.items():
        t0 = time.perf_counter()
        try:
            backend = open_index(target)
        except SearchError as exc:
            raise ValueError(f"--index {name}: {exc}") from None
        info = {}
        try:
            info = backend.info()
        except Exception:  # noqa: BLE001
            pass
        # local BM25 indexes compile their scoring on first use: do it before serving
        if warmup and info.get("type") == "bm25":
            try:
                backend.search(["warm up"], 10)
            except Exception as exc:  # noqa: BLE001
                log.warning("warm-up query on %s failed: %s", name, exc)
        log.info("loaded index %s from %s in %.1fs (%s documents)", name, target,
                 time.perf_counter() - t0, info.get("num_docs", "?"))
        indexes[name] = backend
    return indexes


def _pairs(specs: list[str], flag: str, kind: type) -> dict:
    """``["a=1", "b=2"]`` → ``{"a": kind("1"), "b": kind("2")}``."""
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        try:
            number = kind(value)
        except ValueError:
            number = None
        if not sep or not name or number is None:
            raise ValueError(f"{flag} {spec!r}: expected NAME={kind.__name__.upper()}")
        out[name] = number
    return out


def ray_options(args):
    """The :class:`~deepretrieval.service.ray_serve.RayOptions` of the command line."""
    from deepretrieval.service.ray_serve import RayOptions

    options = RayOptions(app_name=args.app_name, replicas=args.replicas,
                         index_replicas=_pairs(args.index_replicas, "--index-replicas", int),
                         ingress_replicas=args.ingress_replicas, host=args.host, port=args.port,
                         replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
                         shard_resources=_pairs(args.shard_resource, "--shard-resource", float),
                         warmup=not args.no_warmup)
    return options


def cmd_serve_ray(args, config) -> int:
    """``serve --ray``: deploy, then wait until Ctrl-C / SIGTERM and remove the application."""
    import os
    import signal
    import threading

    if not args.ray_address and args.host in ("127.0.0.1", "localhost", "::1"):
        # a one-machine cluster: every Ray process on 127.0.0.1 (read when Ray is imported)
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        from deepretrieval.service import ray_serve
    except ImportError as exc:  # ray without its [serve] extra
        raise ValueError(f"--ray needs Ray Serve: pip install 'deepretrieval[scale]' ({exc})") from None
    if args.detach and not args.ray_address:
        raise ValueError("--detach needs --ray-address: a local Ray cluster ends with this command")
    specs = parse_index_specs(args.index)
    for name, target in specs.items():
        if not index_available(target):
            raise ValueError(f"--index {name}: unknown index {target!r} (not a built-in or "
                             f"registered name, nor an index directory)")
    options = ray_options(args)
    import ray

    print(f"deploying {', '.join(sorted(specs))} as Ray Serve application {options.app_name!r} "
          f"({'cluster ' + args.ray_address if args.ray_address else 'local Ray cluster'})",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = None
    deployed = True  # from the first step: an interrupted deployment is removed too
    try:
        url = ray_serve.start(specs, config, options, open_index=open_index,
                              locate=index_directory, ray_address=args.ray_address,
                              num_cpus=args.ray_num_cpus)
        # SIGTERM (a training run's lifeline, `kill`) ends it like Ctrl-C, but exits 0
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print(f"serving {', '.join(sorted(specs))} on {url} on every node of the Ray cluster "
              f"(POST /retrieve, GET /health); in-cluster searchers: "
              f"DEEPRETRIEVAL_SEARCH_URL=ray://{options.app_name}", file=sys.stderr, flush=True)
        if args.detach:
            deployed = False  # left running
            return 0
        while not stop.wait(1.0):
            pass
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        try:
            if deployed and ray.is_initialized():
                print(f"removing Ray Serve application {options.app_name!r}", file=sys.stderr,
                      flush=True)
                ray_serve.stop(options.app_name)
        finally:
            ray.shutdown()


def cmd_serve(args) -> int:
    watch()  # started by a training run: end with it (before the indexes load, which takes long)

    for flag in ("max_queries", "max_query_chars", "max_k", "max_batch", "max_passage_chars",
                 "workers"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.batch_wait_ms < 0:
        raise ValueError("--batch-wait-ms must be >= 0")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a TCP port")
    for net in args.trust_network:  # checked before the (slow) index loading
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"--trust-network {net!r}: {exc}") from None
    config = ServiceConfig(token=args.token or None, max_queries=args.max_queries,
                           max_query_chars=args.max_query_chars, max_k=args.max_k,
                           batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch,
                           max_passage_chars=args.max_passage_chars,
                           workers=args.workers, max_connections=args.max_connections,
                           request_timeout_s=args.request_timeout_s,
                           max_header_bytes=args.max_header_bytes, max_timeout_s=args.max_timeout_s,
                           max_answer_bytes=args.max_answer_bytes,
                           request_deadline_s=args.request_deadline_s,
                           open_routes=tuple(args.open_route),
                           trusted_networks=tuple(args.trust_network))
    for flag in ("max_connections", "request_timeout_s", "max_header_bytes", "max_timeout_s",
                 "max_answer_bytes", "request_deadline_s"):
        if getattr(config, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.token:
        print(f"warning: serving on {args.host} without --token: anyone who can reach this "
              f"port can search", file=sys.stderr)
    if (args.open_route or args.trust_network) and not config.token:
        print("warning: --open-route / --trust-network have no effect without --token (every "
              "route is open)", file=sys.stderr)
    if args.ray:
        return cmd_serve_ray(args, config)
    given = [f"--{dest.replace('_', '-')}" for dest, default in args.ray_only
             if getattr(args, dest) != default]
    if given:
        raise ValueError(f"{', '.join(given)} only apply with --ray")
    indexes = load_indexes(parse_index_specs(args.index), warmup=not args.no_warmup)
    app = create_app(indexes, config)
    print(f"serving {', '.join(sorted(indexes))} on http://{args.host}:{args.port} "
          f"(POST {', '.join(ROUTES)}; GET /health)", file=sys.stderr, flush=True)
    serve(app, host=args.host, port=args.port,
          log_level="debug" if getattr(args, "verbose", False) else "info")
    return 0
