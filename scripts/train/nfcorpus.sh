#!/usr/bin/env bash
# BEIR nfcorpus, BM25: reward from nDCG (the original's nfcorpus.sh) — on `deepretrieval train --task nfcorpus`.
#
# Usage: scripts/train/nfcorpus.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/nfcorpus.sh --dry-run
#   scripts/train/nfcorpus.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. Build the index and rows: deepretrieval prepare beir --corpus ... --queries ...
#   --qrels train=... test=... --name nfcorpus; the original's rows (python download_datasets.py
#   --categories local_index_search --datasets nfcorpus) are picked up from data/local_index_search/nfcorpus.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task nfcorpus "data/local_index_search/nfcorpus" "$@"
