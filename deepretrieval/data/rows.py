"""Task rows in verl's schema (also used for TRL and evaluation), read and written as parquet.

Row: ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model`` =
``{"style": "rule", "ground_truth": {...}}``, ``extra_info`` (``split``, ``index`` = row number,
``query_id``, ``query`` = the original query text, optional ``search_index``, ``prefill``, ...).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from deepretrieval.core.io import atomic_write


def write_parquet(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows atomically (temp file beside ``path``, then rename)."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with atomic_write(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return Path(path)


def read_rows(path: str | os.PathLike, convert: Callable[[list[dict]], list[dict]] | None = None
              ) -> list[dict[str, Any]]:
    """Rows back as plain Python objects (lists, dicts; nulls from other families dropped), then
    through ``convert`` when given (:func:`deepretrieval.catalog.read_rows` passes the conversion of
    files in the original DeepRetrieval format)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    rows = [clean(row) for row in pq.read_table(path).to_pylist()]
    return convert(rows) if convert is not None else rows


def read_parquet_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A parquet file's rows as they are (converters read foreign files with it): a missing file
    is FileNotFoundError, an unreadable one ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from None
