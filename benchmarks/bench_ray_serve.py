"""Ray Serve deployment of the retrieval service against ``deepretrieval serve``, side by side.

Same index (the bundled SciFact BM25 index, 5,183 docs) and the same queries (its 300 test
claims, repeated), on a local Ray cluster started here (``--ray-cpus``, default: every core):

1. **per-request overhead at low load**: one caller, one query per request, k=10 — latency p50 /
   mean and CPU µs per request of every process involved (this one, the server, and for Ray every
   Ray process: GCS, raylet, controller, HTTP proxy, ingress and index replicas; also net of what
   the Ray processes burn while idle, measured for 5 s before), for
   ``deepretrieval serve``, the Ray Serve HTTP path and the Ray handle path (``ray://APP``);
2. **throughput**: ``--concurrency`` concurrent callers with one query each, for
   ``deepretrieval serve`` and the Ray Serve HTTP path with 1 and 2 replicas of the index (and the
   handle path with 2); and 4 callers sending ``--batch`` queries per request (Search-R1's one
   request per turn) to ``deepretrieval serve`` and to Ray Serve with 2 replicas;
3. **replica kill under load**: SIGKILL one replica of the index, then one of the two ingress
   replicas, while ``--kill-callers`` HTTP callers search: failed requests with the client's
   retries off (``retries=0``) and on (the default 3), and the time until Serve has replaced it;

with the ratio Ray / single process and the peak RSS of the serving processes (sum over Ray's).
Every answer is checked against the in-process index.

    python benchmarks/bench_ray_serve.py            # about 5 minutes on 2 busy cores
    python benchmarks/bench_ray_serve.py --quick    # fewer queries
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_service import identical, start_server, stop_server  # noqa: E402

APP = "benchray"


# ---- process accounting ----------------------------------------------------------------------

def tree():
    """This process and all its descendants (the server, or Ray's GCS/raylet/workers)."""
    import psutil

    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def tree_cpu() -> float:
    total = 0.0
    for p in tree():
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except Exception:  # noqa: BLE001 - a process that just ended
            pass
    return total


def idle_rate(seconds: float = 5.0) -> float:
    """CPU seconds per second the process tree burns doing nothing (Ray's GCS, raylet, controller
    and proxies poll): subtracted to give the net CPU per request."""
    c0, t0 = tree_cpu(), time.perf_counter()
    time.sleep(seconds)
    return (tree_cpu() - c0) / (time.perf_counter() - t0)


class RSSPeak:
    """Samples the summed RSS of the serving processes (descendants of this one) every 50 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            total = 0
            for p in tree()[1:]:
                try:
                    total += p.memory_info().rss
                except Exception:  # noqa: BLE001
                    pass
            self.peak = max(self.peak, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---- load ------------------------------------------------------------------------------------

def sequential(search, queries, k, idle=0.0):
    """One caller: latencies (s), CPU µs per request of the whole process tree (gross, and net of
    the ``idle`` CPU rate), results."""
    search(queries[:5], k)  # warm
    lat, results = [], []
    c0, w0 = tree_cpu(), time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        results += search([q], k)
        lat.append(time.perf_counter() - t0)
    used = tree_cpu() - c0
    net = used - idle * (time.perf_counter() - w0)
    return lat, (used / len(queries) * 1e6, net / len(queries) * 1e6), results


async def _concurrent(asearch, queries, k, concurrency):
    results = [None] * len(queries)
    it = iter(range(len(queries)))

    async def caller():
        for i in it:
            results[i] = (await asearch([queries[i]], k))[0]

    await asearch(queries[:2], k)
    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return len(queries) / (time.perf_counter() - t0), results


def concurrent(make_asearch, queries, k, concurrency, idle=0.0):
    """(queries/s, (gross, net) CPU µs per query of the tree, results) for ``concurrency``
    async callers."""
    async def run():
        asearch, close = make_asearch()
        try:
            return await _concurrent(asearch, queries, k, concurrency)
        finally:
            await close()

    c0, w0 = tree_cpu(), time.perf_counter()
    qps, results = asyncio.run(run())
    used = tree_cpu() - c0
    net = used - idle * (time.perf_counter() - w0)
    return qps, (used / len(queries) * 1e6, net / len(queries) * 1e6), results


def batched(url, index, queries, k, batch, callers, idle=0.0):
    """(queries/s, (gross, net) CPU µs per query, results): ``callers`` callers sending
    ``batch`` queries per request (Search-R1's one request per turn)."""
    from bench_service import _service_run

    c0, w0 = tree_cpu(), time.perf_counter()
    qps, results = asyncio.run(_service_run(url, index, queries, k, callers, batch))
    used = tree_cpu() - c0
    net = used - idle * (time.perf_counter() - w0)
    return qps, (used / len(queries) * 1e6, net / len(queries) * 1e6), results


def http_async(url, index, retries=3):
    from deepretrieval.service.client import AsyncServiceClient

    def make():
        client = AsyncServiceClient(url, timeout=120, retries=retries)
        return (lambda qs, k: client.search(index, qs, k)), client.aclose
    return make


def handle_async(index):
    from deepretrieval.service.ray_client import RaySearcher

    def make():
        searcher = RaySearcher(APP, timeout=120)

        async def close():
            return None
        return (lambda qs, k: searcher.asearch(index, qs, k)), close
    return make


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


# ---- Ray -------------------------------------------------------------------------------------

def deploy(replicas: int, ingress_replicas: int, port: int, index_path: str, first: bool,
           ray_cpus: int | None, temp: str):
    from deepretrieval import catalog
    from deepretrieval.service import ray_serve
    from deepretrieval.service.app import ServiceConfig

    options = ray_serve.RayOptions(app_name=APP, replicas=replicas,
                                   ingress_replicas=ingress_replicas, port=port, replica_cpus=0)
    init = {"_temp_dir": temp, "object_store_memory": 200 << 20} if first else None
    t0 = time.perf_counter()
    url = ray_serve.start({"scifact": index_path}, ServiceConfig(max_k=10000), options,
                          open_index=catalog.open_index, locate=catalog.index_directory,
                          num_cpus=ray_cpus, ray_init=init)
    return url, time.perf_counter() - t0


def ingress_pids(url: str, want: int, timeout: float = 120.0) -> set[int]:
    """Process ids of the ingress replicas: the replica processes whose command line names the
    ingress deployment (Ray titles its worker processes ``ray::ServeReplica:APP:ingress``)."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        pids = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if f"ServeReplica:{APP}:ingress" in cmd:
                pids.add(p.info["pid"])
        if len(pids) >= want or time.monotonic() > deadline:
            return pids
        time.sleep(0.5)


def kill_under_load(url, queries, victim_pid, callers, retries, wait_s=1.0):
    """Kill ``victim_pid`` after ``wait_s`` of load; (requests, failed, errors) of the callers."""
    from deepretrieval.service.client import ServiceClient

    stats = {"ok": 0, "failed": 0, "errors": []}
    lock = threading.Lock()
    stop = time.monotonic() + wait_s + 8.0

    def caller(c):
        client = ServiceClient(url, retries=retries, timeout=60)
        i = c
        while time.monotonic() < stop:
            try:
                client.search("scifact", [queries[i % len(queries)]], 10)
                with lock:
                    stats["ok"] += 1
            except Exception as exc:  # noqa: BLE001
                with lock:
                    stats["failed"] += 1
                    stats["errors"].append(str(exc)[:160])
            i += callers
        client.close()

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    for t in threads:
        t.start()
    time.sleep(wait_s)
    os.kill(victim_pid, signal.SIGKILL)
    for t in threads:
        t.join()
    return stats["ok"] + stats["failed"], stats["failed"], stats["errors"]


# ---- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer queries")
    ap.add_argument("--seq-queries", type=int, default=300, help="requests in the latency run")
    ap.add_argument("--queries", type=int, default=1500, help="queries per throughput run")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--kill-callers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64, help="queries per batched request")
    ap.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray cluster")
    args = ap.parse_args(argv)
    if args.quick:
        args.seq_queries, args.queries = 100, 400

    import socket

    from deepretrieval.service.ray_client import LOOPBACK_ENV

    os.environ.setdefault(LOOPBACK_ENV, "0")  # the local Ray cluster on 127.0.0.1
    import ray

    from deepretrieval.catalog import open_index
    from deepretrieval.core.beir_files import load_qrels, load_queries
    from deepretrieval.core.bundled import collection_dir
    from deepretrieval.service import ray_serve
    from deepretrieval.service.client import ServiceSearcher
    from deepretrieval.service.ray_client import RaySearcher

    index = open_index("scifact")
    folder = collection_dir("scifact")
    qmap = load_queries(folder)
    base = [qmap[q] for q in load_qrels(folder, "test")]
    seq_q = (base * (args.seq_queries // len(base) + 1))[:args.seq_queries]
    conc_q = [f"{q} {i // len(base)}" if i >= len(base) else q
              for i, q in enumerate((base * (args.queries // len(base) + 1))[:args.queries])]
    local_seq = index.search(seq_q, 10)
    local_conc = index.search(conc_q, 10)
    print(f"# bench_ray_serve: cpus={os.cpu_count()} ray={ray.__version__} "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}", flush=True)
    rows, kills, checks = {}, [], []

    # -- deepretrieval serve (one process) --
    with RSSPeak() as rss:
        proc, url = start_server({"scifact": str(index.path)}, os.cpu_count() or 1, 2.0)
        try:
            http = ServiceSearcher(url)
            lat, cpu, res = sequential(lambda qs, k: http.search("scifact", qs, k), seq_q, 10)
            checks.append(identical(res, local_seq))
            rows["serve"] = {"p50": pct(lat, 50), "mean": statistics.mean(lat), "cpu": cpu}
            qps, cpu_c, res = concurrent(http_async(url, "scifact"), conc_q, 10, args.concurrency)
            checks.append(identical(res, local_conc))
            rows["serve"].update(qps=qps, cpu_c=cpu_c)
            qps, cpu_b, res = batched(url, "scifact", conc_q, 10, args.batch, 4)
            checks.append(identical(res, local_conc))
            rows["serve_b"] = {"qps": qps, "cpu_c": cpu_b}
            http.close()
        finally:
            stop_server(proc)
    rows["serve"]["rss"] = rss.peak
    print(f"  deepretrieval serve: p50 {rows['serve']['p50'] * 1e3:.2f} ms, "
          f"{rows['serve']['qps']:,.0f} q/s at {args.concurrency} callers", flush=True)

    # -- Ray Serve --
    temp = tempfile.mkdtemp(prefix="drbench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RSSPeak() as rss:
        try:
            url, t_deploy = deploy(1, 1, port, str(index.path), True, args.ray_cpus, temp)
            print(f"  Ray Serve (1 replica) deployed in {t_deploy:.1f}s", flush=True)
            http = ServiceSearcher(url)
            handle = RaySearcher(APP, timeout=120)
            http.search("scifact", seq_q[:5], 10)
            handle.search("scifact", seq_q[:5], 10)
            idle = idle_rate()
            print(f"  Ray idle: {idle:.2f} CPU seconds per second", flush=True)
            lat, cpu, res = sequential(lambda qs, k: http.search("scifact", qs, k), seq_q, 10,
                                       idle)
            checks.append(identical(res, local_seq))
            rows["ray_http"] = {"p50": pct(lat, 50), "mean": statistics.mean(lat), "cpu": cpu}
            lat, cpu, res = sequential(lambda qs, k: handle.search("scifact", qs, k), seq_q, 10,
                                       idle)
            checks.append(identical(res, local_seq))
            rows["ray_handle"] = {"p50": pct(lat, 50), "mean": statistics.mean(lat), "cpu": cpu}
            qps, cpu_c, res = concurrent(http_async(url, "scifact"), conc_q, 10, args.concurrency,
                                         idle)
            checks.append(identical(res, local_conc))
            rows["ray_http"].update(qps=qps, cpu_c=cpu_c)
            print(f"  Ray Serve HTTP, 1 replica: p50 {rows['ray_http']['p50'] * 1e3:.2f} ms, "
                  f"{qps:,.0f} q/s", flush=True)

            url, t_deploy = deploy(2, 2, port, str(index.path), False, args.ray_cpus, temp)
            print(f"  Ray Serve redeployed with 2 replicas in {t_deploy:.1f}s", flush=True)
            idle2 = idle_rate()
            qps, cpu_c, res = concurrent(http_async(url, "scifact"), conc_q, 10, args.concurrency,
                                         idle2)
            checks.append(identical(res, local_conc))
            rows["ray_http2"] = {"qps": qps, "cpu_c": cpu_c}
            qps, cpu_c, res = concurrent(handle_async("scifact"), conc_q, 10, args.concurrency,
                                         idle2)
            checks.append(identical(res, local_conc))
            rows["ray_handle2"] = {"qps": qps, "cpu_c": cpu_c}
            qps, cpu_b, res = batched(url, "scifact", conc_q, 10, args.batch, 4, idle2)
            checks.append(identical(res, local_conc))
            rows["ray_b"] = {"qps": qps, "cpu_c": cpu_b}
            print(f"  Ray Serve 2 replicas: HTTP {rows['ray_http2']['qps']:,.0f} q/s, handle "
                  f"{rows['ray_handle2']['qps']:,.0f} q/s, batched HTTP {qps:,.0f} q/s",
                  flush=True)

            # -- faults --
            from deepretrieval.service import ray_serve

            index_pids = lambda: ray_serve.replica_pids("index-0-scifact", 2, APP)  # noqa: E731
            for what, find in [("index replica", index_pids),
                               ("ingress replica", lambda: ingress_pids(url, 2))]:
                for retries in (0, 3):
                    pids = find()
                    if len(pids) < 2:
                        print(f"  could not find 2 {what}s: {pids}", flush=True)
                        break
                    victim = min(pids)
                    t0 = time.monotonic()
                    n, failed, errors = kill_under_load(url, conc_q, victim, args.kill_callers,
                                                        retries)
                    back = find()
                    recovered = time.monotonic() - t0
                    kills.append((what, retries, n, failed, len(back) >= 2 and victim not in back,
                                  recovered, errors[:2]))
                    print(f"  killed an {what} under load, client retries={retries}: "
                          f"{failed} of {n} requests failed", flush=True)
        finally:
            try:
                ray_serve.stop(APP)
            finally:
                ray.shutdown()
                shutil.rmtree(temp, ignore_errors=True)
    ray_rss = rss.peak

    s, r = rows["serve"], rows["ray_http"]
    h = rows["ray_handle"]
    print()
    print(f"Per request at low load (1 caller, 1 query, k=10, {len(seq_q)} requests):")
    print()
    print("| path | p50 | mean | CPU per request, all processes | net of idle Ray | p50 / serve "
          "| net CPU / serve |")
    print("|---|---|---|---|---|---|---|")
    for name, row in [("deepretrieval serve", s), ("Ray Serve, HTTP", r),
                      ("Ray Serve, handle (ray://)", h)]:
        print(f"| {name} | {row['p50'] * 1e3:.2f} ms | {row['mean'] * 1e3:.2f} ms | "
              f"{row['cpu'][0]:,.0f} µs | {row['cpu'][1]:,.0f} µs | {row['p50'] / s['p50']:.1f}x | "
              f"{row['cpu'][1] / s['cpu'][1]:.1f}x |")
    print()
    print(f"Throughput ({args.concurrency} callers × 1 query, k=10, {len(conc_q)} queries):")
    print()
    print("| path | queries/s | CPU per query | net of idle Ray | queries/s vs serve |")
    print("|---|---|---|---|---|")
    for name, row, ref in [
            ("deepretrieval serve", s, s), ("Ray Serve HTTP, 1 replica", r, s),
            ("Ray Serve HTTP, 2 replicas (2 ingress)", rows["ray_http2"], s),
            ("Ray Serve handle, 2 replicas", rows["ray_handle2"], s),
            (f"deepretrieval serve, 4 callers × {args.batch} queries/request", rows["serve_b"],
             rows["serve_b"]),
            (f"Ray Serve HTTP, 2 replicas, 4 callers × {args.batch} queries/request",
             rows["ray_b"], rows["serve_b"])]:
        print(f"| {name} | {row['qps']:,.0f} | {row['cpu_c'][0]:,.0f} µs | "
              f"{row['cpu_c'][1]:,.0f} µs | {row['qps'] / ref['qps']:.2f}x |")
    print()
    print(f"Peak RSS of the serving processes: deepretrieval serve {s['rss'] / 2**20:,.0f} MiB; "
          f"Ray (GCS, raylet, controller, proxy, replicas) {ray_rss / 2**20:,.0f} MiB "
          f"({ray_rss / max(s['rss'], 1):.1f}x)")
    print()
    print("Replica killed (SIGKILL) under load:")
    print()
    print("| killed | client retries | requests | failed | replaced | seconds until 2 again |")
    print("|---|---|---|---|---|---|")
    for what, retries, n, failed, replaced, secs, errors in kills:
        print(f"| {what} | {retries} | {n} | {failed} | {'yes' if replaced else 'NO'} | "
              f"{secs:.1f} |")
        for e in errors:
            print(f"|   e.g. | {e} | | | | |")
    print()
    print(f"Ray's CPU while idle: {idle:.2f} CPU seconds per second (1 replica), {idle2:.2f} "
          "(2 replicas, 2 ingress)")
    print(f"answers identical to the in-process index: {'yes' if all(checks) else 'NO'}; "
          f"load average now {os.getloadavg()[0]:.2f}")
    ok = all(checks) and all(failed == 0 for _, retries, _, failed, *_ in kills if retries)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
