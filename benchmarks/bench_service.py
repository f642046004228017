"""Throughput of the retrieval service against in-process BM25 and rank-bm25.

For SciFact (bundled, 5,183 docs, its 300 test queries, repeated to --queries) and a generated
corpus (default 200,000 docs of ~100 words from a Zipfian vocabulary, made here), at k=10 and
k=1000, prints queries/second for:

* in-process BM25 (``BM25Index.search``): one batched call on one thread, and the same batch split
  over --threads threads (the BM25 kernel releases the GIL);
* the service (``deepretrieval serve`` in a separate process) under --concurrency concurrent
  callers sending one query per request (async client, one event loop);
* the service with batched requests (--batch queries per request, 4 concurrent callers);
* rank-bm25 (``BM25Okapi``) as the naive baseline, timed on --rank-bm25-queries queries;

with ratios to the best in-process figure, and checks that the service answers exactly what the
in-process index answers.

    python benchmarks/bench_service.py            # full run (builds the 200k corpus once, cached)
    python benchmarks/bench_service.py --quick    # 20k docs, fewer queries: about a minute

The generated corpus: pseudo-words drawn from a Zipf distribution (exponent --zipf over --vocab
words); the head of the distribution are the English stopwords the tokenizer removes, as in real
text. Queries are 3-6 distinct content words of a random document.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---- data ------------------------------------------------------------------------------------

def word_table(vocab: int, zipf: float, seed: int = 0):
    """The benchmarks' pseudo-words (the English stopwords first, then random lower-case words),
    their Zipf probabilities, how many stopwords head the list, and the generator after drawing
    them (``generate_corpus`` goes on drawing from it)."""
    from bm25s.stopwords import STOPWORDS_EN

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = list(STOPWORDS_EN)
    seen = set(words)
    while len(words) < vocab:
        w = "".join(rng.choice(letters, size=int(rng.integers(4, 11))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    p = 1.0 / np.arange(1, vocab + 1) ** zipf
    p /= p.sum()
    return words, p, len(STOPWORDS_EN), rng


def generate_corpus(n_docs: int, vocab: int, zipf: float, n_queries: int, seed: int = 0):
    """Docs (BEIR dicts) and queries of the synthetic Zipfian corpus."""
    words, p, n_stop, rng = word_table(vocab, zipf, seed)
    words_arr = np.array(words)
    lengths = rng.poisson(100, size=n_docs).clip(10)
    tokens = rng.choice(vocab, size=int(lengths.sum()), p=p)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    docs = [{"_id": f"g{i}", "title": "",
             "text": " ".join(words_arr[tokens[offsets[i]:offsets[i + 1]]])}
            for i in range(n_docs)]
    queries = []
    for _ in range(n_queries):
        d = int(rng.integers(n_docs))
        terms = np.unique(tokens[offsets[d]:offsets[d + 1]])
        terms = terms[terms >= n_stop]
        size = min(len(terms), int(rng.integers(3, 7)))
        queries.append(" ".join(words_arr[rng.choice(terms, size=size, replace=False)]))
    return docs, queries


def generated_index(args):
    """Build (or reuse from --cache-dir) the generated corpus's BM25 index."""
    from deepretrieval.search.bm25 import BM25Index

    tag = f"zipf{args.zipf:g}-v{args.vocab}-d{args.docs}-q{args.queries}-s0"
    path = Path(args.cache_dir) / tag
    qfile = path / "bench_queries.json"
    docs = None
    if (path / "meta.json").exists() and qfile.exists():
        queries = json.loads(qfile.read_text())
    else:
        t0 = time.perf_counter()
        docs, queries = generate_corpus(args.docs, args.vocab, args.zipf, args.queries)
        print(f"  generated {len(docs):,} docs in {time.perf_counter() - t0:.1f}s", flush=True)
        t0 = time.perf_counter()
        index = BM25Index.build(docs, name="generated", show_progress=False)
        index.save(path)
        qfile.write_text(json.dumps(queries))
        print(f"  indexed in {time.perf_counter() - t0:.1f}s → {path}", flush=True)
        del index
    return path, queries, docs


# ---- measurements ----------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def inprocess_qps(index, queries, k, threads=1, repeat=2):
    """(best queries/second, CPU µs per query of the best run)."""
    index.search(queries[:8], k)  # JIT warm-up
    best, cpu = 0.0, float("nan")
    for _ in range(repeat):
        c0 = time.process_time()
        t0 = time.perf_counter()
        if threads <= 1:
            index.search(queries, k)
        else:
            parts = np.array_split(np.arange(len(queries)), threads)
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda ix: index.search([queries[i] for i in ix], k), parts))
        qps = len(queries) / (time.perf_counter() - t0)
        if qps > best:
            best, cpu = qps, (time.process_time() - c0) / len(queries) * 1e6
    return best, cpu


async def _service_run(url, index, queries, k, concurrency, batch):
    from deepretrieval.service.client import AsyncServiceClient

    chunks = [queries[i:i + batch] for i in range(0, len(queries), batch)]
    results: list = [None] * len(chunks)
    next_chunk = iter(range(len(chunks)))
    async with AsyncServiceClient(url, timeout=300, chunk_size=max(batch, 1)) as client:
        await client.search(index, queries[:2], k)  # connect

        async def caller():
            for i in next_chunk:
                results[i] = await client.search(index, chunks[i], k)

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        dt = time.perf_counter() - t0
    return len(queries) / dt, [r for part in results for r in part]


def service_qps(url, index, queries, k, concurrency, batch, server_pid):
    """(queries/second, results, CPU µs per query of client + server)."""
    c0, s0 = time.process_time(), proc_cpu(server_pid)
    qps, results = asyncio.run(_service_run(url, index, queries, k, concurrency, batch))
    cpu = (time.process_time() - c0 + proc_cpu(server_pid) - s0) / len(queries) * 1e6
    return qps, results, cpu


def rank_bm25_qps(docs, queries, k, n):
    from rank_bm25 import BM25Okapi

    split = re.compile(r"(?u)\b\w\w+\b").findall
    t0 = time.perf_counter()
    bm25 = BM25Okapi([split(d["text"].lower()) for d in docs])
    build = time.perf_counter() - t0
    qs = queries[:n]
    t0 = time.perf_counter()
    for q in qs:
        scores = bm25.get_scores(split(q.lower()))
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top[np.argsort(-scores[top])]
    return len(qs) / (time.perf_counter() - t0), build


def identical(a, b):
    return all(x.ids == y.ids and x.scores == y.scores for x, y in zip(a, b)) and len(a) == len(b)


# ---- the server ------------------------------------------------------------------------------

def start_server(indexes: dict[str, str], workers: int, wait_ms: float):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "deepretrieval.cli", "serve", "--port", str(port),
           "--workers", str(workers), "--batch-wait-ms", str(wait_ms), "--max-k", "10000"]
    for name, target in indexes.items():
        cmd += ["--index", f"{name}={target}"]
    env = dict(os.environ, DEEPRETRIEVAL_SEARCH_TOKEN="")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("serve did not start within 300s")
        time.sleep(0.2)


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ---- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20k docs, 600 queries, k=10 and 1000")
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=3000, help="queries per measurement")
    ap.add_argument("--ks", default="10,1000")
    ap.add_argument("--corpora", default="scifact,generated")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="queries per batched request")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--wait-ms", type=float, default=2.0, help="service --batch-wait-ms")
    ap.add_argument("--rank-bm25-queries", type=int, default=20)
    ap.add_argument("--no-rank-bm25", action="store_true")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "deepretrieval" / "bench"))
    args = ap.parse_args(argv)
    if args.quick:
        args.docs, args.queries, args.rank_bm25_queries = 20_000, 600, 10
    ks = [int(k) for k in args.ks.split(",")]

    from deepretrieval.core.beir_files import load_corpus, load_qrels, load_queries
    from deepretrieval.core.bundled import collection_dir
    from deepretrieval.catalog import open_index
    from deepretrieval.search.bm25 import BM25Index

    print(f"# bench_service: cpus={os.cpu_count()} docs={args.docs:,} queries={args.queries} "
          f"ks={ks} concurrency={args.concurrency} batch={args.batch} threads={args.threads}",
          flush=True)
    have = {m: importlib.util.find_spec(m) is not None for m in ("orjson", "httptools", "uvloop")}
    print("# optional speed-ups installed: " + ", ".join(f"{m}={'yes' if v else 'no'}"
                                                       for m, v in have.items()), flush=True)
    corpora = {}
    for name in args.corpora.split(","):
        if name == "scifact":
            index = open_index("scifact")
            folder = collection_dir("scifact")
            qmap = load_queries(folder)
            base = [qmap[q] for q in load_qrels(folder, "test")]
            queries = (base * (args.queries // len(base) + 1))[:args.queries]
            corpora[name] = (index, str(index.path), queries,
                             lambda folder=folder: list(load_corpus(folder)))
        elif name == "generated":
            print(f"generated corpus ({args.docs:,} docs)", flush=True)
            path, queries, docs = generated_index(args)
            corpora[name] = (BM25Index.load(path), str(path), queries[:args.queries],
                             (lambda docs=docs, args=args: docs or generate_corpus(
                                 args.docs, args.vocab, args.zipf, args.queries)[0]))
        else:
            raise SystemExit(f"unknown corpus {name!r}")

    proc, url = start_server({n: c[1] for n, c in corpora.items()}, args.threads, args.wait_ms)
    rows = []
    try:
        for name, (index, _, queries, _docs) in corpora.items():
            for k in ks:
                gc.collect()
                one, cpu_local = inprocess_qps(index, queries, k, threads=1)
                many, _ = inprocess_qps(index, queries, k, threads=args.threads)
                local = index.search(queries, k)
                conc, res_c, cpu_c = service_qps(url, name, queries, k, args.concurrency, 1,
                                                 proc.pid)
                batched, res_b, cpu_b = service_qps(url, name, queries, k, 4, args.batch,
                                                    proc.pid)
                same = identical(res_c, local) and identical(res_b, local)
                rows.append(dict(corpus=name, k=k, inproc1=one, inproc=many, conc=conc,
                                 batched=batched, same=same, cpu_local=cpu_local, cpu_c=cpu_c,
                                 cpu_b=cpu_b))
                print(f"  {name} k={k}: in-process {one:,.0f} q/s (1 thread), {many:,.0f} q/s "
                      f"({args.threads} threads); service {conc:,.0f} q/s ({args.concurrency} "
                      f"callers), {batched:,.0f} q/s (batched); CPU µs/query: in-process "
                      f"{cpu_local:,.0f}, service callers {cpu_c:,.0f}, batched {cpu_b:,.0f}; "
                      f"identical={same}", flush=True)
    finally:
        stop_server(proc)

    if not args.no_rank_bm25:
        for name, (_index, _, queries, docs_fn) in corpora.items():
            docs = docs_fn()
            for row in rows:
                if row["corpus"] == name:
                    qps, build = rank_bm25_qps(docs, queries, row["k"], args.rank_bm25_queries)
                    row["rank_bm25"] = qps
                    print(f"  rank-bm25 {name} k={row['k']}: {qps:,.1f} q/s on "
                          f"{args.rank_bm25_queries} queries (build {build:.1f}s)", flush=True)
            del docs
            gc.collect()

    print()
    print(f"| corpus | k | in-process 1 thread | in-process {args.threads} threads | service, "
          f"{args.concurrency} callers × 1 query | service, batched ({args.batch}/request) | "
          f"rank-bm25 | service callers / in-process | batched / in-process | "
          f"in-process / rank-bm25 | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = max(r["inproc1"], r["inproc"])
        rb = r.get("rank_bm25")
        print(f"| {r['corpus']} | {r['k']} | {r['inproc1']:,.0f} | {r['inproc']:,.0f} | "
              f"{r['conc']:,.0f} | {r['batched']:,.0f} | "
              f"{f'{rb:,.1f}' if rb else '-'} | {r['conc'] / best:.0%} | {r['batched'] / best:.0%} | "
              f"{f'{best / rb:,.0f}x' if rb else '-'} | {'yes' if r['same'] else 'NO'} |")
    print()
    print("CPU time per query (client + server processes; less sensitive to other load on the "
          "machine than queries/second):")
    print()
    print("| corpus | k | in-process | service, callers | service, batched | callers / "
          "in-process | batched / in-process |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corpus']} | {r['k']} | {r['cpu_local']:,.0f} µs | {r['cpu_c']:,.0f} µs | "
              f"{r['cpu_b']:,.0f} µs | {r['cpu_c'] / r['cpu_local']:.2f}x | "
              f"{r['cpu_b'] / r['cpu_local']:.2f}x |")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
