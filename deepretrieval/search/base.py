"""Backend contract shared by every search backend (local index, live engine, SQL database).

A backend answers a batch of queries at once. Per-query failures come back as
``SearchResult.error``; a failure of the whole call raises :class:`SearchError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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
    (``doc_ids.json``, ``texts.jsonl.gz``); texts load on first use. Needs ``doc_ids``,
    ``_texts`` (list or None) and ``path`` (directory or None)."""

    doc_ids: list[str]
    _texts: list[str] | None
    path: Any

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            if self.path is None:
                raise RuntimeError("index has no stored texts")
            from deepretrieval.core.io import read_json_lines_gz
            self._texts = read_json_lines_gz(self.path / "texts.jsonl.gz")
        return self._texts

    def save_docs(self, folder) -> None:
        import json
        from deepretrieval.core.io import write_json_lines_gz
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids))
        write_json_lines_gz(folder / "texts.jsonl.gz", self.texts)

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
