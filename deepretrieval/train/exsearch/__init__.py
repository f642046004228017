"""ExSearch: a search agent trained by generalised EM (docs/agentic.md, ExSearch).

:mod:`.loop` — settings, E-step, warm-up and iterations as resumable stages;
:mod:`.examples` — trajectories as masked training sequences;
:mod:`.objective` — importance weights, ``log p(y|x,z)``, the weighted M-step loss and loop.
"""
from deepretrieval.train.exsearch.loop import (
    EVIDENCE_FILTERS,
    ExSearchResult,
    ExSearchSettings,
    read_curve,
    train_exsearch,
)

__all__ = ["EVIDENCE_FILTERS", "ExSearchResult", "ExSearchSettings", "read_curve", "train_exsearch"]
