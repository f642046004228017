#!/usr/bin/env bash
# BEIR msmarco_beir, BM25: reward from nDCG (the original's msmarco_beir.sh) — on `deepretrieval train --task msmarco_beir`.
#
# Usage: scripts/train/msmarco_beir.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/msmarco_beir.sh --dry-run
#   scripts/train/msmarco_beir.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. Build the index and rows: deepretrieval prepare beir --corpus ... --queries ...
#   --qrels train=... test=... --name msmarco_beir; the original's rows (python download_datasets.py
#   --categories local_index_search --datasets msmarco_beir) are picked up from data/local_index_search/msmarco_beir/sparse.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task msmarco_beir "data/local_index_search/msmarco_beir/sparse" "$@"
