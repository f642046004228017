#!/usr/bin/env bash
# BEIR fever, BM25: reward from nDCG (the original's fever.sh) — on `deepretrieval train --task fever`.
#
# Usage: scripts/train/fever.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/fever.sh --dry-run
#   scripts/train/fever.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. Build the index and rows: deepretrieval prepare beir --corpus ... --queries ...
#   --qrels train=... test=... --name fever; the original's rows (python download_datasets.py
#   --categories local_index_search --datasets fever) are picked up from data/local_index_search/fever.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task fever "data/local_index_search/fever" "$@"
