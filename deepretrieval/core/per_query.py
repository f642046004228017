"""Search options that may differ from query to query: today the evidence option ``answers``.

A search call carries one ``options`` dict for all its queries. ``answers`` (the gold answers the
index ranks its own passages by) is the one option whose value belongs to a query, not to the
call: it comes either as a list of answer strings (the same answers for every query) or as one
such list per query (``[["Paris"], ["1969", "July 1969"], ...]``, as many lists as queries). The
per-query form lets searches with different answers share one call — the service's batcher
coalesces concurrent requests into it, a client sends a step's evidence searches in one request,
and the reward batches a step's samples into it.

Everything that dedups or slices a call's queries (the in-process searcher and the clients:
:func:`sendable`; the batcher, the Ray Serve replicas, the reward's grouping: :func:`split`,
:func:`unique_items`, :func:`join`) goes through here: a query and its answers are one item, so
two samples with the same query and different answers are two searches, never one.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from deepretrieval.core import dpr_match
from deepretrieval.core.results import SearchError, SearchResult, unencodable

#: the search options whose value may come one per query
PER_QUERY = "answers"


def answer_list(value: Any, what: str = "'answers'") -> list[str]:
    """``value`` as a list of answer strings; ValueError when it is not one."""
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ValueError(f"{what} must be a list of answer strings (or one such list per query)")
    return value


def answers_per_query(options: dict[str, Any] | None, n: int) -> list[list[str]] | None:
    """The ``answers`` option as one list of answer strings per query (``n`` queries), or None
    when the option is absent. ValueError for a value of neither form, or a per-query form whose
    length is not ``n``."""
    if not options or PER_QUERY not in options:
        return None
    value = options[PER_QUERY]
    if _is_per_query(value):
        if len(value) != n:
            raise ValueError(f"'answers' has {len(value)} answer lists for {n} queries (one list "
                             f"per query, or one list of answer strings for all)")
        return [answer_list(a, f"'answers'[{i}]") for i, a in enumerate(value)]
    return [answer_list(value)] * n


def answer_keys_per_query(options: dict[str, Any] | None, n: int) -> list[list[str]] | None:
    """:func:`answers_per_query` with each list as the answers the evidence rule matches
    (:func:`~deepretrieval.core.dpr_match.answer_keys`), each distinct list converted once."""
    per = answers_per_query(options, n)
    if per is None:
        return None
    keys: dict[int, list[str]] = {}
    out = []
    for answers in per:
        if id(answers) not in keys:
            keys[id(answers)] = dpr_match.answer_keys(answers)
        out.append(keys[id(answers)])
    return out


def split(options: dict[str, Any] | None, n: int, *, keep_common: bool = False
          ) -> tuple[dict[str, Any] | None, list[list[str]] | None]:
    """(the options every query shares, the per-query answers or None) of a call of ``n``
    queries; see :func:`answers_per_query`. ``keep_common``: answers given as one list for every
    query stay in the shared options (a client keeps sending the short form)."""
    if keep_common and options and PER_QUERY in options and not _is_per_query(options[PER_QUERY]):
        answer_list(options[PER_QUERY])
        return dict(options), None
    per = answers_per_query(options, n)
    if per is None:
        return (dict(options) if options else None), None
    shared = {k: v for k, v in options.items() if k != PER_QUERY} if options else {}
    return shared or None, per


def _is_per_query(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(a, list) for a in value)


def join(shared: dict[str, Any] | None, per: Sequence[list[str]] | None) -> dict[str, Any] | None:
    """The options of a call whose queries have the answers ``per`` (None: no answers); answers
    that are the same for every query are sent once."""
    if per is None:
        return shared or None
    common = bool(per) and all(a == per[0] for a in per[1:])
    return {**(shared or {}), PER_QUERY: list(per[0]) if common else [list(a) for a in per]}


def shared_key(shared: dict[str, Any] | None, per: Sequence[list[str]] | None
               ) -> tuple[str, bool]:
    """What two calls must share to share one backend call: the same shared options (as sorted
    JSON, which :func:`json.loads` turns back into them) and both with (or both without)
    answers."""
    return json.dumps(shared or {}, sort_keys=True), per is not None


def item_key(query: str, answers: list[str] | None) -> Hashable:
    """What makes two searches the same search: the query, and its answers when it has some."""
    return query if answers is None else (query, tuple(answers))


def unique_items(queries: Sequence[str], per: Sequence[list[str]] | None
                 ) -> tuple[list[str], list[list[str]] | None, list[Hashable]]:
    """(unique queries, their answers or None, every input query's item key): identical searches
    once, in first-seen order; the keys map each input back to its unique search."""
    keys = [item_key(q, None if per is None else per[i]) for i, q in enumerate(queries)]
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    order = list(first.values())
    return ([queries[i] for i in order],
            None if per is None else [per[i] for i in order], keys)


@dataclass
class Sendable:
    """The distinct searches of a call that can be sent (:func:`sendable`)."""
    queries: list[str]                   #: distinct sendable searches' queries, first seen first
    answers: list[list[str]] | None      #: their per-query answers (None: none, or common ones)
    shared: dict[str, Any] | None        #: the options every search carries
    keys: list[Hashable]                 #: each sendable input query's search (:func:`item_key`)
    why: list[str | None]                #: per input query: why it cannot be sent, or None

    def options(self) -> dict[str, Any] | None:
        """The options of a request for all of :attr:`queries`."""
        return join(self.shared, self.answers)

    def assemble(self, results: Sequence[SearchResult]) -> list[SearchResult]:
        """One result per input query, in order, from one result per distinct search."""
        if len(results) != len(self.queries):
            raise SearchError(f"the backend returned {len(results)} results for "
                              f"{len(self.queries)} queries")
        found = dict(zip(dict.fromkeys(self.keys), results))
        keys = iter(self.keys)
        return [SearchResult(error=w) if w is not None else found[next(keys)] for w in self.why]


def sendable(queries: Sequence[str], options: dict[str, Any] | None) -> Sendable:
    """Identical searches once (a query with per-query answers once per distinct answer list);
    a query that cannot be encoded (:func:`~deepretrieval.core.results.unencodable`) is never
    sent and gets its own error. Answers common to every query stay in the shared options.
    ValueError for a malformed ``answers`` option."""
    shared, answers = split(options, len(queries), keep_common=True)
    why = [unencodable(q) for q in queries]
    ok = [i for i, w in enumerate(why) if w is None]
    unique, unique_answers, keys = unique_items(
        [queries[i] for i in ok], None if answers is None else [answers[i] for i in ok])
    return Sendable(unique, unique_answers, shared, keys, why)


def search_sendable(search: Callable[..., list[SearchResult]], queries: list[str], k: int, *,
                    options: dict[str, Any] | None = None, **kw: Any) -> list[SearchResult]:
    """``search(distinct, k, options=..., **kw)`` over the distinct searches that can be sent
    (:func:`sendable`); each other query gets its own ``SearchResult(error=...)``. One result
    per query, in order."""
    plan = sendable(queries, options)
    return plan.assemble(search(plan.queries, k, options=plan.options(), **kw)
                         if plan.queries else [])
