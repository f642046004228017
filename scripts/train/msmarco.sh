#!/usr/bin/env bash
# MS MARCO domain subset, BM25 (the original's msmarco.sh; DOMAIN=health|science|tech|all, default tech) — on `deepretrieval train --task msmarco_sparse_train`.
#
# Usage: scripts/train/msmarco.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/msmarco.sh --dry-run
#   scripts/train/msmarco.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. The original's rows (python download_datasets.py --categories local_index_search
#   --datasets msmarco_$DOMAIN) and the domain's BM25 index, served as INDEX=msmarco=/path/to/index.
set -euo pipefail
DOMAIN="${DOMAIN:-tech}"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task msmarco_sparse_train "data/local_index_search/msmarco_${DOMAIN}/sparse" "$@"
