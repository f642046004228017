"""``deepretrieval cache stats|export|import``: the live engines' result cache."""
from __future__ import annotations

import json
from pathlib import Path

from deepretrieval.search.live.cache import SearchCache, default_cache_path


def register(sub) -> None:
    p = sub.add_parser("cache", help="inspect, export or import the live-engine result cache",
                       description="The SQLite cache of PubMed / ClinicalTrials.gov results "
                                   "(default $DEEPRETRIEVAL_CACHE or ~/.cache/deepretrieval/"
                                   "live_cache.sqlite).")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    q = cache_sub.add_parser("stats", help="entries per engine and file size")
    q.add_argument("--cache", help="cache file (default: $DEEPRETRIEVAL_CACHE or ~/.cache/...)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_cache_stats)
    q = cache_sub.add_parser("export", help="write the entries as JSON lines (.gz: compressed)")
    q.add_argument("out", help="output file, e.g. cache.jsonl.gz")
    q.add_argument("--cache", help="cache file")
    q.add_argument("--engine", choices=["pubmed", "ctgov"], help="only this engine's entries")
    q.set_defaults(func=cmd_cache_export)
    q = cache_sub.add_parser("import", help="add the entries of an export file")
    q.add_argument("file", help="a file written by `deepretrieval cache export`")
    q.add_argument("--cache", help="cache file")
    q.add_argument("--overwrite", action="store_true", help="replace entries that exist")
    q.set_defaults(func=cmd_cache_import)


def _cache(path: str | None):
    path = Path(path) if path else default_cache_path()
    return SearchCache(path)


def cmd_cache_stats(args) -> int:
    path = Path(args.cache) if args.cache else default_cache_path()
    if not path.exists():
        raise FileNotFoundError(f"no cache at {path}")
    stats = _cache(str(path)).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"cache   {stats['path']}")
    print(f"size    {stats['size_bytes'] / 1e6:.2f} MB")
    print(f"entries {stats['entries']}")
    for engine, n in stats["by_engine"].items():
        print(f"  {engine:8s} {n}")
    return 0


def cmd_cache_export(args) -> int:
    path = Path(args.cache) if args.cache else default_cache_path()
    if not path.is_file():
        raise FileNotFoundError(f"no cache at {path}")
    n = _cache(str(path)).export(args.out, engine=args.engine)
    print(f"exported {n} entries → {args.out}")
    return 0


def cmd_cache_import(args) -> int:
    if not Path(args.file).exists():
        raise FileNotFoundError(f"no such file: {args.file}")
    target = Path(args.cache) if args.cache else default_cache_path()
    existed = target.exists()
    cache = _cache(args.cache)
    before = len(cache)
    try:
        n = cache.import_(args.file, overwrite=args.overwrite)
    except BaseException:
        if not existed:  # a failed import leaves no new (empty) database behind
            cache.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
        raise
    print(f"read {n} entries; cache {cache.path} now holds {len(cache)} ({len(cache) - before} new)")
    return 0
