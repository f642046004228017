"""BM25 at wiki-18's scale: a generated corpus of 1M, 5M and 21,015,324 passages of ~100 words,
built and searched by ours, bm25s (where it fits in memory) and Lucene, side by side in one run.

The corpus is generated once, in parts of ``--part-docs`` documents (gzipped Anserini
JsonCollection files, ``{"id", "contents"}`` per line), with the benchmarks' Zipfian vocabulary
(``bench_service.generate_corpus``'s words: English stopwords at the head, 50k words, exponent
1.0, Poisson(100) words per passage); a size is the first parts (so the 1M corpus is a prefix of
the 5M one, and the queries — 3–6 distinct content words of a random passage of the first part —
are the same at every size). Every engine reads the same files.

Per size and engine (each in its own process): build seconds, build peak RSS (ours: the main
process and the largest tokenizer worker; Lucene: the Java indexer; bm25s: its process), index
size on disk, the search process's peak RSS, and queries/second plus CPU µs per query at each k
(``--ks``, default 3, 10, 1000), ``single`` (one query per call, 1 thread) and ``batch`` (all
queries in one call over ``--threads`` threads). Every engine first answers all the queries once,
untimed (a warm page cache); then rounds alternate between engines, and the best round of each
is kept. The load average is printed next to every figure (the machine may be shared).

    python benchmarks/bench_scale.py --work-dir /big/disk/scale            # 1M, 5M, 21M
    python benchmarks/bench_scale.py --sizes 1000000 --work-dir ...        # one size
    python benchmarks/bench_scale.py --tiny                                # smoke size

Disk: the gzipped corpus (~5 GB at 21M), and per size our index (texts + impact matrix, ~21 GB at
21M, plus ~8 GB of chunk postings during the build) and Lucene's; indexes are removed after their
size unless ``--keep``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_lucene import (  # noqa: E402
    DEFAULT_PYSERINI_PYTHON,
    LAST_CHILD_CPU,
    Worker,
    build_lucene,
    dir_mb,
    lucene_env,
    peak_rss_mb,
    run_child_rusage,
)

WIKI18 = 21_015_324


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.1f}/{b:.1f}/{c:.1f}"


# ---- the corpus ------------------------------------------------------------------------------

def word_table(vocab: int, zipf: float):
    """The benchmarks' pseudo-words and their Zipf probabilities (bench_service.word_table: the
    same seed, the same words), and how many stopwords head the list."""
    from bench_service import word_table as service_words

    words, p, n_stop, _ = service_words(vocab, zipf, seed=0)
    return words, p, n_stop


def part_tokens(part: int, n_docs: int, p: np.ndarray, block: int = 50_000):
    """(lengths of all passages, then the token ids of each block of ``block`` passages): one
    random stream per part, drawn block by block (the same numbers as one draw for the part)."""
    rng = np.random.default_rng([7, part])
    lengths = rng.poisson(100, size=n_docs).clip(10)
    cdf = np.cumsum(p)

    def blocks():
        for lo in range(0, n_docs, block):
            m = int(lengths[lo:lo + block].sum())
            toks = np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right")
            yield np.minimum(toks, len(p) - 1).astype(np.int32)

    return lengths, blocks()


_ASSEMBLE = None


def _assembler():
    """numba: the bytes of a block of passages (words + spaces) from token ids."""
    global _ASSEMBLE
    if _ASSEMBLE is None:
        import numba

        @numba.njit(cache=True)
        def assemble(tokens, table, starts, lens, total):  # pragma: no cover - jitted
            out = np.empty(total, dtype=np.uint8)
            pos = 0
            for t in tokens:
                a = starts[t]
                for j in range(lens[t]):
                    out[pos] = table[a + j]
                    pos += 1
            return out

        _ASSEMBLE = assemble
    return _ASSEMBLE


def part_passages(part: int, n_docs: int, words, p, block: int = 50_000):
    """The passages of one part, as lists of strings per block of ``block`` (deterministic)."""
    lengths, blocks = part_tokens(part, n_docs, p, block)
    wb = [w.encode() + b" " for w in words]
    lens = np.array([len(w) for w in wb], dtype=np.int64)
    table = np.frombuffer(b"".join(wb), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    assemble = _assembler()
    for lo, toks in zip(range(0, n_docs, block), blocks):
        hi = min(n_docs, lo + block)
        total = int(lens[toks].sum())
        text = assemble(toks, table, starts, lens, total).tobytes().decode("ascii")
        # each passage ends with a space: cut at the passage boundaries
        offsets = np.concatenate([[0], np.cumsum(lengths[lo:hi])])
        c = np.concatenate([[0], np.cumsum(lens[toks])])[offsets].tolist()
        yield [text[c[i]:c[i + 1] - 1] for i in range(hi - lo)]


def write_part(path: Path, part: int, first_id: int, n_docs: int, words, p) -> None:
    tmp = path.with_suffix(".tmp")
    i = first_id
    with gzip.open(tmp, "wb", compresslevel=1) as f:
        for block in part_passages(part, n_docs, words, p):
            f.write("".join('{"id": "g%d", "contents": "%s"}\n' % (i + j, t)
                            for j, t in enumerate(block)).encode())
            i += len(block)
    os.replace(tmp, path)


def generated_docs(total: int, part_docs: int, vocab: int, zipf: float):
    """The same passages as the part files, generated on the fly (no disk)."""
    words, p, _ = word_table(vocab, zipf)
    i = 0
    for part, n in enumerate(part_sizes(total, part_docs)):
        for block in part_passages(part, n, words, p):
            for t in block:
                yield {"_id": f"g{i}", "title": "", "text": t}
                i += 1


def part_sizes(total: int, part_docs: int) -> list[int]:
    sizes = [part_docs] * (total // part_docs)
    if total % part_docs:
        sizes.append(total % part_docs)
    return sizes


def generate(folder: Path, total: int, part_docs: int, n_queries: int, vocab: int,
             zipf: float) -> list[str]:
    """The corpus parts (generated when missing) and the queries."""
    folder.mkdir(parents=True, exist_ok=True)
    words, p, n_stop = word_table(vocab, zipf)
    first = 0
    for part, n in enumerate(part_sizes(total, part_docs)):
        path = folder / f"part-{part:03d}.jsonl.gz"
        if not path.exists():
            t0 = time.perf_counter()
            write_part(path, part, first, n, words, p)
            print(f"  generated part {part} ({n:,} passages) in {time.perf_counter() - t0:.1f}s",
                  flush=True)
        first += n
    qfile = folder / f"queries-{n_queries}.json"
    if not qfile.exists():
        n0 = min(total, part_docs)
        lengths, blocks = part_tokens(0, n0, p, block=n0)
        tokens = next(blocks)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        rng = np.random.default_rng(11)
        queries = []
        for _ in range(n_queries):
            d = int(rng.integers(n0))
            terms = np.unique(tokens[offsets[d]:offsets[d + 1]])
            terms = terms[terms >= n_stop]
            size = min(len(terms), int(rng.integers(3, 7)))
            queries.append(" ".join(words[t] for t in rng.choice(terms, size=size, replace=False)))
        qfile.write_text(json.dumps(queries))
    return json.loads(qfile.read_text())


def collection(folder: Path, work: Path, n: int, sizes: list[int]) -> Path:
    """A folder of hard links to the parts (of ``sizes`` passages) that make the first ``n``."""
    out = work / f"coll-{n}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    got = 0
    for part, size in enumerate(sizes):
        if got >= n:
            break
        os.link(folder / f"part-{part:03d}.jsonl.gz", out / f"part-{part:03d}.jsonl.gz")
        got += size
    if got != n:
        raise SystemExit(f"size {n:,} does not end on a part boundary (parts of {sizes[0]:,})")
    return out


def read_collection(folder: Path | str):
    """The passages of a collection folder, or generated on the fly for ``gen:N:PART:VOCAB:ZIPF``."""
    import orjson

    if str(folder).startswith("gen:"):
        _, n, part, vocab, zipf = str(folder).split(":")
        yield from generated_docs(int(n), int(part), int(vocab), float(zipf))
        return
    folder = Path(folder)
    for path in sorted(folder.glob("part*.jsonl*")):
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for line in f:
                d = orjson.loads(line)
                yield {"_id": d["id"], "title": "", "text": d["contents"]}


# ---- workers (each in its own process) -------------------------------------------------------

def ours_build(coll: str, out: str, n: str, shards: str = "1") -> int:
    import resource

    from deepretrieval.core import settings
    from deepretrieval.search.bm25_build import build_index

    t0 = time.perf_counter()
    log = open(f"{out}.progress.log", "a")

    def logged(docs):
        for i, d in enumerate(docs, 1):
            if i % 500_000 == 0:
                log.write(f"{time.strftime('%H:%M:%S')} read {i:,} passages, "
                          f"{time.perf_counter() - t0:.0f}s, load {load()}\n")
                log.flush()
            yield d

    build_index(logged(read_collection(coll)), out, name="scale", total=int(n),
                shards=int(shards), show_progress=settings.progress_enabled())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
                      "worker_peak_mb": children.ru_maxrss / 1024,
                      "cpu_s": me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime}),
          flush=True)
    return 0


def bm25s_build(coll: str, out: str) -> int:
    import bm25s
    import Stemmer
    from bm25s.tokenization import Tokenizer

    t0 = time.perf_counter()
    ids, texts = [], []
    for d in read_collection(coll):
        ids.append(d["_id"])
        texts.append(d["text"])
    tok = Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en", splitter=r"(?u)\b\w\w+\b")
    tokens = tok.tokenize(texts, show_progress=False, return_as="tuple")
    del texts
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index(tokens, show_progress=False)
    retriever.save(Path(out) / "bm25", show_progress=False)
    tok.save_vocab(Path(out) / "tok")
    tok.save_stopwords(Path(out) / "tok")
    (Path(out) / "ids.json").write_text(json.dumps(ids))
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}),
          flush=True)
    return 0


def _serve(search, queries, describe=None) -> int:
    """Answer the driver's commands on stdin; ``describe(k)`` adds fields to each answer."""
    print(json.dumps({"ready": True, "peak_rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        k, mode, threads = int(cmd["k"]), cmd["mode"], int(cmd.get("threads", 1))
        c0, t0 = time.process_time(), time.perf_counter()
        ids = search(queries, k, mode, threads, cmd.get("kernel"))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rss_mb": peak_rss_mb(),
                          "ids": ids if cmd.get("ids") else None,
                          **(describe(k) if describe else {})}), flush=True)
    return 0


def ours_search(index_dir: str, queries_file: str) -> int:
    from deepretrieval.search import load_index_dir

    queries = json.loads(Path(queries_file).read_text())
    index = load_index_dir(index_dir)
    for kernel in ("pruned", "exhaustive"):  # JIT
        index.search(queries[:4], 10, kernel=kernel)

    def search(qs, k, mode, threads, kernel):
        index.threads = threads
        if mode == "single":
            res = [index.search([q], k, kernel=kernel)[0] for q in qs]
        else:
            res = index.search(qs, k, kernel=kernel)
        return [r.ids[:10] for r in res]

    # which kernel our automatic choice takes at this k (the driver reports it as "ours")
    return _serve(search, queries, lambda k: {"auto_kernel": index.kernel_for(k)})


def bm25s_search(index_dir: str, queries_file: str) -> int:
    import bm25s
    import Stemmer
    from bm25s.tokenization import Tokenizer

    queries = json.loads(Path(queries_file).read_text())
    retriever = bm25s.BM25.load(Path(index_dir) / "bm25", mmap=True, show_progress=False)
    tok = Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en", splitter=r"(?u)\b\w\w+\b")
    tok.load_vocab(Path(index_dir) / "tok")
    tok.load_stopwords(Path(index_dir) / "tok")
    ids = np.asarray(json.loads((Path(index_dir) / "ids.json").read_text()), dtype=object)

    def search(qs, k, mode, threads, kernel):
        def one(batch, n_threads):
            toks = tok.tokenize(batch, update_vocab=False, show_progress=False, return_as="ids")
            docs, scores = retriever.retrieve(toks, k=k, show_progress=False, return_as="tuple",
                                              backend_selection="numba", n_threads=n_threads)
            return [ids[d[s > 0]].tolist()[:10] for d, s in zip(docs, scores)]
        if mode == "single":
            return [one([q], 0)[0] for q in qs]
        return one(qs, threads)

    search(queries[:4], 10, "batch", 1, None)  # JIT
    return _serve(search, queries)


# ---- the driver ------------------------------------------------------------------------------

def bench_size(n, coll, queries, args, lucene, work: Path) -> dict:
    qfile = work / "queries.json"
    qfile.write_text(json.dumps(queries))
    res = {"docs": n, "build": {}, "rows": [], "load_build": None}
    ours_dir = work / f"ours-{n}"
    shutil.rmtree(ours_dir, ignore_errors=True)
    print(f"[{n:,}] building ours (load {load()})", flush=True)
    source = str(coll) if coll is not None else \
        f"gen:{n}:{args.part_docs}:{args.vocab}:{args.zipf:g}"
    wall, peak, out, _ = run_child_rusage([sys.executable, __file__, "--worker", "ours-build",
                                           source, str(ours_dir), str(n)])
    info = json.loads(out.strip().splitlines()[-1])
    res["build"]["ours"] = dict(build_s=wall, build_peak_mb=info["peak_rss_mb"],
                                cpu_s=info["cpu_s"],
                                worker_peak_mb=info["worker_peak_mb"],
                                index_mb=dir_mb(ours_dir),
                                matrix_mb=sum(
                                    p.stat().st_size for p in ours_dir.rglob("*.npy")) / 2**20,
                                load=load())
    print(f"[{n:,}] ours: {wall:.0f}s ({info['cpu_s']:.0f} CPU s), peak {info['peak_rss_mb']:,.0f} MB (+ tokenizer workers "
          f"≤{info['worker_peak_mb']:,.0f} MB each), index {res['build']['ours']['index_mb']:,.0f}"
          f" MB (matrix {res['build']['ours']['matrix_mb']:,.0f} MB), load {load()}", flush=True)
    bm_dir = work / f"bm25s-{n}"
    if args.bm25s and n <= args.bm25s_max_docs and coll is not None:
        print(f"[{n:,}] building bm25s (load {load()})", flush=True)
        wall, peak, out, _ = run_child_rusage([sys.executable, __file__, "--worker", "bm25s-build",
                                               str(coll), str(bm_dir)])
        res["build"]["bm25s"] = dict(build_s=wall, build_peak_mb=peak, index_mb=dir_mb(bm_dir),
                                     cpu_s=LAST_CHILD_CPU["cpu_s"], load=load())
        print(f"[{n:,}] bm25s: {wall:.0f}s ({LAST_CHILD_CPU['cpu_s']:.0f} CPU s), peak {peak:,.0f} MB, load {load()}", flush=True)
    elif args.bm25s:
        print(f"[{n:,}] bm25s: not run — its in-memory build needs ~3.7 GB per 1M passages "
              f"(> --bm25s-max-docs {args.bm25s_max_docs:,})", flush=True)
    luc_dir = work / f"lucene-{n}"
    if lucene and n > args.lucene_max_docs:
        print(f"[{n:,}] Lucene: not run at this size (--lucene-max-docs {args.lucene_max_docs:,})",
              flush=True)
        lucene = None
    if lucene:
        print(f"[{n:,}] building Lucene (load {load()})", flush=True)
        shutil.rmtree(luc_dir, ignore_errors=True)
        wall, peak = build_lucene(lucene, coll, luc_dir, args.threads)
        res["build"]["lucene"] = dict(build_s=wall, build_peak_mb=peak, index_mb=dir_mb(luc_dir),
                                      cpu_s=LAST_CHILD_CPU["cpu_s"], load=load())
        print(f"[{n:,}] Lucene: {wall:.0f}s ({LAST_CHILD_CPU['cpu_s']:.0f} CPU s), peak {peak:,.0f} MB, index "
              f"{res['build']['lucene']['index_mb']:,.0f} MB, load {load()}", flush=True)

    if args.build_only:
        if not args.keep:
            for p in (ours_dir, bm_dir, luc_dir):
                shutil.rmtree(p, ignore_errors=True)
        return res
    workers = {"ours": Worker([sys.executable, __file__, "--worker", "ours", str(ours_dir),
                               str(qfile)])}
    if "bm25s" in res["build"]:
        workers["bm25s"] = Worker([sys.executable, __file__, "--worker", "bm25s", str(bm_dir),
                                   str(qfile)])
    if lucene:
        workers["lucene"] = Worker([args.pyserini_python, str(HERE / "lucene_worker.py"),
                                    str(luc_dir), str(qfile)])
    try:
        # one untimed pass of every engine over all the queries first: the timed rounds then
        # start from a warm page cache for every engine (in round 3's 21M run, the first timed
        # searches of ours ran on cold pages of the 10 GB matrix: 11 ms of CPU per query at k=3
        # single against 6.7 ms for the same queries batched right after)
        for w in workers.values():
            w.run(k=10, mode="batch", threads=args.threads)
        for k in args.ks:
            for mode, threads in (("single", 1), ("batch", args.threads)):
                # our kernels, forced; "ours" is the one the automatic choice takes at this k
                plan = [(f"ours-{kern}", "ours", {"kernel": kern}) for kern in args.kernels]
                plan += [(e, e, {}) for e in ("bm25s", "lucene") if e in workers]
                best: dict[str, dict] = {}
                for _ in range(args.rounds):
                    for engine, wname, extra in plan:
                        r = workers[wname].run(k=k, mode=mode, threads=threads, **extra)
                        if engine not in best or r["seconds"] < best[engine]["seconds"]:
                            best[engine] = r
                auto = best[f"ours-{args.kernels[0]}"]["auto_kernel"]
                if auto not in args.kernels:
                    raise SystemExit(f"k={k} at {n:,} passages: the automatic choice is the {auto}"
                                     f" kernel, which --kernels {','.join(args.kernels)} leaves out")
                best = {"ours": best[f"ours-{auto}"], **best}
                row = dict(docs=n, k=k, mode=mode, threads=threads, load=load(), ours_kernel=auto)
                for engine, r in best.items():
                    row[f"{engine}_qps"] = len(queries) / r["seconds"]
                    row[f"{engine}_cpu_us"] = r["cpu"] / len(queries) * 1e6
                res["rows"].append(row)
                print(f"[{n:,}] k={k} {mode}: " + ", ".join(
                    f"{e} {row[f'{e}_qps']:,.0f} q/s ({row[f'{e}_cpu_us']:,.0f} µs CPU/q)"
                    for e in best) + f"  (load {load()})", flush=True)
    finally:
        for name, w in workers.items():
            try:
                res["build"].setdefault(name, {})["search_peak_mb"] = w.run(
                    k=1, mode="batch", threads=1)["peak_rss_mb"]
            except Exception:  # noqa: BLE001 - reporting only
                pass
            w.close()
    if not args.keep:
        for p in (ours_dir, bm_dir, luc_dir):
            shutil.rmtree(p, ignore_errors=True)
    return res


def fmt(x, spec=",.0f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report(results, args) -> None:
    print("\nBuild, memory and size (each engine in its own process):\n")
    print("| docs | engine | build s (wall) | build CPU s | build peak MB | index MB | "
          "search process peak MB | load |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        for engine, b in res["build"].items():
            if "build_s" not in b:
                continue
            peak = fmt(b["build_peak_mb"])
            if "worker_peak_mb" in b:
                peak += f" (+ {fmt(b['worker_peak_mb'])} per worker)"
            print(f"| {res['docs']:,} | {engine} | {b['build_s']:.0f} | {fmt(b.get('cpu_s'))} | "
                  f"{peak} | "
                  f"{fmt(b['index_mb'])} | {fmt(b.get('search_peak_mb'))} | {b['load']} |")
    print(f"\nQueries/second (CPU µs per query) — best of {args.rounds} interleaved rounds; single:"
          f" one query per call on 1 thread; batch: all {args.queries} queries in one call over "
          f"{args.threads} threads:\n")
    print("| docs | k | mode | ours (kernel chosen) | ours, pruned kernel | ours, exhaustive kernel | "
          "bm25s | Lucene | ours / Lucene | ours / bm25s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        for r in res["rows"]:
            def cell(e, r=r):
                q = r.get(f"{e}_qps")
                return "-" if q is None else f"{q:,.0f} ({r[f'{e}_cpu_us']:,.0f} µs)"
            luc, bm = r.get("lucene_qps"), r.get("bm25s_qps")
            print(f"| {r['docs']:,} | {r['k']} | {r['mode']} | {cell('ours')} {r['ours_kernel']} | "
                  f"{cell('ours-pruned')} | {cell('ours-exhaustive')} | {cell('bm25s')} | "
                  f"{cell('lucene')} | "
                  f"{format(r['ours_qps'] / luc, '.2f') + 'x' if luc else '-'} | "
                  f"{format(r['ours_qps'] / bm, '.2f') + 'x' if bm else '-'} | {r['load']} |")


def plot(results, path: str) -> None:
    """Queries/second (k=10 and 1000, batch) and memory against the corpus size, per engine."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(results, key=lambda r: r["docs"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"ours": "-o", "ours-pruned": "-.o", "ours-exhaustive": ":o", "bm25s": ":^",
              "lucene": "--s"}
    for k in (10, 1000):
        for engine, style in styles.items():
            pts = [(r["docs"], row[f"{engine}_qps"]) for r in results for row in r["rows"]
                   if row["k"] == k and row["mode"] == "batch" and f"{engine}_qps" in row]
            if pts:
                a1.plot(*zip(*pts), style, label=f"{engine} k={k}")
    a1.set(xscale="log", yscale="log", xlabel="passages", ylabel="queries/second (batch)",
           title="BM25 throughput vs corpus size")
    a1.legend(fontsize=7)
    for engine, style in styles.items():
        pts = [(r["docs"], r["build"][engine]["build_peak_mb"]) for r in results
               if "build_peak_mb" in r["build"].get(engine, {})]
        if pts:
            a2.plot(*zip(*pts), style, label=f"{engine} build peak")
        pts = [(r["docs"], r["build"][engine]["search_peak_mb"]) for r in results
               if "search_peak_mb" in r["build"].get(engine, {})]
        if pts:
            a2.plot(*zip(*pts), style, alpha=0.5, label=f"{engine} search process peak")
    a2.set(xscale="log", yscale="log", xlabel="passages", ylabel="peak RSS (MB)",
           title="Memory vs corpus size")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, rest = sys.argv[2], sys.argv[3:]
        return {"ours-build": ours_build, "bm25s-build": bm25s_build, "ours": ours_search,
                "bm25s": bm25s_search}[kind](*rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=f"1000000,5000000,{WIKI18}")
    ap.add_argument("--part-docs", type=int, default=1_000_000)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--ks", default="3,10,1000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kernels", default="pruned,exhaustive",
                    help="our top-k kernels to time, forced (the automatic choice must be one)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pyserini-python", default=DEFAULT_PYSERINI_PYTHON)
    ap.add_argument("--no-lucene", action="store_true")
    ap.add_argument("--no-bm25s", dest="bm25s", action="store_false")
    ap.add_argument("--bm25s-max-docs", type=int, default=1_000_000,
                    help="largest size bm25s is built for (its build holds everything in RAM)")
    ap.add_argument("--lucene-max-docs", type=int, default=5_000_000,
                    help="largest size Lucene is built for; larger sizes are generated on the fly "
                         "for ours (no corpus files)")
    ap.add_argument("--work-dir", default=None, help="corpus and indexes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the indexes")
    ap.add_argument("--build-only", action="store_true",
                    help="build and measure the indexes, no searches")
    ap.add_argument("--json", default=None, help="write the figures here after each size")
    ap.add_argument("--tiny", action="store_true", help="smoke size (2,000 + 3,000 passages)")
    ap.add_argument("--plot", default=None, help="write the growth plot (PNG) here")
    ap.add_argument("--report-from", default=None,
                    help="comma-separated --json files of earlier runs: print their tables (and "
                         "--plot) without running anything")
    args = ap.parse_args(argv)
    if args.report_from:
        if args.tiny:
            args.queries, args.rounds = 50, 1
        results = [r for f in args.report_from.split(",") for r in json.loads(Path(f).read_text())]
        report(sorted(results, key=lambda r: r["docs"]), args)
        if args.plot:
            plot(results, args.plot)
        return 0
    if args.tiny:
        args.sizes, args.part_docs, args.queries, args.rounds = "2000,3000", 1000, 50, 1
        args.vocab = 5000
    args.ks = [int(k) for k in args.ks.split(",")]
    args.kernels = args.kernels.split(",")
    if not args.kernels or set(args.kernels) - {"pruned", "exhaustive"}:
        ap.error(f"--kernels: a comma-separated list of pruned, exhaustive (got {args.kernels})")
    sizes = [int(x) for x in args.sizes.split(",")]
    lucene = None if args.no_lucene else lucene_env(args.pyserini_python)
    print(f"# bench_scale: sizes={sizes} cpus={os.cpu_count()} threads={args.threads} "
          f"ks={args.ks} lucene={'yes' if lucene else 'no'} load {load()}", flush=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-scale-"))
    results = []
    try:
        corpus = work / f"corpus-v{args.vocab}-z{args.zipf:g}-p{args.part_docs}"
        t0 = time.perf_counter()
        file_total = max([n for n in sizes if n <= args.lucene_max_docs] or [0])
        queries = generate(corpus, file_total or min(args.part_docs, min(sizes)), args.part_docs,
                           args.queries, args.vocab, args.zipf)
        print(f"# corpus ready ({time.perf_counter() - t0:.0f}s, {dir_mb(corpus):,.0f} MB "
              f"gzipped)", flush=True)
        for n in sizes:
            coll = collection(corpus, work, n, part_sizes(file_total, args.part_docs)) \
                if n <= file_total else None
            results.append(bench_size(n, coll, queries, args, lucene, work))
            if coll is not None:
                shutil.rmtree(coll, ignore_errors=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            report(results, args)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
