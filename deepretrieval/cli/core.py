"""Core sub-commands: ``tasks``, ``search``, ``baseline``."""
from __future__ import annotations

import json
import sys

from deepretrieval.catalog import (
    bundled_rows,
    get_task,
    list_tasks,
    open_index,
    read_rows,
)
from deepretrieval.evaluation.harness import (
    baseline_queries,
    format_table,
    score_queries,
    summarize,
)


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list registered tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("search", help="search an index from the command line")
    p.add_argument("--index", required=True, help="index name or directory")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--text", action="store_true", help="print document text")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("queries", nargs="+")
    p.set_defaults(func=cmd_search)

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
    for name in list_tasks():
        task = get_task(name)
        print(f"{name:24s} {task.family.name:14s} {task.description}")
    return 0


def cmd_search(args) -> int:
    results = open_index(args.index).search(args.queries, args.k, return_text=args.text)
    failed = 0
    for query, result in zip(args.queries, results):
        kind = result.info.get("error_kind") if isinstance(result.info, dict) else None
        if result.error or (kind and result.rows is None):
            failed += 1
            what = "search error" if result.error else f"SQL error ({kind})"
            detail = result.error or result.info.get("sql_error")
            print(f"error: {query!r}: {what}: {detail}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_hits() for r in results], indent=1))
        return 1 if failed else 0
    for query, result in zip(args.queries, results):
        print(f"# {query}")
        for rank, hit in enumerate(result.to_hits(), start=1):
            line = f"{rank:4d}  {hit['id']:>12s}  {hit['score']:.4f}"
            if args.text:
                line += "  " + hit["contents"][:100]
            print(line)
    return 1 if failed else 0


def cmd_baseline(args) -> int:
    rows = read_rows(args.rows) if args.rows else bundled_rows(args.task, args.split)
    if not rows:
        raise ValueError("no rows to evaluate")
    if args.index:
        rows = [{**r, "extra_info": {**(r.get("extra_info") or {}), "search_index": args.index}}
                for r in rows]
    name, queries = baseline_queries(rows)
    scores = score_queries(rows, queries)
    summary = {"task": args.task, "split": args.split, "query": name, **summarize(scores)}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        cols = ["task", "split", "query", "n"] + [k for k in summary if k not in ("task", "split", "query", "n")]
        print(format_table([summary], cols))
    failed = sum(1 for m in scores if m["search_error"])
    if failed:
        print(f"error: {failed} of {len(scores)} searches failed (see search_error_rate)",
              file=sys.stderr)
        return 1
    return 0
