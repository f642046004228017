"""The ``paper`` profile: recorded original rewards replayed case by case, profile selection, the
real-search path through ``compute_score``, and DPR ``has_answers`` matching."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from deepretrieval.core import dpr_match
from deepretrieval.cli import main as cli_main
from deepretrieval.paper.check import load_cases, replay, replay_case
from deepretrieval.paper.engine import RAISE_RULES, paper_score
from deepretrieval.paper.modules import PAPER_MODULES, paper_data_source
from deepretrieval.paper.profile import resolve_profile
from deepretrieval.tasks.original import paper_module_name
from deepretrieval.rewards import compute_score
from deepretrieval.core.results import SearchResult

CASES = Path(__file__).parent / "data" / "original_rewards" / "original_reward_cases.jsonl.gz"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "original_rewards" \
    / "original_reward_cases.jsonl"
HEADER = "<|im_start|>assistant\n\nAssistant: Let me solve this step by step. \n<think>\n"


@pytest.fixture(scope="module")
def cases():
    return {c["case_id"]: c for c in load_cases(CASES)}


# ---- paper-check ------------------------------------------------------------------------------

def test_paper_check_cli_agrees_on_every_recorded_case(capsys):
    assert cli_main(["paper-check", str(CASES)]) == 0
    out = capsys.readouterr().out
    assert "scored by the original: 1115/1115 agree" in out
    assert "raised in the original: 46/46 got a defined score" in out
    assert "all 1161 cases agree" in out
    for module in PAPER_MODULES:  # every original module is covered by the file
        assert f"\n{module} " in out


@pytest.mark.skipif(not SHARED.is_file(), reason="../shared not present")
def test_paper_check_on_the_shared_file_too(capsys):
    assert cli_main(["paper-check", str(SHARED)]) == 0
    assert "all 1161 cases agree" in capsys.readouterr().out


def test_paper_check_reports_a_disagreement(tmp_path, cases, capsys):
    case = dict(cases["orig-0000"])
    wrong = dict(case, case_id="orig-x", original_score=case["original_score"] - 1)
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(case) + "\n" + json.dumps(wrong) + "\n")
    assert cli_main(["paper-check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 disagreement(s)" in out and "orig-x" in out and "original 5 vs ours 6.0" in out


def test_paper_check_bad_input_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["paper-check", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"case_id": "x"}\n')
    assert cli_main(["paper-check", str(bad)]) == 2
    assert "has no 'family'" in capsys.readouterr().err


def test_every_module_reproduced_by_replay(cases):
    report = replay(cases.values())
    assert not report.disagreements
    by_module = {name: (n, ok) for name, n, ok, _ in report.table("module")}
    assert set(by_module) == set(PAPER_MODULES)
    assert all(n == ok for n, ok in by_module.values())


@pytest.mark.parametrize("case_id, score, rule", [
    ("orig-0085", 6.0, "no_header"),            # pubmed, no header: scored as if present
    ("orig-0242", -2.0, "json_not_container"),  # BEIR answer `42`: format failure
    ("orig-0659", 0.0, "answer_step"),          # fiqa target/score lengths differ
    ("orig-0673", 0.0, "answer_step"),          # fiqa answer is a JSON string
    ("orig-0687", 1.1, "msmarco_mode"),         # msmarco without sparse/dense: sparse
    ("orig-0784", 6.0, "target_list"),          # evidence target as a plain list
    ("orig-1086", 0.0, "answer_step"),          # spider answer is a JSON array
    ("orig-1128", 0.2, "answer_step"),          # bird_no_reason: a non-syntax error → 0.1
    ("orig-1160", 1.0, "no_header"),            # screening without any Assistant: marker
])
def test_defined_scores_where_the_original_raised(cases, case_id, score, rule):
    case = cases[case_id]
    assert case["original_score"] is None and case["original_exception"]
    outcome = replay_case(case)
    assert outcome.got == pytest.approx(score) and outcome.rule == rule and rule in RAISE_RULES


def test_the_engine_searches_through_the_core_backend(cases):
    """One name, one meaning: the recorded cases and the real searches are both core Backends
    returning SearchResult; the paper modules' tables are core RewardTables."""
    from deepretrieval.core.results import Backend
    from deepretrieval.core.tables import RewardTable
    from deepretrieval.paper.check import CaseBackend
    from deepretrieval.paper.engine import SearcherIndex

    case = cases["orig-0000"]
    backend = CaseBackend(case)
    assert isinstance(backend, Backend) and isinstance(SearcherIndex(object(), "pubmed"), Backend)
    (result,) = backend.search(["anything"], 3)
    assert isinstance(result, SearchResult) and result.ids == backend.search(["other"], 3)[0].ids
    assert backend.calls == [3, 3]
    assert all(isinstance(m.table, RewardTable) for m in PAPER_MODULES.values())


def test_dispatch_matches_the_original_trainer(cases):
    for case in cases.values():
        if case["main_ppo_dispatch"] == "NotImplementedError":
            assert case["original_module"] == "fiqa.py"
            assert paper_module_name(case["data_source"]) == "fiqa.py"  # our extension
        else:
            assert paper_module_name(case["data_source"]) == case["main_ppo_dispatch"]


# ---- quirks, directly ------------------------------------------------------------------------

class ListBackend:
    """A core Backend answering every query with the same ids (or passages)."""

    name = "list"

    def __init__(self, ids=(), passages=()):
        self.ids, self.texts, self.ks = list(ids), list(passages), []

    def info(self):
        return {"type": "list"}

    def search(self, queries, k, *, return_text=False, options=None):
        self.ks.append(k)
        if return_text:
            return [SearchResult(ids=[str(i) for i in range(len(self.texts[:k]))],
                                 texts=self.texts[:k]) for _ in queries]
        return [SearchResult(ids=self.ids[:k]) for _ in queries]


def _answer(query, think="plan"):
    return f"{HEADER}{think}</think>\n<answer>{json.dumps({'query': query})}</answer>"


def test_paper_quirks_table():
    be = ListBackend(ids=["d1", "d2", "d3"])
    # not JSON: format +1, answer -4 → -3 (ours: -4); text after </answer> is accepted
    assert paper_score("pubmed", HEADER + "x</think><answer>not json</answer>",
                       {"target": ["d1"]}, {"pub_date": "2020"}, be).score == -3
    assert paper_score("pubmed", _answer("q") + " trailing", {"target": ["d1"]},
                       {"pub_date": "2020"}, be).score == 6
    # scifact BM25 training depth 50 ('val' in 'retrieval' → 10); hotpotqa 3000
    for ds, k in (("scifact_train", 50), ("scifact_retrieval_train", 10), ("hotpotqa_train", 3000),
                  ("nfcorpus_dense_train", 100), ("scifact_dense_dev", 1000)):
        be.ks.clear()
        gt = {"target": "d1"} if "scifact" in ds else {"target": ["d1"], "score": [1]}
        paper_score(ds, _answer("q"), gt, {}, be)
        assert be.ks == [k], ds
    # graded nDCG: ideal DCG in qrel order → above 1
    res = paper_score("nfcorpus_test", _answer("q"), {"target": ["d2", "d1"], "score": [1, 2]},
                      {}, ListBackend(ids=["d1", "d2"]))
    assert res.metrics["ndcg"] > 1
    # squad no hit -2.5 (1 - 3.5 + ... ) vs nq -3.5
    ev = ListBackend(passages=["nothing here"])
    gt = {"target": np.array(["Paris"], dtype=object)}
    assert paper_score("squad", _answer("q"), gt, {}, ev).score == pytest.approx(-1.5)
    assert paper_score("nq_serini", _answer("q"), gt, {}, ev).score == pytest.approx(-2.5)
    # "The Who" is not in "who is there" (our old matcher said it was)
    ev = ListBackend(passages=["who is there", "The Who played"])
    assert paper_score("nq_serini", _answer("q"), {"target": np.array(["The Who"], dtype=object)},
                       {}, ev).metrics["first_hit_rank"] == 2


def test_sql_sets_and_bird_error(tmp_path):
    import shutil
    from deepretrieval.paper.check import BUNDLED_DB_ROOT
    from deepretrieval.paper.sql import SQLiteCopy, run_sql_on_copy

    db = tmp_path / "singer.sqlite"
    shutil.copyfile(BUNDLED_DB_ROOT / "singer" / "singer.sqlite", db)

    def run_sql(sql, db_path):
        with SQLiteCopy(db) as copy:
            return run_sql_on_copy(sql, copy.path)

    def sql(module_ds, pred, gold, reasoning=True):
        head = HEADER + "x</think>\n" if reasoning else "<|im_start|>assistant\n"
        text = head + f"<answer>{json.dumps({'sql': pred})}</answer>"
        return paper_score(module_ds, text, {"target": gold}, {"db_path": "singer/singer.sqlite"},
                           run_sql=run_sql).score

    dup = "SELECT Name FROM singer UNION ALL SELECT Name FROM singer"
    assert sql("spider_train", dup, "SELECT Name FROM singer") == pytest.approx(1.1)  # sets
    assert sql("bird_train", "SELECT 1", "SELECT Name FROM singer") == pytest.approx(0.4)
    assert sql("bird_train", "SELECT nope FROM singer", "SELECT Name FROM singer") == 0
    assert sql("bird_wor_train", "SELECT * FROM nope", "SELECT 1", reasoning=False) == pytest.approx(0.2)
    assert sql("bird_wor_train", "SELEC 1", "SELECT 1", reasoning=False) == 0  # syntax error
    # a DROP in the prediction never reaches the real file
    sql("spider_train", "DROP TABLE singer", "SELECT Name FROM singer")
    assert run_sql_on_copy("SELECT count(*) FROM singer", db) == [(8,)]


# ---- profile selection and compute_score -----------------------------------------------------

def test_profile_resolution(monkeypatch):
    monkeypatch.delenv("DEEPRETRIEVAL_PROFILE", raising=False)
    assert resolve_profile("scifact") == "default"                # our task name
    assert resolve_profile("pubmed") == "default"                 # ours too (same spelling)
    assert resolve_profile("scifact_train") == "paper"            # original names
    assert resolve_profile("nq_serini") == "paper"
    assert resolve_profile("scifact_train", profile="default") == "default"
    assert resolve_profile("scifact", {"profile": "paper"}) == "paper"
    monkeypatch.setenv("DEEPRETRIEVAL_PROFILE", "paper")
    assert resolve_profile("scifact") == "paper"
    assert resolve_profile("scifact", {"profile": "default"}) == "default"
    with pytest.raises(ValueError, match="known: \\['default', 'paper'\\]"):
        resolve_profile("scifact", profile="papr")
    assert paper_data_source("scifact", {"split": "test"}) == "scifact_test"
    assert paper_data_source("nq", {"split": "train"}) == "nq_serini_train"
    with pytest.raises(ValueError, match="no reward"):
        paper_data_source("ctgov_no_reason", {})


from deepretrieval.search.answer_ranks import search_ranking_answers  # noqa: E402


class FakeSearcher:
    """Our searcher interface over fixed lists; records the calls."""

    def __init__(self, ids=(), texts=None):
        self.ids, self.texts, self.calls = list(ids), texts, []

    def search(self, index, queries, k, return_text=False, options=None):
        self.calls.append((index, list(queries), k, return_text, options))

        def plain(queries, k, *, return_text=False, options=None):
            texts = list(self.texts)[:k] if return_text else None
            return [SearchResult(ids=self.ids[:k], scores=[1.0] * len(self.ids[:k]), texts=texts)
                    for _ in queries]

        # the evidence option `answers`, as a text-returning backend takes it
        return search_ranking_answers(plain, "fake", queries, k, return_text, options)

    async def asearch(self, *args, **kwargs):
        return self.search(*args, **kwargs)


def test_compute_score_paper_vs_default_on_our_task(monkeypatch):
    monkeypatch.delenv("DEEPRETRIEVAL_PROFILE", raising=False)
    gt = {"target": ["d1"]}
    bad_json = "<think>x</think>\n<answer>not json</answer>"
    searcher = FakeSearcher(ids=["d1"])
    assert compute_score("pubmed", bad_json, gt, {}, searcher=searcher)["score"] == -4.0
    assert compute_score("pubmed", bad_json, gt, {"profile": "paper"}, searcher=searcher)["score"] == -3.0
    monkeypatch.setenv("DEEPRETRIEVAL_PROFILE", "paper")
    out = compute_score("pubmed", "<think>x</think>\n<answer>{\"query\": \"q\"}</answer>", gt,
                        {"pub_date": "2020/01/01"}, searcher=searcher)
    assert out["score"] == 6.0 and out["recall"] == 1.0 and out["format_ok"] is True
    index, queries, k, _, options = searcher.calls[-1]
    assert (index, queries, k) == ("pubmed", ["q"], 3000)
    assert options == {"mindate": "1970/01/01", "maxdate": "2020/01/01"}


def test_compute_score_original_row_response_only(monkeypatch):
    """verl passes the response alone; the prompt's open <think> is put back."""
    monkeypatch.delenv("DEEPRETRIEVAL_PROFILE", raising=False)
    searcher = FakeSearcher(ids=["z"] * 3 + ["D1"])
    out = compute_score("scifact_train", "plan</think>\n<answer>{\"query\": \"q\"}</answer>",
                        {"target": "D1"}, {"split": "train"}, searcher=searcher)
    assert searcher.calls[-1][2] == 50
    assert out["score"] == pytest.approx(0.1 + 1 / np.log2(5))
    # the same with profile default: our tables and depth
    out = compute_score("scifact_train", "plan</think>\n<answer>{\"query\": \"q\"}</answer>",
                        {"target": "D1"}, {"split": "train"}, searcher=searcher, profile="default")
    assert searcher.calls[-1][2] == 1000


def test_compute_score_paper_evidence_and_async(monkeypatch):
    import asyncio
    from deepretrieval.rewards import compute_score_async

    monkeypatch.delenv("DEEPRETRIEVAL_PROFILE", raising=False)
    searcher = FakeSearcher(ids=["1", "2"], texts=["who is there", "The Who played"])
    text = "<think>x</think><answer>{\"query\": \"band\"}</answer>"
    gt = {"target": ["The Who"]}
    for profile in ("default", "paper"):
        out = compute_score("nq", text, gt, {"profile": profile}, searcher=searcher)
        assert out["first_hit_rank"] == 2 and out["score"] == 5.0 + 1.0
        got = asyncio.run(compute_score_async("nq", text, gt, {"profile": profile}, searcher=searcher))
        assert got == out


# ---- DPR has_answers ---------------------------------------------------------------------------

NFD_E = unicodedata.normalize("NFD", "é")


@pytest.mark.parametrize("passage, answer, expected", [
    ("who is there", "The Who", False),            # articles are kept
    ("The Who played in 1969", "The Who", True),
    ("Served in the US Army", "U.S.", False),      # u . s . ≠ us
    ("Served in the u.s army", "U.S.", False),     # the final "." is a token
    ("Served in the U.S. Army", "u.s.", True),
    ("Pelé scored", "Pele", False),                # accents are not removed
    ("Pele scored", "Pelé", False),
    (f"Pel{NFD_E} scored", "Pelé", True),          # NFC answer, NFD passage
    ("Jean Paul Sartre", "Jean-Paul", False),      # "-" is a token
    ("Jean-Paul Sartre", "jean-paul", True),
    ("about 1000 men", "1,000", False),
    ("about 1,000 men", "1,000", True),
    ("東京は首都", "東京", False),                  # one letter run is one token
    ("a party", "art", False),                     # whole tokens
    ("AT & T", "AT&T", True),                      # symbols are tokens either way
    ("Rock 'n' roll", "rock 'n' roll", True),
    ("anything", "", True),                        # pyserini: an empty answer matches
])
def test_dpr_has_answer_table(passage, answer, expected):
    assert dpr_match.has_answer(passage, [answer]) is expected


def test_dpr_tokens_agree_with_the_regex_definition():
    regex = pytest.importorskip("regex")
    pattern = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
                            flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)
    samples = ["The Who", "U.S.A. — 1,000 km²", "Beyoncé's \"Halo\"", "東京は首都です。",
               "naïve café\tnew-line\nend", "x\u200by", "emoji 🙂 ok", "Ω≈ç√∫", "a_b"]
    for text in samples:
        nfd = unicodedata.normalize("NFD", text)
        expected = [m.group().lower() for m in pattern.finditer(nfd)]
        assert dpr_match.tokens(text) == expected, text


def test_dpr_non_string_answer_raises():
    with pytest.raises(TypeError):
        dpr_match.has_answer("text", [3])


# ---- the paper profile's SQL sandbox (issue 29 item 7) ------------------------------------------

PAPER_SQL_CHILD = """
import json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from deepretrieval.paper.sql import SQLiteCopy, run_sql_on_copy
payloads, db = json.loads(sys.stdin.read())
out = {"_base_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
for name, sql in payloads.items():
    with SQLiteCopy(db) as copy:
        t0 = time.monotonic()
        try:
            rows = run_sql_on_copy(sql, copy.path, timeout_s=1.0)
            got = {"rows": len(rows)}
        except Exception as exc:
            got = {"error": type(exc).__name__ + ": " + str(exc)[:200]}
        got["elapsed"] = time.monotonic() - t0
    out[name] = got
out["_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
"""


@pytest.mark.slow
def test_paper_sql_writes_no_file_and_is_bounded(tmp_path):
    """`VACUUM INTO` / `ATTACH` created files anywhere the process could write; runaway statements
    ran 30 s and took 1-2 GB. Now the default profile's bounds apply (sandbox in
    ``search.sql.lock_down``): refused statements give no rows without running, the heap ceiling,
    value-length limit, deadline and row / byte caps hold — in a child under a 3 GB address-space
    cap with a 128 MB SQLite heap ceiling."""
    from test_sql_bounds import HEAP_LIMIT, PAYLOADS  # (pytest puts tests/ on sys.path)
    from deepretrieval.paper.check import BUNDLED_DB_ROOT
    from deepretrieval.paper.sql import SQL_OVER_CAPS
    from deepretrieval.search.sql import TIME_MARGIN_S

    targets = tmp_path / "targets"
    targets.mkdir()
    writers = {}
    for i, fmt in enumerate(["VACUUM INTO '{p}'", "ATTACH DATABASE '{p}' AS x{i}", "ATTACH '{p}' AS main2",
                             "VACUUM main INTO '{p}'", "ATTACH DATABASE 'file:{p}?mode=rwc' AS y"]):
        writers[f"writer{i}"] = fmt.format(p=targets / f"made_by_model_{i}.sqlite", i=i)
    on_singer = {k: v.replace("flights", "singer").replace("FlightNo", "Name") for k, v in PAYLOADS.items()}
    hostile = {**on_singer, **writers,
               "zeroblob": "SELECT zeroblob(900000000)",
               "doubling": "WITH RECURSIVE d(x) AS (SELECT 'ab' UNION ALL SELECT x || x FROM d) "
                           "SELECT length(x) FROM d",
               "many_rows_small": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
               "heap_pragma": "PRAGMA hard_heap_limit=0", "schema_pragma": "PRAGMA writable_schema=ON",
               "extension": "SELECT load_extension('/tmp/x')", "plain_vacuum": "VACUUM",
               "select": "SELECT Name FROM singer"}
    db = BUNDLED_DB_ROOT / "singer" / "singer.sqlite"
    before = db.read_bytes()
    env = {**os.environ, "TMPDIR": str(tmp_path), "SQLITE_TMPDIR": str(tmp_path),
           "DEEPRETRIEVAL_SQL_HEAP_LIMIT": str(HEAP_LIMIT)}
    proc = subprocess.run([sys.executable, "-c", PAPER_SQL_CHILD], input=json.dumps([hostile, str(db)]),
                          env=env, capture_output=True, text=True, timeout=300, cwd=targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(targets.iterdir()) == [] and db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["targets"]  # no temp file left either
    for name in writers:
        assert out[name] == {"rows": 0, "elapsed": out[name]["elapsed"]}, (name, out[name])
    assert out["select"]["rows"] == 8
    for name, r in out.items():
        if not name.startswith("_"):
            assert r["elapsed"] <= 1.0 + TIME_MARGIN_S, (name, r)
            assert "rows" in r or "too big" in r["error"] or "memory" in r["error"].lower() \
                or SQL_OVER_CAPS in r["error"], (name, r)
    assert "too big" in out["zeroblob"]["error"] and SQL_OVER_CAPS in out["many_rows_small"]["error"]
    # SQLite's heap (<= the ceiling, 1.5x overhead), the capped result held as Python rows
    assert out["_maxrss_kb"] <= out["_base_kb"] + (3 * HEAP_LIMIT + 4 * (32 << 20)) // 1024, out
