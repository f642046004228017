"""Each benchmark in benchmarks/ runs at a tiny size, so they cannot rot. No timing is asserted:
only that each runs to the end, prints its side-by-side table, and that the checks it makes
(same ids, no search errors) hold."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_bench_lucene_tiny_without_lucene(capsys, tmp_path):
    import bench_lucene

    assert bench_lucene.main(["--tiny", "--no-lucene", "--corpora", "generated", "--docs", "500",
                              "--ks", "10", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not run (--no-lucene)" in out
    assert "| ours / bm25s | ours / Lucene |" in out
    row = next(line for line in out.splitlines() if line.startswith("| generated-500 | 500 | 10 | batch"))
    assert row.count("|") == 10 and row.rstrip().endswith("| - |")  # Lucene column empty


def test_bench_scale_tiny_without_lucene(capsys, tmp_path):
    import bench_scale

    assert bench_scale.main(["--tiny", "--no-lucene", "--ks", "3,1000", "--work-dir",
                             str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 3,000 | 3 | batch |" in out and "| 2,000 | ours |" in out
    row = next(line for line in out.splitlines() if line.startswith("| 3,000 | 1000 | single"))
    assert "| - |" in row  # no Lucene column figure; bm25s is there at this size


def test_bench_lucene_skips_lucene_with_a_message_when_its_venv_is_absent(capsys, tmp_path):
    import bench_lucene

    assert bench_lucene.lucene_env(str(tmp_path / "no-such-python")) is None
    assert "SKIPPED" in capsys.readouterr().out


def test_bench_dense_tiny(capsys, monkeypatch):
    import bench_dense

    from deepretrieval.search import dense

    def fake_encode(config, texts, *, kind="query", device=None, show_progress=False):
        rng = np.random.default_rng(len(texts))  # the benchmark measures search, not encoding
        v = rng.standard_normal((len(texts), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr(dense, "encode", fake_encode)
    assert bench_dense.main(["--tiny", "--docs", "300", "--ks", "10"]) == 0  # 0: same ids
    out = capsys.readouterr().out
    assert "| 10 | batch |" in out and "| 10 | single |" in out and "NO" not in out


def test_bench_http_clients_tiny(capsys):
    pytest.importorskip("aiohttp")
    import bench_http_clients

    assert bench_http_clients.main(["--tiny", "--ks", "10", "--requests", "24"]) == 0
    out = capsys.readouterr().out
    for name in ("ours (_http)", "aiohttp", "httpx"):
        assert f"| 10 | {name} |" in out


def test_bench_reward_step_tiny(capsys):
    import bench_reward_step

    assert bench_reward_step.main(["--tiny"]) == 0  # raises on any search error
    out = capsys.readouterr().out
    assert "TRL reward callable" in out and "agentic turn" in out and "evidence-sized" in out


def test_bench_metrics_tiny(capsys):
    import bench_metrics

    assert bench_metrics.main(["--rankings", "16", "--rounds", "1"]) == 0  # 0: identical values
    assert "every-rank / ours:" in capsys.readouterr().out
