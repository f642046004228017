"""One big request against the retrieval service: what the others see, and what it costs.

Starts ``deepretrieval serve --index scifact --index closedworld`` in a subprocess and measures:

* light requests to ``closedworld`` (1 query, topk 3) alone, then while one heavy request runs on
  ``scifact`` (--heavy-queries x topk --heavy-k, Search-R1 shape, an answer of ~100+ MB): their
  p50 / max latency, and the heavy request's time and answer size (the ratio of the light max to
  the heavy time is what encoding off the event loop buys: it was 7.9 s of 10.4 s before);
* the reliability probe's request (512 queries x topk 10,000): status and time (a 413 before any
  search now; a 1.33 GB answer and 4 GB peak before);
* the server's resident memory before, at peak (sampled) and 1 s after the heavy answer.

    python benchmarks/bench_service_isolation.py
    python benchmarks/bench_service_isolation.py --heavy-queries 128 --heavy-k 1000
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def light_latencies(url: str, stop: threading.Event, out: list[float], limit_s: float) -> None:
    end = time.monotonic() + limit_s
    with httpx.Client(timeout=120) as client:
        while not out or (not stop.is_set() and time.monotonic() < end):  # at least one
            t0 = time.monotonic()
            r = client.post(url + "/retrieve", json={"queries": ["Goudemar capital"], "topk": 3,
                                                     "index": "closedworld"}, timeout=120)
            r.raise_for_status()
            out.append(time.monotonic() - t0)
            time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heavy-queries", type=int, default=64)
    ap.add_argument("--heavy-k", type=int, default=1500)
    ap.add_argument("--skip-probe", action="store_true",
                    help="skip the 512 x 10,000 request (against a service without the answer "
                         "bound it builds a 1.33 GB answer and peaks at 4 GB)")
    args = ap.parse_args(argv)
    words = "vitamin cancer cell protein gene risk patients study disease treatment blood brain".split()
    heavy = [f"{words[i % 12]} {words[i * 7 % 12]} {i}" for i in range(args.heavy_queries)]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "deepretrieval.cli", "serve", "--index",
                             "scifact", "--index", "closedworld", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit("the service did not start")
        print(f"# bench_service_isolation: cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
        alone: list[float] = []
        light_latencies(url, threading.Event(), alone, 3.0)

        before = rss_mb(proc.pid)
        peak = [before]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.02)

        during: list[float] = []
        sampler = threading.Thread(target=sample)
        light = threading.Thread(target=light_latencies, args=(url, stop, during, 600.0))
        sampler.start()
        light.start()
        t0 = time.monotonic()
        r = httpx.post(url + "/retrieve", json={"queries": heavy, "topk": args.heavy_k,
                                                "index": "scifact"}, timeout=600)
        heavy_s = time.monotonic() - t0
        size = len(r.content)
        status = r.status_code
        del r
        stop.set()
        light.join()
        sampler.join()
        time.sleep(1.0)
        after = rss_mb(proc.pid)

        if args.skip_probe:
            probe = None
        else:
            t0 = time.monotonic()
            probe = httpx.post(url + "/retrieve", json={"queries": [f"{words[i % 12]} {i}"
                                                                    for i in range(512)],
                                                        "topk": 10000, "index": "scifact"},
                               timeout=600)
            probe_s = time.monotonic() - t0

        print("| measurement | value |")
        print("|---|---|")
        print(f"| light requests alone (n={len(alone)}) | p50 {statistics.median(alone)*1e3:.1f} ms, "
              f"max {max(alone)*1e3:.1f} ms |")
        print(f"| heavy request ({args.heavy_queries} q x topk {args.heavy_k}, search_r1) | "
              f"{status}, {size/1e6:.0f} MB in {heavy_s:.2f} s |")
        print(f"| light requests to another index meanwhile (n={len(during)}) | p50 "
              f"{statistics.median(during)*1e3:.1f} ms, max {max(during)*1e3:.1f} ms "
              f"(max / heavy time = {max(during)/heavy_s:.3f}) |")
        print(f"| server RSS before → peak → 1 s after | {before:.0f} → {max(peak):.0f} → "
              f"{after:.0f} MB |")
        if probe is not None:
            print(f"| probe request 512 q x topk 10,000 | {probe.status_code} in "
                  f"{probe_s*1e3:.0f} ms ({probe.json().get('limit')}) |")
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
