"""Dense backend: the shipped encoder offline, faiss flat = brute-force numpy on the same
embeddings, HNSW recall vs flat on SciFact, save/load round trips, the built-in scifact_dense
index, the CLI and the retrieval service.

SciFact is encoded once per test session (bfloat16 where the CPU has it, else float32; passages
truncated to 64 tokens, for speed:
the nDCG figures in docs/dense_and_evidence.md use the model's full setting); later tests reuse
the saved index from the session index directory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deepretrieval.cli import main as cli_main
from deepretrieval.catalog import open_index
from deepretrieval.search.dense import (DenseIndex, EncoderConfig, HNSWParams, encode,
                                        get_encoder, shipped_encoder_path)
from deepretrieval.data.bundled import scifact_dense_index
from deepretrieval.train.trl_engine import bf16_supported

pytestmark = pytest.mark.slow

#: bfloat16 only where the CPU has it natively (AVX512-BF16/AMX); emulated it is ~10x slower
FAST = {"precision": "bfloat16" if bf16_supported() else "float32", "max_seq_length": 64}


@pytest.fixture(scope="module")
def scifact_dense():
    return scifact_dense_index(**FAST)


def test_shipped_encoder_loads_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    path = shipped_encoder_path()
    assert (path / "model.safetensors").exists()
    enc = get_encoder("minilm")
    assert get_encoder("all-MiniLM-L6-v2") is enc            # one load per process
    assert get_encoder(str(path)) is enc
    config = EncoderConfig(model="minilm")
    vecs = encode(config, ["A mouse is a small rodent.", "Mice are small rodents.",
                           "The stock market fell sharply today."], kind="passage")
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > 0.6 > 0.2 > sims[0, 2]               # paraphrase ≫ unrelated


def test_prefixes_and_normalisation_reach_the_encoder():
    enc = get_encoder("minilm")
    config = EncoderConfig(model="minilm", query_prefix="query: ", passage_prefix="passage: ",
                           normalize=False)
    q = encode(config, ["vitamin d"], kind="query")
    p = encode(config, ["vitamin d"], kind="passage")
    assert np.allclose(q, enc.encode(["query: vitamin d"]), atol=1e-5)
    assert np.allclose(p, enc.encode(["passage: vitamin d"]), atol=1e-5)
    assert not np.allclose(q, p, atol=1e-3)
    # (all-MiniLM-L6-v2 ends in its own Normalize module, so its vectors are unit length anyway)


def test_import_does_not_load_torch():
    code = ("import sys, deepretrieval.search, deepretrieval.tasks, deepretrieval.cli as c; "
            "c.build_parser(); assert 'torch' not in sys.modules and 'faiss' not in sys.modules "
            "and 'sentence_transformers' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_flat_equals_brute_force_numpy(scifact_dense, scifact_test_claims):
    assert len(scifact_dense) == 5183 and scifact_dense.kind == "flat"
    queries = scifact_test_claims[:100]
    qv = scifact_dense.encode_queries(queries)
    scores = qv @ np.asarray(scifact_dense.embeddings).T
    results = scifact_dense.search(queries, 100)
    for row, result in enumerate(results):
        order = np.argsort(-scores[row], kind="stable")[:100]
        expect_scores = scores[row][order]
        assert np.allclose(result.scores, expect_scores, atol=1e-5)
        # same ids wherever the brute-force scores are not tied
        gaps = np.abs(np.diff(expect_scores))
        for i, doc in enumerate(result.ids):
            tied = (i > 0 and gaps[i - 1] < 1e-6) or (i < len(gaps) and gaps[i] < 1e-6)
            if not tied:
                assert doc == scifact_dense.doc_ids[order[i]]


def test_hnsw_recall_at_10_vs_flat(scifact_dense, scifact_test_claims):
    hnsw = scifact_dense.with_kind("hnsw", HNSWParams(m=16, ef_construction=100, ef_search=100))
    assert hnsw.kind == "hnsw" and type(hnsw.index).__name__ == "IndexHNSWFlat"
    queries = scifact_test_claims                  # the 300 test claims
    assert len(queries) == 300
    qv = scifact_dense.encode_queries(queries)
    _, exact = scifact_dense.search_vectors(qv, 10)
    _, approx = hnsw.search_vectors(qv, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall


def test_save_load_round_trip(scifact_dense, scifact_test_claims, tmp_path):
    queries = scifact_test_claims[:30]
    # the session index was saved by the built-in factory and reopens by name
    meta = json.loads((scifact_dense.path / "meta.json").read_text())
    assert meta["type"] == "dense" and meta["encoder"] == "minilm"
    assert meta["dim"] == 384 and meta["index"] == "flat" and meta["num_docs"] == 5183
    assert meta["precision"] == FAST["precision"] and meta["max_seq_length"] == 64
    assert meta["query_prefix"] == meta["passage_prefix"] == "" and meta["normalize"] is True
    again = open_index("scifact_dense")
    assert isinstance(again, DenseIndex)
    assert np.array_equal(np.asarray(again.embeddings), np.asarray(scifact_dense.embeddings))
    assert again.doc_ids == scifact_dense.doc_ids
    # same query batch on both sides (bfloat16 encodings depend slightly on batch padding)
    scifact_dense._query_cache.clear()
    a = scifact_dense.search(queries, 20, return_text=True)
    b = again.search(queries, 20, return_text=True)
    assert [r.ids for r in a] == [r.ids for r in b]
    assert [r.scores for r in a] == [r.scores for r in b]
    assert [r.texts for r in a] == [r.texts for r in b]
    # texts are the corpus texts (title + abstract)
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.core.bundled import collection_dir
    from deepretrieval.search.bm25 import doc_text
    corpus = {d["_id"]: doc_text(d) for d in load_corpus(collection_dir("scifact"))}
    assert all(t == corpus[i] for r in b for i, t in zip(r.ids, r.texts))
    # an HNSW index keeps its graph and parameters
    hnsw = scifact_dense.with_kind("hnsw", HNSWParams(m=16, ef_construction=100, ef_search=64))
    hnsw.save(tmp_path / "h")
    loaded = DenseIndex.load(tmp_path / "h")
    assert loaded.kind == "hnsw" and loaded.hnsw == HNSWParams(16, 100, 64)
    assert loaded.index.hnsw.efSearch == 64
    x, y = hnsw.search(queries, 10), loaded.search(queries, 10)
    assert [r.ids for r in x] == [r.ids for r in y]
    assert np.allclose([r.scores for r in x], [r.scores for r in y])
    assert loaded.info()["hnsw"] == {"m": 16, "ef_construction": 100, "ef_search": 64}


def test_search_contract(scifact_dense):
    res = scifact_dense.search(["", "   ", "vitamin D and bone density"], 5, return_text=True)
    assert res[0].ids == [] and res[0].texts == [] and res[1].ids == []
    assert len(res[2].ids) == 5 and len(res[2].texts) == 5
    assert res[2].scores == sorted(res[2].scores, reverse=True)
    assert len(scifact_dense.search(["cancer"], 10_000)[0].ids) == 5183   # k capped at num_docs
    assert scifact_dense.search([], 5) == []
    with pytest.raises(ValueError, match="only the option"):
        scifact_dense.search(["x"], 5, options={"maxdate": "2020"})
    with pytest.raises(ValueError, match="HNSW"):
        scifact_dense.search(["x"], 5, options={"ef_search": 10})
    with pytest.raises(ValueError, match="k must be"):
        scifact_dense.search(["x"], 0)
    hnsw = scifact_dense.with_kind("hnsw")
    assert len(hnsw.search(["x"], 5, options={"ef_search": 16})[0].ids) == 5
    # query vectors are cached (bounded); a cached vector is the freshly encoded one
    q = "statins and cardiovascular risk"
    first = scifact_dense.search([q], 5)[0]
    assert q in scifact_dense._query_cache
    assert np.allclose(scifact_dense._query_cache[q], encode(scifact_dense.encoder, [q])[0],
                       atol=1e-6)
    assert scifact_dense.search([q, q], 5)[1].ids == first.ids
    small = scifact_dense.with_kind("flat")
    small.query_cache_size = 2
    small.search(["a b", "c d", "e f", "a b"], 3)
    assert list(small._query_cache) == ["c d", "e f"]
    info = scifact_dense.info()
    assert info["type"] == "dense" and info["gpu"] is False and info["num_docs"] == 5183
    json.dumps(info)


def test_scifact_dense_task_baseline(scifact_dense):
    """The scifact_dense task scores through compute_score like BM25; dense retrieval with the
    original claims is a real retriever on SciFact."""
    from deepretrieval.core.beir_files import load_qrels, load_queries
    from deepretrieval.core.bundled import collection_dir
    from deepretrieval.tasks.beir import beir_rows
    from deepretrieval.evaluation.scoring import original_query_baseline, summarize
    from deepretrieval.rewards import compute_score
    from deepretrieval.catalog import get_task
    folder = collection_dir("scifact")
    rows = beir_rows(get_task("scifact_dense"), load_queries(folder), load_qrels(folder, "test"),
                     "test")
    summary = summarize(original_query_baseline(rows))
    assert summary["n"] == 300 and summary["search_error_rate"] == 0
    assert 0.55 < summary["ndcg@10"] < 0.75, summary
    row = rows[0]
    out = compute_score("scifact_dense", "<think>t</think><answer>{\"query\": \"%s\"}</answer>"
                        % row["extra_info"]["query"].replace('"', ""),
                        row["reward_model"]["ground_truth"], row["extra_info"])
    assert out["format_ok"] and not out["search_error"] and "ndcg@10" in out


def test_cli_index_dense_and_search(tmp_path, capsys):
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.core.bundled import collection_dir
    docs = [d for _, d in zip(range(120), load_corpus(collection_dir("scifact")))]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert cli_main(["index-dense", "--corpus", str(corpus), "--name", "tiny_dense", "--hnsw",
                     "--precision", FAST["precision"], "--max-seq-length", "64",
                     "--query-prefix", "query: ", "--passage-prefix", "passage: "]) == 0
    assert "indexed 120 documents (hnsw" in capsys.readouterr().out
    index = open_index("tiny_dense")
    assert index.kind == "hnsw" and index.encoder.query_prefix == "query: "
    assert cli_main(["search", "--index", "tiny_dense", "-k", "3", "--json",
                     docs[7]["title"]]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0][0]["id"] == docs[7]["_id"]                 # its own title finds the paper
    assert cli_main(["index-dense", "--corpus", str(tmp_path / "missing.jsonl"),
                     "--name", "x"]) == 2


def test_served_by_the_retrieval_service(scifact_dense, scifact_test_claims):
    from deepretrieval.service.app import ServerThread, ServiceConfig, create_app
    from deepretrieval.service.client import ServiceSearcher
    queries = scifact_test_claims[:40]
    app = create_app({"scifact_dense": scifact_dense}, ServiceConfig(batch_wait_ms=5))
    with ServerThread(app) as srv:
        client = ServiceSearcher(srv.url, timeout=60)
        remote = client.search("scifact_dense", queries, 50, return_text=True)
    local = scifact_dense.search(queries, 50, return_text=True)
    assert [r.ids for r in remote] == [r.ids for r in local]
    assert [r.texts for r in remote] == [r.texts for r in local]
    assert np.allclose([r.scores for r in remote], [r.scores for r in local])
