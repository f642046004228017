"""Bring your own SQL database: ``deepretrieval prepare sql``.

A SQLite file + questions with gold SQL → rows for the ``spider`` (or ``bird``) task; every gold
query (every variant) is run on the database first, and the database is registered as index
``<task index>/<name>`` (e.g. ``spider/shop``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.beir_files import FormatError
from deepretrieval.data.byo import (
    Staged,
    assign_splits,
    check_name,
    check_test_fraction,
    explicit_split,
    field_value,
    load_items,
    need_file,
)
from deepretrieval.data.rows import write_parquet
from deepretrieval.search.sql import SqliteBackend, execute_readonly, write_sqlite_index
from deepretrieval.tasks import sql
from deepretrieval.tasks.base import tasks_by_name

__all__ = ["SQL_TASKS", "prepare_sql"]

SQL_TASKS = tasks_by_name(sql.TASKS)


def _gold_variants(item: Mapping[str, Any], where: str) -> list[str]:
    """The item's gold SQL: one string, or a list of equivalent variants (``sql``, or Spider's
    ``query``, or BIRD's ``SQL``)."""
    sql = item.get("sql", item.get("query", item.get("SQL")))
    variants = [sql] if isinstance(sql, str) else sql
    if (not isinstance(variants, list) or not variants
            or not all(isinstance(v, str) and v.strip() for v in variants)):
        raise FormatError(f"{where}: missing 'sql' (the gold SQL, or a list of equivalent gold "
                          f"SQL variants; 'query' or 'SQL' also accepted)")
    return list(dict.fromkeys(v.strip() for v in variants))


def prepare_sql(*, db: str, questions: str, name: str | None = None, out: str | None = None,
                task: str = "spider", test_fraction: float = 0.2, split_by: str = "question",
                skip_failing: bool = False) -> dict[str, Any]:
    """Check every question's gold SQL (every variant) on the database, register the database
    as index ``<task index>/<name>``, write ``<out>/<split>.parquet``.

    Items: ``{question, sql | query | SQL, split?, evidence?, id?}``; ``sql`` may be a list of
    equivalent gold queries (a prediction matching any is a match). An item's ``split`` (train,
    test, val, dev) is kept; the others are split by ``split_by`` (an item field, default the
    question; dotted for nested fields), a stable ``test_fraction`` of its values to test.
    Every gold query that fails is reported (all of them, then nothing is written), or with
    ``skip_failing`` its question is left out and listed in the report."""
    db_path = need_file(db, "database")
    qpath = need_file(questions, "questions")
    name = name or db_path.stem
    check_name(name)
    test_fraction = check_test_fraction(test_fraction)
    if task not in SQL_TASKS:
        raise ValueError(f"--task {task!r} is not a SQL task; SQL tasks: {sorted(SQL_TASKS)}")
    the_task = SQL_TASKS[task]
    try:
        schema = SqliteBackend(db_path, name=name).schema_sql()
    except Exception as exc:  # noqa: BLE001 - whatever fails, it is no database we can read
        raise FormatError(f"{db_path}: not a readable SQLite database ({exc})") from None
    if not schema.strip():
        raise FormatError(f"{db_path}: the database has no tables")
    checked, failing, pending = [], [], []
    for item, where in load_items(qpath):
        if not isinstance(item, dict):
            raise FormatError(f"{where}: expected an object with 'question' and 'sql'")
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise FormatError(f"{where}: missing 'question' (a non-empty string)")
        variants = _gold_variants(item, where)
        split = explicit_split(item, where)
        group = question.strip() if split_by == "question" else field_value(item, split_by, where)
        errors = []
        for i, gold in enumerate(variants):
            ex = execute_readonly(db_path, gold)
            if not ex.ok:
                label = f" (variant {i + 1} of {len(variants)})" if len(variants) > 1 else ""
                errors.append(f"{where}: the gold SQL{label} fails on {db_path}: "
                              f"{ex.sql_error or ex.infra_error}")
        if errors:
            failing.extend(errors)
            continue
        checked.append((item, where, question.strip(), variants, split))
        if split is None:
            pending.append((where, group))
    if failing and not skip_failing:
        raise FormatError(f"{len(failing)} gold SQL quer{'y fails' if len(failing) == 1 else 'ies fail'} "
                          f"(pass --skip-failing to leave those questions out):\n  "
                          + "\n  ".join(failing))
    if not checked:
        raise FormatError(f"{qpath}: no questions" + (" whose gold SQL runs" if failing else ""))
    assigned = assign_splits(pending, test_fraction, split_by)
    rows_by_split: dict[str, list[dict[str, Any]]] = {}
    for item, where, question, variants, split in checked:
        split = split or assigned[where]
        rows = rows_by_split.setdefault(split, [])
        evidence = str(item.get("evidence") or "").strip()
        extra = {"query_id": str(item.get("id", item.get("question_id", f"{split}-{len(rows)}"))),
                 "query": question, "db_id": name}
        if evidence:
            extra["evidence"] = evidence
        rows.append(the_task.row(split, len(rows),
                                 {"schema": schema, "question": question, "evidence": evidence},
                                 {"target": variants}, **extra))
    out_dir = Path(out) if out else Path("data") / name
    index_path = settings.index_dir() / the_task.index / name
    report = []
    if failing:
        report.append(f"skipped {len(failing)} question(s) whose gold SQL fails (--skip-failing):")
        report.extend(f"  {line}" for line in failing)
    if pending:
        n_test = sum(1 for w, _ in pending if assigned[w] == "test")
        report.append(f"split {len(pending)} questions without a 'split' by {split_by!r} (stable "
                      f"hash, test fraction {test_fraction}): {len(pending) - n_test} train / "
                      f"{n_test} test")
    with Staged() as staged:
        write_sqlite_index(staged.path(index_path), db_path, f"{the_task.index}/{name}")
        report.append(f"database {db_path} → index {the_task.index}/{name} ({index_path})")
        for split, rows in sorted(rows_by_split.items()):
            final = out_dir / f"{split}.parquet"
            write_parquet(rows, staged.path(final))
            report.append(f"{the_task.name} {split}: {len(rows)} rows → {final}")
    if "train" not in rows_by_split:
        report.append("note: no train split was written; `deepretrieval train` needs "
                      "train.parquet (give questions without a 'split', or split: train)")
    return {"report": report, "index": index_path, "skipped": len(failing),
            "rows": {s: len(r) for s, r in rows_by_split.items()}}
