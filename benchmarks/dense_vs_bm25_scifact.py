"""SciFact test split: BM25 vs dense retrieval (the shipped all-MiniLM-L6-v2), side by side.

Prints nDCG@10 / recall@100 of the original claims as queries (the ``baseline`` numbers of the
tasks ``scifact`` and ``scifact_dense``), then the search time of the 300 test queries for BM25,
dense flat and dense HNSW (queries encoded inside the timed call) and the ratio.

    python benchmarks/dense_vs_bm25_scifact.py                        # full setting (fp32, 256 tokens)
    python benchmarks/dense_vs_bm25_scifact.py --precision bfloat16   # faster encoding

Indexes are built under --index-dir (default: the deepretrieval index root) on first run and
reused afterwards; building the fp32 dense index takes several minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--max-seq-length", type=int, default=None,
                    help="passage truncation (default: the model's own, 256)")
    ap.add_argument("--index-dir", help="where to build/keep the indexes")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    args = ap.parse_args()
    if args.index_dir:
        os.environ["DEEPRETRIEVAL_INDEX_DIR"] = args.index_dir

    from deepretrieval.evaluation.report import format_table
    from deepretrieval.core.beir_files import load_qrels, load_queries
    from deepretrieval.core.bundled import collection_dir
    from deepretrieval.tasks.beir import beir_rows
    from deepretrieval.evaluation.scoring import original_query_baseline, summarize
    from deepretrieval.catalog import local_searcher, open_index
    from deepretrieval.data.bundled import scifact_dense_index
    from deepretrieval.catalog import get_task

    folder = collection_dir("scifact")
    queries, qrels = load_queries(folder), load_qrels(folder, "test")
    name = "scifact_dense" if (args.precision == "float32" and not args.max_seq_length) else \
        f"scifact_dense_{args.precision}_{args.max_seq_length or 'full'}"
    t0 = time.perf_counter()
    flat = scifact_dense_index(name=name, precision=args.precision,
                               max_seq_length=args.max_seq_length)
    print(f"dense index {name}: ready in {time.perf_counter() - t0:.1f} s "
          f"({flat.info()['precision']}, max_seq_length={flat.info()['max_seq_length']})")
    hnsw = flat.with_kind("hnsw")
    bm25 = open_index("scifact")

    searcher = local_searcher()
    searcher._indexes.update({"scifact": bm25, name: flat, name + "_hnsw": hnsw})
    table = []
    for label, task, index in (("bm25", "scifact", "scifact"), ("dense flat", "scifact_dense", name),
                               ("dense hnsw", "scifact_dense", name + "_hnsw")):
        rows = beir_rows(get_task(task), queries, qrels, "test", search_index=index)
        summary = summarize(original_query_baseline(rows, searcher=searcher))
        table.append({"retriever": label, "n": summary["n"], "ndcg@10": summary["ndcg@10"],
                      "recall@100": summary["recall@100"]})

    texts = [queries[q] for q in qrels]
    for row, backend in zip(table, (bm25, flat, hnsw)):
        backend.search(texts[:8], 10)  # warm-up (numba compile, encoder)
        best = min(_timed(backend, texts) for _ in range(args.repeat))
        row["search_s (300 q, k=1000)"] = best
    base = table[0]["search_s (300 q, k=1000)"]
    for row in table:
        row["time / bm25"] = row["search_s (300 q, k=1000)"] / base
    print(format_table(table, list(table[0])))
    return 0


def _timed(backend, texts) -> float:
    t = time.perf_counter()
    backend.search(texts, 1000)
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
