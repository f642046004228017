"""Every user error ends in one ``error: ...`` line and a non-zero exit, never a Python traceback;
commands whose searches failed exit non-zero; ``search`` names the kind of failure; other
libraries' DEBUG/INFO lines stay out of the output unless ``-v``."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from deepretrieval.cli import configure_logging, main


CASES = {
    "missing index": ["search", "--index", "no_such_index_xyz", "q"],
    "meta.json is a list": ["search", "--index", "{listmeta}", "q"],
    "corrupt gzip corpus": ["index", "--corpus", "{badgz}", "--name", "x_bad"],
    "corrupt json corpus": ["index", "--corpus", "{badjson_corpus}", "--name", "x_bad2"],
    "missing corpus": ["index", "--corpus", "/no/such/corpus.jsonl", "--name", "x_bad3"],
    "--out is a file": ["prepare", "scifact", "--out", "{plain}"],
    "cache stats on a non-database": ["cache", "stats", "--cache", "{plain}"],
    "cache import of a non-export": ["cache", "import", "{plain}", "--cache", "{tmp}/new.sqlite"],
    "missing rows": ["baseline", "--rows", "/no/such/rows.parquet"],
    "rows not parquet": ["baseline", "--rows", "{plain}"],
    "unknown task": ["baseline", "--task", "no_such_task"],
    "refused SQL": ["search", "--index", "spider/singer", "DROP TABLE singer"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, bad_inputs, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, **{k: str(v) for k, v in bad_inputs.items()}) for a in CASES[case]]
    rc = main(argv)   # an exception escaping here is the traceback the user would see
    err = capsys.readouterr().err
    assert rc != 0, (case, err)
    assert "Traceback" not in err and "error:" in err, (case, err)
    assert not (tmp_path / "new.sqlite").exists()   # a failed import leaves no database behind


def test_search_reports_the_error_kind(capsys):
    assert main(["search", "--index", "spider/singer", "DROP TABLE singer", "SELECT count(*) FROM singer"]) == 1
    err = capsys.readouterr().err
    assert "SQL error (denied)" in err and "DROP TABLE singer" in err


def test_search_on_a_frozen_cache_miss_fails_loudly(tmp_path, capsys, monkeypatch):
    from deepretrieval.search.live.cache import SearchCache
    SearchCache(tmp_path / "frozen.sqlite").close()     # an existing cache without this query
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "frozen.sqlite"))
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE_FROZEN", "1")
    monkeypatch.setenv("DEEPRETRIEVAL_PUBMED_URL", "http://127.0.0.1:9")   # never reached
    assert main(["search", "--index", "pubmed", "heart attack"]) == 1
    err = capsys.readouterr().err
    assert "search error" in err and "cache miss" in err


def test_baseline_exits_non_zero_when_searches_fail(tmp_path, capsys):
    from deepretrieval.catalog import bundled_rows
    from deepretrieval.data.rows import write_parquet
    rows = bundled_rows("scifact", "test")[:5]
    rows = [{**r, "extra_info": {**r["extra_info"], "search_index": "no_such_index_xyz"}} for r in rows]
    write_parquet(rows, tmp_path / "rows.parquet")
    assert main(["baseline", "--rows", str(tmp_path / "rows.parquet"), "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["search_error_rate"] == 1.0
    assert "5 of 5 searches failed" in out.err


def test_third_party_info_is_silenced_unless_verbose(capsys):
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        for verbose in (False, True):
            root.handlers.clear()
            configure_logging(verbose)
            logging.getLogger("bm25s").debug("bm25 debug line")
            # a library logger at INFO (torch's own loggers change their levels once torch is
            # imported, so a name of our own stands in for them)
            logging.getLogger("thirdparty_lib.cache").info("FakeTensor cache stats")
            logging.getLogger("deepretrieval.x").info("our message")
            err = capsys.readouterr().err
            assert "our message" in err
            assert ("bm25 debug line" in err) is verbose and ("FakeTensor" in err) is verbose
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        logging.getLogger("deepretrieval").setLevel(logging.NOTSET)


@pytest.mark.slow
def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deepretrieval.cli", "search", "--index",
                           "no_such_index_xyz", "q"], capture_output=True, text=True,
                          env={**os.environ, "DEEPRETRIEVAL_INDEX_DIR": str(tmp_path)}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: unknown index 'no_such_index_xyz'")
