"""Bring your own BEIR collection: ``deepretrieval prepare beir``.

corpus.jsonl + queries.jsonl + qrels TSV(s) → a BM25 index (and a dense one with ``--dense
MODEL``) and train/test task rows for a BEIR-family task named after the collection. The task needs
no registration: a ``data_source`` that names an index (under the index root, or registered)
resolves to a BEIR task over it (:func:`deepretrieval.catalog.resolve_local_collection`),
``NAME_no_reason`` to its answer-only variant. One qrels file can be split into train and test
(``--test-fraction``, ``--split-by``).
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.beir_files import FormatError, iter_jsonl, iter_qrels
from deepretrieval.data.byo import (
    Staged,
    check_name,
    check_test_fraction,
    field_value,
    need_file,
    split_groups,
)
from deepretrieval.data.rows import write_parquet
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.search.dense import DenseIndex
from deepretrieval.tasks.beir import ANSWER_PREFILL, beir_rows
from deepretrieval.tasks.original import beir_task

__all__ = ["empty_documents", "parse_qrels_args", "prepare_beir", "read_corpus", "read_qrels",
           "read_queries"]


def parse_qrels_args(items: Sequence[str]) -> dict[str, str]:
    """``["train=a.tsv", "test=b.tsv"]`` → {split: path}; a bare path is the ``test`` split."""
    out: dict[str, str] = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep:
            split, path = "test", item
        split = split.strip()
        if not split or not path.strip():
            raise ValueError(f"--qrels {item!r}: expected SPLIT=PATH or PATH")
        if split in out:
            raise ValueError(f"--qrels: split {split!r} given twice")
        out[split] = path.strip()
    return out


def read_qrels(path: str | os.PathLike, corpus_ids: set[str], query_ids: set[str]
               ) -> dict[str, dict[str, int]]:
    """A qrels TSV (``query-id  corpus-id  score``, optional header; TREC ``qid 0 doc grade`` also
    accepted), checked row by row against the corpus and the queries."""
    path = need_file(path, "qrels")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, qid, doc, grade in iter_qrels(path):
        if doc not in corpus_ids:
            raise FormatError(f"{path}:{lineno}: corpus-id {doc!r} is not in the corpus")
        if qid not in query_ids:
            raise FormatError(f"{path}:{lineno}: query-id {qid!r} is not in the queries")
        qrels.setdefault(qid, {})[doc] = grade
    if not any(g > 0 for judged in qrels.values() for g in judged.values()):
        raise FormatError(f"{path}: no relevant (score > 0) judgments")
    return qrels


def read_corpus(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The corpus documents. A document whose title and text are both empty is kept (collections
    such as Cranfield judge some): :func:`empty_documents` lists them for a warning."""
    path = need_file(path, "corpus")
    docs, seen = [], set()
    for doc in _jsonl_with_lines(path, ("_id",)):
        obj, line = doc
        text = obj.get("text")
        title = obj.get("title", "")
        if title is None:
            title = ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise FormatError(f"{path}:{line}: expected a string 'text' (and optional 'title')")
        if obj["_id"] in seen:
            raise FormatError(f"{path}:{line}: duplicate _id {obj['_id']!r}")
        seen.add(obj["_id"])
        docs.append({"_id": obj["_id"], "title": title, "text": text})
    if not docs:
        raise FormatError(f"{path}: no documents")
    return docs


def empty_documents(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ids of the documents whose title and text are both empty (or whitespace)."""
    return [d["_id"] for d in docs if not (d["text"].strip() or d["title"].strip())]


def _empty_docs_warning(path: str | os.PathLike, empty: Sequence[str],
                        splits: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    judged = sorted({doc for qrels in splits.values() for judged in qrels.values()
                     for doc, grade in judged.items() if grade > 0} & set(empty))
    shown = ", ".join(repr(d) for d in list(empty)[:5]) + (" …" if len(empty) > 5 else "")
    return (f"{path}: {len(empty)} document(s) with empty title and text ({shown}); they are "
            f"indexed but no query can retrieve them"
            + (f"; {len(judged)} of them judged relevant (they count in the ideal nDCG)"
               if judged else ""))


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    path = need_file(path, "queries")
    out: dict[str, str] = {}
    for obj, line in _jsonl_with_lines(path, ("_id", "text")):
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise FormatError(f"{path}:{line}: 'text' must be a non-empty string")
        if obj["_id"] in out:
            raise FormatError(f"{path}:{line}: duplicate _id {obj['_id']!r}")
        out[obj["_id"]] = obj["text"].strip()
    if not out:
        raise FormatError(f"{path}: no queries")
    return out


def _jsonl_with_lines(path: Path, required: tuple[str, ...]):
    """iter_jsonl with the line number of each object (blank lines are skipped there)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        numbers = [i for i, line in enumerate(fh, start=1) if line.strip()]
    for obj, line in zip(iter_jsonl(path, required=required), numbers):
        yield obj, line


def _split_beir_qrels(qrels_path: str, judged: dict[str, dict[str, int]], queries_path: str,
                      test_fraction: float, split_by: str) -> tuple[dict, str]:
    """One qrels file → {"train": qrels, "test": qrels} grouped by the queries' ``split_by``
    field; only queries with a relevant document are split (the others make no row)."""
    path = Path(queries_path)
    group_of = {}
    for obj, line in _jsonl_with_lines(path, ("_id",)):
        group_of[obj["_id"]] = (obj["_id"] if split_by == "_id"
                                else field_value(obj, split_by, f"{path}:{line}"))
    qids = [q for q, docs in judged.items() if any(g > 0 for g in docs.values())]
    assignment = split_groups([group_of[q] for q in qids], test_fraction)
    out: dict[str, dict[str, dict[str, int]]] = {"train": {}, "test": {}}
    for qid, docs in judged.items():
        if qid in group_of and group_of[qid] in assignment:
            out[assignment[group_of[qid]]][qid] = docs
    n_train, n_test = (sum(1 for q in out[s] if q in qids) for s in ("train", "test"))
    how = "query id" if split_by == "_id" else f"the queries' {split_by!r} field"
    return out, (f"split {qrels_path} by {how} (stable hash, test fraction {test_fraction}): "
                 f"{n_train} train / {n_test} test queries")


def prepare_beir(*, corpus: str, queries: str, qrels: Mapping[str, str], name: str,
                 out: str | None = None, index_dir: str | None = None, dense: str | None = None,
                 no_reason: bool = False, test_fraction: float | None = None,
                 split_by: str | None = None, show_progress: bool | None = None) -> dict[str, Any]:
    """Check the collection, build the index(es), write ``<out>/<split>.parquet`` (and
    ``<out>/dense/<split>.parquet`` with ``dense``). Returns paths, counts, a report and warnings.

    ``test_fraction`` / ``split_by`` (one qrels file only): make the train and test splits from
    that file — queries grouped by their ``split_by`` field (default ``_id``; dotted for nested
    fields, e.g. ``metadata.topic``), a stable ``test_fraction`` of the groups (default 0.2) to
    test. ``no_reason``: the answer-only task ``<name>_no_reason`` with the answer prefilled."""

    check_name(name)
    if show_progress is None:
        show_progress = settings.progress_enabled()
    if not qrels:
        raise ValueError("give at least one --qrels file")
    splitting = test_fraction is not None or split_by is not None
    if splitting:
        if len(qrels) != 1:
            raise ValueError(f"--test-fraction/--split-by split one qrels file into train and test; "
                             f"{len(qrels)} were given ({', '.join(sorted(qrels))})")
        test_fraction = check_test_fraction(0.2 if test_fraction is None else test_fraction)
    docs = read_corpus(corpus)
    query_text = read_queries(queries)
    ids = {d["_id"] for d in docs}
    splits = {split: read_qrels(path, ids, set(query_text)) for split, path in qrels.items()}
    report: list[str] = []
    warnings = []
    if splitting:
        (only_path,), (only,) = qrels.values(), splits.values()
        splits, line = _split_beir_qrels(only_path, only, queries, test_fraction, split_by or "_id")
        qrels = {"train": only_path, "test": only_path}
        report.append(line)
    empty = empty_documents(docs)
    if empty:
        warnings.append(_empty_docs_warning(corpus, empty, splits))

    bm25 = BM25Index.build(docs, name=name, show_progress=show_progress)
    dense_index = None
    if dense:
        dense_index = DenseIndex.build(docs, dense, name=f"{name}_dense", show_progress=show_progress)

    root = Path(index_dir) if index_dir else settings.index_dir() / name
    dense_root = root.parent / f"{root.name}_dense"
    out_dir = Path(out) if out else Path("data") / name
    paths = {}
    with Staged() as staged:
        bm25.save(staged.path(root))
        paths["index"] = root
        report.append(f"BM25 index: {len(bm25)} documents → {root}")
        if dense_index is not None:
            dense_index.save(staged.path(dense_root))
            paths["dense_index"] = dense_root
            report.append(f"dense index ({dense}): {len(docs)} documents → {dense_root}")
        variants = [(name, "")] + ([(f"{name}_dense", "dense")] if dense_index is not None else [])
        for task_name, sub in variants:
            task = beir_task(name, bool(sub))
            if no_reason:
                task = task.variant(name=f"{task_name}_no_reason", reasoning=False,
                                    prefill=ANSWER_PREFILL)
            for split, judged in splits.items():
                rows = beir_rows(task, query_text, judged, split)
                if not rows:
                    raise FormatError(f"{qrels[split]}: no query with a relevant document")
                final = out_dir / sub / f"{split}.parquet"
                write_parquet(rows, staged.path(final))
                paths[f"{sub or 'bm25'}:{split}"] = final
                report.append(f"{task.name} {split}: {len(rows)} rows → {final}")
    if index_dir:
        report.append(f"note: the index is outside the index root; set DEEPRETRIEVAL_INDEXES="
                      f"{name}={root}" + (f",{name}_dense={dense_root}" if dense else "")
                      + " so the task finds it")
    if "train" not in splits:
        report.append(f"note: no train split was written ({', '.join(sorted(splits))} only); "
                      f"`deepretrieval train` needs train.parquet: split one qrels file with "
                      f"--test-fraction 0.2 (or --split-by FIELD), or give --qrels train=PATH "
                      f"test=PATH")
    return {"paths": paths, "report": report, "warnings": warnings, "docs": len(docs),
            "queries": len(query_text)}
