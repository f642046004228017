"""Backend contract shared by every search backend (local index, live engine, SQL database).

A backend answers a batch of queries at once. Per-query failures come back as
``SearchResult.error``; a failure of the whole call raises :class:`SearchError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from deepretrieval.core.io import read_json_lines_gz, write_json_lines_gz


class SearchError(RuntimeError):
    """The search itself failed (backend down, retries exhausted, unknown index)."""


def unencodable(query: object) -> str | None:
    """Why ``query`` cannot be sent to any backend, or None when it can: it is not a string, or it
    holds a lone surrogate (``"\\ud800"`` in JSON) that no UTF-8 encoder accepts. Searchers answer
    such a query with ``SearchResult(error=...)`` instead of letting it fail the whole call."""
    if not isinstance(query, str):
        return f"query is not a string ({type(query).__name__})"
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"query is not valid Unicode text (lone surrogate at character {exc.start}); "
                "it cannot be encoded as UTF-8")
    return None


@dataclass
class SearchResult:
    ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    texts: list[str] | None = None          # filled when return_text=True
    rows: list[list[Any]] | None = None     # SQL backends: the result rows
    error: str | None = None                # this query failed; ids/scores are empty
    info: dict[str, Any] = field(default_factory=dict)  # backend extras (e.g. query translation)
    titles: list[str] | None = None         # with texts, when the index stores document titles

    def to_hits(self, return_scores: bool = True) -> list[dict[str, Any]]:
        """Search-R1 style hit list: ``[{"id", "score"?, "contents"?}, ...]``."""
        hits = []
        for i, doc in enumerate(self.ids):
            hit: dict[str, Any] = {"id": doc}
            if return_scores:
                hit["score"] = float(self.scores[i]) if i < len(self.scores) else None
            if self.texts is not None:
                hit["contents"] = self.texts[i]
            hits.append(hit)
        return hits


class StoredDocs:
    """Mixin for indexes that keep their documents' ids and texts in their directory
    (``doc_ids.json``, ``texts.jsonl.gz``, and ``titles.json`` when the documents have titles);
    texts and titles load on first use. Needs ``doc_ids``, ``_texts`` (list or None) and ``path``
    (directory or None); ``_titles`` is the titles list when built in memory."""

    doc_ids: list[str]
    _texts: list[str] | None
    path: Any
    _titles: list[str] | None = None
    _titles_read: bool = False

    @property
    def titles(self) -> list[str] | None:
        """Each document's title (``""`` where it has none), or None when the index has no titles
        (built without them, or by a version before titles were stored)."""
        if self._titles is None and not self._titles_read and self.path is not None:
            import json
            file = self.path / "titles.json"
            if file.exists():
                self._titles = json.loads(file.read_text())
            self._titles_read = True
        return self._titles

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            if self.path is None:
                raise RuntimeError("index has no stored texts")
            self._texts = read_json_lines_gz(self.path / "texts.jsonl.gz")
        return self._texts

    def documents(self, ids: list[str]) -> list[dict[str, str] | None]:
        """The stored document of each id, ``{"id", "title", "text"}`` (``title`` ``""`` when the
        index stores none; ``text`` without the title), or None for an id the index lacks."""
        positions = self.__dict__.get("_positions")
        if positions is None:
            positions = self.__dict__["_positions"] = {d: i for i, d in enumerate(self.doc_ids)}
        texts, titles = self.texts, self.titles
        out: list[dict[str, str] | None] = []
        for doc_id in ids:
            i = positions.get(doc_id)
            if i is None:
                out.append(None)
                continue
            title, text = (titles[i] if titles is not None else ""), texts[i]
            if title and text.startswith(title):  # stored as title and text joined by a space
                text = text[len(title):].lstrip()
            out.append({"id": doc_id, "title": title, "text": text})
        return out

    def save_docs(self, folder) -> None:
        import json
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids))
        write_json_lines_gz(folder / "texts.jsonl.gz", self.texts)
        titles = self.titles
        if titles is not None:
            (folder / "titles.json").write_text(json.dumps(titles, ensure_ascii=False))

    def __len__(self) -> int:
        return len(self.doc_ids)


@runtime_checkable
class Backend(Protocol):
    """What every backend implements. ``options`` carries backend-specific per-call parameters
    (e.g. ``maxdate`` for PubMed); unknown options must be rejected with ValueError."""

    name: str

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]: ...

    def info(self) -> dict[str, Any]: ...


@runtime_checkable
class DocumentStore(Protocol):
    """A backend that can hand back its stored documents by id (``/access`` of the service):
    local BM25, dense and Boolean indexes, and sharded ones over them."""

    def documents(self, ids: list[str]) -> list[dict[str, str] | None]: ...


class Searcher(Protocol):
    """What rewards, evaluation and agents search through: the in-process
    :class:`~deepretrieval.search.LocalSearcher` or the service client
    :class:`~deepretrieval.service.client.ServiceSearcher` (same results either way)."""

    def search(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]: ...

    async def asearch(self, index: str, queries: list[str], k: int, *, return_text: bool = False,
                      options: dict[str, Any] | None = None) -> list[SearchResult]: ...


class DamagedIndex(SearchError):
    """An index directory with missing or unreadable files (a build or copy that was cut short)."""

    def __init__(self, path: Path, why: str):
        self.path = path
        super().__init__(f"the index at {path} is damaged or incomplete ({why}); rebuild it "
                         f"(`deepretrieval index ... --name {path.name}`, or delete the folder and "
                         f"rerun for a built-in index)")
