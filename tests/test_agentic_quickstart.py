"""The agentic quickstart, shortened, on the tiny model: four systems on the held-out closed-world
questions, the reference systems are the real evaluations, and the figures reproduce from the
command the run prints (the real SmolLM2 run is documented in docs/experiments/agentic_quickstart.md)."""
from __future__ import annotations

import json
import shlex

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow

SYSTEMS = ["closed-book", "naive RAG", "zero-shot agent", "trained agent"]


def _run(main, argv, capsys):
    assert main(argv) == 0
    return capsys.readouterr().out


def test_agentic_quickstart_reproduces_from_its_printed_command(tmp_path, capsys):
    from deepretrieval.cli import main
    from deepretrieval.testing.tiny_model import tiny_model_path

    model = tiny_model_path(tmp_path / "tiny")
    out = tmp_path / "a"
    text = _run(main, ["quickstart", "--agentic", "--model", str(model), "--steps", "1",
                       "--limit", "4", "--train-limit", "4", "--prompts-per-step", "2",
                       "--num-generations", "2", "--turn-tokens", "8", "--max-new-tokens", "160",
                       "--batch-size", "8", "--threads", "1", "--no-plot", "--out", str(out)],
                capsys)
    results = json.loads((out / "results.json").read_text())
    assert [r[""] for r in results["table"]] == SYSTEMS
    for label in SYSTEMS + ["EM", "F1", "searches", "what the agent does", "reproduce:"]:
        assert label in text
    assert results["command"] in text
    assert results["test_rows"] == 4 and results["train_rows"] == 4 and results["steps"] == 1
    naive = results["systems"]["naive RAG"]
    assert naive["n_search"] == 1.0 and results["systems"]["closed-book"]["n_search"] == 0.0
    # the agent rows are the per-question evaluations written next to them
    for system, folder in (("zero-shot agent", "eval_zero_shot"), ("trained agent", "eval_trained")):
        recs = [json.loads(line) for line in open(out / folder / "generations.jsonl")]
        assert len(recs) == 4
        f1 = sum(r["metrics"]["f1"] for r in recs) / 4
        assert results["systems"][system]["f1"] == pytest.approx(f1)
    assert [h["step"] for h in results["history"] if "loss" in h] == [1]
    assert (out / "train" / "model" / "config.json").is_file()
    assert len(results["examples"]) == 3

    # the printed command, run again into another folder, gives the same figures
    argv = shlex.split(results["command"])[1:]
    second = tmp_path / "b"
    argv[argv.index("--out") + 1] = str(second)
    _run(main, argv, capsys)
    again = json.loads((second / "results.json").read_text())
    assert again["table"] == results["table"]
    assert again["behaviour"] == results["behaviour"]


def _records(folder):
    return [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]


def test_warm_start_then_grpo_reports_the_em_gain_with_a_paired_interval(tmp_path, capsys):
    """``--warm-start``: the oracle-trajectory warm start is a row of its own (its evaluation is
    the warm-up stage's, per question), GRPO starts from its model, and the EM gain of the trained
    agent over it comes with a paired bootstrap interval over the same questions."""
    from deepretrieval.cli import main
    from deepretrieval.testing.tiny_model import tiny_model_path

    model = tiny_model_path(tmp_path / "tiny")
    out = tmp_path / "w"
    text = _run(main, ["quickstart", "--agentic", "--warm-start", "--warm-start-epochs", "1",
                       "--model", str(model), "--steps", "1", "--limit", "3", "--train-limit", "4", "--prompts-per-step", "2",
                       "--num-generations", "2", "--turn-tokens", "8", "--max-new-tokens", "160",
                       "--max-turns", "4", "--batch-size", "8", "--threads", "1", "--no-plot",
                       "--out", str(out)], capsys)
    results = json.loads((out / "results.json").read_text())
    assert [r[""] for r in results["table"]] == SYSTEMS[:3] + ["warm start", "trained agent"]
    assert "--warm-start" in results["command"] and "EM trained − warm start" in text
    warm = _records(out / "warm_start" / "stages" / "warmup" / "eval")
    assert len(warm) == 3
    assert results["systems"]["warm start"]["em"] == pytest.approx(
        sum(r["metrics"]["em"] for r in warm) / 3)
    trained = _records(out / "eval_trained")
    gain = results["em_gain_over_warm_start"]
    assert gain["n"] == 3 and gain["low"] <= gain["mean"] <= gain["high"]
    assert gain["mean"] == pytest.approx(sum(t["metrics"]["em"] - w["metrics"]["em"]
                                             for t, w in zip(trained, warm)) / 3)
    assert results["warm_start"]["seeds"] == "oracle"
    # one epoch over the 4 train questions (4 per optimizer step): one step, not the default 2
    assert results["warm_start"]["warmup_epochs"] == 1
    stage = json.loads((out / "warm_start" / "stages" / "warmup" / "stage.json").read_text())
    assert len(stage["step_losses"]) == 1


def test_validation_split_is_held_out_of_training():
    """--eval-split validation (settings are chosen there, never on the test questions): the
    last train questions, which neither GRPO nor the warm start then sees."""
    from deepretrieval.train.agentic_quickstart import (VALIDATION_QUESTIONS, quickstart_rows,
                                                        split_rows)

    kw = {"prefill": "", "max_turns": 3, "limit": None, "train_limit": None}
    train, held = split_rows(eval_split="validation", **kw)
    everything = quickstart_rows("train", prefill="", max_turns=3)
    qs = [r["extra_info"]["query"] for r in train]
    assert len(held) == VALIDATION_QUESTIONS and len(train) == len(everything) - VALIDATION_QUESTIONS
    assert not set(qs) & {r["extra_info"]["query"] for r in held}
    assert [r["extra_info"]["query"] for r in held] == [
        r["extra_info"]["query"] for r in everything[-VALIDATION_QUESTIONS:]]
    test_train, test = split_rows(eval_split="test", **kw)
    assert len(test_train) == len(everything) and test[0]["extra_info"]["split"] == "test"
    with pytest.raises(ValueError, match="--train-limit"):
        split_rows(eval_split="validation", **{**kw, "train_limit": len(everything)})
    with pytest.raises(ValueError, match="test or validation"):
        split_rows(eval_split="dev", **kw)
