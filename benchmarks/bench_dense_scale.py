"""Dense placements at 1M–5M vectors on the CPU: ours (``DenseIndex.load(placement=...)``) next to
raw faiss on the same vectors, with load time, peak RSS, queries/second (single and batched) and
recall@3 / @10 against exact search.

Vectors: generated, with the structure of real sentence embeddings rather than uniform noise (on
which ANN recall means nothing): a shared direction (mean cosine between random vectors ≈ 0.70, as
e5's), 64 topics × 32 sub-topics (a Gaussian mixture), a 48-dimensional low-rank component and
isotropic noise, L2-normalised. Queries come from the same mixture with more isotropic noise (the
query's nearest neighbour has cosine ≈ 0.9, the 3rd and 4th differ by ≈ 0.002 on average).
The vectors are written to ``<work-dir>/<n>x<d>/embeddings.npy`` in blocks (RSS stays small) and
kept for later runs.

Every option runs in its own process (peak RSS is that process's ``ru_maxrss``):

* **ours**: ``DenseIndex.load(dir, placement=SPEC)`` (vectors read from the file block by block;
  trained / graph indexes built and then cached beside the index — the load time reported is the
  build), then ``search_vectors`` + positions → ids.
* **raw faiss**: what a user writes without us: ``np.load(embeddings.npy, mmap_mode="r")``,
  ``faiss.index_factory`` with the same string, ``train`` on the same sample size, ``add`` of the
  whole (memory-mapped) matrix, then ``index.search`` + positions → ids.

Before each process starts, the option's memory is computed (``dense_place.plan``; raw faiss: the
index plus the whole vector file, which ``add`` reads through the memory map); an option over
``--max-rss-gb`` (default 9: the machine is shared) is not run and is printed as refused with the
numbers. Exact references (top-10 of every query) come from the ``stream`` placement.

    nice -n 10 python benchmarks/bench_dense_scale.py                        # 1M and 5M, 384 and 768
    python benchmarks/bench_dense_scale.py --sizes 1M:384 --options "flat;sq8"
    python benchmarks/bench_dense_scale.py --tiny                             # smoke size
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the options measured by default, with their recall sweeps (search-time parameter values)
OPTIONS = {
    "flat": None, "stream": None, "torch": None,
    "torch:dtype=float16": None, "torch:dtype=sq8": None,   # the GPU placements' recall
    "sq8": None,
    "ivfsq8:nlist=1024": ("nprobe", [8, 16, 32, 64, 128]),
    "ivfpq:nlist=1024": ("nprobe", [8, 16, 32, 64, 128]),
    "ivfpq:nlist=1024,rerank=10": ("nprobe", [8, 16, 32, 64, 128]),
    "sq8:rerank=4": None,
    "hnsw:m=32,ef_construction=100": ("ef_search", [32, 64, 128, 256]),
}
RAW = {"flat", "sq8", "ivfsq8:nlist=1024", "ivfpq:nlist=1024", "hnsw:m=32,ef_construction=100"}


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "KM" else text) * mult)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ---------------------------------------------------------------------------------------------
# generated vectors

class Mixture:
    """The generator (see the module docstring); deterministic in ``seed``."""

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        u = rng.standard_normal(dim)
        self.u = u / np.linalg.norm(u)
        topics = rng.standard_normal((64, dim))
        topics /= np.linalg.norm(topics, axis=1, keepdims=True)
        self.centres = np.repeat(topics, 32, axis=0) + 0.8 * rng.standard_normal((64 * 32, dim)) / np.sqrt(dim)
        self.low_rank = rng.standard_normal((48, dim)) / np.sqrt(dim * 48)

    def sample(self, n: int, rng, iso: float = 0.35) -> np.ndarray:
        c = rng.integers(0, len(self.centres), n)
        x = (1.5 * self.u + 0.6 * self.centres[c] + 0.5 * (rng.standard_normal((n, 48)) @ self.low_rank)
             + iso * rng.standard_normal((n, self.dim)) / np.sqrt(self.dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_index_dir(folder: Path, n: int, dim: int, queries: int) -> Path:
    """``embeddings.npy`` + ``doc_ids.json`` + ``meta.json`` (+ ``queries.npy``), written once."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "meta.json").exists():
        return folder
    mix = Mixture(dim)
    tmp = folder / "embeddings.npy.part"
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (n, dim)})
        for start in range(0, n, 100_000):
            rng = np.random.default_rng(1000 + start // 100_000)
            f.write(mix.sample(min(100_000, n - start), rng).tobytes())
    os.replace(tmp, folder / "embeddings.npy")
    np.save(folder / "queries.npy", mix.sample(queries, np.random.default_rng(1), iso=0.45))
    (folder / "doc_ids.json").write_text(json.dumps([f"d{i}" for i in range(n)]))
    (folder / "meta.json").write_text(json.dumps({
        "type": "dense", "format": 1, "name": folder.name, "encoder": "minilm", "dim": dim,
        "index": "flat", "num_docs": n, "normalize": True}))
    return folder


# ---------------------------------------------------------------------------------------------
# one option in one process

def _timed_searches(search, queries: np.ndarray, k: int, batch: int, single: int):
    t0 = time.perf_counter()
    for s in range(0, batch, 256):
        search(queries[s:min(batch, s + 256)], k)
    batched = batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(single):
        search(queries[i:i + 1], k)
    return batched, single / (time.perf_counter() - t0)


def worker(args) -> dict:
    import faiss

    from deepretrieval.search.dense import DenseIndex
    from deepretrieval.search.dense_place import FACTORY, Placement, apply_search_params, recall_at

    folder = Path(args.dir)
    queries = np.load(folder / "queries.npy")
    spec = args.option
    out: dict = {"option": spec, "side": args.side}
    t0 = time.perf_counter()
    if args.side == "ours":
        index = DenseIndex.load(folder, placement=spec, announce=False)
        placement = index.placement
        id_arr = index._doc_ids_arr  # noqa: SLF001 - the benchmark maps positions like search()

        def search(q, k):
            scores, pos = index.search_vectors(q, k)
            return [id_arr[p[p >= 0]].tolist() for p in pos], pos

        def set_param(name, value):
            if name == "nprobe":
                faiss.extract_index_ivf(index.index).nprobe = value
            else:
                index.placement = Placement.parse(f"{spec},ef_search={value}").resolved(
                    len(id_arr), index.dim)
    else:
        placement = Placement.parse(spec).resolved(*np.load(folder / "embeddings.npy",
                                                             mmap_mode="r").shape)
        ids = json.loads((folder / "doc_ids.json").read_text())
        id_arr = np.asarray(ids, dtype=object)
        matrix = np.load(folder / "embeddings.npy", mmap_mode="r")
        raw = faiss.index_factory(matrix.shape[1], FACTORY[placement.kind].format(
            nlist=placement.nlist, pq_m=placement.pq_m, m=placement.m), faiss.METRIC_INNER_PRODUCT)
        if placement.kind.startswith("hnsw"):
            raw.hnsw.efConstruction = placement.ef_construction
        if not raw.is_trained:
            rng = np.random.default_rng(0)
            rows = np.sort(rng.choice(len(matrix), size=min(len(matrix), placement.train_rows),
                                      replace=False))
            raw.train(np.ascontiguousarray(matrix[rows]))
        raw.add(matrix)
        apply_search_params(raw, placement)

        def search(q, k):
            scores, pos = raw.search(q, k)
            return [id_arr[p[p >= 0]].tolist() for p in pos], pos

        def set_param(name, value):
            if name == "nprobe":
                faiss.extract_index_ivf(raw).nprobe = value
            else:
                raw.hnsw.efSearch = value
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_gb"] = peak_rss_gb()
    out["spec"] = placement.spec()
    if placement.kind != "stream":  # stream reads the whole file per call: no warm-up pass
        search(queries[:1], args.k)  # warm-up
    out["batched_qps"], out["single_qps"] = _timed_searches(search, queries, args.k, args.batch,
                                                            args.single)
    ref_file = folder / "exact_top10.npy"
    if ref_file.exists():
        exact = np.load(ref_file)
        nq = min(len(exact), args.recall_queries)
        sweep = OPTIONS.get(args.option_key)
        default_pos = search(queries[:nq], 10)[1]
        out["recall@3"] = recall_at(3, exact[:nq], default_pos)
        out["recall@10"] = recall_at(10, exact[:nq], default_pos)
        if sweep and args.side == "ours":
            name, values = sweep
            out["sweep"] = []
            for value in values:
                set_param(name, value)
                t0 = time.perf_counter()
                pos = search(queries[:nq], 10)[1]
                qps = nq / (time.perf_counter() - t0)
                out["sweep"].append({name: value, "recall@3": recall_at(3, exact[:nq], pos),
                                     "recall@10": recall_at(10, exact[:nq], pos), "batched_qps": qps})
    elif args.side == "ours" and placement.kind == "stream":
        nq = args.recall_queries
        _, pos = index.search_vectors(queries[:nq], 10)
        np.save(ref_file, pos)
        out["recall@3"] = out["recall@10"] = 1.0
    out["peak_rss_gb"] = peak_rss_gb()
    return out


# ---------------------------------------------------------------------------------------------
# the driver

def estimate_gb(option: str, side: str, n: int, dim: int) -> tuple[float, str]:
    from deepretrieval.search.dense_place import GB, Placement, plan
    p = plan(Placement.parse(option), n, dim, query_batch=256)
    if side == "ours":
        return (p.ram + p.build_ram) / GB, p.line()
    vectors = 4.0 * n * dim
    held = p.ram - min(4.0 * n * dim, 256e6) if p.placement.kind != "flat" else 4.0 * n * dim
    return (vectors + held + p.build_ram) / GB, (f"{vectors / GB:.2f} GB vectors through the "
                                                 f"memory map + {held / GB:.2f} GB index")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1M:384,1M:768,5M:384,5M:768")
    ap.add_argument("--options", default=";".join(OPTIONS), help="separated by ;")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="queries in the batched measurement")
    ap.add_argument("--single", type=int, default=20, help="one-query calls measured")
    ap.add_argument("--recall-queries", type=int, default=256)
    ap.add_argument("--max-rss-gb", type=float, default=9.0)
    ap.add_argument("--no-raw", action="store_true", help="skip raw faiss")
    ap.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "deepretrieval-bench-dense"))
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--option", help=argparse.SUPPRESS)
    ap.add_argument("--option-key", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.tiny:
        args.sizes = "20K:64" if args.sizes == ap.get_default("sizes") else args.sizes
        args.batch, args.single, args.recall_queries = 64, 5, 64
    options = [o.strip() for o in args.options.split(";") if o.strip()]
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise SystemExit(f"error: unknown options {unknown} (known: {list(OPTIONS)})")
    if "stream" in options:  # the exact reference comes first
        options.remove("stream")
        options.insert(0, "stream")
    load = os.getloadavg()
    print(f"# bench_dense_scale: cpus={os.cpu_count()} load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; k={args.k}, batched {args.batch} queries (256 per call), "
          f"{args.single} single-query calls; cap {args.max_rss_gb:g} GB RSS", flush=True)
    rows = []
    for size in args.sizes.split(","):
        n_text, _, d_text = size.partition(":")
        n, dim = _size(n_text), int(d_text)
        folder = Path(args.work_dir) / f"{n}x{dim}"
        t0 = time.perf_counter()
        make_index_dir(folder, n, dim, max(args.batch, args.recall_queries, args.single))
        print(f"## {n:,} × {dim}: vectors ready in {time.perf_counter() - t0:.0f}s ({folder})",
              flush=True)
        for option in options:
            sides = ["ours"] + ([] if args.no_raw or option not in RAW else ["raw"])
            for side in sides:
                need, why = estimate_gb(option, side, n, dim)
                row = {"n": n, "dim": dim, "option": option, "side": side, "estimate_gb": need,
                       "estimate": why}
                if need > args.max_rss_gb:
                    row["refused"] = f"needs {need:.1f} GB > cap {args.max_rss_gb:g} GB ({why})"
                    print(f"  {option} [{side}]: REFUSED, {row['refused']}", flush=True)
                    rows.append(row)
                    continue
                for stale in (folder / "placements").glob("*.faiss"):
                    stale.unlink()  # measure the build, not a cached index
                cmd = [sys.executable, __file__, "--worker", "--dir", str(folder), "--option",
                       option, "--option-key", option, "--side", side, "--k", str(args.k),
                       "--batch", str(args.batch), "--single", str(args.single),
                       "--recall-queries", str(args.recall_queries)]
                env = {**os.environ, "PYTHONPATH": str(ROOT), "DEEPRETRIEVAL_PROGRESS": "0",
                       "OMP_WAIT_POLICY": "PASSIVE",  # shared, loaded machine: no spinning
                       "DEEPRETRIEVAL_DENSE_RAM_GB": str(args.max_rss_gb)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    row["failed"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "?"
                    print(f"  {option} [{side}]: FAILED {row['failed']}", flush=True)
                    rows.append(row)
                    continue
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                rows.append(row)
                print(f"  {option} [{side}]: load {row['load_s']:.1f}s, peak RSS "
                      f"{row['peak_rss_gb']:.2f} GB (estimate {need:.2f}), batched "
                      f"{row['batched_qps']:,.1f} q/s, single {row['single_qps']:,.1f} q/s, "
                      f"recall@3 {row.get('recall@3', float('nan')):.4f}", flush=True)
                for s in row.get("sweep", []):
                    print(f"      {s}", flush=True)
    print_tables(rows)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("failed" in r for r in rows) else 0


def print_tables(rows: list[dict]) -> None:
    print("\n| vectors | option | ours: load s | ours: peak RSS GB | ours: batched q/s | ours: single q/s "
          "| recall@3 | raw faiss: load s | raw: peak RSS GB | raw: batched q/s | raw: single q/s "
          "| ours / raw batched | ours / raw single |")
    print("|" + "---|" * 13)
    by = {}
    for r in rows:
        by.setdefault((r["n"], r["dim"], r["option"]), {})[r["side"]] = r
    for (n, dim, option), sides in by.items():
        ours, raw = sides.get("ours", {}), sides.get("raw")

        def cell(r, key, fmt):
            if r is None:
                return "-"
            if "refused" in r:
                return f"refused ({r['estimate_gb']:.1f} GB)"
            if "failed" in r:
                return "failed"
            return format(r[key], fmt) if key in r else "-"

        ratio_b = ratio_s = "-"
        if raw and "batched_qps" in raw and "batched_qps" in ours:
            ratio_b = f"{ours['batched_qps'] / raw['batched_qps']:.2f}"
            ratio_s = f"{ours['single_qps'] / raw['single_qps']:.2f}"
        print(f"| {n / 1e6:g}M × {dim} | `{ours.get('spec', option)}` | {cell(ours, 'load_s', '.1f')} | "
              f"{cell(ours, 'peak_rss_gb', '.2f')} | {cell(ours, 'batched_qps', ',.1f')} | "
              f"{cell(ours, 'single_qps', ',.1f')} | {cell(ours, 'recall@3', '.4f')} | "
              f"{cell(raw, 'load_s', '.1f')} | {cell(raw, 'peak_rss_gb', '.2f')} | "
              f"{cell(raw, 'batched_qps', ',.1f')} | {cell(raw, 'single_qps', ',.1f')} | "
              f"{ratio_b} | {ratio_s} |")
    sweeps = [(r, s) for r in rows for s in r.get("sweep", [])]
    if sweeps:
        print("\n| vectors | option | parameter | recall@3 | recall@10 | q/s (the recall queries in one call, k=10) |")
        print("|---|---|---|---|---|---|")
        for r, s in sweeps:
            name = "nprobe" if "nprobe" in s else "ef_search"
            print(f"| {r['n'] / 1e6:g}M × {r['dim']} | `{r['option']}` | {name}={s[name]} | "
                  f"{s['recall@3']:.4f} | {s['recall@10']:.4f} | {s['batched_qps']:,.1f} |")


if __name__ == "__main__":
    sys.exit(main())
