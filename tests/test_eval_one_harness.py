"""Single-shot and agentic evaluation are two cases of one harness: the same per-row record
header, the same resume rule, the same report writer — and the harness takes any rollout."""
import json

import pytest

from deepretrieval.agent.evaluate import evaluate_agent
from deepretrieval.catalog import bundled_rows
from deepretrieval.data.closed_world import OraclePolicy
from deepretrieval.evaluation.harness import (
    Reference,
    evaluate,
    resume_conflicts,
    row_key,
)
from deepretrieval.evaluation.report import GENERATIONS
from deepretrieval.evaluation.scoring import score_queries, summarize
from deepretrieval.evaluation.single_shot import BASELINE_NAME, evaluate_model
from deepretrieval.tasks.agentic import CLOSED_BOOK, NAIVE_RAG

HEADER = ["row", "key", "query_id", "data_source"]


class EchoWriter:
    """A scripted single-shot policy: answers each SciFact claim with the claim itself
    (continuing the answer prefill), so it must score exactly like the original-query baseline."""

    uses_prefill = True
    name = "echo"

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, decoding, *, batch_size=8, seed_offset=0, progress=False):
        self.calls += 1
        claims = [p.messages[-1]["content"].split("Claim: ", 1)[1] for p in prompts]
        return [[claim + '"}</answer>'] * decoding.n for claim in claims]


class CountingOracle(OraclePolicy):
    def __init__(self):
        self.calls = 0

    def generate(self, prompts, decoding, **kw):
        self.calls += 1
        return super().generate(prompts, decoding, **kw)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def single_rows(scifact_index):
    return bundled_rows("scifact_no_reason", "test")[:6]


@pytest.fixture(scope="module")
def agent_rows():
    return bundled_rows("agent_closedworld", "test")[:6]


CASES = {
    "single-shot": (EchoWriter, evaluate_model, "single_rows", {"original_query.jsonl": BASELINE_NAME}),
    "agentic": (CountingOracle, evaluate_agent, "agent_rows",
                {"closed_book.jsonl": CLOSED_BOOK, "naive_rag.jsonl": NAIVE_RAG}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_both_cases_write_one_record_format_one_report_and_resume_alike(case, request, tmp_path):
    policy_cls, evaluate_fn, rows_fixture, reference_files = CASES[case]
    rows = request.getfixturevalue(rows_fixture)
    policy = policy_cls()
    report = evaluate_fn(policy, rows, out_dir=tmp_path, batch_size=4, plot=False, progress=False)
    assert policy.calls > 0
    # one per-row record format: the harness's header, then the case's body, in every file
    records = _lines(tmp_path / GENERATIONS)
    assert [list(r)[:4] for r in records] == [HEADER] * len(rows)
    assert [r["key"] for r in records] == [row_key(r) for r in rows]
    assert [r["row"] for r in records] == list(range(len(rows)))
    for file_name, system in reference_files.items():
        refs = _lines(tmp_path / file_name)
        assert [list(r)[:4] for r in refs] == [HEADER] * len(rows)
        assert summarize([r["metrics"] for r in refs]) == report["systems"][system]
        assert report["files"][file_name.split(".")[0]] == str(tmp_path / file_name)
    # one report writer: summary.json = run.json's settings + the same four report keys
    run = json.loads((tmp_path / "run.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) - set(run) == {"rows", "rows_digest", "summary", "systems"}
    assert {k: summary[k] for k in run} == run
    assert list(summary["systems"]) == list(reference_files.values()) + [policy.name]
    assert summary["systems"][policy.name] == report["summary"]
    assert f"| {policy.name} |" in (tmp_path / "summary.md").read_text()
    # one resume rule: same settings resume without generating; other settings are refused
    again_policy = policy_cls()
    again = evaluate_fn(again_policy, rows, out_dir=tmp_path, batch_size=4, plot=False, progress=False,
                        **({"baseline": False} if case == "single-shot" else {"references": False}))
    assert again_policy.calls == 0 and again["summary"] == report["summary"]
    with pytest.raises(ValueError, match=r"other settings \(decoding\)"):
        evaluate_fn(policy_cls(), rows, out_dir=tmp_path, max_new_tokens=7, plot=False, progress=False)
    fresh = policy_cls()
    evaluate_fn(fresh, rows, out_dir=tmp_path, max_new_tokens=7, plot=False, progress=False, resume=False)
    assert fresh.calls > 0 and json.loads((tmp_path / "run.json").read_text())["decoding"]["max_new_tokens"] == 7


def test_the_echo_writer_scores_exactly_like_the_original_query(single_rows, tmp_path):
    report = evaluate_model(EchoWriter(), single_rows, out_dir=tmp_path, plot=False, progress=False)
    assert report["baseline_name"] == BASELINE_NAME
    for key in ("ndcg@10", "recall@100", "score"):
        assert report["summary"][key] == pytest.approx(report["baseline"][key])
    assert report["summary"]["format_error_rate"] == 0.0
    assert [r["query"] for r in report["records"]] == [r["query"] for r in report["baseline_records"]]


class OriginalQueries:
    """A rollout written against the harness's interface alone: each row's original query,
    scored; it dies after ``crash_after`` batches (a simulated kill)."""

    def __init__(self, name="original again", crash_after=None):
        self.name, self.crash_after, self.seen = name, crash_after, []

    def run(self, rows, positions):
        if self.crash_after is not None and len(self.seen) >= self.crash_after:
            raise KeyboardInterrupt
        self.seen.append(list(positions))
        queries = [r["extra_info"]["query"] for r in rows]
        return [{"query": q, "metrics": m} for q, m in zip(queries, score_queries(rows, queries))]

    def summary(self, records):
        return summarize([r["metrics"] for r in records])


def test_the_harness_takes_any_rollout_and_resumes_it(single_rows, tmp_path):
    settings = {"model": "none", "decoding": {}, "prompt_format": "ours"}
    with pytest.raises(KeyboardInterrupt):
        evaluate(OriginalQueries(crash_after=1), single_rows, settings=settings, out_dir=tmp_path,
                 batch_size=4, progress=False)
    assert len(_lines(tmp_path / GENERATIONS)) == 4 and not (tmp_path / "summary.json").exists()
    with open(tmp_path / GENERATIONS, "a") as fh:  # a line torn by the kill
        fh.write('{"row": 4, "key": "tor')
    rollout = OriginalQueries()
    reference = OriginalQueries(name="reference")
    report = evaluate(rollout, single_rows, settings=settings, references=[Reference(reference, "ref.jsonl")],
                      out_dir=tmp_path, batch_size=4, progress=False, plot=False)
    assert rollout.seen == [[4, 5]]                     # only the rows the kill left
    assert reference.seen == [list(range(6))]           # references: every row, one call
    assert len(_lines(tmp_path / GENERATIONS)) == 6     # the torn line was dropped
    assert list(report["systems"]) == ["reference", "original again"]
    assert report["systems"]["reference"] == report["summary"]
    assert [r["query"] for r in _lines(tmp_path / "ref.jsonl")] == [r["extra_info"]["query"] for r in single_rows]
    # run folders written before a setting existed resume under the value they had
    old = {k: v for k, v in json.loads((tmp_path / "run.json").read_text()).items() if k != "prompt_format"}
    assert resume_conflicts(old, {**old, "prompt_format": "ours"}) == []
    assert resume_conflicts(old, {**old, "prompt_format": "original"}) == ["prompt_format"]
    assert resume_conflicts(old, {**old, "name": "renamed", "split": "x"}) == []


def test_one_task_per_run(single_rows, agent_rows):
    with pytest.raises(ValueError, match="mix several tasks"):
        evaluate(OriginalQueries(), [*single_rows, *agent_rows], settings={})
    with pytest.raises(ValueError, match="no rows"):
        evaluate(OriginalQueries(), [], settings={})
