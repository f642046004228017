"""The prepared GPU check of the dense placements and the TRL reward path (one command).

Needs only torch, transformers and numpy (plus sentence-transformers for the reward path's
encoder, which the lent GPU images have); no faiss, no TRL, no internet. Files: this repository.

    python benchmarks/gpu_check.py                       # on a GPU machine: 4M × 768, every GPU
    python benchmarks/gpu_check.py --docs 8M --gpus 0,1  # more vectors, two GPUs
    python benchmarks/gpu_check.py --device cpu --smoke  # tiny, on the CPU (what the tests run)

What it measures (``--json``, default ``$OUT/gpu_check.json`` when ``$OUT`` is set):

1. **Dense search per placement** over ``--docs`` generated vectors (the Gaussian mixture of
   ``bench_dense_scale.py``, generated on the device in torch, normalised): ``torch`` float32
   (exact, the reference), float16 and sq8 on one GPU, float16 sharded over all chosen GPUs, and
   faiss-gpu's float16 flat when a GPU build of faiss is importable. For each: GPU memory after
   loading and at peak, load seconds, a **2,560-query burst at k=3** (best of 3, ids included),
   single-query latency (median of 50), recall@3 against the float32 reference, and the burst
   **extrapolated** to wiki-18 (21,015,324 × 768) by scaling linearly in vectors × dimension
   (an extrapolation, printed as such; goal ≤ 0.9 s on one H100).
2. **The TRL reward path**: the tiny Qwen2 model (``deepretrieval.testing.tiny_model``, built
   offline) generates completions for SciFact prompts on the device; they (plus well-formed
   completions that copy the claim as the query, so that searches happen) are scored by
   ``TRLRewardAdapter`` — the function TRL's GRPOTrainer calls — over a dense SciFact index encoded by
   the same tiny model and placed with ``torch`` on the device.

One table is printed at the end; the exit status is 0 when every step ran and float16 recall@3 is
≥ 0.99.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIKI18 = (21_015_324, 768)


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "KM" else text) * mult)


def generate(n: int, dim: int, device: str, seed: int = 0, iso: float = 0.35,
             queries: bool = False) -> np.ndarray:
    """The mixture of bench_dense_scale.Mixture, sampled in torch on ``device`` in blocks."""
    import torch
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(dim, generator=g)
    u /= u.norm()
    topics = torch.randn(64, dim, generator=g)
    topics /= topics.norm(dim=1, keepdim=True)
    centres = topics.repeat_interleave(32, 0) + 0.8 * torch.randn(64 * 32, dim, generator=g) / dim ** 0.5
    low = torch.randn(48, dim, generator=g) / (dim * 48) ** 0.5
    u, centres, low = u.to(device), centres.to(device), low.to(device)
    out = np.empty((n, dim), dtype=np.float32)
    gd = torch.Generator(device=device).manual_seed(seed + (7 if queries else 1))
    for start in range(0, n, 500_000):
        m = min(500_000, n - start)
        c = torch.randint(0, len(centres), (m,), device=device, generator=gd)
        x = (1.5 * u + 0.6 * centres[c]
             + 0.5 * torch.randn(m, 48, device=device, generator=gd) @ low
             + iso * torch.randn(m, dim, device=device, generator=gd) / dim ** 0.5)
        x /= x.norm(dim=1, keepdim=True)
        out[start:start + m] = x.cpu().numpy()
    return out


def gpu_memory(devices: list[int]) -> dict:
    import torch
    return {g: {"allocated_gb": torch.cuda.memory_allocated(g) / 1e9,
                "peak_gb": torch.cuda.max_memory_allocated(g) / 1e9} for g in devices}


def dense_rows(args, log) -> list[dict]:
    import torch

    from deepretrieval.search.dense import DenseIndex, EncoderConfig
    from deepretrieval.search.dense_place import PlacementError, recall_at

    cuda = args.device == "cuda"
    gpus = args.gpu_list
    gen_device = f"cuda:{gpus[0]}" if cuda else "cpu"
    t0 = time.perf_counter()
    vectors = generate(args.docs, args.dim, gen_device)
    queries = generate(max(args.burst, 50), args.dim, gen_device, seed=1, iso=0.45, queries=True)
    log(f"generated {args.docs:,} × {args.dim} vectors and {len(queries):,} queries in "
        f"{time.perf_counter() - t0:.1f}s")
    ids = [f"d{i}" for i in range(args.docs)]
    config = EncoderConfig(model="none (vectors given)")
    specs = []
    if cuda:
        one = gpus[0]
        specs = [f"torch:gpus={one},dtype=float32", f"torch:gpus={one},dtype=float16",
                 f"torch:gpus={one},dtype=sq8"]
        if len(gpus) > 1:
            specs.append(f"torch:gpus={','.join(map(str, gpus))},dtype=float16")
        try:
            import faiss  # noqa: F401
            specs.append(f"flat:gpus={one}")
        except ImportError:
            log("faiss is not installed: the faiss-gpu row is skipped")
    else:
        specs = ["torch:dtype=float32", "torch:dtype=float16", "torch:dtype=sq8"]
    rows, reference = [], None
    for spec in specs:
        row = {"placement": spec, "docs": args.docs, "dim": args.dim}
        rows.append(row)
        if cuda:
            for g in gpus:
                torch.cuda.reset_peak_memory_stats(g)
        try:
            t0 = time.perf_counter()
            index = DenseIndex.from_embeddings(vectors, ids, config, name="gpu_check",
                                               placement=spec)
            if cuda:
                torch.cuda.synchronize()
            row["load_s"] = time.perf_counter() - t0
            row["plan"] = index.plan.line()
            used = sorted(index.plan.gpu) if index.plan.gpu else []
            if cuda:
                row["gpu_after_load_gb"] = {g: m["allocated_gb"] for g, m in gpu_memory(used).items()}

            def burst(index=index):
                scores, pos = index.search_vectors(queries[:args.burst], args.k)
                id_arr = index._doc_ids_arr  # noqa: SLF001 - what search() does with positions
                return [id_arr[p[p >= 0]].tolist() for p in pos], pos

            burst()  # warm-up (kernels, allocator)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                _, pos = burst()
                times.append(time.perf_counter() - t0)
            row["burst_s"] = min(times)
            row["burst_qps"] = args.burst / row["burst_s"]
            lat = []
            for i in range(50):
                t0 = time.perf_counter()
                index.search_vectors(queries[i:i + 1], args.k)
                lat.append(time.perf_counter() - t0)
            row["single_ms_p50"] = 1000 * statistics.median(lat)
            if cuda:
                row["gpu_peak_gb"] = {g: m["peak_gb"] for g, m in gpu_memory(used).items()}
            if reference is None:
                reference = pos
            row["recall@3"] = recall_at(args.k, reference, pos)
            scale = (WIKI18[0] * WIKI18[1]) / (args.docs * args.dim)
            row["wiki18_burst_s_extrapolated"] = row["burst_s"] * scale
            log(f"{spec}: load {row['load_s']:.1f}s, burst {args.burst} q in {row['burst_s']:.3f}s, "
                f"single p50 {row['single_ms_p50']:.2f} ms, recall@3 {row['recall@3']:.4f}, "
                f"{row['plan']}")
            del index
        except (PlacementError, RuntimeError, ImportError) as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            log(f"{spec}: {row['error']}")
        if cuda:
            torch.cuda.empty_cache()
    return rows


def reward_row(args, log, work: Path) -> dict:
    """Completions from the tiny model on the device, scored by TRL's reward function over a
    dense SciFact index placed on the device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepretrieval.catalog import bundled_rows
    from deepretrieval.core.beir_files import load_corpus
    from deepretrieval.core.bundled import collection_dir
    from deepretrieval.search.dense import DenseIndex
    from deepretrieval.testing.tiny_model import tiny_model_path
    from deepretrieval.train.trl_engine import TRLRewardAdapter, render_prompt

    row: dict = {"step": "TRL reward path"}
    device = f"cuda:{args.gpu_list[0]}" if args.device == "cuda" else "cpu"
    placement = f"torch:gpus={args.gpu_list[0]}" if args.device == "cuda" else "torch"
    t0 = time.perf_counter()
    model_dir = tiny_model_path()  # built once into the cache folder, offline
    docs = list(load_corpus(collection_dir("scifact")))
    if args.smoke:
        docs = docs[:300]
    index_dir = work / "gpu_check_scifact_tiny"
    DenseIndex.build_to(index_dir, docs, str(model_dir), name="gpu_check_scifact_tiny",
                        device=device, load=False, show_progress=False, batch_size=256)
    os.environ["DEEPRETRIEVAL_INDEXES"] = f"gpu_check_scifact_tiny={index_dir}"
    os.environ["DEEPRETRIEVAL_DENSE_PLACEMENT"] = placement
    row["index_s"] = time.perf_counter() - t0

    rows = bundled_rows("scifact_dense", "test")[:args.prompts]
    for r in rows:
        r["extra_info"] = {**dict(r["extra_info"]), "search_index": "gpu_check_scifact_tiny"}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    prompts = [render_prompt(tokenizer, r) for r in rows for _ in range(args.generations)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, max_new_tokens=48, do_sample=True, temperature=1.0,
                             pad_token_id=tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    row["generate_s"] = time.perf_counter() - t0
    # well-formed completions that search with the claim itself, so the reward path searches
    for r in rows:
        prompts.append(render_prompt(tokenizer, r))
        completions.append('<think>t</think>\n<answer>{"query": %s}</answer>'
                           % json.dumps(r["extra_info"]["query"]))
    batch = [r for r in rows for _ in range(args.generations)] + rows
    reward = TRLRewardAdapter()
    t0 = time.perf_counter()
    scores = reward(prompts=prompts, completions=completions,
                    data_source=[r["data_source"] for r in batch],
                    reward_model=[r["reward_model"] for r in batch],
                    extra_info=[r["extra_info"] for r in batch])
    row["reward_s"] = time.perf_counter() - t0
    n_gen = len(rows) * args.generations
    row["completions"] = len(scores)
    row["mean_reward_generated"] = float(np.mean(scores[:n_gen]))
    row["mean_reward_copy_queries"] = float(np.mean(scores[n_gen:]))
    row["metrics"] = reward.drain()
    row["placement"] = placement
    log(f"reward path: {len(scores)} completions scored in {row['reward_s']:.2f}s (generation "
        f"{row['generate_s']:.2f}s); mean reward generated {row['mean_reward_generated']:.3f}, "
        f"copied claims {row['mean_reward_copy_queries']:.3f}")
    return row


def print_table(result: dict) -> None:
    print("\n| placement | vectors | memory (plan) | GPU after load GB | GPU peak GB | load s | "
          "burst s (2,560 q, k=3) | q/s | single p50 ms | recall@3 | wiki-18 burst s (extrapolated) |")
    print("|" + "---|" * 11)
    for r in result["dense"]:
        if "error" in r:
            print(f"| `{r['placement']}` | {r['docs']:,} × {r['dim']} | {r['error']} |" + " |" * 8)
            continue
        gl = ", ".join(f"{v:.2f}" for v in r.get("gpu_after_load_gb", {}).values()) or "-"
        gp = ", ".join(f"{v:.2f}" for v in r.get("gpu_peak_gb", {}).values()) or "-"
        print(f"| `{r['placement']}` | {r['docs']:,} × {r['dim']} | {r['plan']} | {gl} | {gp} | "
              f"{r['load_s']:.1f} | {r['burst_s']:.3f} | {r['burst_qps']:,.0f} | "
              f"{r['single_ms_p50']:.2f} | {r['recall@3']:.4f} | {r['wiki18_burst_s_extrapolated']:.2f} |")
    rw = result.get("reward")
    if rw:
        if "error" in rw:
            print(f"\nTRL reward path: FAILED ({rw['error']})")
        else:
            print(f"\nTRL reward path ({rw['placement']}): {rw['completions']} completions, "
                  f"reward {rw['reward_s']:.2f}s, generation {rw['generate_s']:.2f}s, index "
                  f"{rw['index_s']:.1f}s; mean reward generated {rw['mean_reward_generated']:.3f}, "
                  f"copied claims {rw['mean_reward_copy_queries']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--gpus", help="GPU numbers, e.g. 0,1 or 0-3 (default: every visible GPU)")
    ap.add_argument("--docs", default="4M")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--burst", type=int, default=2560)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--skip-reward", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU tests)")
    ap.add_argument("--json", help="write the figures here (default: $OUT/gpu_check.json, "
                                   "else ./gpu_check.json)")
    args = ap.parse_args(argv)
    import torch

    from deepretrieval.search.dense_place import parse_gpus

    args.docs = _size(str(args.docs))
    if args.smoke:
        args.docs = min(args.docs, 20_000)
        args.dim, args.burst, args.prompts, args.generations = 64, 256, 4, 2
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no GPU (use --device cpu --smoke)",
                  file=sys.stderr)
            return 2
        args.gpu_list = list(parse_gpus(args.gpus)) if args.gpus else list(
            range(torch.cuda.device_count()))
    else:
        args.gpu_list = []

    def log(message: str) -> None:
        print(f"# {message}", flush=True)

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "device": args.device, "cpus": os.cpu_count(),
           "faiss": importlib.util.find_spec("faiss") is not None,
           "trl": importlib.util.find_spec("trl") is not None,
           "sentence_transformers": importlib.util.find_spec("sentence_transformers") is not None}
    if args.device == "cuda":
        env["gpus"] = {g: {"name": torch.cuda.get_device_name(g),
                           "total_gb": torch.cuda.get_device_properties(g).total_memory / 1e9}
                       for g in args.gpu_list}
    log(f"gpu_check: {env}")
    result: dict = {"env": env, "args": {k: v for k, v in vars(args).items()}}
    result["dense"] = dense_rows(args, log)
    ok = all("error" not in r for r in result["dense"] if not r["placement"].startswith("flat"))
    fp16 = [r for r in result["dense"] if "float16" in r["placement"] and "recall@3" in r]
    ok = ok and bool(fp16) and all(r["recall@3"] >= 0.99 for r in fp16)
    if not args.skip_reward:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            try:
                result["reward"] = reward_row(args, log, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - reported in the table and the exit status
                traceback.print_exc()
                result["reward"] = {"error": f"{type(exc).__name__}: {exc}"}
                ok = False
    print_table(result)
    out = Path(args.json) if args.json else (Path(os.environ["OUT"]) if os.environ.get("OUT")
                                             else Path(".")) / "gpu_check.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nfigures written to {out}; {'OK' if ok else 'NOT OK'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
