"""The quickstart end to end with the tiny model and a handful of rows/steps (the real run with
SmolLM2 is documented in docs/experiments/quickstart_boolean.md and is not part of the suite)."""
from __future__ import annotations

import json
import shlex

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from deepretrieval.testing.tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


def test_quickstart_tiny_on_the_default_boolean_task(tiny, tmp_path, capsys):
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.cli import main
    from deepretrieval.evaluation.scoring import (
        original_query_baseline,
        score_queries,
        summarize,
    )

    out = tmp_path / "qsb"
    code = main(["quickstart", "--model", str(tiny), "--steps", "1", "--limit", "6",
                 "--max-new-tokens", "8", "--eval-max-new-tokens", "8", "--batch-size", "6",
                 "--threads", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for label in ("original query", "zero-shot model", "trained model", "recall@100", "paper reward",
                  "uses OR", "fewer terms", "paired bootstrap", "trained model - original query",
                  "trained model - zero-shot model", "95% CI", "scifact_boolean_shaped",
                  "scifact_boolean_no_reason", "reproduce:"):
        assert label in text, label
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "scifact_boolean_shaped" and results["eval_split"] == "test"
    assert results["command"] in text and "--task scifact_boolean_shaped" in results["command"]
    assert results["test_rows"] == 6 and results["train_rows"] == 6 and results["steps"] == 1
    assert [r[""] for r in results["table"]] == ["original query", "zero-shot model", "trained model"]
    rows = bundled_rows("scifact_boolean_shaped", "test")[:6]
    base = summarize(original_query_baseline(rows))
    original = results["table"][0]
    assert original["recall"] == pytest.approx(base["recall"]) and original["score"] == pytest.approx(base["score"])
    assert original["or_rate"] == 0.0 and original["fewer_rate"] == 0.0
    # the paper-table column: the same claims re-scored with the bare table (no match-set bonus)
    paper_rows = bundled_rows("scifact_boolean_no_reason", "test")[:6]
    claims = [r["extra_info"]["query"] for r in rows]
    assert original["paper_score"] == pytest.approx(summarize(score_queries(paper_rows, claims))["score"])
    # a random model breaks the format: the model rows say so, and both tables give the penalty
    assert results["table"][1]["format_error_rate"] == 1.0
    assert results["table"][1]["paper_score"] == pytest.approx(-4.0)
    assert results["original_query_train"]["score"] == pytest.approx(
        summarize(original_query_baseline(bundled_rows("scifact_boolean_shaped", "train")[:6]))["score"])
    # the intervals are on per-claim recall differences
    diffs = results["intervals"]["recall"]
    vs_original = diffs["trained model - original query"]
    assert vs_original["mean"] == pytest.approx(results["table"][2]["recall"] - original["recall"])
    assert vs_original["low"] <= vs_original["mean"] <= vs_original["high"]
    assert vs_original["n"] == 6 and vs_original["confidence"] == 0.95
    assert [h["step"] for h in results["history"] if "loss" in h] == [1]
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "train" / "model" / "config.json").is_file()
    assert results["load_average_start"] is None or len(results["load_average_start"]) == 3

    # the printed command, run again into another folder, gives the same table
    argv = shlex.split(results["command"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    assert main(argv + ["--no-plot"]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["table"] == results["table"] and again["intervals"] == results["intervals"]


def test_quickstart_tiny_on_scifact(tiny, tmp_path, capsys):
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.cli import main
    from deepretrieval.evaluation.scoring import original_query_baseline, summarize

    out = tmp_path / "qs"
    code = main(["quickstart", "--task", "scifact", "--model", str(tiny), "--steps", "1", "--limit", "8",
                 "--max-new-tokens", "12", "--eval-max-new-tokens", "12", "--batch-size", "8",
                 "--threads", "1", "--no-plot", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for label in ("original query", "zero-shot model", "trained model", "format errors",
                  "mean reward", "nDCG@10", "R@100", "copies input", "paired bootstrap"):
        assert label in text
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "scifact_no_reason" and results["steps"] == 1
    base = summarize(original_query_baseline(bundled_rows("scifact_no_reason", "test")[:8]))
    assert results["table"][0]["ndcg@10"] == pytest.approx(base["ndcg@10"])
    assert results["table"][0]["format_error_rate"] == 0
    assert results["table"][1]["format_error_rate"] == 1.0
    assert results["table"][1]["score"] == pytest.approx(-2.0)
    assert "ndcg@10" in results["intervals"] and results["paper_table"] == {}
    assert not (out / "training_curve.png").exists()


def test_quickstart_validation_split_is_held_out_of_training(tiny, tmp_path):
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.cli import main
    from deepretrieval.train.quickstart import VALIDATION_CLAIMS, split_rows

    train, held = split_rows("scifact_boolean_shaped", limit=100, eval_split="validation")
    all_train = bundled_rows("scifact_boolean_shaped", "train")
    assert [r["extra_info"]["query_id"] for r in held] == \
        [r["extra_info"]["query_id"] for r in all_train[-VALIDATION_CLAIMS:]]
    assert not {r["extra_info"]["query_id"] for r in train} & {r["extra_info"]["query_id"] for r in held}
    with pytest.raises(ValueError, match="--limit"):
        split_rows("scifact_boolean_shaped", limit=0, eval_split="validation")

    out = tmp_path / "val"
    assert main(["quickstart", "--model", str(tiny), "--steps", "1", "--limit", "4",
                 "--eval-split", "validation", "--max-new-tokens", "8", "--eval-max-new-tokens", "8",
                 "--threads", "1", "--no-plot", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["eval_split"] == "validation" and results["test_rows"] == 4


def test_quickstart_rejects_bad_options(tmp_path, capsys):
    from deepretrieval.cli import main
    assert main(["quickstart", "--model", str(tmp_path / "missing"), "--limit", "2",
                 "--threads", "x", "--out", str(tmp_path / "q")]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["quickstart", "--task", "no_such_task", "--out", str(tmp_path / "q")]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert main(["quickstart", "--eval-split", "validation", "--limit", "0", "--threads", "1",
                 "--out", str(tmp_path / "q")]) == 2
    assert "--limit" in capsys.readouterr().err
