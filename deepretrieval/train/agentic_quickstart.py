"""``deepretrieval quickstart --agentic``: RL teaches a small model to search, on a CPU, offline.

1. index the generated closed-world corpus (BM25; fictional countries, people, organisations —
   nothing in it can be recalled from pre-training);
2. evaluate on the held-out test questions (``--eval-split validation``: the last train
   questions, held out of training), with the same model and greedy decoding:
   closed-book (the question alone), naive RAG (one search with the question, passages in the
   prompt) and the zero-shot agent (it decides what to search, up to ``max_turns - 1`` times);
3. train the agent with agentic GRPO on TRL (:mod:`deepretrieval.train.trl_agent`: the episode
   runner as TRL's ``rollout_func``, injected tokens masked) on the train questions;
4. evaluate the trained agent on the test questions;
5. print the four systems side by side, what the agent's searches and answers look like before
   and after (example trajectories), write ``results.json`` and ``training_curve.png``.

The recipe (measured: docs/experiments/agentic_quickstart.md): the assistant turn is prefilled with
``<search>`` so the first turn is a search; the reward is the answer's token F1 plus a format bonus
(an answer was given) and a bonus when a retrieved passage contains the gold answer
(:data:`QUICKSTART_TABLE`), so a good search pays before the answer is exact; short turns, top-2
passages, at most 2 searches. ``results.json`` records the command that reproduces the figures.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from deepretrieval.agent.evaluate import evaluate_agent
from deepretrieval.catalog import get_task, open_index
from deepretrieval.core import agent_protocol as P
from deepretrieval.core import settings
from deepretrieval.core.tables import RewardTable
from deepretrieval.data.closed_world import closed_world_rows
from deepretrieval.tasks.agentic import CLOSED_BOOK, NAIVE_RAG
from deepretrieval.generation.models import resolve_model
from deepretrieval.core.bootstrap import paired_bootstrap
from deepretrieval.train import agentic_recipe as recipe
from deepretrieval.train.quickstart_frame import Frame, format_table
from deepretrieval.train.quickstart_frame import command_line as frame_command
from deepretrieval.train.trl_agent import AgentRollout
from deepretrieval.train.trl_engine import TRLSettings, train_trl

TASK = "agent_closedworld"
ZERO_SHOT, WARM, TRAINED = "zero-shot agent", "warm start", "trained agent"
#: The training reward: answer F1, +0.1 for giving an answer, +0.3 when a retrieved passage holds
#: the gold answer — answered or not, so that a good search pays before the answer format is learnt.
QUICKSTART_TABLE = RewardTable(metric="f1", linear=True, format_ok=0.1, bonus_metric="hit",
                               bonus_value=0.3, bonus_needs_format=False)
#: Defaults of the options the single-shot quickstart shares (the CLI fills them in).
DEFAULTS = {"steps": 24, "lr": 3e-5, "temperature": 0.7, "prompts_per_step": 2,
            "num_generations": 4, "max_new_tokens": 256}
COLUMNS = [("em", "EM"), ("f1", "F1"), ("hit", "hit"), ("n_search", "searches"),
           ("format_error_rate", "no answer")]


def quickstart_settings(max_turns: int = 3, top_k: int = 2) -> P.AgentSettings:
    return P.AgentSettings(max_turns=max_turns, top_k=top_k, max_result_chars=400)


def quickstart_rows(split: str, *, prefill: str = P.SEARCH_OPEN, max_turns: int = 3, top_k: int = 2,
                    limit: int | None = None) -> list[dict[str, Any]]:
    """Closed-world rows of a split with the quickstart's protocol settings and prefill ("" for
    none: the warm start's oracle trajectories open with their own ``<think>``)."""
    rows = closed_world_rows(get_task(TASK), split, settings=quickstart_settings(max_turns, top_k))
    for row in rows:
        row["extra_info"]["prefill"] = prefill
    return rows[:limit] if limit else rows


#: Train questions at the end of the train split held out for choosing settings
#: (``--eval-split validation``): training (GRPO and the warm start) never sees them.
VALIDATION_QUESTIONS = 40


def split_rows(*, prefill: str, max_turns: int, limit: int | None, train_limit: int | None,
               eval_split: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out rows): the test questions, or with ``eval_split="validation"``
    the last :data:`VALIDATION_QUESTIONS` train questions, taken out of training. ``limit`` cuts
    the held-out rows, ``train_limit`` the training rows."""
    train = quickstart_rows("train", prefill=prefill, max_turns=max_turns)
    if eval_split == "test":
        held = quickstart_rows("test", prefill=prefill, max_turns=max_turns)
    elif eval_split == "validation":
        held, train = train[-VALIDATION_QUESTIONS:], train[:-VALIDATION_QUESTIONS]
        if train_limit and train_limit > len(train):
            raise ValueError(f"--eval-split validation holds out the last {VALIDATION_QUESTIONS} "
                             f"train questions: use --train-limit ≤ {len(train)}")
    else:
        raise ValueError(f"--eval-split must be test or validation, not {eval_split!r}")
    return train[:train_limit] if train_limit else train, held[:limit] if limit else held


def first_queries(records: list[dict]) -> list[str | None]:
    out = []
    for rec in records:
        searches = rec.get("searches") or []
        out.append(searches[0]["query"] if searches else None)
    return out


_WORD = re.compile(r"[A-Za-z]{3,}")


def behaviour(records: list[dict], rows: list[dict]) -> dict[str, float]:
    """What the agent does: share of episodes that search, whose first query names an entity of
    the question (a capitalised word of it), that is the question verbatim, that answer in one
    or two words; the most common first query and its share."""
    n = max(len(records), 1)
    firsts = first_queries(records)
    names, verbatim = 0, 0
    for q, row in zip(firsts, rows):
        if not q:
            continue
        question = str(row["extra_info"]["query"])
        entities = {w.lower() for w in re.findall(r"[A-Z][a-z]{2,}", question)} - {"what", "who", "the"}
        if entities & {w.lower() for w in _WORD.findall(q)}:
            names += 1
        if " ".join(q.lower().split()).rstrip("?") == " ".join(question.lower().split()).rstrip("?"):
            verbatim += 1
    answers = [rec.get("answer") for rec in records]
    short = sum(bool(a) and len(a.split()) <= 2 for a in answers)
    common = Counter(q for q in firsts if q).most_common(1)
    return {"searches": sum(bool(q) for q in firsts) / n, "query_names_entity": names / n,
            "query_is_question": verbatim / n, "short_answer": short / n,
            "top_first_query": common[0][0] if common else None,
            "top_first_query_share": common[0][1] / n if common else 0.0}


def _examples(rows, zero: list[dict], trained: list[dict], k: int = 3) -> list[dict]:
    out = []
    for row, z, t in list(zip(rows, zero, trained))[:k]:
        out.append({"question": row["extra_info"]["query"], "gold": row["reward_model"]["ground_truth"]["target"],
                    "zero_shot": row["extra_info"]["prefill"] + z["trajectory"],
                    "trained": row["extra_info"]["prefill"] + t["trajectory"]})
    return out


def command_line(args) -> str:
    """The command that reproduces this run (every figure-bearing option spelled out)."""
    return frame_command(args, OPTIONS, FLAGS, lead=("deepretrieval", "quickstart", "--agentic"))


OPTIONS = ("model", "out", "steps", "lr", "temperature", "prompts_per_step", "num_generations",
           "max_new_tokens", "turn_tokens", "max_turns", "seed", "threads", "limit", "train_limit",
           "eval_split", "warm_start_epochs")
FLAGS = ("lora", "warm_start", "no_plot")


def run_agentic_quickstart(args) -> int:
    """The agentic quickstart with the options of ``deepretrieval quickstart --agentic``."""
    frame = Frame(args, title="agentic quickstart", steps=6 if args.warm_start else 5,
                  command=command_line(args))
    out = frame.out

    frame.step("Indexing the closed-world corpus (BM25, generated, seed 0) …")
    t = time.time()
    index = open_index(get_task(TASK).index)
    prefill = "" if args.warm_start else P.SEARCH_OPEN
    train_rows, test_rows = split_rows(prefill=prefill, max_turns=args.max_turns, limit=args.limit,
                                       train_limit=args.train_limit, eval_split=args.eval_split)
    held = "test" if args.eval_split == "test" else "validation (held out of train)"
    print(f"    {len(index.doc_ids)} passages in {time.time() - t:.1f}s; {len(train_rows)} train "
          f"questions, {len(test_rows)} held-out {held} questions (1–3 hops)")

    model = resolve_model(args.model)
    eval_kw = {"max_new_tokens": args.turn_tokens, "batch_size": args.batch_size, "greedy": True,
               "seed": args.seed, "resume": False, "plot": False, "progress": settings.progress_enabled()}
    frame.step(f"Closed-book, naive RAG and the zero-shot agent ({args.model}) on the "
               f"{args.eval_split} questions …")
    t = time.time()
    zero = evaluate_agent(model, test_rows, out_dir=out / "eval_zero_shot", name=ZERO_SHOT, **eval_kw)
    print(f"    done in {time.time() - t:.0f}s")
    start, table_for_grpo, warm = model, QUICKSTART_TABLE, None
    if args.warm_start:
        frame.step("Warm start: fine-tuning on the closed world's oracle trajectories …")
        warm_dir, warm_summary, warm_records = recipe.warm_start(
            model, train_rows, test_rows, out / "warm_start", turn_tokens=args.turn_tokens,
            batch_size=args.batch_size, seed=args.seed, progress=settings.progress_enabled(),
            epochs=args.warm_start_epochs)
        start, table_for_grpo, warm = str(warm_dir), recipe.WARM_TABLE, (warm_summary, warm_records)

    frame.step(f"Agentic GRPO (TRL rollout_func, injected tokens masked): {args.steps} steps × "
               f"{args.prompts_per_step} questions × {args.num_generations} episodes …")
    t = time.time()
    trl_settings = TRLSettings(
        model=start, output_dir=str(out / "train"), steps=args.steps, learning_rate=args.lr,
        prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
        max_completion_length=args.max_new_tokens, temperature=args.temperature, lora=args.lora,
        seed=args.seed, bf16=False, save_steps=0, progress=settings.progress_enabled(),
        extra={"gradient_checkpointing": False})
    rollout = AgentRollout(turn_tokens=args.turn_tokens, table=table_for_grpo,
                           batch_size=args.batch_size, seed=args.seed)
    result = train_trl(train_rows, trl_settings, rollout=rollout)
    train_seconds = time.time() - t
    print(f"    trained in {train_seconds:.0f}s → {result.model_dir}")

    frame.step(f"The trained agent on the {args.eval_split} questions …")
    trained = evaluate_agent(str(result.model_dir), test_rows, out_dir=out / "eval_trained",
                             name=TRAINED, references=False, **eval_kw)

    frame.step(f"Results ({len(test_rows)} held-out closed-world questions, greedy)")
    systems = {CLOSED_BOOK: zero["systems"][CLOSED_BOOK], NAIVE_RAG: zero["systems"][NAIVE_RAG],
               ZERO_SHOT: zero["summary"], **({WARM: warm[0]} if warm else {}),
               TRAINED: trained["summary"]}
    table = [{"": name, **{k: s.get(k) for k, _ in COLUMNS}} for name, s in systems.items()]
    print(format_table(table, COLUMNS, percent=("format_error_rate",), digits=3, first=18, width=11,
                       percent_digits=0))
    gain = None
    if warm:
        gain = paired_bootstrap([r["metrics"]["em"] for r in trained["records"]],
                                [r["metrics"]["em"] for r in warm[1]], seed=args.seed)
        print(f"\nEM trained − warm start: {gain}, paired over {gain.n} questions")
    before = behaviour(zero["records"], test_rows)
    after = behaviour(trained["records"], test_rows)
    print("\nwhat the agent does        zero-shot   trained")
    for key, label in (("searches", "searches at all"), ("query_names_entity", "query names an entity"),
                       ("query_is_question", "query = the question"), ("short_answer", "short answer (≤2 words)"),
                       ("top_first_query_share", "most common first query")):
        print(f"  {label:<25}{before[key]:>9.0%}{after[key]:>10.0%}")
    print(f"  most common first query: zero-shot {before['top_first_query']!r}, "
          f"trained {after['top_first_query']!r}")
    examples = _examples(test_rows, zero["records"], trained["records"])
    for ex in examples:
        print(f"\n  Q: {ex['question']}  (gold: {ex['gold'][0]})")
        print("  zero-shot: " + " ".join(ex["zero_shot"].split())[:300])
        print("  trained:   " + " ".join(ex["trained"].split())[:300])
    plot = frame.curve(result.history, metric="f1", title="agentic GRPO on the closed world")
    results = {"task": TASK, "model": args.model, "model_path": model,
               "steps": args.steps, "train_rows": len(train_rows), "eval_split": args.eval_split,
               "test_rows": len(test_rows), "reward_table": table_for_grpo.__dict__,
               "warm_start": ({**recipe.WARM_START, "warmup_epochs": args.warm_start_epochs}
                              if warm else None),
               "em_gain_over_warm_start": gain.to_dict() if gain else None,
               "agent": quickstart_settings(args.max_turns).to_dict(), "prefill": prefill,
               "turn_tokens": args.turn_tokens, "completion_budget": args.max_new_tokens,
               "train_seconds": round(train_seconds, 1),
               "table": table, "systems": systems, "behaviour": {ZERO_SHOT: before, TRAINED: after},
               "examples": examples, "trained_model": str(result.model_dir), "history": result.history}
    return frame.finish(results, trained_model=str(result.model_dir), plot=plot)

