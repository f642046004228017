"""Core sub-commands: ``tasks``, ``index``, ``search``, ``prepare``, ``baseline``.

``prepare`` is a group: other modules add their datasets with
``commands.prepare_targets().add_parser(...)`` inside their own ``register``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

_PREPARE = None


def prepare_targets():
    """The ``prepare`` sub-parsers (available once this module's ``register`` ran)."""
    if _PREPARE is None:
        raise RuntimeError("deepretrieval.cli.core.register must run first")
    return _PREPARE


def register(sub) -> None:
    global _PREPARE
    p = sub.add_parser("tasks", help="list registered tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("index", help="build a BM25 index from a BEIR corpus",
                       description="Build a BM25 index from a BEIR corpus.jsonl(.gz) and save it "
                                   "under the index root (or --out).")
    p.add_argument("--corpus", required=True, help="corpus.jsonl(.gz) or a BEIR folder")
    p.add_argument("--name", required=True, help="index name (how tasks and the service find it)")
    p.add_argument("--out", help="index directory (default: <index root>/<name>)")
    p.add_argument("--k1", type=float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index from the command line")
    p.add_argument("--index", required=True, help="index name or directory")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--text", action="store_true", help="print document text")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("queries", nargs="+")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("prepare", help="write task rows (parquet) for a dataset")
    _PREPARE = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    q = _PREPARE.add_parser("scifact", help="bundled BEIR SciFact → train/test parquet")
    q.add_argument("--out", default="data/scifact", help="output folder (default: data/scifact)")
    q.add_argument("--task", default="scifact", help="task name (e.g. scifact_no_reason)")
    q.set_defaults(func=cmd_prepare_scifact)

    p = sub.add_parser("baseline", help="evaluate the original queries of a task split",
                       description="Score each row's original query (SQL tasks: the gold SQL, an "
                                   "upper bound) with the task's backend and metrics.")
    p.add_argument("--task", default="scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--rows", help="parquet rows to use instead of the bundled task data")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--index", help="search this index instead of the task's (e.g. pubmed_local, "
                                   "a `deepretrieval mirror` of the live engine)")
    p.set_defaults(func=cmd_baseline)


def cmd_tasks(args) -> int:
    from deepretrieval.tasks import get_task, list_tasks
    for name in list_tasks():
        task = get_task(name)
        print(f"{name:24s} {task.family.name:14s} {task.description}")
    return 0


def cmd_index(args) -> int:
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.search import index_root
    from deepretrieval.search.bm25 import BM25Index
    out = Path(args.out) if args.out else index_root() / args.name
    index = BM25Index.build(load_corpus(args.corpus), name=args.name, k1=args.k1, b=args.b)
    index.save(out)
    print(f"indexed {len(index)} documents → {out}")
    return 0


def cmd_search(args) -> int:
    from deepretrieval.search import open_index
    results = open_index(args.index).search(args.queries, args.k, return_text=args.text)
    if args.json:
        print(json.dumps([r.to_hits() for r in results], indent=1))
        return 0
    for query, result in zip(args.queries, results):
        print(f"# {query}")
        for rank, hit in enumerate(result.to_hits(), start=1):
            line = f"{rank:4d}  {hit['id']:>12s}  {hit['score']:.4f}"
            if args.text:
                line += "  " + hit["contents"][:100]
            print(line)
    return 0


def bundled_rows(task_name: str, split: str) -> list[dict]:
    """Rows of a task's data bundled with the package (its family knows where they are)."""
    from deepretrieval.tasks import get_task
    task = get_task(task_name)
    return task.family.bundled_rows(task, split)


def cmd_prepare_scifact(args) -> int:
    from deepretrieval.data.prepare import write_parquet
    for split in ("train", "test"):
        rows = bundled_rows(args.task, split)
        path = write_parquet(rows, Path(args.out) / f"{split}.parquet")
        print(f"{split}: {len(rows)} rows → {path}")
    return 0


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of dicts."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def cmd_baseline(args) -> int:
    from deepretrieval.data.prepare import read_rows
    from deepretrieval.evaluation.harness import baseline_queries, score_queries, summarize
    rows = read_rows(args.rows) if args.rows else bundled_rows(args.task, args.split)
    if not rows:
        raise ValueError("no rows to evaluate")
    if args.index:
        rows = [{**r, "extra_info": {**(r.get("extra_info") or {}), "search_index": args.index}}
                for r in rows]
    name, queries = baseline_queries(rows)
    summary = {"task": args.task, "split": args.split, "query": name,
               **summarize(score_queries(rows, queries))}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        cols = ["task", "split", "query", "n"] + [k for k in summary if k not in ("task", "split", "query", "n")]
        print(format_table([summary], cols))
    return 0
