"""Dense placements (deepretrieval.search.dense_place): the exact torch / stream searches equal
faiss Flat, approximate placements' recall against it, memory computed before loading and
refusals with the numbers, loading by blocks without a RAM copy of the vectors, resumable
encoding, the index-dense / dense-plan commands.

Vectors are generated with structure (a shared direction, a Gaussian mixture of topics, noise;
normalised), as in benchmarks/bench_dense_scale.py, not uniform noise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deepretrieval.cli import main as cli_main
from deepretrieval.search import dense
from deepretrieval.search.dense import DenseIndex, EncoderConfig
from deepretrieval.search.dense_place import (
    GB,
    WIKI18,
    Placement,
    PlacementError,
    VectorSource,
    block_bytes,
    check_fits,
    parse_gpus,
    plan,
    recall_at,
    torch_workspace,
)

pytestmark = pytest.mark.slow

CONFIG = EncoderConfig(model="minilm")


def mixture(n: int, dim: int, seed: int, iso: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(123)
    u = base.standard_normal(dim)
    u /= np.linalg.norm(u)
    centres = base.standard_normal((256, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = 1.5 * u + 0.6 * centres[rng.integers(0, 256, n)] + iso * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors():
    return mixture(30_000, 128, 0), mixture(300, 128, 1, iso=0.45)


@pytest.fixture(scope="module")
def saved(vectors, tmp_path_factory):
    """The vectors saved as an index directory (search from the file, not from RAM)."""
    emb, _ = vectors
    path = tmp_path_factory.mktemp("place") / "gen"
    DenseIndex(emb, [f"d{i}" for i in range(len(emb))], CONFIG, name="gen",
               texts=[f"text {i}" for i in range(len(emb))]).save(path)
    return path


def test_spec_round_trip_and_errors():
    for spec in ("flat", "stream", "torch:gpus=0,1,dtype=float16", "ivfpq:nlist=4096,nprobe=32,pq_m=96,rerank=10",
                 "hnsw:m=16,ef_search=64", "torch:dtype=sq8"):
        assert Placement.parse(Placement.parse(spec).spec()) == Placement.parse(spec)
    assert Placement.parse("torch:gpus=0-3").gpus == (0, 1, 2, 3)
    assert parse_gpus("0,2-3") == (0, 2, 3)
    for bad, message in (("annoy", "unknown dense placement"), ("ivf:nprobe=x", "whole number"),
                         ("ivf:depth=3", "is not one of"), ("hnsw:gpus=0", "no GPU form"),
                         ("flat:rerank=4", "approximate"), ("torch:dtype=int4", "unknown dtype"),
                         ("sq8:dtype=float16", "torch placement only"), ("torch:gpus=0,0", "twice")):
        with pytest.raises(PlacementError, match=message):
            Placement.parse(bad)
    with pytest.raises(PlacementError, match="must divide"):
        Placement.parse("ivfpq:pq_m=7").resolved(1000, 128)


def test_memory_is_computed_before_loading_and_refused_with_numbers():
    n, d = WIKI18
    block = block_bytes()
    assert plan(Placement("flat"), n, d).ram == 4 * n * d + block          # 64.6 GB + one block
    assert plan(Placement("sq8"), n, d).ram == n * d + block
    sharded = plan(Placement.parse("torch:gpus=0-7"), n, d)                  # float16 on 8 GPUs
    assert sorted(sharded.gpu) == list(range(8)) and sharded.ram == block
    per_gpu = 2 * -(-n // 8) * d + torch_workspace(-(-n // 8), d, 2560, gpu=True)
    assert sharded.gpu[0] == per_gpu and 4.0 * GB < sharded.gpu[0] < 7.0 * GB   # Search-R1: 5-7 GB
    pq = plan(Placement.parse("ivfpq:nlist=16384"), n, d)
    assert pq.placement.pq_m == 96
    assert pq.ram == (96 + 8) * n + 4 * 16384 * d + 4 * 256 * d + block
    assert plan(Placement("stream"), n, d).ram < 3 * GB                     # bounded by blocks
    with pytest.raises(PlacementError) as err:
        check_fits(plan(Placement("flat"), n, d), ram=8 * GB)
    text = str(err.value)
    assert "needs 64.8 GB of RAM, 8.00 GB available" in text
    assert "`ivfpq`" in text and "wiki-18 (21,015,324 × 768)" in text      # the options, with numbers
    with pytest.raises(PlacementError, match="on GPU 1"):
        check_fits(plan(Placement.parse("torch:gpus=0,1"), n, d), ram=64 * GB,
                   gpu={0: 80 * GB, 1: 10 * GB})


def assert_same_ranking(want_s, want_p, got_s, got_p, tol=2e-6):
    """Equal results; where ids differ, only the order of scores equal within float32 rounding
    (two BLAS round the last bit differently) — and such swaps are rare."""
    assert got_p.shape == want_p.shape
    assert np.allclose(got_s, want_s, atol=tol)               # the score at every rank agrees
    differ = got_p != want_p
    for r, c in np.argwhere(differ):
        tied = np.abs(want_s[r] - want_s[r, c]) < tol         # the ids tied with this rank
        assert got_p[r, c] in set(want_p[r][tied]) or c + 1 == want_p.shape[1], (r, c)
    assert differ.mean() < 0.005


def test_exact_placements_equal_faiss_flat(vectors, saved):
    _, queries = vectors
    flat = DenseIndex.load(saved)
    assert flat.placement.kind == "flat" and type(flat.index).__name__ == "IndexFlat"
    for k in (10, 100):
        want_s, want_p = flat.search_vectors(queries, k)
        for spec in ("torch", "stream"):
            got_s, got_p = DenseIndex.load(saved, placement=spec).search_vectors(queries, k)
            assert_same_ranking(want_s, want_p, got_s, got_p)
        one_s, one_p = DenseIndex.load(saved, placement="torch").search_vectors(queries[:1], k)
        assert_same_ranking(want_s[:1], want_p[:1], one_s, one_p)


def test_approximate_placements_recall_against_flat(vectors, saved):
    _, queries = vectors
    _, exact = DenseIndex.load(saved).search_vectors(queries, 10)
    recall = {}
    for spec in ("torch:dtype=float16", "torch:dtype=sq8", "sq8", "sq8:rerank=4",
                 "ivfpq:nlist=64,nprobe=16", "ivfpq:nlist=64,nprobe=16,rerank=10",
                 "hnsw:m=16,ef_construction=80,ef_search=128"):
        _, pos = DenseIndex.load(saved, placement=spec).search_vectors(queries, 10)
        recall[spec] = recall_at(10, exact, pos)
    assert recall["torch:dtype=float16"] >= 0.99                   # float16 vectors, float32 rescoring
    assert recall["sq8:rerank=4"] >= recall["sq8"] and recall["sq8:rerank=4"] >= 0.99
    assert recall["ivfpq:nlist=64,nprobe=16,rerank=10"] > recall["ivfpq:nlist=64,nprobe=16"]
    assert recall["hnsw:m=16,ef_construction=80,ef_search=128"] >= 0.95
    assert all(0 < r <= 1 for r in recall.values())


def test_trained_placements_are_built_once_and_reused(vectors, saved):
    _, queries = vectors
    first = DenseIndex.load(saved, placement="ivfsq8:nlist=64")
    cached = list((saved / "placements").glob("ivfsq8_nlist64_*.faiss"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = DenseIndex.load(saved, placement="ivfsq8:nlist=64,nprobe=8")
    assert cached[0].stat().st_mtime_ns == mtime                 # read, not rebuilt
    assert again.index.nprobe == 8 and first.index.nprobe == 64
    assert np.array_equal(first.search_vectors(queries, 5)[1],
                          DenseIndex.load(saved, placement="ivfsq8:nlist=64").search_vectors(queries, 5)[1])


def test_vector_source_reads_blocks_from_the_file(saved, vectors):
    emb, _ = vectors
    src = VectorSource(path=saved / "embeddings.npy")
    assert src.shape == emb.shape
    seen = 0
    buffers = set()
    for start, block in src.blocks(7_000):
        assert np.array_equal(block, emb[start:start + len(block)])
        buffers.add(block.__array_interface__["data"][0])
        seen += len(block)
    assert seen == len(emb) and len(buffers) == 1                # one reused buffer
    assert np.array_equal(src.rows(np.array([5, 29_999, 0])), emb[[5, 29_999, 0]])


def test_loading_holds_no_copy_of_the_vectors(tmp_path):
    """A 160 MB embeddings file searched with the stream placement (and loaded into SQ8) raises
    the process's peak RSS by far less than the file: the vectors are read in 8 MB blocks."""
    n, d = 40_000, 1024
    emb = mixture(n, d, 3)
    path = tmp_path / "big"
    DenseIndex(emb[:10], [f"d{i}" for i in range(10)], CONFIG, texts=[""] * 10).save(path)  # meta
    np.save(path / "embeddings.npy", emb)
    (path / "doc_ids.json").write_text(json.dumps([f"d{i}" for i in range(n)]))
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "num_docs": n, "dim": d}))
    np.save(tmp_path / "q.npy", emb[:8])
    del emb
    script = textwrap.dedent(f"""
        import json, resource, numpy as np, torch, faiss
        from deepretrieval.search.dense import DenseIndex
        q = np.load({str(tmp_path / 'q.npy')!r})
        rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        before = rss()
        out = {{}}
        for spec in ("stream", "sq8:train_rows=2000"):
            index = DenseIndex.load({str(path)!r}, placement=spec)
            _, pos = index.search_vectors(q, 3)
            assert pos[:, 0].tolist() == list(range(8)), pos
            out[spec.split(":")[0]] = rss() - before
            del index
        print(json.dumps(out))
        """)
    env = {**os.environ, "DEEPRETRIEVAL_DENSE_BLOCK_MB": "8", "DEEPRETRIEVAL_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth = json.loads(proc.stdout.strip().splitlines()[-1])
    file_bytes = 4 * n * d
    assert growth["stream"] < 0.35 * file_bytes, growth
    assert growth["sq8"] < 0.35 * file_bytes + n * d, growth      # + its 1-byte codes


def _fake_encoder(calls: list, fail_after: int | None = None):
    def fake_encode(config, texts, *, kind="query", device=None, show_progress=False):
        calls.append(len(texts))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt("stopped")
        out = np.stack([np.frombuffer(t.ljust(16)[:16].encode("utf-8", "replace")[:16].ljust(16, b"\0"),
                                      dtype=np.uint8).astype(np.float32) for t in texts])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    return fake_encode


def test_encoding_is_resumable(tmp_path, monkeypatch):
    docs = [{"_id": f"p{i}", "title": f"title {i}", "text": f"passage number {i} " * 3}
            for i in range(50)]
    out = tmp_path / "idx"
    calls: list = []
    monkeypatch.setattr(dense, "encode", _fake_encoder(calls, fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        DenseIndex.build_to(out, docs, "minilm", name="idx", chunk_docs=20, show_progress=False)
    state = json.loads((tmp_path / "idx.encoding" / "progress.json").read_text())
    assert state["rows"] == 40 and not out.exists()              # two chunks kept, no index yet
    calls.clear()
    monkeypatch.setattr(dense, "encode", _fake_encoder(calls))
    index = DenseIndex.build_to(out, docs, "minilm", name="idx", chunk_docs=20, show_progress=False)
    assert calls == [10]                                          # only the last chunk encoded
    assert not (tmp_path / "idx.encoding").exists()
    fresh_calls: list = []
    monkeypatch.setattr(dense, "encode", _fake_encoder(fresh_calls))
    fresh = DenseIndex.build_to(tmp_path / "fresh", docs, "minilm", name="idx", chunk_docs=50,
                                show_progress=False)
    assert np.array_equal(np.asarray(index.embeddings), np.asarray(fresh.embeddings))
    assert index.doc_ids == [d["_id"] for d in docs] and index.texts[3] == ("title 3 " + docs[3]["text"]).strip()
    # another corpus in the leftover folder is not mixed in
    monkeypatch.setattr(dense, "encode", _fake_encoder(calls := [], fail_after=1))
    with pytest.raises(KeyboardInterrupt):
        DenseIndex.build_to(tmp_path / "other", docs, "minilm", chunk_docs=20, show_progress=False)
    monkeypatch.setattr(dense, "encode", _fake_encoder(calls := []))
    DenseIndex.build_to(tmp_path / "other", docs[::-1], "minilm", chunk_docs=20, show_progress=False)
    assert calls == [20, 20, 10]


def test_cli_index_dense_placement_and_dense_plan(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"p{i}", "title": "", "text": f"text {i} " * 4}) + "\n"
                              for i in range(40)))
    monkeypatch.setattr(dense, "encode", _fake_encoder([]))
    out = tmp_path / "cli_idx"
    assert cli_main(["index-dense", "--corpus", str(corpus), "--name", "cli_idx", "--out", str(out),
                     "--placement", "sq8", "--chunk-docs", "16"]) == 0
    assert "placement sq8" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["placement"] == "sq8"
    assert DenseIndex.load(out).placement.kind == "sq8"
    monkeypatch.setenv("DEEPRETRIEVAL_DENSE_PLACEMENT", "stream")
    assert DenseIndex.load(out).placement.kind == "stream"          # the setting overrides
    assert cli_main(["dense-plan", "--index", str(out)]) == 0
    text = capsys.readouterr().out
    assert "40 vectors × 16" in text and "| `torch:gpus=0,dtype=float16` |" in text
    assert cli_main(["dense-plan", "--docs", "21015324", "--dim", "768", "--gpus", "0-7"]) == 0
    assert "| `torch:gpus=0,1,2,3,4,5,6,7,dtype=float16` |" in capsys.readouterr().out
    monkeypatch.setenv("DEEPRETRIEVAL_DENSE_RAM_GB", "2")
    assert cli_main(["dense-plan", "--docs", "21015324", "--dim", "768", "--placement", "flat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dense placement flat for 21,015,324 × 768 does not fit: needs "
                          "64.8 GB of RAM, 2.00 GB available") and "Traceback" not in err
    assert cli_main(["dense-plan", "--docs", "1000", "--dim", "64", "--placement", "nope"]) == 2
    assert "unknown dense placement 'nope'" in capsys.readouterr().err


def test_import_search_r1_style_faiss_flat_file(tmp_path, vectors, capsys, monkeypatch):
    """A faiss IndexFlatIP file (Search-R1 ships wiki-18's e5 vectors as one) becomes an index
    directory without encoding; the vectors are read from the file's data section."""
    import faiss
    emb, queries = vectors
    emb = emb[:500]
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    faiss.write_index(flat, str(tmp_path / "e5_Flat.index"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "title": f"T{i}", "text": f"passage {i}"}) + "\n"
                              for i in range(500)))
    out = tmp_path / "imported"
    assert cli_main(["index-dense", "--corpus", str(corpus), "--name", "imp", "--out", str(out),
                     "--from-vectors", str(tmp_path / "e5_Flat.index"), "--query-prefix", "query: ",
                     "--placement", "torch"]) == 0
    assert "imported 500 vectors" in capsys.readouterr().out
    index = DenseIndex.load(out)
    assert np.array_equal(np.asarray(index.embeddings), emb)
    assert index.encoder.query_prefix == "query: " and index.placement.kind == "torch"
    want = flat.search(queries, 5)
    got = index.search_vectors(queries, 5)
    assert np.array_equal(got[1], want[1])
    np.save(tmp_path / "v.npy", emb[:499])                     # one row short of the corpus
    assert cli_main(["index-dense", "--corpus", str(corpus), "--name", "x", "--out",
                     str(tmp_path / "x"), "--from-vectors", str(tmp_path / "v.npy")]) == 2
    assert "holds 499 vectors but the corpus has 500" in capsys.readouterr().err
    (tmp_path / "bad.index").write_bytes(b"IxHN" + bytes(40))
    assert cli_main(["index-dense", "--corpus", str(corpus), "--name", "x", "--out",
                     str(tmp_path / "x"), "--from-vectors", str(tmp_path / "bad.index")]) == 2
    assert "is not a faiss flat index file" in capsys.readouterr().err
