"""Task rows in verl's schema (also used for TRL and evaluation), written as parquet.

Row: ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model`` =
``{"style": "rule", "ground_truth": {...}}``, ``extra_info`` (``split``, ``index`` = row number,
``query_id``, ``query`` = the original query text, optional ``search_index``, ``prefill``, ...).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..tasks import Task


def make_row(task: Task, split: str, index: int, fields: Mapping[str, Any],
             ground_truth: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    info = {"split": split, "index": index, **extra}
    if task.prefill:
        info.setdefault("prefill", task.prefill)
    return {"data_source": task.name, "prompt": task.messages(**fields), "ability": task.family.name,
            "reward_model": {"style": "rule", "ground_truth": dict(ground_truth)},
            "extra_info": info}


def beir_rows(task: Task, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
              split: str, search_index: str | None = None) -> list[dict[str, Any]]:
    """One row per query that has at least one relevant document, in qrels order."""
    rows = []
    for qid, judged in qrels.items():
        relevant = [(doc, grade) for doc, grade in judged.items() if grade > 0]
        if not relevant or qid not in queries:
            continue
        extra: dict[str, Any] = {"query_id": qid, "query": queries[qid]}
        if search_index:
            extra["search_index"] = search_index
        rows.append(make_row(task, split, len(rows), {"query": queries[qid]},
                             {"target": [d for d, _ in relevant], "grades": [g for _, g in relevant]},
                             **extra))
    return rows


def write_parquet(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows atomically (temp file beside ``path``, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows back as plain Python objects (lists, dicts; nulls from other families dropped).
    Files in the original DeepRetrieval format are converted to ours on the fly."""
    import pyarrow.parquet as pq

    from .original import maybe_convert

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return maybe_convert([clean(row) for row in pq.read_table(path).to_pylist()])
