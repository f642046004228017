"""Bring your own systematic reviews: ``deepretrieval prepare pico``.

Reviews with P/I/C/O and the included study ids (PMIDs or NCT ids) → rows for the ``pubmed`` /
``ctgov`` task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from deepretrieval.core.beir_files import FormatError
from deepretrieval.data.byo import (
    Staged,
    assign_splits,
    check_test_fraction,
    explicit_split,
    load_items,
    need_file,
)
from deepretrieval.data.rows import write_parquet
from deepretrieval.tasks import search_engine
from deepretrieval.tasks.base import tasks_by_name

__all__ = ["SEARCH_ENGINE_TASKS", "prepare_pico"]

SEARCH_ENGINE_TASKS = tasks_by_name(search_engine.TASKS)


def prepare_pico(*, reviews: str, engine: str = "pubmed", out: str | None = None,
                 test_fraction: float = 0.2) -> dict[str, Any]:
    """Reviews ``{P, I, C, O, included: [ids], title?, pub_date?, split?, id?}`` (P/I/C/O may also
    sit under ``pico``) → ``<out>/<split>.parquet`` for the ``pubmed`` / ``ctgov`` task."""
    path = need_file(reviews, "reviews")
    if engine not in SEARCH_ENGINE_TASKS:
        raise ValueError(f"--engine {engine!r} is not a search-engine task; known: "
                         f"{sorted(SEARCH_ENGINE_TASKS)}")
    task = SEARCH_ENGINE_TASKS[engine]
    test_fraction = check_test_fraction(test_fraction)
    checked, pending = [], []
    for item, where in load_items(path):
        if not isinstance(item, dict):
            raise FormatError(f"{where}: expected an object with P, I, C, O and 'included'")
        pico = item.get("pico") if isinstance(item.get("pico"), dict) else item
        fields = {}
        for key in ("P", "I", "C", "O"):
            value = pico.get(key, "")
            if not isinstance(value, str):
                raise FormatError(f"{where}: {key} must be a string")
            if value.strip():
                fields[key] = value.strip()
        if "P" not in fields or "I" not in fields:
            raise FormatError(f"{where}: missing P (population) or I (intervention)")
        if isinstance(item.get("title"), str) and item["title"].strip():
            fields["title"] = item["title"].strip()
        included = item.get("included")
        if not isinstance(included, list) or not included:
            raise FormatError(f"{where}: 'included' must be a non-empty list of "
                              f"{'PMIDs' if engine == 'pubmed' else 'NCT ids'}")
        ids = []
        for value in included:
            value = str(value).strip()
            ok = value.isdigit() if engine == "pubmed" else (value.upper().startswith("NCT")
                                                              and value[3:].isdigit())
            if not ok:
                raise FormatError(f"{where}: included id {value!r} is not a "
                                  f"{'PMID (digits)' if engine == 'pubmed' else 'NCT id (NCT + digits)'}")
            ids.append(value.upper())
        ids = list(dict.fromkeys(ids))
        split = explicit_split(item, where)
        checked.append((item, where, fields, ids, split))
        if split is None:
            pending.append((where, str(item.get("id") or fields.get("title") or fields["P"])))
    assigned = assign_splits(pending, test_fraction, "id")
    rows_by_split: dict[str, list[dict[str, Any]]] = {}
    for item, where, fields, ids, split in checked:
        split = split or assigned[where]
        rows = rows_by_split.setdefault(split, [])
        extra: dict[str, Any] = {"query_id": str(item.get("id", f"{split}-{len(rows)}")),
                                 "query": fields.get("title") or fields["P"]}
        if item.get("pub_date"):
            extra["pub_date"] = str(item["pub_date"])
        rows.append(task.row(split, len(rows), fields, {"target": ids}, **extra))
    if not rows_by_split:
        raise FormatError(f"{path}: no reviews")
    out_dir = Path(out) if out else Path("data") / f"{engine}_{path.stem}"
    report = []
    with Staged() as staged:
        for split, rows in sorted(rows_by_split.items()):
            final = out_dir / f"{split}.parquet"
            write_parquet(rows, staged.path(final))
            report.append(f"{task.name} {split}: {len(rows)} rows → {final}")
    return {"report": report, "rows": {s: len(r) for s, r in rows_by_split.items()}}
