"""scripts/train/*.sh parse their arguments, start the retrieval service the task needs, wait for
/health and stop it again (dry-run mode); the train command's validation of its inputs."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# the scripts whose task has its data here (bundled rows, built-in indexes); the others (the
# original's script names for tasks without bundled data) are tests/test_original_scripts.py's
BUNDLED = {"scifact", "scifact_dense", "nq", "pubmed", "ctgov", "spider"}
SCRIPTS = sorted(p for p in (ROOT / "scripts" / "train").glob("*.sh") if p.stem in BUNDLED)
READY = re.compile(r"retrieval service ready at http://127\.0\.0\.1:(\d+)")


def test_every_promised_script_exists():
    assert {p.stem for p in SCRIPTS} == BUNDLED


@pytest.fixture(scope="module")
def extra_indexes(tmp_path_factory, scifact_index):
    """Small stand-ins for indexes the bundle does not ship: a passage index for NQ ('wikipedia')
    and a dense SciFact index over a slice of the corpus."""
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.core.bundled import collection_dir
    from deepretrieval.search.bm25 import BM25Index

    folder = tmp_path_factory.mktemp("idx")
    docs = []
    for i, doc in enumerate(load_corpus(collection_dir("scifact"))):
        if i >= 40:
            break
        docs.append(doc)
    BM25Index.build(docs, name="wikipedia", show_progress=False).save(folder / "wikipedia")
    out = {"nq": ["--index", f"wikipedia={folder / 'wikipedia'}"]}
    try:
        from deepretrieval.search.dense import DenseIndex, shipped_encoder_path
        DenseIndex.build(docs, model=str(shipped_encoder_path()), name="scifact_dense",
                         show_progress=False).save(folder / "scifact_dense")
        out["scifact_dense"] = ["--index", f"scifact_dense={folder / 'scifact_dense'}"]
    except ImportError:
        pass
    return out


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_dry_run_starts_and_stops_service(script, tmp_path, extra_indexes):
    if script.stem == "scifact_dense" and "scifact_dense" not in extra_indexes:
        pytest.skip("dense extra not installed")
    env = dict(os.environ, OUT=str(tmp_path / "run"), MODEL="/nonexistent/model-for-dry-run")
    cmd = ["bash", str(script), "--dry-run", *extra_indexes.get(script.stem, []),
           "trainer.total_epochs=2"]
    # run this interpreter's deepretrieval (the scripts call $DEEPRETRIEVAL, default: the CLI on PATH)
    wrapper = tmp_path / "deepretrieval"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m deepretrieval.cli \"$@\"\n")
    wrapper.chmod(0o755)
    env["DEEPRETRIEVAL"] = str(wrapper)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    match = READY.search(out)
    assert match, out
    assert "retrieval service stopped" in out
    assert _port_closed(int(match.group(1)))
    assert "verl.trainer.main_ppo" in out and "--config-name=ppo" in out
    assert "trainer.total_epochs=2" in out  # overrides reach verl
    assert "reward.custom_reward_function.path = pkg://deepretrieval.rewards" in out
    config = (tmp_path / "run" / "verl_config.yaml").read_text()
    assert "/nonexistent/model-for-dry-run" in config
    assert (tmp_path / "run" / "service.log").is_file()


def test_ctgov_transfer_from_another_checkpoint(tmp_path):
    """--init-from (INIT_FROM) uses an exported model folder of another task as the policy."""
    from deepretrieval.testing.tiny_model import build_tiny_model
    model = build_tiny_model(tmp_path / "pubmed_model")
    wrapper = tmp_path / "deepretrieval"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m deepretrieval.cli \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, OUT=str(tmp_path / "run"), INIT_FROM=str(model), DEEPRETRIEVAL=str(wrapper))
    proc = subprocess.run(["bash", str(ROOT / "scripts/train/ctgov.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"actor_rollout_ref.model.path={model}" in proc.stdout


def test_service_stopped_when_training_fails(tmp_path, capsys):
    """A failing run still stops the service (here: --data holds parquet files without task rows,
    found out after the service started; a folder without rows, or files that are not parquet,
    fail before the service starts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepretrieval.cli import main
    data = tmp_path / "rows"
    data.mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.table({"foo": [1, 2]}), data / f"{split}.parquet")
    code = main(["train", "--task", "scifact", "--engine", "trl", "--out", str(tmp_path / "run"),
                 "--data", str(data)])
    out = capsys.readouterr()
    assert code == 2 and "prompt" in out.err, out.err
    port = int(READY.search(out.out).group(1))
    assert "retrieval service stopped" in out.out and _port_closed(port)


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    from deepretrieval.cli import main
    assert main(["train", "--task", "nope", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["train", "--task", "scifact", "--engine", "verl", "--config", "nope", "--dry-run",
                 "--search-url", "http://127.0.0.1:9", "--out", str(tmp_path)]) == 2
    assert "unknown verl config" in capsys.readouterr().err
    assert main(["train", "--task", "scifact", "--engine", "verl", "--dry-run", "--search-url",
                 "http://127.0.0.1:9", "--out", str(tmp_path), "custom_reward_function.path=/x.py"]) == 2
    assert "ignores" in capsys.readouterr().err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_service_stopped_on_interrupt(sig, tmp_path):
    """Ctrl-C / SIGTERM during training stops the service before the command exits."""
    import signal
    import time

    from deepretrieval.testing.tiny_model import build_tiny_model
    model = build_tiny_model(tmp_path / "tiny")
    cmd = [sys.executable, "-m", "deepretrieval.cli", "train", "--task", "scifact_no_reason",
           "--engine", "trl", "--model", str(model), "--steps", "100000", "--max-new-tokens", "8",
           "--limit", "8", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path, env=dict(os.environ, DEEPRETRIEVAL_PROGRESS="0",
                                                   PYTHONPATH=os.pathsep.join(
                                                       filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))))
    lines = []
    port = None
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            match = READY.search(line)
            if match:
                port = int(match.group(1))
            if port and "train rows" in line:  # training is about to start
                break
            assert time.monotonic() < deadline, "".join(lines)
        time.sleep(2)
        proc.send_signal(getattr(signal, sig))
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert port and _port_closed(port), out
    assert "retrieval service stopped" in out, out
    # 130 from `deepretrieval` (KeyboardInterrupt handled); under pytest the interpreter sometimes
    # ends by re-raising SIGINT after that (-2). Either way the service was stopped first.
    assert proc.returncode in (130, -signal.SIGINT), out
    assert out.rstrip().endswith("interrupted"), out
