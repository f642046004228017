"""The reward path's cost per training step, and its share of a GPU step.

One verl-sized step: ``--prompts`` (512) prompts × ``--samples`` (5) completions. Measured here, on
this machine's CPUs, with the retrieval service (``deepretrieval serve``) in its own process:

* **verl 0.9.1 reward loop**: our ``compute_score_async`` through verl's ``RewardLoopManager`` /
  ``RewardLoopWorker`` (Ray CPU actors, ``--ray-workers``) and its naive reward manager — verl
  decodes every response, then calls the reward once per sample, concurrently; each call is one
  service request (the service micro-batches them). BEIR task (SciFact, k=1000 per search).
* **TRL reward callable**: ``TRLReward`` (one ``score_batch`` over the step: one batched search).
  Same completions.
* **evidence-sized search** (k=3000 with passage text, what the evidence family asks per sample),
  through the service on ``--evidence-queries`` queries, scaled to the step's 2,560 and printed as
  such (a full 2,560 × 3,000-passage step moves ~10 GB of text through one HTTP connection pool;
  the scaled figure is labelled).
* **agentic turn**: one Search-R1-sized turn, 2,560 searches at top-3 with passage text, through
  the service — 64 concurrent single-search callers (a per-sample agent loop) and one batched call.

The share of a step is printed for ``--gpu-step-s`` seconds (default 36 s: the lower end of what
Search-R1's authors report for their 3B runs on 8×H100 — 200 steps in "about 2 or 3 hours",
github.com/PeterGriffinJin/Search-R1 issue 1, batch size 512 per issue 30) and the step time at
which the reward path is exactly 5 % (``seconds / 0.05``).

    python benchmarks/bench_reward_step.py             # full step (a few minutes on 2 cores)
    python benchmarks/bench_reward_step.py --tiny      # smoke size
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL = 0.05


def completions_for(rows, samples: int, seed: int = 0):
    """``samples`` distinct rewritten queries per row (the claim with words dropped/reordered), as
    verl/TRL completions in the task's answer format."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        words = r["extra_info"]["query"].split()
        for s in range(samples):
            keep = [w for w in words if rng.random() > 0.25] or words
            if s % 2:
                keep = list(rng.permutation(keep))
            q = " ".join(keep).replace('"', "")
            out.append((r, f'<think>sample {s}</think><answer>{{"query": "{q}"}}</answer>'))
    return out


def trl_step(items, searcher) -> float:
    from deepretrieval.rewards import TRLReward

    reward = TRLReward(searcher=searcher)
    rows = [r for r, _ in items]
    t0 = time.perf_counter()
    scores = reward(completions=[c for _, c in items], data_source=[r["data_source"] for r in rows],
                    reward_model=[r["reward_model"] for r in rows],
                    extra_info=[r["extra_info"] for r in rows])
    dt = time.perf_counter() - t0
    errors = sum(bool(m.get("search_error")) for m in reward.last_metrics)
    if errors:
        raise RuntimeError(f"{errors} TRL reward calls reported a search error")
    return dt, scores


def verl_data(items, tokenizer, resp_len: int):
    import torch
    from verl.protocol import DataProto

    n, prompt_len = len(items), 8
    pad = tokenizer.pad_token_id or 0
    prompts = torch.full((n, prompt_len), pad, dtype=torch.long)
    responses = torch.full((n, resp_len), pad, dtype=torch.long)
    mask = torch.zeros((n, prompt_len + resp_len), dtype=torch.long)
    mask[:, :prompt_len] = 1
    for i, (_, text) in enumerate(items):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:resp_len]
        responses[i, :len(ids)] = torch.tensor(ids)
        mask[i, prompt_len:prompt_len + len(ids)] = 1
    rows = [r for r, _ in items]
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": mask,
                 "input_ids": torch.cat([prompts, responses], 1)},
        non_tensors={"data_source": np.array([r["data_source"] for r in rows], dtype=object),
                     "reward_model": np.array([r["reward_model"] for r in rows], dtype=object),
                     "extra_info": np.array([dict(r["extra_info"]) for r in rows], dtype=object),
                     "raw_prompt": np.array([r["prompt"] for r in rows], dtype=object)})


def start_ray(workers: int, env: dict) -> None:
    """Ray for verl's reward workers, started before anything else of the benchmark runs: its
    raylet must register within a fixed 30 s, which a loaded machine can miss (3 attempts)."""
    import ray

    for attempt in range(3):
        try:
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env})
            return
        except Exception as exc:  # noqa: BLE001 - ray raises a bare Exception here
            ray.shutdown()
            if attempt == 2:
                raise
            print(f"  ray did not start ({exc}); retrying", flush=True)


def verl_step(items, service, workers: int, tmp: Path, repeats: int):
    """(best seconds of compute_rm_score over the step, scores) with verl's own manager."""
    from omegaconf import open_dict
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop import RewardLoopManager
    from verl.experimental.reward_loop.reward_loop import migrate_legacy_reward_impl

    from deepretrieval.data.rows import write_parquet
    from deepretrieval.testing.tiny_model import build_tiny_model
    from deepretrieval.train import verl as launcher

    tiny = build_tiny_model(tmp / "tiny", seed=0)  # only its tokenizer is used (decode)
    rows = [r for r, _ in items]
    pq = write_parquet(rows[:8], tmp / "rows.parquet")
    cfg = launcher.compose("grpo", launcher.build_overrides(
        "scifact", model=str(tiny), train_files=str(pq), val_files=str(pq),
        out_dir=str(tmp / "run"), extra=[f"reward.num_workers={workers}"]))
    with open_dict(cfg):
        cfg = migrate_legacy_reward_impl(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    data = verl_data(items, tokenizer, resp_len=160)
    manager = RewardLoopManager(cfg)
    manager.compute_rm_score(data[:workers * 2])  # actors up, connections open
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = manager.compute_rm_score(data)
        best = min(best, time.perf_counter() - t0)
    if any(out.non_tensor_batch["search_error"]):
        raise RuntimeError("verl reward calls reported search errors")
    return best, out.batch["rm_scores"].sum(-1).tolist()


async def _callers(url, token, index, queries, k, concurrency, return_text):
    from deepretrieval.service.client import AsyncServiceClient

    it = iter(range(len(queries)))
    async with AsyncServiceClient(url, token=token, timeout=600) as client:
        await client.search(index, queries[:1], k, return_text=return_text)

        async def caller():
            for i in it:
                await client.search(index, [queries[i]], k, return_text=return_text)

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - t0


async def _answer_callers(url, token, index, queries, answers, concurrency):
    """(seconds, first answer-bearing ranks): each query searched alone with its own answers, as
    the evidence reward sends them (one request per sample), ``concurrency`` callers."""
    from deepretrieval.service.client import AsyncServiceClient

    it = iter(range(len(queries)))
    ranks: list = [None] * len(queries)
    async with AsyncServiceClient(url, token=token, timeout=600) as client:
        # the connection opened, on an answer that rules every passage out (none read)
        await client.search(index, queries[:1], 3000, options={"answers": ["zzqx"]})

        async def caller():
            for i in it:
                got = await client.search(index, [queries[i]], 3000,
                                          options={"answers": answers[i]})
                ranks[i] = got[0].info["first_answer_rank"]

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - t0, ranks


def check_ranks(label: str, ranked: list, shipped: list) -> None:
    if ranked != shipped:
        bad = [i for i, (a, b) in enumerate(zip(ranked, shipped)) if a != b]
        raise RuntimeError(f"evidence ranks differ ({label}) at {len(bad)} queries, e.g. query "
                           f"{bad[0]}: {ranked[bad[0]]} vs {shipped[bad[0]]}")


class CPU:
    """CPU seconds of this process plus the service's process over a block (the figure a
    loaded shared machine distorts least; the search runs in the service, the reward here)."""

    def __init__(self, server_pid: int):
        self.pid = server_pid

    def __enter__(self):
        from bench_service import proc_cpu
        self.c0, self.s0 = time.process_time(), proc_cpu(self.pid)
        return self

    def __exit__(self, *exc):
        from bench_service import proc_cpu
        self.seconds = time.process_time() - self.c0 + proc_cpu(self.pid) - self.s0


def share(seconds: float, gpu_step: float) -> str:
    return f"{seconds / gpu_step:.1%}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--evidence-queries", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpu-step-s", type=float, default=36.0)
    ap.add_argument("--no-verl", action="store_true")
    ap.add_argument("--evidence-only", action="store_true",
                    help="only the evidence rows (no TRL, verl or agentic turn)")
    ap.add_argument("--index-dir", default=None,
                    help="where the service finds (or builds) SciFact's index (default: a fresh "
                         "temporary folder, so the index is this version's format)")
    ap.add_argument("--tiny", action="store_true", help="smoke size: 8 prompts x 2, no verl")
    args = ap.parse_args(argv)
    if args.tiny:
        args.prompts, args.samples, args.evidence_queries, args.repeats = 8, 2, 4, 1
        args.no_verl = True

    from deepretrieval.catalog import bundled_rows
    from deepretrieval.core import dpr_match
    from deepretrieval.service.client import ServiceSearcher
    from deepretrieval.train.service import ManagedService, free_port

    rows = bundled_rows("scifact", "train")
    rows = (rows * (args.prompts // len(rows) + 1))[:args.prompts]
    items = completions_for(rows, args.samples)
    n = len(items)
    queries = [c.split('"query": "', 1)[1].rsplit('"', 1)[0] for _, c in items]
    print(f"# bench_reward_step: cpus={os.cpu_count()} step={args.prompts}x{args.samples}={n} "
          f"completions, ray workers={args.ray_workers}, GPU step {args.gpu_step_s:g}s", flush=True)
    results = []
    index_tmp = None
    if args.index_dir is None:
        index_tmp = tempfile.TemporaryDirectory(prefix="bench-indexes-")
        args.index_dir = index_tmp.name
    os.environ["DEEPRETRIEVAL_INDEX_DIR"] = str(args.index_dir)  # the service inherits it
    if args.evidence_only:
        args.no_verl = True
    service = ManagedService(["scifact"], port=free_port(), token=secrets.token_urlsafe(16),
                             startup_timeout=300)
    ray_up = False
    if not args.no_verl:
        try:
            start_ray(args.ray_workers, service.env())
            ray_up = True
        except Exception as exc:  # noqa: BLE001 - reported; the other paths still run
            print(f"  verl: NOT MEASURED — Ray did not start: {exc}", flush=True)
    with service, tempfile.TemporaryDirectory() as tmp:
        searcher = ServiceSearcher(service.url, token=service.token, timeout=600)
        try:
            if not args.evidence_only:
                trl_step(items[:16], searcher)  # warm-up
                best, cpu = float("inf"), float("inf")
                for _ in range(args.repeats):
                    with CPU(service.proc.pid) as c:
                        sec = trl_step(items, searcher)[0]
                    best, cpu = min(best, sec), min(cpu, c.seconds)
                results.append(("TRL reward callable (score_batch, service), BEIR k=1000", best,
                                cpu))
                print(f"  TRL: {best:.2f}s per step ({cpu:.2f} CPU s)", flush=True)
            if ray_up:
                try:
                    sec, _ = verl_step(items, service, args.ray_workers, Path(tmp), args.repeats)
                except Exception as exc:  # noqa: BLE001 - reported; the other paths still run
                    print(f"  verl: NOT MEASURED — {type(exc).__name__}: {exc}", flush=True)
                else:
                    results.append((f"verl 0.9.1 RewardLoopManager, {args.ray_workers} Ray "
                                    f"CPU workers, BEIR k=1000", sec, None))
                    print(f"  verl: {sec:.2f}s per step", flush=True)
            m = args.evidence_queries
            searcher.search("scifact", queries[:2], 3000, return_text=True)  # texts loaded
            with CPU(service.proc.pid) as c:
                t0 = time.perf_counter()
                searcher.search("scifact", queries[:m], 3000, return_text=True)
                ev = (time.perf_counter() - t0) * n / m
            results.append((f"evidence-sized search k=3000 + text (measured on {m}, scaled "
                            f"x{n / m:.0f})", ev, c.seconds * n / m))
            print(f"  evidence k=3000: {ev:.2f}s per step (scaled)", flush=True)
            searcher.search("scifact", queries[:2], 3000, options={"answers": ["x"]})  # warm-up
            with CPU(service.proc.pid) as c:
                t0 = time.perf_counter()
                searcher.search("scifact", queries[:m], 3000)
                alone = (time.perf_counter() - t0) * n / m
            results.append((f"the search alone: k=3000, ids and scores, no text, {m} queries in "
                            f"one call (scaled)", alone, c.seconds * n / m))
            # the evidence reward, both ways: texts shipped and ranked in the reward process
            # (the previous path), and the answers sent with the search (option `answers`: the
            # index ranks its own passages). "none": no passage has the answer, all 3,000 are
            # checked (the worst case for the texts path; its words are not in the vocabulary);
            # "early": a common word, found in the first ranks; "NQ": the answers of NQ-open dev
            # questions (mostly words of the vocabulary that no SciFact passage holds together),
            # one question per prompt — its --samples samples share the answers, as in a step —
            # or one per sample (no two requests alike: nothing for the service to coalesce).
            # The answers are sent as the reward sends them — one request per sample,
            # --concurrency callers — and, for the texts path, with one batched search.
            from deepretrieval.catalog import open_index
            from deepretrieval.tasks.evidence import first_answer_rank, nq_examples
            local = open_index("scifact")  # the service built it in --index-dir
            local.threads = 1
            nq = [dpr_match.answer_keys(ex["answers"]) for ex in nq_examples("dev")[:m]]
            cases = (("none", [["zzqx never found"]] * m, True),
                     ("early", [["cell"]] * m, True),
                     (f"NQ, one question per prompt of {args.samples} samples",
                      [nq[i // args.samples] for i in range(m)], False),
                     ("NQ, one question per sample", nq, False))
            # Every timed path starts COLD: DPR's rule keeps the tokens of the last 65,536
            # passages it read, and on SciFact (5,183 passages, most of them in any top 3,000)
            # a path timed after another would find them all tokenized; on wiki-18 (21M) few
            # passages repeat. So each service path gets a fresh service (kernels compiled on an
            # answer that rules every passage out — no passage read — and on a search without
            # answers), and the in-process path a cleared cache.
            def fresh():
                svc = ManagedService(["scifact"], port=free_port(),
                                     token=secrets.token_urlsafe(16), startup_timeout=300)
                svc.start()
                warm = ServiceSearcher(svc.url, token=svc.token, timeout=600)
                warm.search("scifact", queries[:2], 3000, options={"answers": ["zzqx"]})
                warm.search("scifact", queries[:2], 3000)  # the kernel of answers like ["8"]
                warm.close()
                return svc

            for label, per_query, one_call in cases:
                answers = per_query[0]
                with CPU(service.proc.pid) as c:
                    t0 = time.perf_counter()
                    got = searcher.search("scifact", queries[:m], 3000, return_text=True)
                    shipped = [first_answer_rank(r.texts, a, 3000) for r, a in zip(got, per_query)]
                    t_text = (time.perf_counter() - t0) * n / m
                cpu_text = c.seconds * n / m
                results.append((f"evidence reward ({label}): k=3000 texts to the reward, ranked "
                                f"there (measured on {m}, scaled)", t_text, cpu_text))
                # one call for the step's samples: the answers common to all, or one list per
                # query (core.per_query: what score_batch sends, TRL's reward path)
                with fresh() as svc:
                    one = ServiceSearcher(svc.url, token=svc.token, timeout=600)
                    with CPU(svc.proc.pid) as c:
                        t0 = time.perf_counter()
                        got = one.search("scifact", queries[:m], 3000,
                                         options={"answers": answers if one_call else per_query})
                        ranked = [r.info["first_answer_rank"] for r in got]
                        t_opt = (time.perf_counter() - t0) * n / m
                    one.close()
                check_ranks(label, ranked, shipped)
                form = "" if one_call else ", one answer list per query"
                results.append((f"evidence reward ({label}): answers sent with the search, "
                                f"{m} queries in one call{form} (same ranks)", t_opt,
                                c.seconds * n / m))
                conc = min(args.concurrency, m)
                with fresh() as svc, CPU(svc.proc.pid) as c:
                    t_one, ranked = asyncio.run(_answer_callers(
                        svc.url, svc.token, "scifact", queries[:m], per_query, conc))
                check_ranks(label, ranked, shipped)
                results.append((f"evidence reward ({label}): answers sent with the search, one "
                                f"request per sample, {conc} callers (same ranks)",
                                t_one * n / m, c.seconds * n / m))
                # the same searches in this process, on the index the service serves: what the
                # index itself spends (no HTTP, no JSON, no service machinery)
                local.search(queries[:1], 3000, options={"answers": ["zzqx"]})
                local.search(queries[:1], 3000)
                dpr_match.clear_passage_cache()  # the texts path above read them all
                c0, t0 = time.process_time(), time.perf_counter()
                ranked = [local.search([q], 3000, options={"answers": a})[0]
                          .info["first_answer_rank"] for q, a in zip(queries[:m], per_query)]
                t_local = (time.perf_counter() - t0) * n / m
                cpu_local = (time.process_time() - c0) * n / m
                check_ranks(label, ranked, shipped)
                results.append((f"evidence reward ({label}): the same, in process (the index "
                                f"alone: no HTTP, one search per sample)", t_local, cpu_local))
                hits = sum(r is not None for r in shipped)
                print(f"  evidence ({label}): texts {t_text:.2f}s, answers option "
                      f"{t_one * n / m:.2f}s per step, in process {t_local:.2f}s (scaled; ranks "
                      f"identical; {hits}/{m} queries find an answer)", flush=True)
            if not args.evidence_only:
                with CPU(service.proc.pid) as cb:
                    t0 = time.perf_counter()
                    searcher.search("scifact", queries, 3, return_text=True)
                    batched = time.perf_counter() - t0
                conc = min(args.concurrency, n)
                with CPU(service.proc.pid) as cc:
                    callers = asyncio.run(_callers(service.url, service.token, "scifact", queries, 3,
                                                   conc, True))
                results.append((f"agentic turn: {n} searches top-3 + text, {conc} single-search "
                                f"callers", callers, cc.seconds))
                results.append((f"agentic turn: {n} searches top-3 + text, one batched call", batched,
                                cb.seconds))
                print(f"  agentic turn: {callers:.2f}s ({conc} callers), {batched:.2f}s (batched)",
                      flush=True)
        finally:
            searcher.close()
            if ray_up:
                import ray
                ray.shutdown()

    if index_tmp is not None:
        index_tmp.cleanup()
    g = args.gpu_step_s
    print()
    print(f"| reward path ({n} completions per step) | seconds per step (wall) | CPU seconds "
          f"(this process + service) | share of a {g:g} s GPU step (wall) | ≤ 5 % for steps ≥ |")
    print("|---|---|---|---|---|")
    for name, sec, cpu in results:
        print(f"| {name} | {sec:.2f} | {'-' if cpu is None else f'{cpu:.2f}'} | "
              f"{share(sec, g)} | {sec / GOAL:.0f} s |")
    print()
    print(f"GPU step time {g:g} s: Search-R1's authors, 3B on 8×H100, 200 steps in about 2–3 h "
          f"(github.com/PeterGriffinJin/Search-R1/issues/1); pass --gpu-step-s for another.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
