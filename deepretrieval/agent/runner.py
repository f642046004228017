"""The episode runner: a batch of agentic episodes advanced turn by turn (training, evaluation,
serving and ExSearch sampling all use it).

Per turn: **one** generation call over every live episode (any
:class:`~deepretrieval.generation.decoding.Generator`: transformers, vLLM, an OpenAI-compatible
endpoint, or a scripted policy), each turn parsed into an action
(:mod:`deepretrieval.core.agent_protocol`), then **one** batched search per (index, top-k) over all of
that turn's queries through the searcher (in-process :class:`~deepretrieval.search.LocalSearcher`
or the service client — :func:`deepretrieval.catalog.get_searcher`). A failed search (the whole
call, or one query) flags the episode ``search_error`` and ends it with a visible
``Search failed:`` block.

Token budget (:class:`TokenBudget`, the one rule every rollout loop applies; training: the
completion length a trainer accepts): with ``token_budget`` and a
tokenizer, an episode whose trajectory would pass the budget ends there, visibly — a search result
that does not fit is replaced by the settings' ``budget_message`` block, a model turn that does not
fit is cut — with finish reason ``budget``, so a trainer never truncates a completion (and drops
its answer) silently.

Tag protocol: the episode is one assistant message; each turn continues it (the generator gets
the trajectory so far as the assistant prefill). Tool protocol: each turn is an assistant message
and each search a ``tool`` message. Every episode records its segments (model-written or
injected), so :meth:`Episode.injected_spans` gives the character spans of injected text and
:meth:`Episode.token_ids` a token-level mask (0 on injected tokens) for loss / response masks.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deepretrieval.catalog import get_searcher, get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.core.results import SearchError, SearchResult
from deepretrieval.generation.decoding import Decoding, Generator, Prompt, StopRule
from deepretrieval.tasks.agentic import settings_for

log = logging.getLogger(__name__)

#: What a failed search raises (the whole call): reported per episode as ``search_error``.
SEARCH_FAILURES = (SearchError, ValueError, OSError)
FINISH_REASONS = P.FINISH_REASONS


@dataclass
class Segment:
    """A piece of the trajectory: written by the model (``injected`` False) or by the environment.
    ``text`` is the piece as it appears in :attr:`Episode.text`; ``content`` the bare message
    content (tool protocol: without the ``<tool_response>`` wrapper)."""

    text: str
    injected: bool
    content: str = ""
    turn: int = 0


@dataclass
class Episode:
    """One question's episode. Build with :func:`episodes_from_rows` or directly from chat
    ``messages`` (system + user) and the ``index`` to search."""

    messages: list[dict[str, str]]
    index: str
    settings: P.AgentSettings = field(default_factory=P.AgentSettings)
    prefill: str = ""
    row: Mapping[str, Any] | None = None
    segments: list[Segment] = field(default_factory=list)
    actions: list[P.Action] = field(default_factory=list)
    searches: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None
    search_error: bool = False
    error: str | None = None

    # ---- views ------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The trajectory string (what ``compute_score`` scores): model turns and injected
        blocks in order (after the prefill, which is not part of it)."""
        return "".join(s.text for s in self.segments)

    @property
    def rollout(self) -> P.AgentProtocol:
        """The episode's protocol object."""
        return self.settings.rollout

    @property
    def turns(self) -> int:
        return sum(not s.injected for s in self.segments)

    @property
    def n_search(self) -> int:
        return sum(1 for s in self.searches if s["error"] is None)

    @property
    def passages(self) -> list[str]:
        """The record of real searches (``extra_info[agent_protocol.RETRIEVED_KEY]``): the
        contents of the result blocks this episode's searches injected."""
        return [seg.content for seg in self.segments if seg.injected
                and P.classify_block(seg.content, self.settings) == "results"]

    @property
    def answer(self) -> str | None:
        return self.rollout.final_answer(self.text)

    @property
    def records(self) -> list[str]:
        return P.records(self.text)

    @property
    def done(self) -> bool:
        return self.finish is not None

    def injected_spans(self) -> list[tuple[int, int]]:
        """``[start, end)`` character spans of injected text in :attr:`text`."""
        spans, pos = [], 0
        for s in self.segments:
            if s.injected and s.text:
                spans.append((pos, pos + len(s.text)))
            pos += len(s.text)
        return spans

    def token_ids(self, tokenizer) -> tuple[list[int], list[int]]:
        """Token ids of :attr:`text`, tokenised segment by segment, and a mask that is 1 on
        model-written tokens and 0 on injected ones (verl's ``response_mask`` convention)."""
        ids: list[int] = []
        mask: list[int] = []
        for s in self.segments:
            if not s.text:
                continue
            seg = tokenizer(s.text, add_special_tokens=False)["input_ids"]
            ids += seg
            mask += [0 if s.injected else 1] * len(seg)
        return ids, mask

    def prompt(self) -> Prompt:
        """What the model is given for its next turn."""
        msgs, prefix = self.rollout.turn_input(
            self.messages, self.prefill, [(s.text, s.content, s.injected) for s in self.segments])
        return Prompt.of(msgs, prefix)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (trajectory, spans, searches, finish)."""
        return {"trajectory": self.text, "answer": self.answer, "finish": self.finish,
                "turns": self.turns, "n_search": self.n_search, "search_error": self.search_error,
                "error": self.error, "injected_spans": [list(s) for s in self.injected_spans()],
                "searches": self.searches, "records": self.records,
                "protocol": self.settings.protocol, "index": self.index}

    # ---- stepping (the runner batches these; a per-sample loop, e.g. a verl agent loop, calls
    # them directly: text = generate(ep.prompt()); queries = ep.advance(text); search;
    # ep.receive(search_replies(...))) ----------------------------------------------------------
    def advance(self, text: str) -> tuple[str, ...]:
        """Take the model's next turn; returns the queries to search now (empty when the
        episode ended or the environment already answered, e.g. an invalid action)."""
        if self.done:
            raise ValueError("the episode has ended")
        s = self.settings
        turn = self.turns + 1
        # the first turn continues the prefill (e.g. "<search>"): parse the two together; the
        # trajectory keeps only what the model wrote (the prefill is part of the prompt)
        rollout = self.rollout
        pre = self.prefill if turn == 1 and rollout.single_message else ""
        action = rollout.parse_turn(pre + text)
        if pre and action.text.startswith(pre):
            action = replace(action, text=action.text[len(pre):])
        self._add_model(action, turn)
        last = self.turns >= s.max_turns
        if action.kind == "answer":
            self.finish = "answer" if action.answer is not None else "no_answer"
        elif action.kind == "search":
            if not last:
                return action.queries[: s.max_calls_per_turn]
            self._add_env(s.refusal_message, turn)  # searching is refused on the last turn
            self.finish = "max_turns"
        elif last:
            self.finish = "max_turns"
        else:
            self._add_env(self._note(s.invalid_text), turn)
        return ()

    def receive(self, replies: Sequence[tuple[str, SearchResult | None, str | None]]) -> None:
        """The search replies ``(query, result, error)`` to the queries :meth:`advance` returned
        (see :func:`search_replies`); a failed one ends the episode as ``search_error``."""
        turn = self.turns
        for query, result, error in replies:
            self.searches.append({"turn": turn, "query": query, "error": error,
                                  "ids": [] if error or result is None else [str(i) for i in result.ids]})
        failed = [e for _, _, e in replies if e]
        if failed:
            self.search_error, self.error = True, failed[0]
            self._add_env(P.search_error_content(failed[0]), turn)
            self.finish = "search_error"
            return
        for i, (_, result, _) in enumerate(replies):
            content = P.render_passages(result.texts or [], self.settings)
            self._add_env(self._note(content) if i == len(replies) - 1 else content, turn)

    def _note(self, content: str) -> str:
        """Content of an injected block, with the last-turn note when the next turn is the last."""
        if self.turns + 1 >= self.settings.max_turns and self.settings.last_turn_note:
            return f"{content}\n{self.settings.last_turn_note}"
        return content

    # ---- building ---------------------------------------------------------------------------
    def _add_model(self, action: P.Action, turn: int) -> None:
        self.actions.append(action)
        self.segments.append(Segment(action.text, False, action.text, turn))

    def _add_env(self, content: str, turn: int) -> None:
        self.segments.append(Segment(self.rollout.wrap(content), True, content, turn))


def episodes_from_rows(rows: Sequence[Mapping[str, Any]], *, repeat: int = 1,
                       settings: P.AgentSettings | None = None) -> list[Episode]:
    """Episodes for agentic task rows (``repeat`` copies of each, e.g. K samples for ExSearch or
    GRPO groups). Settings: the row's task defaults and ``extra_info``; ``settings`` replaces
    both (same protocol as the rows' prompts)."""

    out = []
    for row in rows:
        task = get_task(row["data_source"])
        if not task.rollout.episodic:
            raise ValueError(f"row of task {task.name!r} is not an agentic task row")
        info = row.get("extra_info") or {}
        s = settings_for(task, info)
        problem = s.rollout.row_problem(row)
        if problem:
            raise ValueError(f"{row['data_source']} row {info.get('index', '?')}: {problem}")
        if settings is not None:
            if settings.protocol != s.protocol:
                raise ValueError(f"the rows were written for the {s.protocol!r} protocol (their "
                                 f"prompt says so), not {settings.protocol!r}; write rows for it")
            s = settings
        index = info.get("search_index") or task.index
        prefill = str(info.get("prefill") or "")
        for _ in range(max(1, repeat)):
            out.append(Episode([dict(m) for m in row["prompt"]], index, s, prefill, row))
    return out


class TokenBudget:
    """The token-budget rule (one for every rollout loop: :class:`EpisodeRunner` — the TRL
    rollout's and evaluation's — and the verl agent loop): an episode whose trajectory would pass
    ``tokens`` ends there, visibly, with finish ``budget``. The room the budget block
    (``settings.budget_message`` wrapped by the protocol) needs is kept free while the episode goes
    on; a turn that takes the trajectory past the rest has its injected replies replaced by that
    block, and a model turn that does not fit before it is cut. So a trainer never truncates a
    completion (and drops its answer) silently."""

    def __init__(self, tokens: int, tokenizer):
        if tokenizer is None or tokens < 1:
            raise ValueError("a token budget needs a tokenizer and a positive number of tokens")
        self.tokens = tokens
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count(self, ep: Episode) -> int:
        """Tokens of the trajectory, tokenised segment by segment (:meth:`Episode.token_ids`)."""
        return len(ep.token_ids(self.tokenizer)[0])

    def reserve(self, ep: Episode) -> int:
        """Tokens of the budget block, kept free so that an episode can always end visibly."""
        return len(self.encode(ep.rollout.wrap(ep.settings.budget_message)))

    def room(self, ep: Episode, used: int) -> int:
        """New tokens the next model turn may take when the trajectory holds ``used`` tokens."""
        return self.tokens - self.reserve(ep) - used

    def fit(self, ep: Episode, mark: int, count: Callable[[Episode], int] | None = None) -> bool:
        """End ``ep`` with finish ``budget`` when this turn (its segments from ``mark`` on) took
        the trajectory past the budget (less the reserve while the episode goes on); True when it
        did. ``count``: the trajectory's tokens as the caller lays them out (default
        :meth:`count`; the verl loop keeps the sampled ids of a model turn)."""
        count = count or self.count
        reserve = self.reserve(ep)
        if count(ep) <= self.tokens - (0 if ep.done else reserve):
            return False
        model = next(i for i in range(mark, len(ep.segments)) if not ep.segments[i].injected)
        del ep.segments[model + 1:]
        ep.finish = "budget"
        for s in ep.searches:
            if s["turn"] == ep.turns and s["error"] is None:
                s["error"] = "results over the token budget"
        room = self.tokens - reserve
        if count(ep) > room:  # the model's own turn is too long: keep what fits
            seg = ep.segments[model]
            ids = self.encode(seg.text)
            keep = max(0, len(ids) - (count(ep) - room))
            while True:  # decoding and re-encoding can merge differently: step back until it fits
                text = self.tokenizer.decode(ids[:keep], skip_special_tokens=False)
                ep.segments[model] = Segment(text, False, text, seg.turn)
                if keep == 0 or count(ep) <= room:
                    break
                keep -= 1
        note = ep.settings.budget_message
        while note:  # (only a budget smaller than the block itself cuts it)
            if count(ep) + len(self.encode(ep.rollout.wrap(note))) <= self.tokens:
                ep._add_env(note, ep.turns)
                break
            note = note[: len(note) // 2]
        return True


class EpisodeRunner:
    """Runs episodes to the end. ``decoding``: per-turn decoding (``max_new_tokens`` is per turn;
    ``n`` must be 1: repeat episodes for several samples); the protocol's stop strings are added."""

    def __init__(self, generator: Generator, searcher=None, *, decoding: Decoding | None = None,
                 batch_size: int = 16, progress: bool = False, token_budget: int | None = None,
                 tokenizer=None):
        self.budget = TokenBudget(token_budget, tokenizer) if token_budget is not None else None
        self.generator = generator
        self.searcher = searcher
        self.decoding = decoding or Decoding(max_new_tokens=256)
        if self.decoding.n != 1:
            raise ValueError("the episode runner samples one continuation per episode; repeat the "
                             "episodes (episodes_from_rows(..., repeat=K)) for K samples")
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.calls = {"generate": 0, "search": 0}

    def run(self, episodes: Sequence[Episode]) -> list[Episode]:
        episodes = list(episodes)
        protocols = {ep.settings.protocol for ep in episodes}
        if len(protocols) > 1:
            raise ValueError(f"episodes mix protocols {sorted(protocols)}; run them separately")
        if not episodes:
            return episodes
        rollout = episodes[0].rollout
        decoding = Decoding(**{**self.decoding.__dict__,
                               "stops": tuple(StopRule(s) for s in rollout.stop_strings())})
        searcher = self.searcher or get_searcher()
        live = [ep for ep in episodes if not ep.done]
        turn = 0
        while live:
            turn += 1
            turn_decoding = decoding
            if self.budget is not None:  # no turn longer than the room any episode has left
                room = max(self.budget.room(ep, self.budget.count(ep)) for ep in live)
                turn_decoding = Decoding(**{**decoding.__dict__,
                                            "max_new_tokens": max(1, min(decoding.max_new_tokens, room))})
            outputs = self.generator.generate([ep.prompt() for ep in live], turn_decoding,
                                              batch_size=self.batch_size,
                                              seed_offset=turn * 1_000_003)
            self.calls["generate"] += 1
            searching: list[tuple[Episode, tuple[str, ...]]] = []
            marks = {id(ep): len(ep.segments) for ep in live}
            for ep, out in zip(live, outputs):
                text = out[0] if out else ""
                if not isinstance(text, str):  # a custom generator's None / bytes / number
                    log.warning("the generator returned a %s, not a string, for a turn: taken as "
                                "an empty turn", type(text).__name__)
                    text = ""
                queries = ep.advance(text)
                if queries:
                    searching.append((ep, queries))
            n_queries = self._search(searcher, searching)
            if self.budget is not None:
                for ep in live:
                    self.budget.fit(ep, marks[id(ep)])
            live = [ep for ep in live if not ep.done]
            if self.progress:
                log.info("turn %d: %d searches, %d episodes still running", turn, n_queries, len(live))
        return episodes

    def _search(self, searcher, searching: list[tuple[Episode, tuple[str, ...]]]) -> int:
        groups: dict[tuple[str, int], list[tuple[Episode, str]]] = {}
        for ep, queries in searching:
            for query in queries:
                groups.setdefault((ep.index, ep.settings.top_k), []).append((ep, query))
        replies: dict[int, list[tuple[str, SearchResult | None, str | None]]] = {}
        for (index, k), items in groups.items():
            queries = [q for _, q in items]
            self.calls["search"] += 1
            for (ep, _), reply in zip(items, self._search_isolated(searcher, index, queries, k)):
                replies.setdefault(id(ep), []).append(reply)
        for ep, _ in searching:
            ep.receive(replies[id(ep)])
        return sum(len(items) for items in groups.values())

    def _search_isolated(self, searcher, index: str, queries: list[str], k: int
                         ) -> list[tuple[str, SearchResult | None, str | None]]:
        """One batched search; any exception it raises fails only these queries' episodes, never
        the batch. A failure that is not a known search failure (a backend bug such as a
        RecursionError on one hostile query) is retried query by query, so that only the queries
        that raise it fail."""
        try:
            outcome: Any = searcher.search(index, queries, k, return_text=True)
        except SEARCH_FAILURES as exc:
            log.warning("search on %s failed: %s", index, exc)
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - isolated to the episodes of this search
            log.warning("search on %s raised %s: %s", index, type(exc).__name__, exc)
            if len(queries) == 1:
                return search_replies(index, queries, _unexpected(exc))
            out = []
            for query in queries:
                self.calls["search"] += 1
                out += self._search_isolated(searcher, index, [query], k)
            return out
        return search_replies(index, queries, outcome)


def _unexpected(exc: BaseException) -> SearchError:
    return SearchError(f"the search raised {type(exc).__name__}: {exc}")


def search_replies(index: str, queries: Sequence[str], outcome: Sequence[SearchResult] | BaseException
                   ) -> list[tuple[str, SearchResult | None, str | None]]:
    """``(query, result, error)`` per query from a search call's results — or from the exception
    it raised (every query failed). A result without passage texts is an error."""
    if isinstance(outcome, BaseException):
        reason = str(outcome) or type(outcome).__name__
        return [(q, None, reason) for q in queries]
    results = list(outcome)
    if len(results) != len(queries):
        reason = f"{len(results)} results for {len(queries)} queries"
        return [(q, None, reason) for q in queries]
    out = []
    for q, r in zip(queries, results):
        error = r.error or (None if r.texts is not None or not r.ids
                            else f"index {index!r} returned no passage texts")
        out.append((q, None if error else r, error))
    return out


def run_rows(generator: Generator, rows: Sequence[Mapping[str, Any]], searcher=None, *, repeat: int = 1,
             decoding: Decoding | None = None, batch_size: int = 16,
             settings: P.AgentSettings | None = None, progress: bool = False) -> list[Episode]:
    """Run one (or ``repeat``) episode per agentic task row."""
    runner = EpisodeRunner(generator, searcher, decoding=decoding, batch_size=batch_size,
                           progress=progress)
    return runner.run(episodes_from_rows(rows, repeat=repeat, settings=settings))
