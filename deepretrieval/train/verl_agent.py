"""Search agents inside verl 0.9.1's agent loop (``verl/experimental/agent_loop``).

Two ways in, one episode logic (:mod:`deepretrieval.agent.runner`, :mod:`deepretrieval.core.agent_protocol`):

* :class:`SearchAgentLoop` — an ``AgentLoopBase`` for the **tag protocol** (rows with
  ``agent_name: deepretrieval_agent``; Search-R1 / ExSearch style, any chat template). It drives
  one :class:`~deepretrieval.agent.runner.Episode` per sample: generate a turn through verl's
  server manager (stops after ``</search>`` / ``</answer>`` or where the model starts an
  ``<information>`` block), ``episode.advance(text)``, search the queries through
  :func:`deepretrieval.catalog.get_searcher` (the retrieval service when
  ``DEEPRETRIEVAL_SEARCH_URL`` is set, else in process), ``episode.receive(...)``, and append the
  injected block's tokens with ``response_mask`` 0. The response is the whole episode, so verl's
  reward path decodes it to the trajectory string :func:`deepretrieval.rewards.compute_score`
  scores (injected ``<information>`` blocks are ignored by the agentic family).
* :class:`SearchTool` — a ``BaseTool`` named ``search`` for verl's stock ``tool_agent`` (rows with
  ``agent_name: tool_agent``, hermes tool calls): ``create`` takes the row's
  ``tools_kwargs.search.create_kwargs`` (index, top-k; the tool config's index for rows without
  one, as verl's Search-R1 rows), ``execute`` takes ``query`` or verl's ``query_list``, searches
  and returns the passages rendered exactly as the tag protocol renders them.

verl loads both by class path from the YAML files :func:`deepretrieval.train.verl.agent_overrides`
writes into the run folder; nothing here registers itself on import. This module imports verl
at the top (it subclasses verl's classes), so only verl's workers and the tests import it.

Tokens: a model turn keeps the token ids the policy sampled (and their log-probs) as far as
they decode to the text the episode kept; what the episode cut (text after the action, a
model-written ``<information>``, an end-of-turn token) is dropped, and when the cut falls
inside a token the few remaining characters are re-tokenised (mask 1, log-prob 0.0, counted in
``extra_fields["agent_retokenized"]``). Injected text is tokenised segment by segment exactly as
:meth:`Episode.token_ids` does, mask 0. The response never exceeds ``rollout.response_length``:
it is the episode's token budget under the runner's one rule
(:class:`~deepretrieval.agent.runner.TokenBudget`): a turn that would pass it ends the episode
visibly with the budget block and ``agent_finish = "budget"`` (runs before the rule was shared
wrote ``length``, which nothing reads back); without an answer it scores as a bad format — visible, never a silent drop.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse
from verl.utils.profiler import simple_timer

from deepretrieval.agent.runner import (
    SEARCH_FAILURES,
    Episode,
    Segment,
    TokenBudget,
    episodes_from_rows,
    search_replies,
)
from deepretrieval.catalog import get_searcher
from deepretrieval.core import agent_protocol as P

log = logging.getLogger(__name__)

#: Tokens one model turn may generate (Search-R1's ``max_response_length`` = 500 per turn).
DEFAULT_MAX_TURN_TOKENS = 500
#: How each rollout engine is told to keep the stop string (the turn's closing tag) in the output.
KEEP_STOP = {"vllm": {"include_stop_str_in_output": True}, "sglang": {"no_stop_trim": True}}
#: What ``extra_fields`` carries for every sample (verl merges them into the reward's ``extra_info``).
EXTRA_FIELDS = ("agent_finish", "agent_turns", "agent_n_search", "agent_search_error",
                "agent_retokenized", "turn_scores", "tool_rewards", P.RETRIEVED_KEY)


def _plain(value: Any) -> Any:
    """numpy arrays / 0-d objects from verl's non-tensor batch → Python lists / dicts."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def episode_for_sample(kwargs: Mapping[str, Any]) -> Episode:
    """The episode of one verl sample (``data_source``, ``raw_prompt``, ``extra_info`` of the row)."""
    if "raw_prompt" not in kwargs or "data_source" not in kwargs:
        raise ValueError("the deepretrieval agent loop needs the row's data_source and raw_prompt "
                         f"(got {sorted(kwargs)})")
    row = {"data_source": str(kwargs["data_source"]), "prompt": _plain(kwargs["raw_prompt"]),
           "extra_info": _plain(kwargs.get("extra_info") or {})}
    (episode,) = episodes_from_rows([row])
    rollout = episode.rollout
    if not rollout.single_message:
        loop = (f"its agent loop is verl's {rollout.verl_agent_loop!r}" if rollout.verl_agent_loop
                else "no verl agent loop speaks it")
        raise ValueError(f"row of {row['data_source']!r} uses the {episode.settings.protocol!r} "
                         f"protocol: {loop}, not {P.TAG_AGENT_LOOP} (single-message protocols only)")
    return episode


def model_turn_tokens(tokenizer, sampled: Sequence[int], logprobs: Sequence[float] | None,
                      kept: str) -> tuple[list[int], list[float], int]:
    """Token ids for a model turn of which the episode kept the text ``kept``: the longest prefix
    of the ``sampled`` ids that decodes to a prefix of ``kept``, plus the re-tokenised rest (0
    when the cut fell on a token boundary). Returns (ids, log-probs, number re-tokenised)."""
    sampled = list(sampled)
    k = len(sampled)
    while k > 0:
        text = tokenizer.decode(sampled[:k], skip_special_tokens=False)
        if kept.startswith(text):
            break
        k -= 1
    head = tokenizer.decode(sampled[:k], skip_special_tokens=False) if k else ""
    rest = kept[len(head):]
    rest_ids = tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else []
    lps = list(logprobs[:k]) if logprobs else [0.0] * k
    return sampled[:k] + list(rest_ids), lps + [0.0] * len(rest_ids), len(rest_ids)


def _segment_tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


class TurnTokens:
    """The response tokens of one turn's segments as the loop appends them: a model turn keeps the
    sampled ids (:func:`model_turn_tokens`), an injected block is tokenised on its own.
    :meth:`count` is the response length with the turn's segments (the token budget's count)."""

    def __init__(self, tokenizer, sampled: Sequence[int], logprobs: Sequence[float] | None,
                 used: int, first: int):
        self.tokenizer, self.sampled, self.logprobs = tokenizer, sampled, logprobs
        self.used, self.first = used, first

    def tokens(self, seg: Segment) -> tuple[list[int], list[float] | None, int]:
        if seg.injected:
            return _segment_tokens(self.tokenizer, seg.text), None, 0
        return model_turn_tokens(self.tokenizer, self.sampled, self.logprobs, seg.text)

    def count(self, episode: Episode) -> int:
        return self.used + sum(len(self.tokens(s)[0]) for s in episode.segments[self.first:])


class SearchAgentLoop(AgentLoopBase):
    """verl agent loop for the tag protocol (registered as ``deepretrieval_agent`` by the YAML
    the launcher writes). ``max_turn_tokens``: generation budget of one model turn."""

    def __init__(self, *args, max_turn_tokens: int = DEFAULT_MAX_TURN_TOKENS, name: str | None = None,
                 tools: Any = None, searcher: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
        if int(max_turn_tokens) < 1:
            raise ValueError("max_turn_tokens must be >= 1")
        self.max_turn_tokens = int(max_turn_tokens)
        self.prompt_length = self.rollout_config.prompt_length
        self.response_length = self.rollout_config.response_length
        self.searcher = searcher
        engine = self.rollout_config.name
        if engine not in KEEP_STOP:
            raise ValueError(f"the deepretrieval agent loop stops turns with stop strings, which it "
                             f"knows how to ask of {sorted(KEEP_STOP)}, not rollout.name={engine!r}")
        self.keep_stop = KEEP_STOP[engine]

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        episode = episode_for_sample(kwargs)
        tok = self.tokenizer
        stop_params = {"stop": list(episode.rollout.stop_strings()), **self.keep_stop}
        prompt_ids = await self.ct_build_initial_tokens(list(episode.messages))
        if episode.prefill:  # part of the prompt: the model continues after it
            prompt_ids = list(prompt_ids) + _segment_tokens(tok, episode.prefill)
        searcher = self.searcher or get_searcher()
        budget = TokenBudget(self.response_length, tok)
        request_id = uuid4().hex
        response_ids: list[int] = []
        response_mask: list[int] = []
        logprobs: list[float] = []
        retokenized = 0
        metrics: dict[str, Any] = {}
        generate_s = search_s = 0.0

        while not episode.done:
            # the runner's rule (TokenBudget): the budget block always fits after this turn
            params = {**sampling_params, **stop_params,
                      "max_tokens": max(1, min(self.max_turn_tokens,
                                               budget.room(episode, len(response_ids))))}
            timing: dict[str, float] = {}
            with simple_timer("generate", timing):
                out = await self.server_manager.generate(request_id=request_id,
                                                         prompt_ids=prompt_ids + response_ids,
                                                         sampling_params=params, priority=int(priority))
            generate_s += timing["generate"]
            if metrics.get("num_preempted") is None and out.num_preempted is not None:
                metrics["num_preempted"] = out.num_preempted
            text = tok.decode(out.token_ids, skip_special_tokens=False)
            first_new = len(episode.segments)
            queries = episode.advance(text)
            if queries:
                with simple_timer("search", timing):
                    try:
                        outcome: Any = await searcher.asearch(episode.index, list(queries),
                                                              episode.settings.top_k, return_text=True)
                    except Exception as exc:  # noqa: BLE001 - any backend failure: this episode's
                        log.warning("search on %s failed: %s", episode.index, exc)
                        outcome = exc
                search_s += timing["search"]
                episode.receive(search_replies(episode.index, list(queries), outcome))

            turn = TurnTokens(tok, out.token_ids, out.log_probs, len(response_ids), first_new)
            budget.fit(episode, first_new, turn.count)
            for seg in episode.segments[first_new:]:
                ids, lps, n_re = turn.tokens(seg)
                retokenized += n_re
                response_ids.extend(ids)
                response_mask.extend([0 if seg.injected else 1] * len(ids))
                logprobs.extend(lps if lps is not None else [0.0] * len(ids))

        metrics["generate_sequences"] = generate_s
        metrics["tool_calls"] = search_s
        metrics.setdefault("num_preempted", -1)
        extra = {"agent_finish": episode.finish, "agent_turns": episode.turns,
                 "agent_n_search": episode.n_search, "agent_search_error": episode.search_error,
                 "agent_retokenized": retokenized, "turn_scores": [], "tool_rewards": [],
                 P.RETRIEVED_KEY: episode.passages}
        self.episode = episode  # the last sample's episode (tests compare the tokens against it)
        return AgentLoopOutput(
            prompt_ids=list(prompt_ids),
            response_ids=response_ids,
            response_mask=response_mask,
            response_logprobs=logprobs if sampling_params.get("logprobs") else None,
            multi_modal_data={},
            num_turns=1 + len(episode.segments),
            metrics=metrics,
            extra_fields=extra,
        )


#: Tool settings (``config`` in the tool YAML and per-row ``create_kwargs``): canonical name →
#: the aliases accepted for it (``topk`` is Search-R1's / verl's spelling).
TOOL_ALIASES = {"top_k": ("topk",)}
#: ``create_kwargs`` keys the tool reads (``index``, ``top_k``) and the ones rows carry for the
#: reward that the tool ignores by design (verl's preprocess_search_r1_dataset.py writes
#: ``ground_truth``, ``question``, ``data_source``; ours write ``ground_truth``).
CREATE_KEYS = ("index", "top_k")
CREATE_PASSIVE_KEYS = ("ground_truth", "question", "data_source")
CONFIG_KEYS = ("type", "index", "top_k", "max_result_chars")


def _canonical(settings: Mapping[str, Any], known: Sequence[str], passive: Sequence[str],
               where: str) -> dict[str, Any]:
    """``settings`` with aliases renamed to their canonical key; an unknown key, or a key given
    under two spellings, is an error naming the known ones."""
    out: dict[str, Any] = {}
    aliases = {alias: name for name, names in TOOL_ALIASES.items() for alias in names}
    accepted = sorted(set(known) | set(passive) | set(aliases))
    for key, value in settings.items():
        name = aliases.get(key, key)
        if name not in known and name not in passive:
            raise ValueError(f"unknown search tool setting {key!r} in {where}; known: {accepted}")
        if name in out:
            raise ValueError(f"search tool setting {name!r} given twice in {where} "
                             f"(as {name!r} and as its alias); give one")
        out[name] = value
    return out


class SearchTool(BaseTool):
    """The ``search`` tool for verl's ``tool_agent`` (hermes tool calls).

    Per-trajectory ``create_kwargs`` (the row's ``extra_info.tools_kwargs.search.create_kwargs``):
    ``index`` and ``top_k`` (alias ``topk``); the tool's ``config`` sets the defaults for both
    (``index``: the index rows without one search — verl's Search-R1 rows carry none) and
    ``max_result_chars``. ``ground_truth`` / ``question`` / ``data_source`` may be present (the
    reward reads them); any other key is an error, never ignored.

    Arguments the model may call it with: ``{"query": str}`` (our schema) or ``{"query_list":
    [str, ...]}`` (verl's Search-R1 recipe schema, and models trained with it). Each query's
    passages are rendered as the tag protocol renders them (``Doc 1: …`` lines); with several
    queries each block is headed ``Results for "<query>":`` and the blocks are separated by a
    blank line."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        config = _canonical(_plain(dict(config or {})), CONFIG_KEYS, (), "the tool config")
        if tool_schema is None:
            tool_schema = OpenAIFunctionToolSchema.model_validate(P.search_tool_schema())
        super().__init__(config, tool_schema)
        self.settings = P.AgentSettings(top_k=int(config.get("top_k", P.AgentSettings.top_k)),
                                        max_result_chars=int(config.get("max_result_chars",
                                                                        P.AgentSettings.max_result_chars)))
        self.default_index = config.get("index")
        self._instances: dict[str, dict[str, Any]] = {}
        self._searcher = None

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        return self.tool_schema

    async def create(self, instance_id: str | None = None, **kwargs) -> tuple[str, ToolResponse]:
        instance_id = instance_id or uuid4().hex
        create = _canonical(_plain(kwargs.get("create_kwargs") or {}), CREATE_KEYS,
                            CREATE_PASSIVE_KEYS, "create_kwargs")
        index = create.get("index") or self.default_index
        if not index:
            raise ValueError("the search tool needs an index: the row's tools_kwargs.search."
                             "create_kwargs.index or the tool config's index")
        top_k = int(create.get("top_k") or self.settings.top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (got {top_k})")
        self._instances[instance_id] = {"index": str(index), "top_k": top_k}
        return instance_id, ToolResponse()

    @staticmethod
    def queries_of(parameters: Any) -> tuple[list[str] | None, str | None]:
        """(queries, None) from a call's arguments, or (None, the message for the model)."""
        if not isinstance(parameters, Mapping):
            return None, "search needs arguments {\"query\": \"...\"} or {\"query_list\": [...]}"
        unknown = sorted(set(parameters) - {"query", "query_list"})
        if unknown:
            return None, f"search takes 'query' or 'query_list', not {unknown}"
        if "query" in parameters and "query_list" in parameters:
            return None, "search takes 'query' or 'query_list', not both"
        if "query_list" in parameters:
            given = parameters["query_list"]
            if isinstance(given, str) or not isinstance(given, Sequence):
                return None, "search needs 'query_list' to be a list of non-empty strings"
            queries = list(given)
        else:
            queries = [parameters.get("query")]
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            return None, ("search needs a non-empty 'query'" if "query_list" not in parameters
                          else "search needs 'query_list' to be a list of non-empty strings")
        return [q.strip()[:P.MAX_ACTION_CHARS] for q in queries], None

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs
                      ) -> tuple[ToolResponse, float, dict]:
        state = self._instances[instance_id]
        queries, problem = self.queries_of(_plain(parameters))
        if problem:
            return ToolResponse(text=problem), 0.0, {"search_error": False, "invalid": True}
        searcher = self._searcher = self._searcher or get_searcher()
        try:
            outcome: Any = await searcher.asearch(state["index"], queries, state["top_k"], return_text=True)
        except SEARCH_FAILURES as exc:
            outcome = exc
        replies = search_replies(state["index"], queries, outcome)
        error = next((err for _, _, err in replies if err), None)
        if error:
            return ToolResponse(text=P.search_error_content(error)), 0.0, {"search_error": True}
        blocks = [P.render_passages(result.texts or [], self.settings) for _, result, _ in replies]
        if len(queries) == 1:
            text = blocks[0]
        else:
            text = "\n\n".join(f'Results for "{q}":\n{b}' for q, b in zip(queries, blocks))
        agent_data = kwargs.get("agent_data")  # verl's AgentData: its extra_fields reach the reward
        if agent_data is not None:   # the record of real searches (the `hit` metric reads it)
            agent_data.extra_fields.setdefault(P.RETRIEVED_KEY, []).extend(blocks)
        return ToolResponse(text=text), 0.0, {"search_error": False,
                                              "n_passages": sum(len(r.ids) for _, r, _ in replies)}

    async def release(self, instance_id: str, **kwargs) -> None:
        self._instances.pop(instance_id, None)

