"""BEIR-format collections: ``corpus.jsonl(.gz)``, ``queries.jsonl``, ``qrels/<split>.tsv``."""
from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class FormatError(ValueError):
    """Malformed input file; the message names the file and line."""


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _find(path: Path, name: str) -> Path:
    for candidate in (path / name, path / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{path}: no {name} or {name}.gz")


def iter_jsonl(path: Path, required: tuple[str, ...] = ("_id",), *,
               with_lines: bool = False) -> Iterator[Any]:
    """JSON objects of a JSONL file (``.gz`` ok), one per non-blank line (``(line, obj)`` with
    ``with_lines``); FormatError with file:line for invalid JSON, non-objects and missing
    ``required`` fields. ``_id`` becomes str."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise FormatError(f"{path}:{lineno}: expected a JSON object")
            missing = [key for key in required if key not in obj]
            if missing:
                raise FormatError(f"{path}:{lineno}: missing field(s) {missing}")
            if "_id" in obj:
                obj["_id"] = str(obj["_id"])
            yield (lineno, obj) if with_lines else obj


def load_corpus(path: str | Path) -> Iterator[dict[str, Any]]:
    """Documents (``{"_id", "title", "text"}``) of a BEIR ``corpus.jsonl(.gz)`` (or its folder)
    or of a DPR passage file (``.tsv(.gz)``: ``id<TAB>text<TAB>title`` with a header line, as
    DPR's ``psgs_w100.tsv``), read as a stream."""
    path = Path(path)
    file = _find(path, "corpus.jsonl") if path.is_dir() else path
    if file.name.endswith((".tsv", ".tsv.gz")):
        return iter_dpr_tsv(file)
    return iter_jsonl(file, required=("_id",))


def iter_dpr_tsv(path: Path) -> Iterator[dict[str, Any]]:
    """DPR's passage TSV (``id``, ``text``, ``title`` columns, csv-quoted as DPR writes it)."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    csv.field_size_limit(1 << 30)
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None:
            return
        cols = [c.strip().lower() for c in header]
        if not {"id", "text"} <= set(cols):
            raise FormatError(f"{path}:1: expected a header with id, text (and title) columns, "
                              f"got {header[:5]}")
        i_id, i_text = cols.index("id"), cols.index("text")
        i_title = cols.index("title") if "title" in cols else None
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(cols):
                raise FormatError(f"{path}:{lineno}: expected {len(cols)} tab-separated "
                                  f"columns, got {len(row)}")
            yield {"_id": row[i_id], "title": row[i_title] if i_title is not None else "",
                   "text": row[i_text]}


def load_queries(path: str | Path) -> dict[str, str]:
    path = Path(path)
    file = _find(path, "queries.jsonl") if path.is_dir() else path
    return {q["_id"]: str(q.get("text", "")) for q in iter_jsonl(file, required=("_id", "text"))}


def iter_qrels(file: str | Path) -> Iterator[tuple[int, str, str, int]]:
    """``(line, query id, doc id, grade)`` of a qrels TSV (``query-id  corpus-id  score``, an
    optional header line; TREC ``qid 0 docid grade`` also accepted); FormatError with file:line."""
    with open(file, encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid", "query"):
                continue
            if len(row) == 4:  # TREC layout: qid 0 docid grade
                row = [row[0], row[2], row[3]]
            if len(row) != 3:
                raise FormatError(f"{file}:{lineno}: expected 3 tab-separated columns "
                                  f"(query-id, corpus-id, score), got {len(row)}")
            qid, doc, grade_text = (c.strip() for c in row)
            try:
                grade = int(float(grade_text))
            except ValueError:
                raise FormatError(f"{file}:{lineno}: score {grade_text!r} is not a number") from None
            yield lineno, qid, doc, grade


def load_qrels(path: str | Path, split: str | None = None) -> dict[str, dict[str, int]]:
    """qrels TSV (``query-id  corpus-id  score`` with a header line, as BEIR ships them) →
    {query id: {doc id: grade}} in file order."""
    path = Path(path)
    file = path / "qrels" / f"{split}.tsv" if split else path
    if not file.exists():
        raise FileNotFoundError(f"no qrels file {file}")
    qrels: dict[str, dict[str, int]] = {}
    for _, qid, doc, grade in iter_qrels(file):
        qrels.setdefault(qid, {})[doc] = grade
    return qrels
