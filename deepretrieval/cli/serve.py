"""``deepretrieval serve``: run the retrieval service.

    deepretrieval serve --index scifact                      # bundled/registered name
    deepretrieval serve --index sf=/data/indexes/scifact --index pubmed --port 8000 --token s3cret
"""
from __future__ import annotations

import ipaddress
import logging
import sys
import time

from deepretrieval.catalog import open_index
from deepretrieval.core import settings
from deepretrieval.core.results import SearchError
from deepretrieval.service.app import ROUTES, ServiceConfig, create_app, serve
from deepretrieval.service.lifeline import watch

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
    p.add_argument("--max-k", type=int, default=d.max_k, help=f"largest topk (default {d.max_k})")
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
    indexes = load_indexes(parse_index_specs(args.index), warmup=not args.no_warmup)
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
    app = create_app(indexes, config)  # a bad --trust-network is a ValueError here, before serving
    print(f"serving {', '.join(sorted(indexes))} on http://{args.host}:{args.port} "
          f"(POST {', '.join(ROUTES)}; GET /health)", file=sys.stderr, flush=True)
    serve(app, host=args.host, port=args.port,
          log_level="debug" if getattr(args, "verbose", False) else "info")
    return 0
