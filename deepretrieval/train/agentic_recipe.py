"""The agentic quickstart's warm-start recipe: supervised warm start on the closed world's oracle
trajectories (ExSearch's warm-up, :mod:`deepretrieval.train.exsearch`), then GRPO from there with
an exact-match reward; the two compared per question with a paired bootstrap interval.

The warm start is what makes exact match reachable at 135M (docs/agentic.md, ExSearch: EM 0.000 → 0.650 on
the 40 held-out questions); GRPO then has to beat it. Its reward is EM plus a little F1, so that of
a group's wrong answers the nearer ones still score higher (a group all right or all wrong gives
GRPO no gradient: ``frac_reward_zero_std`` in the step log).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepretrieval.core.tables import RewardTable
from deepretrieval.train.exsearch import ExSearchSettings, train_exsearch

#: GRPO's reward after the warm start: EM, plus 0.2 × token F1 for a well-formed answer.
WARM_TABLE = RewardTable(metric="em", linear=True, bonus_metric="f1", bonus_value=0.2)
#: The warm start (the ExSearch warm-up measured in docs/agentic.md, ExSearch): oracle seeds, 2 epochs,
#: lr 1e-4, 4 questions per optimizer step.
WARM_START = {"seeds": "oracle", "warmup_epochs": 2, "learning_rate": 1e-4, "questions_per_step": 4,
              "micro_batch": 4}


def warm_start(model: str, train_rows: Sequence[Mapping[str, Any]],
               eval_rows: Sequence[Mapping[str, Any]], out_dir: str | Path, *, turn_tokens: int,
               batch_size: int, seed: int, progress: bool, epochs: int = WARM_START["warmup_epochs"],
               searcher=None) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """Fine-tune ``model`` on the oracle trajectories of ``train_rows`` for ``epochs`` epochs and
    evaluate it (greedy) on ``eval_rows``. Returns the model folder, the evaluation summary and its per-question records
    (resumes a finished warm start in ``out_dir``)."""
    settings = ExSearchSettings(model=model, output_dir=str(out_dir), iterations=0,
                                max_new_tokens=turn_tokens, eval_zero_shot=False,
                                gen_batch_size=batch_size, seed=seed, progress=progress,
                                **{**WARM_START, "warmup_epochs": epochs})
    result = train_exsearch(train_rows, eval_rows, settings, searcher=searcher)
    stage = Path(out_dir) / "stages" / "warmup"
    summary = json.loads((stage / "stage.json").read_text())["eval"]
    with open(stage / "eval" / "generations.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    return result.model_dir, summary, records


