#!/usr/bin/env bash
# BEIR fever, dense retrieval: reward from nDCG (the original's dense/fever.sh) — on `deepretrieval train --task fever_dense`.
#
# Usage: scripts/train/dense/fever.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/dense/fever.sh --dry-run
#   scripts/train/dense/fever.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. Build the index and rows: deepretrieval prepare beir --corpus ... --queries ...
#   --qrels train=... test=... --name fever --dense MODEL; the original's rows (python download_datasets.py
#   --categories local_index_search --datasets fever) are picked up from data/local_index_search/fever/dense.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../lib/train.sh"
train_task fever_dense "data/local_index_search/fever/dense" "$@"
