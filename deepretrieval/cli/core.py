"""Core sub-commands: ``tasks``, ``search``, ``baseline``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from deepretrieval.catalog import (
    AmbiguousTask,
    bundled_rows,
    get_searcher,
    get_task,
    list_tasks,
    local_collections,
    open_index,
    read_rows,
)
from deepretrieval.core import settings
from deepretrieval.evaluation.report import format_table
from deepretrieval.evaluation.scoring import baseline_queries, score_queries, summarize
from deepretrieval.search import LocalSearcher


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list the tasks: defined ones and your collections",
                       description="List the defined tasks, then the tasks of your own "
                                   "collections (`prepare beir` / `index` under the index root or "
                                   "named in DEEPRETRIEVAL_INDEXES: NAME and NAME_no_reason).")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("search", help="search an index from the command line")
    p.add_argument("--index", required=True, help="index name or directory")
    p.add_argument("--top-k", "-k", dest="k", type=int, default=10,
                   help="passages to return (default 10)")
    p.add_argument("--text", action="store_true", help="print document text")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("queries", nargs="+")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("baseline", help="evaluate the original queries of a task split",
                       description="Score each row's original query (SQL tasks: the gold SQL, an "
                                   "upper bound) with the task's backend and metrics.")
    p.add_argument("--task", help="task of the bundled rows (default scifact); with --rows the "
                                  "rows' data_source is the task, and a different --task is an error")
    p.add_argument("--split", help="split of the bundled rows (default test); with --rows the "
                                   "rows' extra_info.split, and a different --split is an error")
    p.add_argument("--rows", help="parquet rows to use instead of the bundled task data")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--index", help="search this index instead of the task's (e.g. pubmed_local, "
                                   "a `deepretrieval mirror` of the live engine)")
    p.set_defaults(func=cmd_baseline)


def cmd_tasks(args) -> int:
    for name in list_tasks():
        task = get_task(name)
        print(f"{name:24s} {task.family.name:14s} {task.description}")
    collections = local_collections()
    if collections:
        print(f"\nyour collections (index root {settings.index_dir()}, DEEPRETRIEVAL_INDEXES):")
    for base in collections:
        for name in (base, f"{base}_no_reason"):
            try:
                task = get_task(name)
            except AmbiguousTask as exc:
                print(f"{name:24s} {'ambiguous':14s} {exc}")
                continue
            what = "answer-only, answer prefilled" if not task.reasoning else "reasoning"
            print(f"{name:24s} {task.family.name:14s} your collection: index {task.index!r}, {what}")
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


def _one_value(rows, what: str, get, given: str | None, option: str) -> str:
    """The single value of ``get(row)`` over the rows; a different ``given`` is an error."""
    values = sorted({str(get(r)) for r in rows if get(r) not in (None, "")})
    if given is not None and values and values != [given]:
        raise ValueError(f"{option} {given!r} contradicts the rows: their {what} is "
                         f"{', '.join(map(repr, values))} (drop {option}, or pass other --rows)")
    if given is not None:
        return given
    return ", ".join(values) if values else "?"


def _rows_of(task: str, split: str) -> list:
    """The task's bundled rows, or the rows `deepretrieval prepare` wrote for it to its default
    place (``data/<collection>/<split>.parquet`` under the working directory, said on stderr); else
    the error names the ``--rows`` file to pass."""
    try:
        return bundled_rows(task, split)
    except ValueError as exc:
        index = get_task(task).index
        default = Path("data") / index / f"{split}.parquet" if index else None
        if default is None or not default.is_file():
            where = f" (`deepretrieval prepare` writes them to {default}: not found here)" if default else ""
            raise ValueError(f"{exc}{where}") from None
        rows = read_rows(default)
        if {r.get("data_source") for r in rows} != {task}:
            raise ValueError(f"{exc} ({default} holds rows of another task: pass "
                             f"--rows {default} without --task to evaluate those)") from None
        print(f"rows: {default} (written by `deepretrieval prepare`)", file=sys.stderr)
        return rows


def _open_indexes(rows) -> None:
    """Open the rows' indexes in this process before scoring, so that a missing optional
    dependency (dense retrieval without faiss / sentence-transformers) is one error line with its
    fix, not a table of zeros and N failed searches. Other failures are left to the scoring, which
    reports them per query as before (a service URL: nothing is opened here)."""
    searcher = get_searcher()
    if not isinstance(searcher, LocalSearcher):
        return
    names = set()
    for r in rows:
        extra = r.get("extra_info") or {}
        names.add(extra.get("search_index") or get_task(r["data_source"]).index)
    for name in sorted(n for n in names if n):
        try:
            searcher.backend(name)
        except ImportError:
            raise
        except Exception:  # noqa: BLE001 - reported per query by the scoring
            continue


def cmd_baseline(args) -> int:
    if args.rows:
        rows = read_rows(args.rows)
        if not rows:
            raise ValueError(f"--rows {args.rows}: no rows to evaluate")
        task = _one_value(rows, "data_source", lambda r: r.get("data_source"), args.task, "--task")
        split = _one_value(rows, "extra_info.split", lambda r: (r.get("extra_info") or {}).get("split"),
                           args.split, "--split")
    else:
        task, split = args.task or "scifact", args.split or "test"
        rows = _rows_of(task, split)
    if not rows:
        raise ValueError("no rows to evaluate")
    if args.index:
        rows = [{**r, "extra_info": {**(r.get("extra_info") or {}), "search_index": args.index}}
                for r in rows]
    _open_indexes(rows)
    name, queries = baseline_queries(rows)
    scores = score_queries(rows, queries)
    summary = {"task": task, "split": split, "query": name, **summarize(scores)}
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
