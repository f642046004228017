#!/usr/bin/env bash
# MS MARCO domain subset, dense retrieval (the original's msmarco_dense.sh; DOMAIN=health|science|tech|all, default health) — on `deepretrieval train --task msmarco_dense_train`.
#
# Usage: scripts/train/msmarco_dense.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/msmarco_dense.sh --dry-run
#   scripts/train/msmarco_dense.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. The original's rows (python download_datasets.py --categories local_index_search
#   --datasets msmarco_$DOMAIN) and the domain's dense index, served as INDEX=msmarco_dense=/path.
set -euo pipefail
DOMAIN="${DOMAIN:-health}"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task msmarco_dense_train "data/local_index_search/msmarco_${DOMAIN}/dense" "$@"
