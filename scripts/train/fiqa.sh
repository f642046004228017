#!/usr/bin/env bash
# BEIR fiqa, BM25: reward from nDCG (the original's fiqa.sh) — on `deepretrieval train --task fiqa`.
#
# Usage: scripts/train/fiqa.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/fiqa.sh --dry-run
#   scripts/train/fiqa.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. Build the index and rows: deepretrieval prepare beir --corpus ... --queries ...
#   --qrels train=... test=... --name fiqa; the original's rows (python download_datasets.py
#   --categories local_index_search --datasets fiqa) are picked up from data/local_index_search/fiqa.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task fiqa "data/local_index_search/fiqa" "$@"
