"""Boolean backend (PubMed syntax, search/boolean.py) vs the BM25 backend on SciFact, depth 3,000.

Query sets, built from the 1,109 SciFact claims:

* ``claim AND``: the claim as a Boolean query (implicit AND; mostly tiny match sets);
* ``claim OR``: the claim's words joined with OR (large match sets: the ranking at depth 3,000
  dominates);
* ``structured``: ``(w1 OR w2*) AND (w3[tiab] OR "w4 w5"[ti]) NOT w6`` shapes from claim words.

Each Boolean set is timed next to BM25 searching the same claims (BM25 ignores the operators),
both through ``search(queries, k=3000)`` of the loaded index; best of ``--repeat`` runs.
Prints queries/s of both and the ratio Boolean / BM25.

    python benchmarks/bench_boolean.py [--repeat 3] [--index-dir DIR]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import time


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--depth", type=int, default=3000)
    ap.add_argument("--index-dir")
    args = ap.parse_args()
    if args.index_dir:
        os.environ["DEEPRETRIEVAL_INDEX_DIR"] = args.index_dir
    from deepretrieval.core.beir_files import load_queries
    from deepretrieval.data.bundled import collection_dir
    from deepretrieval.catalog import open_index

    claims = list(load_queries(collection_dir("scifact")).values())
    boolean, bm25 = open_index("scifact_boolean"), open_index("scifact")
    rng = random.Random(0)

    def words(claim):
        return [w for w in re.findall(r"[A-Za-z]{4,}", claim)]

    def structured(claim):
        w = words(claim) + ["cell", "protein", "risk", "patients", "expression", "disease"]
        return (f"({w[0]} OR {w[1][:4]}*) AND ({w[2]}[tiab] OR \"{w[3]} {w[4]}\"[ti]) "
                f"NOT {rng.choice(w[5:])}")

    sets = {"claim AND": [re.sub(r'["()\[\]*:]', " ", c) for c in claims],
            "claim OR": [" OR ".join(words(c)) or "cell" for c in claims],
            "structured": [structured(c) for c in claims]}
    bm25.search(claims[:64], args.depth)       # numba compile outside the timing
    boolean.search(sets["structured"][:8], args.depth)
    print(f"SciFact ({len(boolean)} docs), {len(claims)} queries per set, depth {args.depth}, "
          f"best of {args.repeat}")
    print("| query set | mean hits (Boolean) | Boolean q/s | BM25 q/s | Boolean / BM25 |")
    print("|---|---|---|---|---|")
    for name, queries in sets.items():
        results = boolean.search(queries, args.depth)
        errors = sum(r.error is not None for r in results)
        hits = sum(len(r.ids) for r in results) / len(results)
        tb = best(lambda q=queries: boolean.search(q, args.depth), args.repeat)
        tm = best(lambda: bm25.search(claims, args.depth), args.repeat)
        qb, qm = len(queries) / tb, len(claims) / tm
        note = f" ({errors} malformed)" if errors else ""
        print(f"| {name}{note} | {hits:.1f} | {qb:,.0f} | {qm:,.0f} | {qb / qm:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
