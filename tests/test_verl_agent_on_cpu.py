"""verl 0.9.1 agent loop and search tool on CPU, as verl's own ``tests/experimental/agent_loop/*_on_cpu.py``
do it: verl's real ``AgentLoopWorker`` (it loads our agent-loop and tool YAML files itself, reads
our rows through ``RLHFDataset``, pads, and calls the reward) with a stub server manager in place
of vLLM — a scripted policy over the real closed-world corpus index, or the tiny model generating
token by token. Checked: the response mask is 0 exactly on the injected spans (token by token
against the :class:`~deepretrieval.agent.runner.Episode` of the same sample), the reward reaches
``deepretrieval.rewards.compute_score_async`` (right / wrong answer), the response budget ends an
episode visibly, and the ``search`` tool returns the rendered passages."""
from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace

import pytest

pytest.importorskip("verl")
pytest.importorskip("hydra")

from deepretrieval.agent.runner import EpisodeRunner, episodes_from_rows
from deepretrieval.catalog import local_searcher
from deepretrieval.core import agent_protocol as P
from deepretrieval.data.closed_world import OraclePolicy
from deepretrieval.data.rows import write_parquet
from deepretrieval.generation.decoding import Decoding, Prompt
from deepretrieval.train import verl as launcher

N_ROWS = 4
# test split of the closed world: 1-, 2- and 3-hop questions over the built-in index
pytestmark = [pytest.mark.slow, pytest.mark.rows("agent_closedworld", "test", limit=N_ROWS)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def cfg(tiny, rows, run_dir):
    data = write_parquet(rows, run_dir / "rows" / "test.parquet")
    overrides = launcher.build_overrides(
        "agent_closedworld", model=str(tiny), train_files=str(data), val_files=str(data),
        out_dir=str(run_dir), extra=["actor_rollout_ref.rollout.agent.num_workers=1"])
    return launcher.compose("search_r1", overrides)


class OracleServer:
    """Stub of verl's server manager: reads the question and the injected blocks off the prompt
    token ids and answers with the closed world's scripted oracle (``wrong``: a wrong final
    answer). ``tail`` is sampled after the action, as a stop string would let through."""

    def __init__(self, tok, *, wrong: bool = False, tail: str = " and then more"):
        self.tok, self.wrong, self.tail = tok, wrong, tail
        self.calls: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput
        self.calls.append(dict(sampling_params))
        text = self.tok.decode(prompt_ids, skip_special_tokens=False)
        head, _, prefill = text.rpartition("<|im_start|>assistant\n")
        question = re.search(r"Question: (.*?)<\|im_end\|>", head).group(1)
        turn = OraclePolicy().turn(Prompt.of(P.messages(question), prefill))
        if self.wrong:
            turn = re.sub(r"<answer>.*?</answer>", "<answer>Nowhere</answer>", turn)
        ids = self.tok(turn + self.tail, add_special_tokens=False)["input_ids"]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


class TinyModelServer:
    """Stub server manager that samples from the tiny (random) model, stopping at the stop
    strings like vLLM (``include_stop_str_in_output``)."""

    def __init__(self, tiny, tok):
        import torch
        from transformers import AutoModelForCausalLM
        torch.manual_seed(0)
        self.model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
        self.tok = tok

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        import torch
        from verl.workers.rollout.replica import TokenOutput
        out, lps = [], []
        ids, past = torch.tensor([list(prompt_ids)]), None
        with torch.no_grad():
            for _ in range(sampling_params["max_tokens"]):
                step = self.model(ids, past_key_values=past, use_cache=True)
                past = step.past_key_values
                logp = torch.log_softmax(step.logits[0, -1].float(), -1)
                nxt = int(torch.multinomial(logp.exp(), 1))
                out.append(nxt)
                lps.append(float(logp[nxt]))
                ids = torch.tensor([[nxt]])
                text = self.tok.decode(out, skip_special_tokens=False)
                if nxt == self.tok.eos_token_id or any(s in text for s in sampling_params["stop"]):
                    break
        return TokenOutput(token_ids=out, log_probs=lps)


class RewardHandle:
    """Stands in for a reward-loop Ray actor: ``compute_score.remote(data)`` runs verl's naive
    reward manager with the function main_ppo loads from our config."""

    def __init__(self, cfg, tok):
        from verl.experimental.reward_loop.reward_manager.naive import (
            NaiveRewardManager,
        )
        from verl.trainer.ppo.reward import get_custom_reward_fn
        self.manager = NaiveRewardManager(cfg, tok, get_custom_reward_fn(cfg))
        self.compute_score = SimpleNamespace(remote=self.manager.run_single)


def _batch(cfg, tok, rows_path):
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
    ds = RLHFDataset(data_files=[str(rows_path)], tokenizer=tok, config=cfg.data)
    return DataProto.from_single_dict(collate_fn([ds[i] for i in range(len(ds))]))


def _generate(cfg, tok, run_dir, server, reward: bool = True):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    async def go():  # the reward manager binds to the running event loop, as in its Ray actor
        handles = [RewardHandle(cfg, tok)] if reward else None
        worker = AgentLoopWorker(cfg, server, reward_loop_worker_handles=handles)
        return await worker.generate_sequences(_batch(cfg, tok, run_dir / "rows" / "test.parquet"))

    return asyncio.run(go())


def _valid(out, i):
    """(response ids, response mask) of sample i without the padding."""
    n = out.batch["responses"].shape[1]
    keep = out.batch["attention_mask"][i][-n:].bool()
    return out.batch["responses"][i][keep].tolist(), out.batch["response_mask"][i][keep].tolist()


def _token_spans(tok, ids):
    """Character span of each token in the decoded text."""
    spans, prev = [], 0
    for k in range(1, len(ids) + 1):
        end = len(tok.decode(ids[:k], skip_special_tokens=False))
        spans.append((prev, end))
        prev = end
    return spans


def _replayed(rows, policy):
    """The same samples through the batched episode runner (the reference episodes)."""
    return EpisodeRunner(policy, local_searcher(), decoding=Decoding(max_new_tokens=64)).run(
        episodes_from_rows(rows))


# --------------------------------------------------------------------------------------------

def test_launcher_yaml_files_load_in_verls_loaders(cfg, run_dir):
    """The files the launcher wrote (absolute paths) load with the functions verl reads
    agent_loop_config_path and tool_config_path with, and name our classes."""
    import hydra
    from omegaconf import OmegaConf
    from verl.tools.tool_registry import initialize_tools_from_config
    from verl.utils.import_utils import resolve_config_path

    from deepretrieval.train.verl_agent import SearchAgentLoop, SearchTool

    loop_path = cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path
    tool_path = cfg.actor_rollout_ref.rollout.multi_turn.tool_config_path
    assert loop_path.startswith(str(run_dir.resolve())) and loop_path.endswith("agent_loops.yaml")
    assert resolve_config_path(loop_path) == loop_path  # absolute: no cwd / package lookup
    (entry,) = OmegaConf.load(resolve_config_path(loop_path))
    assert entry.name == "deepretrieval_agent"  # the name agentic rows ask for
    assert hydra.utils.get_class(entry._target_) is SearchAgentLoop
    (tool,) = initialize_tools_from_config(resolve_config_path(tool_path))
    assert isinstance(tool, SearchTool) and tool.name == P.SEARCH_TOOL_NAME
    assert tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True) == P.search_tool_schema()


def test_mask_is_exactly_the_injected_spans(cfg, tok, rows, run_dir):
    server = OracleServer(tok)
    out = _generate(cfg, tok, run_dir, server, reward=False)
    reference = _replayed(rows, OraclePolicy())
    assert len(out) == len(rows)
    for i, ep in enumerate(reference):
        ids, mask = _valid(out, i)
        # token by token: the episode's own tokenisation of its segments and its mask
        assert (ids, mask) == ep.token_ids(tok)
        text = tok.decode(ids, skip_special_tokens=False)
        assert text == ep.text and ep.finish == "answer" and ep.n_search >= 1
        spans = ep.injected_spans()
        assert spans and all(ep.text[a:b].startswith("\n\n<information>") for a, b in spans)
        for (a, b), m in zip(_token_spans(tok, ids), mask):
            inside = any(s <= a and b <= e for s, e in spans)
            assert inside == (m == 0), (i, text[a:b])
        # what the model sampled after the action never reaches the response
        assert server.tail.strip() not in text
        assert out.non_tensor_batch["agent_finish"][i] == "answer"
        assert out.non_tensor_batch["agent_n_search"][i] == ep.n_search
        assert out.non_tensor_batch["agent_retokenized"][i] == 0
    # per-turn generation: stop strings of the tag protocol, the per-turn budget
    assert all(c["stop"] == list(P.stop_strings("tags")) and c["include_stop_str_in_output"]
               and c["max_tokens"] <= 500 for c in server.calls)
    # prompt = the row's chat messages through the chat template
    first = tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True)
    first = first["input_ids"] if hasattr(first, "keys") else first
    prompt = out.batch["prompts"][0][out.batch["attention_mask"][0][:out.batch["prompts"].shape[1]].bool()]
    assert prompt.tolist() == list(first)


@pytest.mark.parametrize("wrong", [False, True])
def test_reward_reaches_compute_score(cfg, tok, rows, run_dir, wrong):
    out = _generate(cfg, tok, run_dir, OracleServer(tok, wrong=wrong))
    scores = out.batch["rm_scores"].sum(-1).tolist()
    assert scores == [0.0 if wrong else 1.0] * len(rows)
    assert "em" in out.meta_info["reward_extra_keys"]
    assert list(out.non_tensor_batch["em"]) == [0.0 if wrong else 1.0] * len(rows)
    assert all(n >= 1 for n in out.non_tensor_batch["n_search"])  # searches seen by the reward
    assert all(out.non_tensor_batch["format_ok"])
    # a hit: the gold answer was in a retrieved passage either way
    assert all(h == 1.0 for h in out.non_tensor_batch["hit"])


def _run_loop(cfg, tok, server, row, sampling, response_length=None, **kwargs):
    """Our loop built the way verl's worker builds it (hydra.instantiate of the registry entry,
    inside the running event loop) and run on one row: (loop, output)."""

    async def go():
        loop = _loop(cfg, tok, server, **kwargs)
        if response_length is not None:
            loop.response_length = response_length
        return loop, await loop.run(sampling, **_sample(row))

    return asyncio.run(go())


def _loop(cfg, tok, server, **kwargs):
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    (entry,) = OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    entry = OmegaConf.merge(entry, kwargs)
    return hydra.utils.instantiate(entry, trainer_config=DictConfigWrap(cfg), server_manager=server,
                                   tokenizer=tok, processor=None, hf_model_type="qwen2",
                                   dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data),
                                   tools=ToolListWrap([]))


def _sample(row):
    return {"data_source": row["data_source"], "raw_prompt": row["prompt"],
            "extra_info": row["extra_info"], "reward_model": row["reward_model"]}


def test_tiny_model_policy_masks_its_injected_blocks(cfg, tiny, tok, rows):
    """A real (random) model: whatever it writes, the response is its kept turns and the
    injected blocks, mask 0 exactly on the injected tokens, and decodes to the episode."""
    server = TinyModelServer(tiny, tok)
    for row in rows[:2]:
        loop, out = _run_loop(cfg, tok, server, row, {"temperature": 1.0, "logprobs": True},
                              max_turn_tokens=12)
        ep = loop.episode
        assert ep.done and ep.turns >= 1
        assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs)
        assert tok.decode(out.response_ids, skip_special_tokens=False) == ep.text
        # walk the segments: model tokens mask 1, each injected block exactly its tokens, mask 0
        pos = 0
        for seg in ep.segments:
            if seg.injected:
                seg_ids = tok(seg.text, add_special_tokens=False)["input_ids"]
                assert out.response_ids[pos:pos + len(seg_ids)] == seg_ids
                assert set(out.response_mask[pos:pos + len(seg_ids)]) == {0}
                pos += len(seg_ids)
            else:
                start = pos
                while pos < len(out.response_ids) and out.response_mask[pos] == 1:
                    pos += 1
                assert tok.decode(out.response_ids[start:pos], skip_special_tokens=False) == seg.text
        assert pos == len(out.response_ids)
        assert out.extra_fields["agent_finish"] == ep.finish


def test_response_budget_ends_the_episode_visibly(cfg, tok, rows):
    # a budget of less than one search result
    _, out = _run_loop(cfg, tok, OracleServer(tok), rows[0], {"temperature": 1.0}, response_length=60)
    # the runner's rule (TokenBudget): the episode ends with the budget block, inside the budget
    assert len(out.response_ids) == len(out.response_mask) <= 60
    assert out.extra_fields["agent_finish"] == "budget"
    from deepretrieval.rewards import compute_score
    text = tok.decode(out.response_ids, skip_special_tokens=True)
    assert text.rstrip().endswith("</information>")
    assert P.AgentSettings().budget_message in text  # the whole block fits
    scored = compute_score(rows[0]["data_source"], text, rows[0]["reward_model"]["ground_truth"],
                           rows[0]["extra_info"])
    assert scored["format_ok"] is False and scored["score"] == 0.0 and scored["budget"] == 1.0


class OracleWithTail:
    """The generator twin of :class:`OracleServer` for the episode runner."""

    name, uses_prefill = "oracle+tail", True

    def generate(self, prompts, decoding, **kw):
        return [[OraclePolicy().turn(p) + " and then more"] for p in prompts]


@pytest.mark.parametrize("budget", [40, 90, 160, 1000])
def test_the_budget_rule_is_the_runners(cfg, tok, rows, budget):
    """One token-budget rule (agent.runner.TokenBudget): under the same budget the verl loop and
    the episode runner (TRL's rollout) end the same episode the same way, text for text."""
    row = next(r for r in rows if r["extra_info"]["hops"] == 2)
    loop, out = _run_loop(cfg, tok, OracleServer(tok), row, {"temperature": 1.0}, response_length=budget)
    (ep,) = episodes_from_rows([row])
    EpisodeRunner(OracleWithTail(), decoding=Decoding(max_new_tokens=500), token_budget=budget,
                  tokenizer=tok).run([ep])
    assert (loop.episode.finish, loop.episode.text) == (ep.finish, ep.text)
    assert len(out.response_ids) <= budget and out.extra_fields["agent_finish"] == ep.finish
    assert (ep.finish == "budget") == (budget < 1000)


def test_search_through_the_service_client(cfg, tok, rows, run_dir):
    """With DEEPRETRIEVAL_SEARCH_URL set (as the launcher sets it for every Ray worker) the loop
    searches through the retrieval service: the same episodes, token for token."""
    import os

    from deepretrieval import catalog
    from deepretrieval.train.service import ManagedService, service_env

    # (not monkeypatch: reading the rows through RLHFDataset replaces the os.environ object, so
    # monkeypatch's undo would clear a stale copy; service_env restores the current one)
    with ManagedService(["closedworld"], startup_timeout=300) as service, service_env(service):
        assert type(catalog.get_searcher()).__name__ == "ServiceSearcher"
        out = _generate(cfg, tok, run_dir, OracleServer(tok))
    assert os.environ.get("DEEPRETRIEVAL_SEARCH_URL") is None
    for i, ep in enumerate(_replayed(rows, OraclePolicy())):
        assert _valid(out, i) == ep.token_ids(tok)
    assert out.batch["rm_scores"].sum(-1).tolist() == [1.0] * len(rows)


def test_a_failed_search_ends_the_episode_visibly(cfg, tok, rows):
    from deepretrieval import catalog
    from deepretrieval.core.results import SearchError
    from deepretrieval.rewards import compute_score

    class Down:
        async def asearch(self, index, queries, k, *, return_text=False, options=None):
            raise SearchError("backend down")

    catalog.set_searcher(Down())
    try:
        _, out = _run_loop(cfg, tok, OracleServer(tok), rows[0], {"temperature": 1.0})
    finally:
        catalog.set_searcher(None)
    assert out.extra_fields["agent_finish"] == "search_error" and out.extra_fields["agent_search_error"]
    text = tok.decode(out.response_ids, skip_special_tokens=True)
    assert text.endswith(P.information(P.search_error_content("backend down")))
    n_block = len(tok(P.information(P.search_error_content("backend down")),
                      add_special_tokens=False)["input_ids"])
    assert out.response_mask[-n_block:] == [0] * n_block and out.response_mask[0] == 1
    scored = compute_score(rows[0]["data_source"], text, rows[0]["reward_model"]["ground_truth"],
                           rows[0]["extra_info"])
    assert scored["search_error"] is True


def test_stop_strings_per_rollout_engine(cfg, tok):
    from omegaconf import OmegaConf

    async def build(name):
        c = OmegaConf.create(OmegaConf.to_container(cfg))
        c.actor_rollout_ref.rollout.name = name
        return _loop(c, tok, None)

    # (the stop strings themselves are the row's protocol's, asked per episode)
    assert asyncio.run(build("sglang")).keep_stop == {"no_stop_trim": True}
    from hydra.errors import InstantiationException
    with pytest.raises(InstantiationException, match="rollout.name='trtllm'"):  # hydra wraps it
        asyncio.run(build("trtllm"))


def test_model_turn_tokens_keep_sampled_ids_and_cut_inside_a_token(tok):
    from deepretrieval.train.verl_agent import model_turn_tokens
    sampled = tok("<search>Goudemar</search> more", add_special_tokens=False)["input_ids"]
    ids, lps, n_re = model_turn_tokens(tok, sampled, [-1.0] * len(sampled), "<search>Goudemar</search>")
    assert tok.decode(ids) == "<search>Goudemar</search>" and ids == sampled[:len(ids)] and n_re == 0
    assert lps == [-1.0] * len(ids)
    # a cut inside the last sampled token: the rest of the kept text is re-tokenised
    text = "<answer>Zeiski</answer>\n\nmore"
    sampled = tok(text, add_special_tokens=False)["input_ids"]
    spans = _token_spans(tok, sampled)
    start = next(a for a, b in spans if b - a >= 2 and a > 0)  # a token of several characters
    kept = text[:start + 1]  # the episode kept one character of it
    ids, lps, n_re = model_turn_tokens(tok, sampled, [-1.0] * len(sampled), kept)
    assert tok.decode(ids) == kept and n_re >= 1 and lps[-n_re:] == [0.0] * n_re
    assert ids[:len(ids) - n_re] == sampled[:len(ids) - n_re] and lps[0] == -1.0


def test_search_tool_returns_the_rendered_passages():
    from omegaconf import OmegaConf  # noqa: F401  (verl's loader needs it; importorskip above)

    from deepretrieval.train.verl_agent import SearchTool

    tool = SearchTool({"type": "native"})
    searcher = local_searcher()
    query = "Goudemar"
    (hits,) = searcher.search("closedworld", [query], 3, return_text=True)
    expected = P.render_passages(hits.texts, P.AgentSettings())

    async def go():
        iid, _ = await tool.create(create_kwargs={"index": "closedworld", "top_k": 3})
        resp, reward, metrics = await tool.execute(iid, {"query": query})
        empty, _, bad = await tool.execute(iid, {"query": "  "})
        await tool.release(iid)
        missing, _ = await tool.create(create_kwargs={"index": "no_such_index", "top_k": 3})
        failed, _, failed_metrics = await tool.execute(missing, {"query": query})
        return resp, reward, metrics, empty, bad, failed, failed_metrics, iid

    resp, reward, metrics, empty, bad, failed, failed_metrics, iid = asyncio.run(go())
    assert resp.text == expected and expected.startswith("Doc 1: ") and "Goudemar" in expected
    assert reward == 0.0 and metrics == {"search_error": False, "n_passages": len(hits.ids)}
    assert "non-empty" in empty.text and bad["invalid"]
    assert failed.text.startswith(P.SEARCH_ERROR_PREFIX) and failed_metrics["search_error"]
    assert iid not in tool._instances
    with pytest.raises(ValueError, match="unknown search tool setting 'retrieval_service_url'"):
        SearchTool({"type": "native", "retrieval_service_url": "http://127.0.0.1:8000/retrieve"})


#: verl's Search-R1 recipe tool schema (examples/sglang_multiturn/config/tool_config/
#: search_tool_config.yaml): the model calls search with a list of queries.
QUERY_LIST_SCHEMA = {"type": "function", "function": {
    "name": "search",
    "description": "Searches the web for relevant information based on the given query.",
    "parameters": {"type": "object", "properties": {"query_list": {
        "type": "array", "items": {"type": "string"},
        "description": "A list of fully-formed semantic queries."}},
        "required": ["query_list"]}}}


def test_search_tool_takes_verls_search_r1_recipe_as_written(tmp_path):
    """A tool YAML in the recipe's shape (query_list schema, ``topk``, the default index in the
    config), loaded with verl 0.9.1's own initialize_tools_from_config; rows as verl's
    preprocess_search_r1_dataset.py writes them (create_kwargs without an index)."""
    from verl.tools.tool_registry import initialize_tools_from_config

    from deepretrieval.train.verl_agent import SearchTool

    path = tmp_path / "search_tool_config.yaml"
    path.write_text(json.dumps({"tools": [{
        "class_name": "deepretrieval.train.verl_agent.SearchTool",
        "config": {"type": "native", "index": "closedworld", "topk": 2},
        "tool_schema": QUERY_LIST_SCHEMA}]}))
    (tool,) = initialize_tools_from_config(str(path))
    assert isinstance(tool, SearchTool) and tool.settings.top_k == 2
    searcher = local_searcher()
    queries = ["Goudemar", "The Badask Academy founder"]
    hits = searcher.search("closedworld", queries, 2, return_text=True)
    rendered = [P.render_passages(h.texts, P.AgentSettings()) for h in hits]
    verl_row = {"ground_truth": {"target": ["Zeiski"]}, "question": "capital of Goudemar?",
                "data_source": "searchR1_nq"}

    async def go():
        iid, _ = await tool.create(create_kwargs=verl_row)
        one, _, m1 = await tool.execute(iid, {"query_list": queries[:1]})
        two, _, m2 = await tool.execute(iid, {"query_list": queries})
        same, _, _ = await tool.execute(iid, {"query": queries[0]})
        bad = [(await tool.execute(iid, p))[0].text
               for p in ({"query_list": []}, {"query_list": "Goudemar"}, {"query_list": ["ok", " "]},
                         {"query": "a", "query_list": ["b"]}, {"q": "x"})]
        small, _ = await tool.create(create_kwargs={"index": "closedworld", "topk": 1})
        single, _, m3 = await tool.execute(small, {"query": queries[0]})
        return one, m1, two, m2, same, bad, single, m3

    one, m1, two, m2, same, bad, single, m3 = asyncio.run(go())
    assert one.text == same.text == rendered[0] and m1["n_passages"] == 2
    assert two.text == f'Results for "{queries[0]}":\n{rendered[0]}\n\nResults for "{queries[1]}":\n{rendered[1]}'
    assert m2 == {"search_error": False, "n_passages": 4}
    assert all(text.startswith("search ") for text in bad), bad
    assert single.text.count("Doc ") == 1 and m3["n_passages"] == 1  # `topk` is read, not ignored

    async def create(kwargs):
        return await tool.create(create_kwargs=kwargs)

    with pytest.raises(ValueError, match="unknown search tool setting 'k' in create_kwargs"):
        asyncio.run(create({"index": "closedworld", "k": 1}))
    with pytest.raises(ValueError, match="given twice"):
        asyncio.run(create({"index": "closedworld", "topk": 1, "top_k": 2}))
    nothing = SearchTool({"type": "native"})
    with pytest.raises(ValueError, match="needs an index"):
        asyncio.run(nothing.create(create_kwargs=verl_row))


def test_launcher_tool_config_carries_the_tasks_index(tmp_path):
    launcher.write_tool_config(tmp_path, "wiki18")
    body = json.loads((tmp_path / "search_tool.yaml").read_text().split("\n", 1)[1])
    assert body["tools"][0]["config"] == {"type": "native", "index": "wiki18"}


class ToolOracleServer:
    """Stub server for verl's stock ``tool_agent``: the oracle speaking hermes tool calls, reading
    the tool messages off the ChatML prompt."""

    def __init__(self, tok):
        self.tok = tok

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput
        text = self.tok.decode(prompt_ids, skip_special_tokens=False)
        msgs = [{"role": r, "content": c}
                for r, c in re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", text, re.DOTALL)]
        turn = OraclePolicy().turn(Prompt.of(msgs, ""))
        ids = self.tok(turn, add_special_tokens=False)["input_ids"] + [self.tok.convert_tokens_to_ids("<|im_end|>")]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


def test_stock_tool_agent_runs_our_search_tool(tiny, tok, tmp_path):
    """Tool-protocol rows (agent_name tool_agent) through verl's own ToolAgentLoop with the
    search tool from the launcher's tool YAML: tool responses are the rendered passages, mask 0,
    and the reward scores the final answer."""
    from deepretrieval.catalog import get_task
    from deepretrieval.data.closed_world import closed_world_rows

    rows = closed_world_rows(get_task("agent_closedworld"), "test",
                             settings=P.AgentSettings(protocol="tool"))[:2]
    assert {r["agent_name"] for r in rows} == {"tool_agent"}
    data = write_parquet(rows, tmp_path / "rows" / "test.parquet")
    cfg = launcher.compose("search_r1", launcher.build_overrides(
        "agent_closedworld", model=str(tiny), train_files=str(data), val_files=str(data),
        out_dir=str(tmp_path), extra=["actor_rollout_ref.rollout.agent.num_workers=1"]))
    out = _generate(cfg, tok, tmp_path, ToolOracleServer(tok))
    assert out.batch["rm_scores"].sum(-1).tolist() == [1.0, 1.0]
    # the hit comes from the search tool's record of its real searches (verl hands the agent
    # loop's extra_fields to the reward), never from the tool_response text (issue 29 item 10)
    assert list(out.non_tensor_batch["hit"]) == [1.0, 1.0]
    assert all(len(r) >= 1 for r in out.non_tensor_batch[P.RETRIEVED_KEY])
    searcher = local_searcher()
    for i in range(len(rows)):
        ids, mask = _valid(out, i)
        runs: list[tuple[int, list[int]]] = []
        for t, m in zip(ids, mask):
            if runs and runs[-1][0] == m:
                runs[-1][1].append(t)
            else:
                runs.append((m, [t]))
        model = [tok.decode(r, skip_special_tokens=False) for m, r in runs if m == 1]
        injected = [tok.decode(r, skip_special_tokens=False) for m, r in runs if m == 0]
        queries = [json.loads(re.search(r"<tool_call>(.*?)</tool_call>", t, re.DOTALL).group(1))
                   ["arguments"]["query"] for t in model[:-1]]
        assert queries and len(injected) == len(queries) and "<answer>" in model[-1]
        for query, block in zip(queries, injected):
            (hits,) = searcher.search("closedworld", [query], 3, return_text=True)
            assert P.render_passages(hits.texts, P.AgentSettings()) in block


def test_cli_dry_run_uses_the_agentic_preset_and_writes_the_files(tmp_path, capsys):
    from deepretrieval.cli import main
    out = tmp_path / "run"
    code = main(["train", "--task", "agent_closedworld", "--engine", "verl", "--dry-run",
                 "--search-url", "http://127.0.0.1:9", "--model", "/tmp/none", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "--config-name=search_r1" in printed
    folder = (out / "verl_agent").resolve()
    assert f"agent_loop_config_path={folder / 'agent_loops.yaml'}" in printed
    assert (folder / "agent_loops.yaml").is_file() and (folder / "search_tool.yaml").is_file()
