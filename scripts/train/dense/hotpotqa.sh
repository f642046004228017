#!/usr/bin/env bash
# BEIR hotpotqa, dense retrieval: reward from nDCG (the original's dense/hotpotqa.sh) — on `deepretrieval train --task hotpotqa_dense`.
#
# Usage: scripts/train/dense/hotpotqa.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/dense/hotpotqa.sh --dry-run
#   scripts/train/dense/hotpotqa.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. Build the index and rows: deepretrieval prepare beir --corpus ... --queries ...
#   --qrels train=... test=... --name hotpotqa --dense MODEL; the original's rows (python download_datasets.py
#   --categories local_index_search --datasets hotpotqa) are picked up from data/local_index_search/hotpotqa/dense.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../lib/train.sh"
train_task hotpotqa_dense "data/local_index_search/hotpotqa/dense" "$@"
