"""The agentic quickstart's warm-start recipe: supervised warm start on the closed world's oracle
trajectories (ExSearch's warm-up, :mod:`deepretrieval.train.exsearch`), then GRPO from there with
an exact-match reward; the two compared per question with a paired bootstrap interval.

The warm start is what makes exact match reachable at 135M (docs/exsearch.md: EM 0.000 → 0.650 on
the 40 held-out questions); GRPO then has to beat it. Its reward is EM plus a little F1, so that of
a group's wrong answers the nearer ones still score higher (a group all right or all wrong gives
GRPO no gradient: ``frac_reward_zero_std`` in the step log).
"""
from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core.tables import RewardTable
from deepretrieval.train.exsearch import ExSearchSettings, train_exsearch

#: GRPO's reward after the warm start: EM, plus 0.2 × token F1 for a well-formed answer.
WARM_TABLE = RewardTable(metric="em", linear=True, bonus_metric="f1", bonus_value=0.2)
#: The warm start (the ExSearch warm-up measured in docs/exsearch.md): oracle seeds, 2 epochs,
#: lr 1e-4, 4 questions per optimizer step.
WARM_START = {"seeds": "oracle", "warmup_epochs": 2, "learning_rate": 1e-4, "questions_per_step": 4,
              "micro_batch": 4}


def warm_start(model: str, train_rows: Sequence[Mapping[str, Any]],
               eval_rows: Sequence[Mapping[str, Any]], out_dir: str | Path, *, turn_tokens: int,
               batch_size: int, seed: int, progress: bool, searcher=None
               ) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """Fine-tune ``model`` on the oracle trajectories of ``train_rows`` and evaluate it (greedy) on
    ``eval_rows``. Returns the model folder, the evaluation summary and its per-question records
    (resumes a finished warm start in ``out_dir``)."""
    settings = ExSearchSettings(model=model, output_dir=str(out_dir), iterations=0,
                                max_new_tokens=turn_tokens, eval_zero_shot=False,
                                gen_batch_size=batch_size, seed=seed, progress=progress,
                                **WARM_START)
    result = train_exsearch(train_rows, eval_rows, settings, searcher=searcher)
    stage = Path(out_dir) / "stages" / "warmup"
    summary = json.loads((stage / "stage.json").read_text())["eval"]
    with open(stage / "eval" / "generations.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    return result.model_dir, summary, records


def paired_bootstrap(before: Sequence[float], after: Sequence[float], *, resamples: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``after - before`` over paired items (questions) and its percentile bootstrap
    interval: the items are resampled with replacement ``resamples`` times."""
    if len(before) != len(after) or not before:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists")
    diffs = [float(b) - float(a) for a, b in zip(before, after)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return {"diff": sum(diffs) / n, "lo": lo, "hi": hi, "level": level, "n": n,
            "resamples": resamples}
