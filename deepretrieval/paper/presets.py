"""The original DeepRetrieval training scripts' per-task settings (``code/scripts/train/*.sh`` at
pat-jj/DeepRetrieval@001a563), applied on top of the ``ppo`` preset.

The preset (``configs/verl/ppo.yaml``) carries what every original script shares (entropy
coefficient 0.001 — the original verl fork's default, which no script changed — GAE, KL 0.001, the
learning rates); the family files carry each family's lengths. This table is the one place for what
differs per task: epochs, rollout temperature (scripts that set none ran at verl's 1.0), prompt and
response lengths, and the checkpoint a transfer run starts from (actor *and* critic).
``docs/profiles.md`` shows the same table; ``tests/test_paper_presets.py`` checks they agree.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRun:
    script: str                 # the original script
    epochs: int
    temperature: float
    max_prompt_length: int
    max_response_length: int
    init_from: str | None = None  # a task whose trained actor + critic start this run


#: our task → the original script's values.
PAPER_RUNS: dict[str, PaperRun] = {
    "pubmed": PaperRun("pubmed.sh", 10, 1.0, 500, 500),
    "pubmed_no_reason": PaperRun("pmd_no_reason.sh", 15, 1.0, 500, 500),
    "ctgov": PaperRun("ctgov.sh", 5, 1.0, 500, 500, init_from="pubmed"),
    "scifact": PaperRun("scifact.sh", 100, 0.6, 256, 512),
    "scifact_dense": PaperRun("dense/scifact.sh", 50, 0.6, 256, 512),
    "nfcorpus": PaperRun("nfcorpus.sh", 10, 0.6, 256, 512),
    "nfcorpus_dense": PaperRun("dense/nfcorpus.sh", 30, 0.6, 256, 512),
    "fever": PaperRun("fever.sh", 10, 0.6, 256, 512),
    "fever_dense": PaperRun("dense/fever.sh", 10, 0.6, 256, 512),
    "hotpotqa": PaperRun("hotpotqa.sh", 10, 0.6, 256, 512),
    "hotpotqa_dense": PaperRun("dense/hotpotqa.sh", 10, 0.6, 256, 512),
    "msmarco_beir": PaperRun("msmarco_beir.sh", 10, 0.6, 256, 512),
    "msmarco_beir_dense": PaperRun("dense/msmarco_beir.sh", 10, 0.6, 256, 512),
    "fiqa": PaperRun("fiqa.sh", 10, 0.6, 256, 512),
    "nq": PaperRun("nq.sh", 5, 1.0, 256, 512),
    "nq_no_reason": PaperRun("nq_no_reason.sh", 5, 1.0, 256, 512),
    "triviaqa": PaperRun("triviaqa.sh", 5, 0.6, 256, 350, init_from="nq"),
    "triviaqa_no_reason": PaperRun("tqa_no_reason.sh", 5, 1.0, 256, 512),
    "squad": PaperRun("squad.sh", 5, 1.0, 256, 350, init_from="nq"),
    "squad_no_reason": PaperRun("squad_no_reason.sh", 5, 1.0, 256, 350),
    "spider": PaperRun("spider.sh", 5, 0.6, 2048, 512),
    "bird": PaperRun("bird.sh", 5, 0.6, 2048, 512),
}


def paper_run_overrides(task_name: str) -> list[str]:
    """Hydra overrides for a task's original script values ([] for tasks it had no script for)."""
    run = PAPER_RUNS.get(task_name)
    if run is None:
        return []
    return [f"trainer.total_epochs={run.epochs}",
            f"actor_rollout_ref.rollout.temperature={run.temperature}",
            f"data.max_prompt_length={run.max_prompt_length}",
            f"data.max_response_length={run.max_response_length}"]


def transfer_overrides(task_name: str, actor: str, critic: str) -> list[str]:
    """A transfer run (e.g. CT.gov from PubMed): the actor *and* the critic start from the
    source task's trained checkpoints (``.../actor/global_step_N``, ``.../critic/global_step_N``),
    as the original's ``ctgov.sh`` did."""
    run = PAPER_RUNS.get(task_name)
    if run is None or run.init_from is None:
        raise ValueError(f"task {task_name!r} has no transfer run in the original scripts; "
                         f"transfer tasks: {sorted(t for t, r in PAPER_RUNS.items() if r.init_from)}")
    return [f"actor_rollout_ref.model.path={actor}", f"critic.model.path={critic}"]
