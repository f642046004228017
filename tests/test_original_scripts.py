"""The original DeepRetrieval's script names (``code/scripts/{train,eval}/**.sh`` at
pat-jj/DeepRetrieval@001a563) exist here and map onto our CLI for their task; tasks whose data is
not here fail with one clear line naming the ``prepare`` / ``download`` command; the original's
``download_datasets.py`` flags still work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepretrieval.paper.presets import PAPER_RUNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

#: the original's script names (its code/scripts/ folder)
ORIGINAL_TRAIN = [
    "bird", "cold_start", "ctgov", "ctgov_32", "dense/fever", "dense/hotpotqa", "dense/msmarco_beir",
    "dense/nfcorpus", "dense/scifact", "fever", "fiqa", "hotpotqa", "msmarco", "msmarco_beir",
    "msmarco_dense", "nfcorpus", "nq", "nq_no_reason", "pmd_no_reason", "pubmed", "pubmed_32", "scifact",
    "spider", "sql_all", "squad", "squad_no_reason", "tqa_no_reason", "triviaqa", "wikisql"]
ORIGINAL_EVAL = [
    "BM25/claude", "BM25/claude_no_reason", "BM25/gpt", "BM25/gpt_no_reason", "Dense/claude",
    "Dense/claude_no_reason", "Dense/gpt", "Dense/gpt_no_reason", "Dense/msmarco_subset/claude",
    "Dense/msmarco_subset/claude_no_reason", "Dense/msmarco_subset/gpt",
    "Dense/msmarco_subset/gpt_no_reason", "bird", "ctgov", "ctgov_32", "evi_gpt_claude", "msmarco", "nq",
    "pmd_no_reason", "pubmed", "pubmed_32", "spider", "squad", "tqa"]


def test_every_original_script_name_exists():
    for kind, names in (("train", ORIGINAL_TRAIN), ("eval", ORIGINAL_EVAL)):
        for name in names:
            path = SCRIPTS / kind / f"{name}.sh"
            assert path.is_file(), path
            assert os.access(path, os.X_OK), f"{path} is not executable"


@pytest.mark.slow
def test_every_script_parses():
    scripts = sorted(SCRIPTS.rglob("*.sh"))
    assert len(scripts) >= len(ORIGINAL_TRAIN) + len(ORIGINAL_EVAL)
    for path in scripts:
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


@pytest.fixture
def echo(tmp_path):
    """Run a script with ``deepretrieval`` replaced by a command that prints its arguments."""
    fake = tmp_path / "fake-deepretrieval"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)

    def run(script: str, *args: str, **env: str) -> list[str]:
        full = {k: v for k, v in os.environ.items() if k not in ("MODEL", "DATA", "ROWS", "TASK", "SPLIT")}
        full.update(env, DEEPRETRIEVAL=str(fake))
        proc = subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True,
                              env=full, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()
    return run


def _opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_train_scripts_map_to_their_task(echo):
    # every script the ppo preset names (paper.presets.PAPER_RUNS) trains that preset's task
    for task, run in PAPER_RUNS.items():
        argv = echo(f"train/{run.script}", "--dry-run", "trainer.total_epochs=1")
        assert argv[0] == "train" and _opt(argv, "--task") == task, (run.script, argv)
        assert _opt(argv, "--config") == "ppo" and argv[-2:] == ["--dry-run", "trainer.total_epochs=1"]
    assert _opt(echo("train/pubmed_32.sh"), "--model") == "meta-llama/Llama-3.2-3B-Instruct"
    assert _opt(echo("train/msmarco.sh"), "--task") == "msmarco_sparse_train"
    argv = echo("train/triviaqa.sh", ENGINE="trl", INIT_FROM="runs/nq/model", INDEX="wikipedia=/idx")
    assert _opt(argv, "--engine") == "trl" and "--config" not in argv
    assert _opt(argv, "--init-from") == "runs/nq/model" and _opt(argv, "--index") == "wikipedia=/idx"


def test_train_scripts_pick_up_the_original_data_folders(echo, tmp_path):
    for folder in ("data/local_index_search/fever", "data/local_index_search/msmarco_tech/sparse"):
        (tmp_path / folder).mkdir(parents=True)
        for name in ("train.parquet", "test.parquet"):
            (tmp_path / folder / name).write_bytes(b"")
    assert _opt(echo("train/fever.sh"), "--data") == "data/local_index_search/fever"
    assert _opt(echo("train/msmarco.sh", DOMAIN="tech"), "--data") == "data/local_index_search/msmarco_tech/sparse"
    assert _opt(echo("train/fever.sh", DATA="mine"), "--data") == "mine"  # DATA wins
    assert "--data" not in echo("train/hotpotqa.sh")  # no such folder: our default


def test_eval_scripts_map_to_their_task(echo, tmp_path):
    argv = echo("eval/pubmed_32.sh", "--limit", "2")  # no model given: the released checkpoint
    assert argv[:3] == ["eval", "--model", "DeepRetrieval/DeepRetrieval-PubMed-3B-Llama"]
    assert _opt(argv, "--task") == "pubmed" and argv[-2:] == ["--limit", "2"]
    assert _opt(echo("eval/tqa.sh", "my/model"), "--model") == "my/model"
    assert _opt(echo("eval/squad.sh"), "--task") == "squad"
    assert _opt(echo("eval/spider.sh"), "--model") == "DeepRetrieval/DeepRetrieval-SQL-7B"
    assert _opt(echo("eval/nq.sh"), "--split") == "dev"
    assert _opt(echo("eval/bird.sh", "m"), "--task") == "bird"
    # the original's preprocessed test file, when present, is evaluated (original prompts: auto)
    rows = tmp_path / "data/search_engine/pubmed_32/test_full.parquet"
    rows.parent.mkdir(parents=True)
    rows.write_bytes(b"")
    argv = echo("eval/pubmed_32.sh")
    assert _opt(argv, "--rows") == "data/search_engine/pubmed_32/test_full.parquet" and "--task" not in argv
    # API baselines: DATASET [MODEL_NAME], the original's model aliases
    argv = echo("eval/BM25/gpt.sh", "fever", "gpt-35")
    assert _opt(argv, "--model") == "openai:gpt-3.5-turbo" and _opt(argv, "--task") == "fever"
    argv = echo("eval/Dense/claude_no_reason.sh", "nfcorpus", ANTHROPIC_API_KEY="k")
    assert _opt(argv, "--model") == "openai:claude-3-5-sonnet-20240620"
    assert _opt(argv, "--task") == "nfcorpus_dense_no_reason" and "anthropic.com" in _opt(argv, "--api-url")
    assert _opt(echo("eval/Dense/msmarco_subset/gpt.sh", "msmarco_health"), "--task") == "msmarco_dense_test"
    assert _opt(echo("eval/evi_gpt_claude.sh"), "--task") == "nq"


def _real(tmp_path):
    wrapper = tmp_path / "deepretrieval"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m deepretrieval.cli \"$@\"\n")
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "DATA", "ROWS", "TASK", "SPLIT")}
    env.update(DEEPRETRIEVAL=str(wrapper), PYTHONPATH=str(ROOT), DEEPRETRIEVAL_PROGRESS="0")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("script, args, expect", [
    ("train/fever.sh", ["--dry-run"], ["index 'fever'", "deepretrieval prepare beir", "download_datasets.py"]),
    ("train/dense/nfcorpus.sh", ["--dry-run"], ["index 'nfcorpus_dense'", "--name nfcorpus --dense MODEL"]),
    ("train/squad.sh", ["--dry-run"], ["index 'wikipedia'", "deepretrieval index --corpus",
                                      "deepretrieval prepare squad"]),
    ("train/bird.sh", ["--dry-run"], ["deepretrieval prepare bird --bird-dir"]),
    ("eval/tqa.sh", ["some/model"], ["deepretrieval prepare triviaqa"]),
    ("eval/BM25/gpt.sh", ["hotpotqa"], ["deepretrieval prepare beir"]),
    ("train/cold_start.sh", [], ["not part of deepretrieval", "spider.sh"]),
    ("train/wikisql.sh", [], ["not part of deepretrieval"]),
])
def test_tasks_without_data_fail_with_the_command_to_get_it(script, args, expect, tmp_path):
    env = dict(_real(tmp_path), OPENAI_API_KEY="never-sent")  # the rows fail before any request
    proc = subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in expect:
        assert text in lines[0]
    assert "Traceback" not in proc.stderr and "starting the retrieval service" not in proc.stdout


@pytest.mark.slow
def test_api_baseline_script_end_to_end(tmp_path, scifact_index):
    """scripts/eval/BM25/gpt.sh against a loopback OpenAI-compatible server, on bundled SciFact."""
    from deepretrieval.testing.openai_server import LoopbackChatServer

    def reply(body):
        claim = body["messages"][-1]["content"].strip().splitlines()[-1]
        return "<think>key terms</think>\n<answer>" + json.dumps({"query": claim}) + "</answer>"

    with LoopbackChatServer(reply) as server:
        env = _real(tmp_path)
        env.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="test-key")
        proc = subprocess.run(["bash", str(SCRIPTS / "eval/BM25/gpt.sh"), "scifact", "gpt-4o", "--limit", "3",
                               "--no-plot", "--no-cache", "--out", str(tmp_path / "run"), "--json"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert len(server.requests) == 3 and {r["model"] for r in server.requests} == {"gpt-4o"}
    report = json.loads(proc.stdout)
    system = report["systems"]["openai:gpt-4o"]
    assert report["task"] == "scifact" and system["rows"] == 3 and system["format_error_rate"] == 0
    assert system["score"] > 0  # the claims find their documents
    assert json.loads((tmp_path / "run" / "run.json").read_text())["extract"] == "lenient"


@pytest.mark.slow
def test_download_datasets_keeps_the_original_flags():
    """The original's download_datasets.py flags and defaults (code/download_datasets.py)."""
    import argparse

    from deepretrieval.cli.data import add_download_arguments

    parser = argparse.ArgumentParser()
    add_download_arguments(parser)
    args = parser.parse_args([])
    assert (args.repo_id, args.output_dir, args.categories, args.datasets, args.token, args.list_only,
            args.list_files) == ("DeepRetrieval/datasets", "./data", ["all"], [], None, False, False)
    args = parser.parse_args(["--repo_id", "a/b", "--output_dir", "d", "--categories", "search_engine",
                              "raw_data", "--datasets", "pubmed_32", "pubmed", "--token", "t", "--list_only",
                              "--list_files"])
    assert (args.repo_id, args.output_dir, args.categories, args.datasets, args.token) == (
        "a/b", "d", ["search_engine", "raw_data"], ["pubmed_32", "pubmed"], "t")
    proc = subprocess.run([sys.executable, str(ROOT / "download_datasets.py"), "--help"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert proc.returncode == 0
    for flag in ("--repo_id", "--output_dir", "--categories", "--datasets", "--token", "--list_only",
                 "--list_files", "--verbose"):
        assert flag in proc.stdout
