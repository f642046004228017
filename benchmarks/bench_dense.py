"""Our dense backend (``DenseIndex``) against raw faiss on the same vectors.

Corpus: ``--docs`` random unit vectors of dimension 384 (all-MiniLM-L6-v2's); queries: SciFact's
claims encoded once with the shipped all-MiniLM-L6-v2 (``DenseIndex.encode_queries``, whose cache
then serves them — RL rollouts repeat queries, and encoding is the same model call either way).
Timed, alternating rounds (ours, faiss, ours, faiss, ...), best of each:

* **ours**: ``DenseIndex.search(queries, k)`` — cached query vectors, faiss search, ids and scores
  as ``SearchResult`` lists (what the service and the rewards get);
* **raw faiss**: ``IndexFlatIP.search(vectors, k)`` on a separately built index of the same
  embeddings, plus turning positions into id lists (the least a caller must do);

batched (all queries in one call) and single (one query per call). Goal: ours ≥ 90 % of raw faiss.

    python benchmarks/bench_dense.py                # 200k docs
    python benchmarks/bench_dense.py --tiny         # smoke size
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ks", default="10,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.queries, args.rounds = 40, 1
        args.docs = 2000 if args.docs == ap.get_default("docs") else args.docs

    import faiss

    from deepretrieval.catalog import bundled_rows
    from deepretrieval.search.dense import DenseIndex, EncoderConfig, resolve_model

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.docs, 384), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(args.docs)]
    claims = list(dict.fromkeys(r["extra_info"]["query"] for split in ("test", "train")
                                for r in bundled_rows("scifact", split)))[:args.queries]
    ours = DenseIndex.from_embeddings(emb, ids, EncoderConfig(model=resolve_model("minilm")),
                                      name="bench")
    t0 = time.perf_counter()
    vectors = ours.encode_queries(claims)  # fills the query cache; these are the raw vectors too
    print(f"# bench_dense: cpus={os.cpu_count()} faiss threads={faiss.omp_get_max_threads()} "
          f"docs={args.docs:,} queries={len(claims)} (encoded in {time.perf_counter() - t0:.1f}s)",
          flush=True)
    raw = faiss.IndexFlatIP(384)
    raw.add(emb)
    id_arr = np.asarray(ids, dtype=object)

    def raw_batch(k):
        scores, pos = raw.search(vectors, k)
        return [id_arr[p[p >= 0]].tolist() for p in pos], scores

    def raw_single(k):
        return [raw_batch_one(i, k) for i in range(len(claims))]

    def raw_batch_one(i, k):
        _, pos = raw.search(vectors[i:i + 1], k)
        return id_arr[pos[0][pos[0] >= 0]].tolist()

    rows = []
    for k in [int(x) for x in args.ks.split(",")]:
        same = [r.ids for r in ours.search(claims, k)] == raw_batch(k)[0]
        plan = {"batch": (lambda k=k: ours.search(claims, k), lambda k=k: raw_batch(k)),
                "single": (lambda k=k: [ours.search([q], k) for q in claims],
                           lambda k=k: raw_single(k))}
        for mode, (a, b) in plan.items():
            best = {"ours": float("inf"), "faiss": float("inf")}
            for _ in range(args.rounds):
                for name, fn in (("ours", a), ("faiss", b)):
                    t0 = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t0)
            n = len(claims)
            rows.append(dict(k=k, mode=mode, ours=n / best["ours"], faiss=n / best["faiss"],
                             same=same))
            print(f"  k={k} {mode}: ours {n / best['ours']:,.0f} q/s, raw faiss "
                  f"{n / best['faiss']:,.0f} q/s", flush=True)
    print()
    print("| k | mode | ours q/s | raw faiss q/s | ours / faiss | same ids |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['mode']} | {r['ours']:,.0f} | {r['faiss']:,.0f} | "
              f"{r['ours'] / r['faiss']:.0%} | {'yes' if r['same'] else 'NO'} |")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
