"""The ppo preset per task equals the original scripts' values, as the table in docs/profiles.md."""
from pathlib import Path

import pytest

from deepretrieval.train import verl as launcher
from deepretrieval.paper.presets import PAPER_RUNS, transfer_overrides

DOC = Path(__file__).resolve().parent.parent / "docs" / "profiles.md"


def doc_table():
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- paper-runs-table", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[3:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        task, script, epochs, temp, prompt, response, start = cells
        rows[task] = (script, int(epochs), float(temp), int(prompt), int(response),
                      start.split(" ")[0] or None)
    return rows


def test_doc_table_equals_the_code_table():
    table = doc_table()
    assert set(table) == set(PAPER_RUNS)
    for task, run in PAPER_RUNS.items():
        assert table[task] == (run.script, run.epochs, run.temperature, run.max_prompt_length,
                               run.max_response_length, run.init_from), task


@pytest.mark.parametrize("task", sorted(PAPER_RUNS))
def test_composed_ppo_config_per_task(task, tmp_path):
    script, epochs, temp, prompt, response, _ = doc_table()[task]
    overrides = launcher.build_overrides(task, model="/m", train_files=str(tmp_path / "t.parquet"),
                                         val_files=str(tmp_path / "v.parquet"),
                                         out_dir=str(tmp_path), preset="ppo")
    cfg = launcher.compose("ppo", overrides)
    assert cfg.trainer.total_epochs == epochs
    assert cfg.actor_rollout_ref.rollout.temperature == temp
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (prompt, response)
    assert cfg.actor_rollout_ref.actor.entropy_coeff == 0.001


def test_ctgov_transfer_initialises_actor_and_critic(tmp_path):
    extra = transfer_overrides("ctgov", actor="/runs/pubmed/actor/global_step_350",
                               critic="/runs/pubmed/critic/global_step_1200")
    overrides = launcher.build_overrides("ctgov", model="/runs/pubmed/actor/global_step_350",
                                         train_files="/t", val_files="/v", out_dir=str(tmp_path),
                                         preset="ppo", extra=extra)
    cfg = launcher.compose("ppo", overrides)
    assert cfg.actor_rollout_ref.model.path == "/runs/pubmed/actor/global_step_350"
    assert cfg.critic.model.path == "/runs/pubmed/critic/global_step_1200"
    with pytest.raises(ValueError, match="transfer tasks"):
        transfer_overrides("scifact", actor="a", critic="c")


def test_other_presets_keep_their_values(tmp_path):
    overrides = launcher.build_overrides("scifact", model="/m", train_files="/t", val_files="/v",
                                         out_dir=str(tmp_path), preset="grpo")
    assert not any(o.startswith("trainer.total_epochs") for o in overrides)
