"""Live-engine reward path under load: 64 concurrent reward callers against the loopback fake
PubMed that allows 10 requests/s (HTTP 429 beyond that).

Side by side:

* **naive** — what the original client does: the raw query pasted into the URL, one retry,
  no rate limit, no cache (a failed search silently becomes an empty result);
* **ours** — ``deepretrieval.rewards.compute_score`` → LocalSearcher → PubMedBackend (token
  bucket shared by all callers, backoff + Retry-After, persistent SQLite cache).

Prints sustained requests/s, 429 count, failed searches, and the time of a second identical
epoch (served from the cache) with its speed-up over the first.

    python benchmarks/bench_live.py                 # 64 callers × 2 queries, 10 rps limit
    python benchmarks/bench_live.py --callers 64 --per-caller 3 --limit 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def build_items(n_callers: int, per_caller: int) -> list[list[tuple]]:
    """Per caller: reward items (data_source, completion, ground truth, extra_info) with a
    distinct Boolean query built from the row's PICO words."""
    import re

    from deepretrieval.catalog import bundled_rows
    rows = bundled_rows("pubmed", "test")
    out = []
    for c in range(n_callers):
        items = []
        for j in range(per_caller):
            row = rows[(c * per_caller + j) % len(rows)]
            text = row["prompt"][1]["content"].split("\n\n", 1)[1]
            words = [w for w in re.findall(r"[A-Za-z][A-Za-z-]{3,}", text)]
            start = (c * 7 + j * 3) % max(1, len(words) - 4)
            a, b = words[start:start + 2], words[start + 2:start + 4]
            query = f"({' OR '.join(a)}) AND ({' OR '.join(b)}) OR caller{c}q{j}"
            completion = f"<think>PICO terms</think><answer>{json.dumps({'query': query})}</answer>"
            items.append(("pubmed", completion, row["reward_model"]["ground_truth"], row["extra_info"]))
        out.append(items)
    return out


def run_callers(work: list, fn) -> float:
    """Each caller (thread) runs fn(item) over its items; returns the wall time."""
    barrier = threading.Barrier(len(work) + 1)
    errors: list = []

    def caller(items):
        barrier.wait()
        for item in items:
            try:
                fn(item)
            except Exception as exc:  # noqa: BLE001 - a benchmark records, never stops
                errors.append(exc)

    threads = [threading.Thread(target=caller, args=(items,)) for items in work]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        print(f"  caller exceptions: {len(errors)} (first: {errors[0]!r})")
    return time.perf_counter() - t0


def naive_client(base_url: str):
    """The original approach, re-created: string-pasted URL, one retry, no governor, no cache."""
    import httpx
    client = httpx.Client(timeout=30)
    stats = {"failed": 0}
    lock = threading.Lock()

    def search(query: str, k: int) -> list[str]:
        url = f"{base_url}/esearch.fcgi?db=pubmed&term={query}&retmax={k}&retmode=json"
        for _attempt in range(2):
            try:
                r = client.get(url)
                if r.status_code == 200:
                    return r.json()["esearchresult"]["idlist"]
            except Exception:  # noqa: BLE001
                pass
        with lock:
            stats["failed"] += 1
        return []  # the original silently scores this as recall 0
    return search, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--per-caller", type=int, default=2)
    ap.add_argument("--limit", type=float, default=10.0, help="the fake's requests/s limit")
    args = ap.parse_args(argv)

    from deepretrieval.core.answer import extract_answer_lenient
    from deepretrieval.testing.fake_engines import FakePubMed

    work = build_items(args.callers, args.per_caller)
    n = sum(len(w) for w in work)
    print(f"{args.callers} concurrent reward callers × {args.per_caller} = {n} searches "
          f"(depth 3000) against fake PubMed limited to {args.limit:g} req/s\n")

    with FakePubMed(rate_limit=args.limit, window=1.0) as fake, tempfile.TemporaryDirectory() as tmp:
        # -- naive ---------------------------------------------------------------------------
        search, nstats = naive_client(fake.url)
        naive_t = run_callers(work, lambda it: search(extract_answer_lenient(it[1], "query") or "", 3000))
        naive_req, naive_429 = len(fake.requests), fake.count_429
        print("naive (pasted URL, 1 retry, no rate limit, no cache)")
        print(f"  requests {naive_req}, in {naive_t:.2f} s = {naive_req / naive_t:.1f} req/s")
        print(f"  429 responses {naive_429}; searches failed {nstats['failed']}/{n} "
              f"({100 * nstats['failed'] / n:.0f}%, silently scored as recall 0)")
        time.sleep(1.5)  # let the fake's window drain
        fake.reset_log()

        # -- ours ----------------------------------------------------------------------------
        os.environ.update(DEEPRETRIEVAL_PUBMED_URL=fake.url, DEEPRETRIEVAL_PUBMED_RPS=f"{args.limit:g}",
                          DEEPRETRIEVAL_CACHE=str(Path(tmp) / "cache.sqlite"))
        os.environ.pop("DEEPRETRIEVAL_CACHE_FROZEN", None)
        os.environ.pop("DEEPRETRIEVAL_SEARCH_URL", None)
        from deepretrieval.rewards import compute_score
        from deepretrieval.catalog import local_searcher, set_searcher
        searcher = local_searcher()
        set_searcher(searcher)
        results: list = []
        lock = threading.Lock()

        def reward(item):
            out = compute_score(*item)
            with lock:
                results.append(out)

        t1 = run_callers(work, reward)
        req1, r429 = len(fake.requests), fake.count_429
        errors1 = sum(r["search_error"] for r in results)
        first_scores = [r["score"] for r in results]
        results.clear()
        t2 = run_callers(work, reward)
        req2 = len(fake.requests) - req1
        errors2 = sum(r["search_error"] for r in results)
        backend = searcher.backend("pubmed")
        with backend.cache._lock:  # third epoch: only the SQLite file, no in-process layer
            backend.cache._memory.clear()
        results.clear()
        t3 = run_callers(work, reward)
        req3 = len(fake.requests) - req1 - req2
        info = backend.info()
        print("\nours (compute_score → token bucket + backoff + SQLite cache)")
        print(f"  epoch 1: requests {req1}, in {t1:.2f} s = {req1 / t1:.2f} req/s sustained; "
              f"429 responses {r429}; search errors {errors1}/{n}; "
              f"most requests seen by the fake in any 1 s: {fake.max_in_window}")
        print(f"  epoch 2 (identical, from cache): {t2 * 1000:.1f} ms, requests {req2}, "
              f"search errors {errors2}; speed-up {t1 / t2:.0f}×")
        print(f"  epoch 3 (identical, from the SQLite file; in-process layer cleared): "
              f"{t3 * 1000:.1f} ms, requests {req3}; speed-up {t1 / t3:.0f}×")
        print(f"  cache: {json.dumps(info['cache'])}")
        print(f"  same scores in both epochs: {sorted(first_scores) == sorted(r['score'] for r in results)}")

        print("\nsummary")
        print(f"  sustained req/s   ours {req1 / t1:.2f} (goal ≥ {0.9 * args.limit:g})   naive {naive_req / naive_t:.1f} (limit {args.limit:g})")
        print(f"  429 responses     ours {r429} (goal 0)   naive {naive_429}")
        print(f"  failed searches   ours {errors1}   naive {nstats['failed']}")
        print(f"  cached epoch      {t1 / t2:.0f}× faster (goal ≥ 100×); from the SQLite file alone {t1 / t3:.0f}×")
        ok = req1 / t1 >= 0.9 * args.limit and r429 == 0 and t1 / t2 >= 100 and errors1 == 0
        print(f"  goals met: {ok}")
        set_searcher(None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
