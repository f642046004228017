"""One TRL reward adapter for single-shot and agentic GRPO: the same class scores completions or
the rollout's trajectories and logs per-step means (no training here: the reward function alone)."""
import pytest

from deepretrieval.agent.runner import FINISH_REASONS, EpisodeRunner, episodes_from_rows
from deepretrieval.catalog import bundled_rows, get_searcher
from deepretrieval.core import agent_protocol as P
from deepretrieval.data.closed_world import OraclePolicy
from deepretrieval.generation.decoding import Decoding
from deepretrieval.rewards import compute_score
from deepretrieval.train.trl_agent import LOGGED, AgentRollout
from deepretrieval.train.trl_engine import METRIC_PREFIX, TRLRewardAdapter


def _columns(rows):
    return {"data_source": [r["data_source"] for r in rows],
            "reward_model": [r["reward_model"] for r in rows],
            "extra_info": [r["extra_info"] for r in rows]}


def test_single_shot_scores_completions_and_logs_copies(scifact_index):
    rows = bundled_rows("scifact_no_reason", "train")[:4]
    completions = [r["extra_info"]["query"] + '"}</answer>' for r in rows[:3]] + ["no answer here"]
    reward = TRLRewardAdapter()
    assert reward.__name__ == "deepretrieval"
    scores = reward(prompts=["p"] * 4, completions=completions, **_columns(rows))
    expected = [compute_score(r["data_source"], c, r["reward_model"]["ground_truth"], r["extra_info"])
                for r, c in zip(rows, completions)]
    assert scores == [e["score"] for e in expected]
    logged = reward.drain()
    assert logged[METRIC_PREFIX + "copy_rate"] == pytest.approx(0.75)  # three answers repeat the claim
    assert logged[METRIC_PREFIX + "format_error_rate"] == pytest.approx(0.25)
    assert logged[METRIC_PREFIX + "score"] == pytest.approx(sum(scores) / 4)
    assert not any(k.startswith(METRIC_PREFIX + "finish_") for k in logged)
    assert reward.drain() == {}  # drained


def test_agentic_scores_the_trajectory_column_with_the_same_adapter():
    rows = bundled_rows("agent_closedworld", "train")[:4]
    episodes = EpisodeRunner(OraclePolicy(), get_searcher(), decoding=Decoding(max_new_tokens=64)).run(
        episodes_from_rows(rows))
    reward = AgentRollout().reward  # how the agentic TRL rollout configures it
    assert isinstance(reward, TRLRewardAdapter) and reward.__name__ == "deepretrieval_agent"
    columns = {**_columns(rows), "trajectory": [e.text for e in episodes],
               "finish": [e.finish for e in episodes], P.RETRIEVED_KEY: [e.passages for e in episodes]}
    scores = reward(prompts=["p"] * 4, completions=["ignored"] * 4, **columns)
    assert [m["em"] for m in reward.last_metrics] == [1.0] * 4 and scores == [m["score"] for m in reward.last_metrics]
    logged = reward.drain()
    assert logged[METRIC_PREFIX + "em"] == 1.0 and logged[METRIC_PREFIX + "hit"] == 1.0
    assert logged[METRIC_PREFIX + "finish_answer"] == 1.0
    assert {METRIC_PREFIX + f"finish_{r}" for r in FINISH_REASONS} <= set(logged)
    assert METRIC_PREFIX + "copy_rate" not in logged
    # only the agentic metrics are logged (not e.g. sub-EM or cover-EM)
    assert set(logged) <= {METRIC_PREFIX + k for k in (*LOGGED, "format_error_rate")} | {
        METRIC_PREFIX + f"finish_{r}" for r in FINISH_REASONS}
    with pytest.raises(ValueError, match="'trajectory' column"):
        reward(prompts=["p"] * 4, completions=["x"] * 4, **_columns(rows))
