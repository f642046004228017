"""The BEIR reward's metrics for one training step: ours (``core.metrics``) against the every-rank
formulation it replaced (a Python loop over all 1,000 ranks per metric, as trec_eval defines it).

One step: ``--rankings`` (2,560 = 512 prompts × 5 samples) SciFact rankings of depth 1,000 from
our BM25 index, each scored as the BEIR family does (nDCG@1000, nDCG@10, paper nDCG@1000,
recall@100, recall@1000). Alternating rounds, best of each; prints CPU seconds per step, the
ratio, and checks that both give identical values.

    python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --rankings 64 --rounds 1   # smoke size
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dedup_every(ranked, k):
    seen, out = set(), []
    for doc in ranked:
        doc = str(doc)
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
            if len(out) == k:
                break
    return out


def _dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def every_rank_scores(ranked, qrels, depth=1000):
    """The replaced implementation (same definitions, every rank visited)."""
    grades = [g for g in qrels.values() if g > 0]

    def ndcg(k, paper):
        ideal = _dcg(grades[:k] if paper else sorted(grades, reverse=True)[:k])
        if ideal <= 0:
            return 0.0
        return _dcg(max(qrels.get(d, 0.0), 0.0) for d in _dedup_every(ranked, k)) / ideal

    def recall(k):
        pos = {d for d, g in qrels.items() if g > 0}
        return len(pos.intersection(_dedup_every(ranked, k))) / len(pos) if pos else 0.0

    return [ndcg(depth, False), ndcg(10, False), ndcg(depth, True), recall(100), recall(1000)]


def our_scores(ranked, qrels, depth=1000):
    from deepretrieval.core.metrics import ndcg_at_k, recall_at_k

    return [ndcg_at_k(ranked, qrels, depth), ndcg_at_k(ranked, qrels, 10),
            ndcg_at_k(ranked, qrels, depth, ideal="listed"), recall_at_k(ranked, qrels, 100),
            recall_at_k(ranked, qrels, 1000)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rankings", type=int, default=2560)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    from deepretrieval.catalog import bundled_rows, open_index
    from deepretrieval.tasks.beir import qrels_from_ground_truth

    rows = bundled_rows("scifact", "train")
    rows = (rows * (args.rankings // len(rows) + 1))[:args.rankings]
    index = open_index("scifact")
    ranked = [r.ids for r in index.search([r["extra_info"]["query"] for r in rows], 1000)]
    qrels = [qrels_from_ground_truth(r["reward_model"]["ground_truth"]) for r in rows]
    same = all(our_scores(a, q) == every_rank_scores(a, q) for a, q in zip(ranked, qrels))
    best = {"ours": float("inf"), "every-rank": float("inf")}
    for _ in range(args.rounds):
        for name, fn in (("ours", our_scores), ("every-rank", every_rank_scores)):
            c0 = time.process_time()
            for a, q in zip(ranked, qrels):
                fn(a, q)
            best[name] = min(best[name], time.process_time() - c0)
    n = len(ranked)
    print(f"# bench_metrics: {n} rankings of depth 1000 (SciFact train claims), 5 metrics each")
    print()
    print("| implementation | CPU s per step | µs per completion | identical values |")
    print("|---|---|---|---|")
    for name, sec in best.items():
        print(f"| {name} | {sec:.3f} | {sec / n * 1e6:,.0f} | {'yes' if same else 'NO'} |")
    print()
    print(f"every-rank / ours: {best['every-rank'] / best['ours']:.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
