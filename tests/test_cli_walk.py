"""The bad-input walk: a table of user errors over every command, each run in-process through
``deepretrieval.cli.main``. Every case must exit non-zero with an ``error:`` line on stderr and
no Python traceback (an exception escaping ``main`` is the traceback the user would see), and
must leave no output behind (``{out}`` paths are checked after the run)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deepretrieval.cli import main


NO_SUCH = "/no/such/path"
# name: (argv, environment, paths that must not exist afterwards)
CASES = {
    # search ------------------------------------------------------------------------------
    "search: unknown index": (["search", "--index", "no_such_index_xyz", "q"], {}, []),
    "search: meta.json is a list": (["search", "--index", "{listmeta}", "q"], {}, []),
    "search: meta.json is a string": (["search", "--index", "{strmeta}", "q"], {}, []),
    "search: meta.json garbled": (["search", "--index", "{badmeta}", "q"], {}, []),
    "search: unknown index type": (["search", "--index", "{typemeta}", "q"], {}, []),
    "search: index folder without meta.json": (["search", "--index", "{emptydir}", "q"], {}, []),
    "search: bm25 index without its files": (["search", "--index", "{bm25meta}", "q"], {}, []),
    "search: sqlite index of a missing db": (["search", "--index", "{nodbmeta}", "SELECT 1"], {}, []),
    "search: sqlite index of a non-db": (["search", "--index", "{notdbmeta}", "SELECT 1"], {}, []),
    "search: sqlite index without path": (["search", "--index", "{nopathmeta}", "SELECT 1"], {}, []),
    "search: -k 0": (["search", "--index", "spider/singer", "-k", "0", "SELECT 1"], {}, []),
    "search: -k negative": (["search", "--index", "spider/singer", "-k", "-3", "SELECT 1"], {}, []),
    "search: -k not a number": (["search", "--index", "spider/singer", "-k", "many", "SELECT 1"], {}, []),
    "search: refused SQL": (["search", "--index", "spider/singer", "DROP TABLE singer"], {}, []),
    "search: SQL heap limit env not a number": (
        ["search", "--index", "spider/singer", "SELECT 1"], {"DEEPRETRIEVAL_SQL_HEAP_LIMIT": "lots"}, []),
    "search: index dir env is a file": (
        ["search", "--index", "my_index", "q"], {"DEEPRETRIEVAL_INDEX_DIR": "{plain}"}, []),
    "search: DEEPRETRIEVAL_INDEXES garbled": (
        ["search", "--index", "spider/singer", "SELECT 1"], {"DEEPRETRIEVAL_INDEXES": "no-equals-sign"}, []),
    "search: frozen-cache env not a bool": (
        ["search", "--index", "pubmed", "q"], {"DEEPRETRIEVAL_CACHE_FROZEN": "perhaps",
                                                "DEEPRETRIEVAL_PUBMED_URL": "http://127.0.0.1:9"}, []),
    "baseline: service timeout env not a number": (
        ["baseline", "--rows", "{rows}"],
        {"DEEPRETRIEVAL_SEARCH_URL": "http://127.0.0.1:9", "DEEPRETRIEVAL_SEARCH_TIMEOUT": "soon"}, []),
    "baseline: service unreachable": (
        ["baseline", "--rows", "{rows}"],
        {"DEEPRETRIEVAL_SEARCH_URL": "http://127.0.0.1:9", "DEEPRETRIEVAL_SEARCH_TIMEOUT": "2",
         "DEEPRETRIEVAL_SEARCH_RETRIES": "0"}, []),
    # index / index-dense / sql-index -----------------------------------------------------
    "index: corrupt gzip corpus": (["index", "--corpus", "{badgz}", "--name", "x", "--out", "{tmp}/o1"], {}, ["{tmp}/o1"]),
    "index: corrupt json corpus": (["index", "--corpus", "{badjson_corpus}", "--name", "x", "--out", "{tmp}/o2"], {}, ["{tmp}/o2"]),
    "index: corpus lines are lists": (["index", "--corpus", "{list_corpus}", "--name", "x", "--out", "{tmp}/o3"], {}, ["{tmp}/o3"]),
    "index: documents without _id": (["index", "--corpus", "{noid_corpus}", "--name", "x", "--out", "{tmp}/o4"], {}, ["{tmp}/o4"]),
    "index: empty corpus": (["index", "--corpus", "{empty}", "--name", "x", "--out", "{tmp}/o5"], {}, ["{tmp}/o5"]),
    "index: missing corpus": (["index", "--corpus", NO_SUCH, "--name", "x", "--out", "{tmp}/o6"], {}, ["{tmp}/o6"]),
    "index: corpus is a folder": (["index", "--corpus", "{emptydir}", "--name", "x", "--out", "{tmp}/o7"], {}, ["{tmp}/o7"]),
    "index: --out is a file": (["index", "--corpus", "{corpus}", "--name", "x", "--out", "{plain}"], {}, []),
    "index: --out under a file": (["index", "--corpus", "{corpus}", "--name", "x", "--out", "{plain}/sub"], {}, []),
    "index: --k1 not a number": (["index", "--corpus", "{corpus}", "--name", "x", "--k1", "big"], {}, []),
    "index: progress env not a bool": (["index", "--corpus", "{corpus}", "--name", "x", "--out", "{tmp}/o8"],
                                       {"DEEPRETRIEVAL_PROGRESS": "maybe"}, ["{tmp}/o8"]),
    "index: BM25 build workers env not a number": (["index", "--corpus", "{corpus}", "--name", "x", "--out", "{tmp}/o9"],
                                             {"DEEPRETRIEVAL_BM25_BUILD_WORKERS": "many"}, ["{tmp}/o9"]),
    "index-dense: missing corpus": (["index-dense", "--corpus", NO_SUCH, "--name", "x", "--out", "{tmp}/d1"], {}, ["{tmp}/d1"]),
    "index-dense: missing model": (["index-dense", "--corpus", "{corpus}", "--name", "x", "--model", NO_SUCH,
                                    "--out", "{tmp}/d2"], {}, ["{tmp}/d2"]),
    "sql-index: missing db": (["sql-index", "--db", NO_SUCH, "--name", "x", "--out", "{tmp}/s1"], {}, ["{tmp}/s1"]),
    "sql-index: not a database": (["sql-index", "--db", "{plain}", "--name", "x", "--out", "{tmp}/s2"], {}, ["{tmp}/s2"]),
    "sql-index: negative timeout": (["sql-index", "--db", "{spider_db}", "--name", "x", "--timeout", "-1",
                                     "--out", "{tmp}/s3"], {}, ["{tmp}/s3"]),
    "sql-index: --out is a file": (["sql-index", "--db", "{spider_db}", "--name", "x", "--out", "{plain}"], {}, []),
    # prepare -----------------------------------------------------------------------------
    "prepare scifact: --out is a file": (["prepare", "scifact", "--out", "{plain}"], {}, []),
    "prepare beir: missing corpus": (["prepare", "beir", "--corpus", NO_SUCH, "--queries", NO_SUCH, "--qrels",
                                      NO_SUCH, "--name", "mine", "--out", "{tmp}/p1",
                                      "--index_dir", "{tmp}/pi1"], {}, ["{tmp}/p1"]),
    "prepare sql: missing db": (["prepare", "sql", "--db", NO_SUCH, "--questions", NO_SUCH, "--out", "{tmp}/p2"],
                                {}, ["{tmp}/p2"]),
    "prepare sql: questions not json": (["prepare", "sql", "--db", "{spider_db}", "--questions", "{plain}",
                                         "--out", "{tmp}/p3"], {}, ["{tmp}/p3"]),
    "prepare sql: bad test fraction": (["prepare", "sql", "--db", "{spider_db}", "--questions", "{plain}",
                                        "--test_fraction", "2", "--out", "{tmp}/p4"], {}, ["{tmp}/p4"]),
    "prepare pico: missing reviews": (["prepare", "pico", "--reviews", NO_SUCH, "--out", "{tmp}/p5"], {}, ["{tmp}/p5"]),
    "prepare pico: reviews not json": (["prepare", "pico", "--reviews", "{plain}", "--out", "{tmp}/p6"], {}, ["{tmp}/p6"]),
    "prepare nq: missing input": (["prepare", "nq", "--index", "wikipedia", "--input", NO_SUCH,
                                   "--out", "{tmp}/p7"], {}, ["{tmp}/p7"]),
    "prepare spider: missing folder": (["prepare", "spider", "--spider-dir", NO_SUCH, "--out", "{tmp}/p8"],
                                       {}, ["{tmp}/p8"]),
    "prepare qa: missing input": (["prepare", "qa", "--set", "nq", "--input", NO_SUCH, "--index", "wikipedia",
                                   "--out", "{tmp}/p9"], {}, ["{tmp}/p9"]),
    # convert / paper-check / mirror ------------------------------------------------------
    "convert: missing input": (["convert", "--in", NO_SUCH, "--out", "{tmp}/c1.parquet"], {}, ["{tmp}/c1.parquet"]),
    "convert: input not parquet": (["convert", "--in", "{plain}", "--out", "{tmp}/c2.parquet"], {}, ["{tmp}/c2.parquet"]),
    "convert: truncated parquet": (["convert", "--in", "{truncated}", "--out", "{tmp}/c3.parquet"], {}, ["{tmp}/c3.parquet"]),
    "convert: rows without the original columns": (["convert", "--in", "{nocols}", "--out", "{tmp}/c4.parquet"],
                                                  {}, ["{tmp}/c4.parquet"]),
    "paper-check: missing file": (["paper-check", NO_SUCH], {}, []),
    "paper-check: not parquet": (["paper-check", "{plain}"], {}, []),
    "paper-check: wrong columns": (["paper-check", "{nocols}"], {}, []),
    "mirror pubmed: missing folder": (["mirror", "pubmed", "--from", NO_SUCH, "--out", "{tmp}/m1"], {}, ["{tmp}/m1"]),
    "mirror ctgov: a file, not a folder": (["mirror", "ctgov", "--from", "{plain}", "--out", "{tmp}/m2"], {}, ["{tmp}/m2"]),
    "mirror pubmed: empty folder": (["mirror", "pubmed", "--from", "{emptydir}", "--out", "{tmp}/m3"], {}, ["{tmp}/m3"]),
    # cache -------------------------------------------------------------------------------
    "cache stats: not a database": (["cache", "stats", "--cache", "{plain}"], {}, []),
    "cache stats: missing cache": (["cache", "stats", "--cache", "{tmp}/none.sqlite"], {}, ["{tmp}/none.sqlite"]),
    "cache export: missing cache": (["cache", "export", "{tmp}/e1.jsonl", "--cache", "{tmp}/none.sqlite"], {},
                                    ["{tmp}/none.sqlite", "{tmp}/e1.jsonl"]),
    "cache export: not a database": (["cache", "export", "{tmp}/e2.jsonl", "--cache", "{plain}"], {}, ["{tmp}/e2.jsonl"]),
    "cache export: out under a file": (["cache", "export", "{plain}/e.jsonl", "--cache", "{cache}"], {}, []),
    "cache import: not an export": (["cache", "import", "{plain}", "--cache", "{tmp}/new1.sqlite"], {}, ["{tmp}/new1.sqlite"]),
    "cache import: garbled json lines": (["cache", "import", "{badjsonl}", "--cache", "{tmp}/new2.sqlite"], {}, ["{tmp}/new2.sqlite"]),
    "cache import: corrupt gzip": (["cache", "import", "{badgz}", "--cache", "{tmp}/new3.sqlite"], {}, ["{tmp}/new3.sqlite"]),
    "cache import: missing file": (["cache", "import", NO_SUCH, "--cache", "{tmp}/new4.sqlite"], {}, ["{tmp}/new4.sqlite"]),
    "cache import: into a non-database": (["cache", "import", "{badjsonl}", "--cache", "{plain}"], {}, []),
    "cache: cache env is a folder": (["cache", "stats"], {"DEEPRETRIEVAL_CACHE": "{emptydir}"}, []),
    # baseline ----------------------------------------------------------------------------
    "baseline: missing rows": (["baseline", "--rows", NO_SUCH], {}, []),
    "baseline: rows not parquet": (["baseline", "--rows", "{plain}"], {}, []),
    "baseline: truncated parquet": (["baseline", "--rows", "{truncated}"], {}, []),
    "baseline: garbled parquet": (["baseline", "--rows", "{garbled}"], {}, []),
    "baseline: rows without task columns": (["baseline", "--rows", "{nocols}"], {}, []),
    "baseline: no rows": (["baseline", "--rows", "{emptyrows}"], {}, []),
    "baseline: rows is a folder": (["baseline", "--rows", "{emptydir}"], {}, []),
    "baseline: unknown task": (["baseline", "--task", "no_such_task"], {}, []),
    "baseline: unknown split": (["baseline", "--task", "scifact", "--split", "nope"], {}, []),
    "baseline: unknown index": (["baseline", "--rows", "{rows}", "--index", "no_such_index_xyz"], {}, []),
    # serve -------------------------------------------------------------------------------
    "serve: unknown index": (["serve", "--index", "no_such_index_xyz", "--no-warmup"], {}, []),
    "serve: index path missing": (["serve", "--index", f"x={NO_SUCH}", "--no-warmup"], {}, []),
    "serve: port out of range": (["serve", "--index", "spider/singer", "--port", "99999", "--no-warmup"], {}, []),
    "serve: zero workers": (["serve", "--index", "spider/singer", "--workers", "0", "--no-warmup"], {}, []),
    "serve: negative request timeout": (["serve", "--index", "spider/singer", "--request-timeout-s", "-1",
                                         "--no-warmup"], {}, []),
    # train / export ----------------------------------------------------------------------
    "train: unknown task": (["train", "--task", "nope", "--dry-run", "--out", "{tmp}/t1"], {}, []),
    "train: --data missing": (["train", "--task", "scifact", "--no-service", "--data", NO_SUCH,
                               "--out", "{tmp}/t2"], {}, []),
    "train: unknown verl config": (["train", "--task", "scifact", "--engine", "verl", "--config", "nope",
                                    "--dry-run", "--search-url", "http://127.0.0.1:9", "--out", "{tmp}/t3"], {}, []),
    "train: --out is a file": (["train", "--task", "scifact", "--dry-run", "--no-service", "--out", "{plain}"], {}, []),
    "train: override not KEY=VALUE": (["train", "--task", "scifact", "--no-service", "--data", "{tmp}/tdata",
                                       "--out", "{tmp}/t4", "warmup"], {}, []),
    "export: missing checkpoint": (["export", NO_SUCH, "--out", "{tmp}/x1"], {}, ["{tmp}/x1"]),
    "export: folder without a model": (["export", "{emptydir}", "--out", "{tmp}/x2"], {}, ["{tmp}/x2"]),
    # eval / eval-compare / rewrite / ask -------------------------------------------------
    "eval: missing model": (["eval", "--model", NO_SUCH, "--task", "scifact_no_reason", "--limit", "1",
                             "--no-baseline", "--out", "{tmp}/r1"], {}, ["{tmp}/r1"]),
    "eval: unknown task": (["eval", "--model", NO_SUCH, "--task", "nope", "--out", "{tmp}/r2"], {}, ["{tmp}/r2"]),
    "eval: missing rows": (["eval", "--model", NO_SUCH, "--rows", NO_SUCH, "--out", "{tmp}/r3"], {}, ["{tmp}/r3"]),
    "eval: rows not parquet": (["eval", "--model", NO_SUCH, "--rows", "{plain}", "--out", "{tmp}/r4"], {}, ["{tmp}/r4"]),
    "eval: --out is a file": (["eval", "--model", NO_SUCH, "--task", "scifact_no_reason", "--out", "{plain}"], {}, []),
    "eval: api unreachable": (["eval", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--task",
                               "scifact_no_reason", "--limit", "1", "--no-baseline", "--max-retries", "0",
                               "--no-cache", "--out", "{tmp}/r5"], {}, ["{tmp}/r5"]),
    "eval-compare: missing run": (["eval-compare", NO_SUCH], {}, []),
    "eval-compare: folder without run.json": (["eval-compare", "{emptydir}"], {}, []),
    "eval-compare: run.json garbled": (["eval-compare", "{badrun}"], {}, []),
    "eval-compare: run.json a list": (["eval-compare", "{listrun}"], {}, []),
    "rewrite: unknown task": (["rewrite", "--task", "nope", "--model", NO_SUCH, "q"], {}, []),
    "rewrite: missing model": (["rewrite", "--task", "scifact_no_reason", "--model", NO_SUCH, "q"], {}, []),
    "ask: missing model": (["ask", "--model", NO_SUCH, "--search-url", "http://127.0.0.1:9", "q"], {}, []),
    "ask: unknown task": (["ask", "--task", "nope", "--model", NO_SUCH, "--search-url", "http://127.0.0.1:9",
                           "q"], {}, []),
}


def _fill(text: str, values: dict) -> str:
    return text.format(**values)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case, bad_inputs, tmp_path, capsys, monkeypatch):
    from deepretrieval.search.live.cache import SearchCache
    from deepretrieval.search.sql import bundled_databases

    values = {k: str(v) for k, v in bad_inputs.items()}
    values["tmp"] = str(tmp_path)
    values["spider_db"] = str(bundled_databases()["spider/singer"])
    values["cache"] = str(tmp_path / "cache.sqlite")
    SearchCache(tmp_path / "cache.sqlite").close()
    (tmp_path / "tdata").mkdir()
    for split in ("train", "test"):
        shutil.copy(bad_inputs["rows"], tmp_path / "tdata" / f"{split}.parquet")
    argv_t, env, gone = CASES[case]
    for key, value in env.items():
        monkeypatch.setenv(key, _fill(value, values))
    argv = [_fill(a, values) for a in argv_t]
    try:
        rc = main(argv)   # an exception escaping here is the traceback the user would see
    except SystemExit as exc:   # argparse's usage errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc not in (0, None), (case, err)
    assert "Traceback" not in err and "error:" in err, (case, err)
    for path in gone:
        assert not Path(_fill(path, values)).exists(), (case, "left behind", path)
