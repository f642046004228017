"""Sharded indexes: N shards searched together as one index.

A sharded index directory holds ``meta.json`` (``{"type": "sharded", "shards": [dir, ...]}``)
and one ordinary index directory per shard. Shards split the documents into contiguous ranges
(shard 0 holds the first documents, shard 1 the next, ...). Merging is exact when the shards'
scores are comparable: BM25 shards are built with the statistics of the whole collection
(document count, average length, document frequencies), so a merged top-k equals the top-k of
one index built over all documents.

:func:`merge_results` is the one merge rule, used in process (:class:`ShardedBackend`) and by the
Ray Serve router: score descending, ties in document order (shard order, then the shard's own
order, which is document order within the shard). A query that failed in any shard fails as a
whole, naming the shard: never a silent partial result.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deepretrieval.core import deadline
from deepretrieval.core.results import Backend, DocumentStore, SearchError, SearchResult
from deepretrieval.search.answer_ranks import answer_hits, keep_top_hits, merge_answer_ranks

INDEX_TYPE = "sharded"


def merge_results(per_shard: Sequence[Sequence[SearchResult]], k: int,
                  shard_names: Sequence[str] | None = None) -> list[SearchResult]:
    """Merge each shard's results for the same queries into one top-``k`` per query.

    ``per_shard[s][q]`` is shard ``s``'s result for query ``q``. Raises ValueError when the shards
    answered different numbers of queries."""
    if not per_shard:
        raise ValueError("no shards to merge")
    names = list(shard_names) if shard_names is not None else [f"shard {i}" for i in
                                                               range(len(per_shard))]
    n = len(per_shard[0])
    if any(len(results) != n for results in per_shard):
        raise ValueError(f"shards answered different numbers of queries: "
                         f"{[len(r) for r in per_shard]}")
    merged: list[SearchResult] = []
    for q in range(n):
        parts = [results[q] for results in per_shard]
        failed = [(names[s], r.error) for s, r in enumerate(parts) if r.error is not None]
        if failed:
            merged.append(SearchResult(error="; ".join(f"{name}: {why}" for name, why in failed)))
            continue
        with_text = all(r.texts is not None for r in parts)
        with_titles = with_text and all(r.titles is not None for r in parts)
        hits = [(-float(score), s, i) for s, r in enumerate(parts)
                for i, score in enumerate(r.scores)]
        hits.sort()
        hits = hits[:k]
        out = SearchResult(ids=[parts[s].ids[i] for _, s, i in hits],
                           scores=[-neg for neg, _, _ in hits])
        if with_text:
            out.texts = [parts[s].texts[i] for _, s, i in hits]  # type: ignore[index]
        if with_titles:
            out.titles = [parts[s].titles[i] for _, s, i in hits]  # type: ignore[index]
        infos = [r.info for r in parts if r.info]
        if infos:
            out.info = {"shards": infos}
        merged.append(out)
    return merged


class ShardedBackend:
    """Searches every shard (in parallel threads) and merges with :func:`merge_results`. A shard
    whose whole call fails raises :class:`SearchError` naming that shard."""

    def __init__(self, shards: Sequence[Backend], name: str = "sharded",
                 shard_names: Sequence[str] | None = None, path: Path | None = None) -> None:
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        self.shards = list(shards)
        self.name = name
        self.shard_names = list(shard_names) if shard_names is not None else [
            f"shard {i}" for i in range(len(self.shards))]
        self.path = path
        self._pool = ThreadPoolExecutor(len(self.shards), thread_name_prefix="shard")

    @classmethod
    def load(cls, path: str | os.PathLike, open_dir: Callable[[Path], Backend]) -> "ShardedBackend":
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("type") != INDEX_TYPE:
            raise ValueError(f"{path} is not a sharded index (type={meta.get('type')!r})")
        dirs = meta.get("shards")
        if not isinstance(dirs, list) or not dirs:
            raise ValueError(f"{path}/meta.json lists no shards")
        return cls([open_dir(path / d) for d in dirs], name=meta.get("name", path.name),
                   shard_names=[str(d) for d in dirs], path=path)

    def search(self, queries: list[str], k: int, *, return_text: bool = False,
               options: dict[str, Any] | None = None) -> list[SearchResult]:
        at = deadline.current()  # the caller's compute deadline holds in the shard threads too
        options = dict(options or {})
        # the evidence option: every shard ranks its own top k and sends all k scores; the merged
        # rank comes from those (answer_ranks.merge_answer_ranks), no passage text travels
        answers = options.get("answers")
        hits = answer_hits(options)
        if answers is not None:
            options["answer_hits"] = 0

        def one(s: int) -> list[SearchResult]:
            try:
                with deadline.deadline_scope(at):
                    return self.shards[s].search(queries, k, return_text=return_text,
                                                 options=options or None)
            except (ValueError, deadline.DeadlineExceeded):
                raise  # bad arguments: the same for every shard, reported as such
            except Exception as exc:  # noqa: BLE001 - any shard failure names the shard
                raise SearchError(f"{self.name}: {self.shard_names[s]} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc

        per_shard = list(self._pool.map(one, range(len(self.shards))))
        merged = merge_results(per_shard, k, self.shard_names)
        if answers is not None:
            merge_answer_ranks(per_shard, merged, k)
            if not return_text:
                for r in merged:
                    keep_top_hits(r, hits)
        return merged

    def documents(self, ids: list[str]) -> list[dict[str, str] | None]:
        """Each id's document from the first shard that holds it (None: no shard does); see
        :class:`deepretrieval.core.results.DocumentStore`."""
        out: list[dict[str, str] | None] = [None] * len(ids)
        for shard in self.shards:
            if not isinstance(shard, DocumentStore):
                raise TypeError(f"{self.name}: shard {type(shard).__name__} stores no documents")
            todo = [i for i, doc in enumerate(out) if doc is None]
            if not todo:
                break
            for i, doc in zip(todo, shard.documents([ids[i] for i in todo])):
                out[i] = doc
        return out

    def info(self) -> dict[str, Any]:
        return {"type": INDEX_TYPE, "name": self.name, "shards": len(self.shards),
                "shard_info": [s.info() for s in self.shards],
                "path": str(self.path) if self.path else None}
