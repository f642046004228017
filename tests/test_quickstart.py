"""The quickstart end to end with the tiny model and a handful of rows/steps (the real run with
SmolLM2 takes ~15 minutes and is not part of the test suite)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow


def test_quickstart_tiny_end_to_end(tmp_path, capsys):
    from deepretrieval.cli import main
    from deepretrieval.testing.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "qs"
    code = main(["quickstart", "--model", str(model), "--steps", "2", "--limit", "8",
                 "--max-new-tokens", "12", "--eval-max-new-tokens", "12", "--eval-batch-size", "8",
                 "--threads", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for label in ("original query", "zero-shot model", "trained model", "format errors",
                  "mean reward", "nDCG@10", "R@100", "copies input"):
        assert label in text
    results = json.loads((out / "results.json").read_text())
    assert results["test_rows"] == 8 and results["train_rows"] == 8 and results["steps"] == 2
    assert [r[""] for r in results["table"]] == ["original query", "zero-shot model", "trained model"]
    # the baseline row is the real original-query evaluation of the same 8 test claims
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.evaluation.harness import original_query_baseline, summarize
    base = summarize(original_query_baseline(bundled_rows("scifact_no_reason", "test")[:8]))
    assert results["table"][0]["ndcg@10"] == pytest.approx(base["ndcg@10"])
    assert results["table"][0]["format_error_rate"] == 0
    # a random model breaks the format: the model rows report it
    assert results["table"][1]["format_error_rate"] == 1.0
    assert results["table"][1]["score"] == pytest.approx(-2.0)
    steps = [h for h in results["history"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    png = out / "training_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "train" / "model" / "config.json").is_file()
    assert (out / "eval_trained").is_dir() and (out / "eval_zero_shot").is_dir()


def test_quickstart_rejects_bad_options(tmp_path, capsys):
    from deepretrieval.cli import main
    assert main(["quickstart", "--model", str(tmp_path / "missing"), "--limit", "2",
                 "--threads", "x", "--out", str(tmp_path / "q")]) == 2
    assert "--threads" in capsys.readouterr().err


def test_quickstart_tiny_on_the_boolean_task(tmp_path, capsys):
    from deepretrieval.cli import main
    from deepretrieval.testing.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "qsb"
    code = main(["quickstart", "--task", "scifact_boolean_no_reason", "--model", str(model),
                 "--steps", "1", "--limit", "6", "--max-new-tokens", "8", "--eval-max-new-tokens", "8",
                 "--eval-batch-size", "6", "--threads", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    for label in ("original query", "trained model", "recall@100", "uses OR", "fewer terms"):
        assert label in text
    results = json.loads((out / "results.json").read_text())
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.evaluation.harness import original_query_baseline, summarize
    rows = bundled_rows("scifact_boolean_no_reason", "test")[:6]
    base = summarize(original_query_baseline(rows))
    assert results["table"][0]["recall"] == pytest.approx(base["recall"])
    assert results["table"][0]["or_rate"] == 0.0 and results["table"][0]["fewer_rate"] == 0.0
    assert results["original_query_train"]["score"] == pytest.approx(
        summarize(original_query_baseline(bundled_rows("scifact_boolean_no_reason", "train")[:6]))["score"])
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
