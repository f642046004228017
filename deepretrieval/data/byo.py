"""Bring your own data: ``deepretrieval prepare beir | sql | pico``.

* ``prepare beir``: corpus.jsonl + queries.jsonl + qrels TSV(s) → a BM25 index (and a dense one
  with ``--dense MODEL``) and train/test task rows for a BEIR-family task named after the collection.
  The task needs no registration: a ``data_source`` that names an index (under the index root, or
  registered) resolves to a BEIR task over it (:func:`resolve_local`), ``NAME_no_reason`` to its
  answer-only variant.
* ``prepare sql``: a SQLite file + questions with gold SQL → rows for the ``spider`` (or ``bird``)
  task; the database is registered as index ``<task index>/<name>`` (e.g. ``spider/shop``).
* ``prepare pico``: reviews with P/I/C/O and included study ids → rows for ``pubmed`` / ``ctgov``.

Every input is checked before anything is written; errors name the file and line (or item) and what
was expected. Outputs are built in temp paths beside their destinations and renamed into place only
when everything succeeded, so a failure leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.beir_files import FormatError, iter_jsonl, iter_qrels
from deepretrieval.core.results import SearchError
from deepretrieval.data.rows import write_parquet
from deepretrieval.search.bm25 import BM25Index
from deepretrieval.search.dense import DenseIndex
from deepretrieval.search.sql import SqliteBackend, execute_readonly, write_sqlite_index
from deepretrieval.tasks import search_engine, sql
from deepretrieval.tasks.base import tasks_by_name
from deepretrieval.tasks.beir import ANSWER_PREFILL, beir_rows
from deepretrieval.tasks.original import beir_task

SQL_TASKS = tasks_by_name(sql.TASKS)
SEARCH_ENGINE_TASKS = tasks_by_name(search_engine.TASKS)


class _Staged:
    """Outputs written to temp paths beside their destinations, renamed into place on commit."""

    def __init__(self) -> None:
        self.items: list[tuple[Path, Path]] = []  # (temp, final)

    def path(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.staged-{uuid.uuid4().hex[:8]}"
        self.items.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.items:
            if final.is_dir() and not final.is_symlink():
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        self.items.clear()

    def abort(self) -> None:
        for tmp, _ in self.items:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.items.clear()

    def __enter__(self) -> "_Staged":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.commit()


def _need_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return path


# ---------------------------------------------------------------------------------------------
# BEIR

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
    path = _need_file(path, "qrels")
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
    path = _need_file(path, "corpus")
    docs, seen = [], set()
    for lineno, doc in enumerate(_jsonl_with_lines(path, ("_id",)), start=1):
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
    path = _need_file(path, "queries")
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
    import gzip
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        numbers = [i for i, line in enumerate(fh, start=1) if line.strip()]
    for obj, line in zip(iter_jsonl(path, required=required), numbers):
        yield obj, line


def _hash01(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def check_test_fraction(test_fraction: float) -> float:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction {test_fraction!r}: expected a number between 0 and 1")
    return float(test_fraction)


def split_groups(groups: Sequence[str], test_fraction: float) -> dict[str, str]:
    """A stable train/test split of the distinct ``groups``: ordered by a hash of the value, the
    first ``round(test_fraction * n)`` (at least 1, at most n - 1) go to ``test``, the rest to
    ``train``. Every item of a group lands in the same split; the same input gives the same
    split on every machine."""
    test_fraction = check_test_fraction(test_fraction)
    distinct = sorted(set(groups), key=lambda g: (_hash01(g), g))
    if len(distinct) < 2:
        raise ValueError(f"cannot split {len(distinct)} group(s) into train and test; "
                         f"--split-by must give at least two different values")
    n_test = min(max(1, round(test_fraction * len(distinct))), len(distinct) - 1)
    return {g: ("test" if i < n_test else "train") for i, g in enumerate(distinct)}


def _field_value(obj: Mapping[str, Any], field: str, where: str) -> str:
    """``field`` of an item (dotted for nested objects: ``metadata.topic``) as a string."""
    value: Any = obj
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value or value[part] is None:
            raise FormatError(f"{where}: no field {field!r} (--split-by)")
        value = value[part]
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _split_beir_qrels(qrels_path: str, judged: dict[str, dict[str, int]], queries_path: str,
                      test_fraction: float, split_by: str) -> tuple[dict, str]:
    """One qrels file → {"train": qrels, "test": qrels} grouped by the queries' ``split_by``
    field; only queries with a relevant document are split (the others make no row)."""
    path = Path(queries_path)
    group_of = {}
    for obj, line in _jsonl_with_lines(path, ("_id",)):
        group_of[obj["_id"]] = (obj["_id"] if split_by == "_id"
                                else _field_value(obj, split_by, f"{path}:{line}"))
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

    _check_name(name)
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
    with _Staged() as staged:
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


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")


# ---------------------------------------------------------------------------------------------
# resolver: a data_source naming a local index is a BEIR task over it

# ---------------------------------------------------------------------------------------------
# SQL

def _load_items(path: Path) -> list[tuple[Any, str]]:
    """A JSON list, or JSONL: [(item, location)] where location is ``file:line`` / ``file item N``."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        return [(item, f"{path} item {i}") for i, item in enumerate(data)]
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((json.loads(line), f"{path}:{lineno}"))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    return items


SPLIT_NAMES = ("train", "test", "val", "dev")


def _explicit_split(item: Mapping[str, Any], where: str) -> str | None:
    """The item's own ``split`` (train, test, val or dev), None when it has none."""
    split = item.get("split")
    if split is None:
        return None
    if split not in SPLIT_NAMES:
        raise FormatError(f"{where}: split {split!r} must be {', '.join(SPLIT_NAMES[:-1])} or "
                          f"{SPLIT_NAMES[-1]}")
    return split


def _assign_splits(pending: Sequence[tuple[str, str]], test_fraction: float,
                   split_by: str) -> dict[str, str]:
    """{where: split} for the items without their own split; ``pending`` is [(where, group)]."""
    if not pending:
        return {}
    try:
        assignment = split_groups([g for _, g in pending], test_fraction)
    except ValueError as exc:
        raise FormatError(f"{len(pending)} item(s) without a 'split': {exc} (--split-by "
                          f"{split_by!r})") from None
    return {where: assignment[group] for where, group in pending}


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
    db_path = _need_file(db, "database")
    qpath = _need_file(questions, "questions")
    name = name or db_path.stem
    _check_name(name)
    test_fraction = check_test_fraction(test_fraction)
    if task not in SQL_TASKS:
        raise ValueError(f"--task {task!r} is not a SQL task; SQL tasks: {sorted(SQL_TASKS)}")
    the_task = SQL_TASKS[task]
    try:
        schema = SqliteBackend(db_path, name=name).schema_sql()
    except (SearchError, Exception) as exc:  # noqa: BLE001
        raise FormatError(f"{db_path}: not a readable SQLite database ({exc})") from None
    if not schema.strip():
        raise FormatError(f"{db_path}: the database has no tables")
    checked, failing, pending = [], [], []
    for item, where in _load_items(qpath):
        if not isinstance(item, dict):
            raise FormatError(f"{where}: expected an object with 'question' and 'sql'")
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise FormatError(f"{where}: missing 'question' (a non-empty string)")
        variants = _gold_variants(item, where)
        split = _explicit_split(item, where)
        group = question.strip() if split_by == "question" else _field_value(item, split_by, where)
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
    assigned = _assign_splits(pending, test_fraction, split_by)
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
    with _Staged() as staged:
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


# ---------------------------------------------------------------------------------------------
# PICO reviews

def prepare_pico(*, reviews: str, engine: str = "pubmed", out: str | None = None,
                 test_fraction: float = 0.2) -> dict[str, Any]:
    """Reviews ``{P, I, C, O, included: [ids], title?, pub_date?, split?, id?}`` (P/I/C/O may also
    sit under ``pico``) → ``<out>/<split>.parquet`` for the ``pubmed`` / ``ctgov`` task."""
    path = _need_file(reviews, "reviews")
    if engine not in SEARCH_ENGINE_TASKS:
        raise ValueError(f"--engine {engine!r} is not a search-engine task; known: "
                         f"{sorted(SEARCH_ENGINE_TASKS)}")
    task = SEARCH_ENGINE_TASKS[engine]
    test_fraction = check_test_fraction(test_fraction)
    checked, pending = [], []
    for item, where in _load_items(path):
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
        split = _explicit_split(item, where)
        checked.append((item, where, fields, ids, split))
        if split is None:
            pending.append((where, str(item.get("id") or fields.get("title") or fields["P"])))
    assigned = _assign_splits(pending, test_fraction, "id")
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
    with _Staged() as staged:
        for split, rows in sorted(rows_by_split.items()):
            final = out_dir / f"{split}.parquet"
            write_parquet(rows, staged.path(final))
            report.append(f"{task.name} {split}: {len(rows)} rows → {final}")
    return {"report": report, "rows": {s: len(r) for s, r in rows_by_split.items()}}
