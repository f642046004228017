"""The evaluation harness end to end on SciFact with the tiny local model (CPU, offline)."""
import json
from pathlib import Path

import pytest

from deepretrieval.catalog import bundled_rows
from deepretrieval.evaluation.report import GENERATIONS
from deepretrieval.evaluation.scoring import original_query_baseline, summarize
from deepretrieval.evaluation.single_shot import BASELINE_NAME, evaluate_model
from deepretrieval.rewards import compute_score

KW = dict(max_new_tokens=16, batch_size=4, progress=False)
pytestmark = [pytest.mark.slow, pytest.mark.rows("scifact_no_reason", "test", limit=20)]


@pytest.fixture(scope="module")
def first_run(tiny, rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    return out, evaluate_model(tiny, rows, out_dir=out, **KW)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_report(first_run, rows, scifact_index):
    out, report = first_run
    for name in ("generations.jsonl", "original_query.jsonl", "summary.json", "summary.md",
                 "comparison.png", "run.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = _lines(out / GENERATIONS)
    assert [r["query_id"] for r in records] == [r["extra_info"]["query_id"] for r in rows]
    for rec, row in zip(records, rows):
        assert rec["prompt"] == row["prompt"] and rec["prefill"] == '<answer>{"query": "'
        # the score is exactly the training reward of the completion
        expected = compute_score(row["data_source"], rec["completion"],
                                 row["reward_model"]["ground_truth"], row["extra_info"])
        assert rec["metrics"] == expected
        assert rec["format_ok"] == expected["format_ok"]
        assert len(rec["retrieved"]) <= 10
    # the baseline in the same report equals the stand-alone baseline
    summary = json.loads((out / "summary.json").read_text())
    assert summary["systems"][BASELINE_NAME] == summarize(original_query_baseline(rows))
    assert summary["systems"][report["name"]]["n"] == 20
    assert set(summary["systems"][report["name"]]) >= {"ndcg@10", "ndcg_paper", "recall@100",
                                                       "format_error_rate", "search_error_rate",
                                                       "strict_format_error_rate"}
    base = _lines(out / "original_query.jsonl")
    assert base[0]["query"] == rows[0]["extra_info"]["query"]
    top = scifact_index.search([rows[0]["extra_info"]["query"]], 10)[0].ids
    assert base[0]["retrieved"] == [str(i) for i in top]
    md = (out / "summary.md").read_text()
    assert f"| {BASELINE_NAME} | 20 |" in md and "ndcg_paper" in md


def test_rerun_is_identical(first_run, tiny, rows, tmp_path):
    out, report = first_run
    again = evaluate_model(tiny, rows, out_dir=tmp_path, **KW)
    assert again["records"] == report["records"]
    assert again["systems"] == report["systems"]
    assert (tmp_path / GENERATIONS).read_text() == (out / GENERATIONS).read_text()


class _Crash(RuntimeError):
    pass


class _CrashAfter:
    """A generator that dies after ``batches`` batches (simulated interruption)."""

    def __init__(self, inner, batches):
        self.inner, self.left = inner, batches
        self.uses_prefill, self.name = inner.uses_prefill, inner.name

    def generate(self, prompts, decoding, **kw):
        if self.left == 0:
            raise _Crash("killed")
        self.left -= 1
        return self.inner.generate(prompts, decoding, **kw)


def test_resume_after_interruption(first_run, gen, rows, tmp_path):
    _, report = first_run
    with pytest.raises(_Crash):
        evaluate_model(_CrashAfter(gen, 2), rows, out_dir=tmp_path, **KW)
    partial = _lines(tmp_path / GENERATIONS)
    assert len(partial) == 8 and not (tmp_path / "summary.json").exists()
    with open(tmp_path / GENERATIONS, "a") as fh:  # a line torn by the kill
        fh.write('{"row": 8, "key": "tor')
    calls = []

    class Counting(_CrashAfter):
        def generate(self, prompts, decoding, **kw):
            calls.append(len(prompts))
            return self.inner.generate(prompts, decoding, **kw)

    resumed = evaluate_model(Counting(gen, -1), rows, out_dir=tmp_path, **KW)
    assert sum(calls) == 12  # only the missing rows were generated
    lines = _lines(tmp_path / GENERATIONS)
    assert len(lines) == 20 and len({r["key"] for r in lines}) == 20
    assert resumed["records"] == report["records"]
    assert resumed["systems"][BASELINE_NAME] == report["systems"][BASELINE_NAME]
    assert resumed["summary"] == report["summary"]
    # a finished run resumes to the same report without generating anything
    calls.clear()
    evaluate_model(Counting(gen, -1), rows, out_dir=tmp_path, **KW)
    assert calls == []


def test_resume_refuses_other_settings(first_run, tiny, rows):
    out, _ = first_run
    with pytest.raises(ValueError, match="other settings"):
        evaluate_model(tiny, rows, out_dir=out, **{**KW, "max_new_tokens": 8})


def test_sampling_seeded_n_samples(gen, rows, tmp_path):
    kw = dict(KW, greedy=False, temperature=1.0, seed=7, n=2, baseline=False, plot=False)
    a = evaluate_model(gen, rows[:6], out_dir=tmp_path / "a", **kw)
    b = evaluate_model(gen, rows[:6], out_dir=tmp_path / "b", **kw)
    c = evaluate_model(gen, rows[:6], **{**kw, "seed": 8})
    assert a["records"] == b["records"]
    assert [r["completion"] for r in a["records"]] != [r["completion"] for r in c["records"]]
    assert all(len(r["samples"]) == 2 for r in a["records"])
    assert a["summary"]["n"] == 12 and a["summary"]["rows"] == 6
    assert "best_of_n_score" in a["summary"] and BASELINE_NAME not in a["systems"]


def test_lenient_extraction_searches_malformed_answers(gen, rows):
    report = evaluate_model(gen, rows[:8], extract="lenient", baseline=False, **KW)
    s = report["summary"]
    # the random model never closes the answer: strict format fails, lenient extraction searches
    assert s["strict_format_error_rate"] == 1.0
    searched = [r for r in report["records"] if r["extracted"] == "lenient"]
    assert searched and all(r["retrieved"] and r["metrics"]["format_ok"] for r in searched)
    assert s["format_error_rate"] == 1 - len(searched) / 8


def test_bad_input_is_a_clear_error(gen, rows):
    with pytest.raises(ValueError, match="no rows"):
        evaluate_model(gen, [], progress=False)
    mixed = rows[:1] + bundled_rows("scifact", "test")[:1]
    with pytest.raises(ValueError, match="mix several tasks"):
        evaluate_model(gen, mixed, progress=False)
    with pytest.raises(ValueError, match="sampling"):
        evaluate_model(gen, rows[:1], n=2, progress=False)


def test_cli_eval_and_compare(tiny, tmp_path, capsys, scifact_index):
    from deepretrieval.cli import main
    run = tmp_path / "run"
    assert main(["eval", "--model", tiny, "--task", "scifact", "--no-reasoning", "--limit", "4",
                 "--max-new-tokens", "8", "--out", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "scifact_no_reason" and printed["rows"] == 4
    assert set(printed["systems"]) == {BASELINE_NAME, Path(tiny).name}
    assert main(["eval-compare", str(run), str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "comparison.png").exists()
    assert "| original query |" in capsys.readouterr().out
    assert main(["eval", "--model", tiny, "--task", "scifact_no_reason", "--limit", "3",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "run3"), "--no-baseline"]) == 0
    capsys.readouterr()
    assert main(["eval-compare", str(run), str(tmp_path / "run3")]) == 2
    assert "other queries" in capsys.readouterr().err
    assert main(["eval", "--model", tiny, "--task", "nope", "--limit", "1"]) == 2
    assert "unknown task" in capsys.readouterr().err
