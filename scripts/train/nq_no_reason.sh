#!/usr/bin/env bash
# Natural Questions evidence seeking, answer only (the original's nq_no_reason.sh) — on `deepretrieval train --task nq_no_reason`.
#
# Usage: scripts/train/nq_no_reason.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/nq_no_reason.sh --dry-run
#   scripts/train/nq_no_reason.sh --gpus 8 trainer.total_epochs=5
# Data: a passage index named 'wikipedia' (INDEX=wikipedia=/path, or deepretrieval index --corpus
#   passages.jsonl --name wikipedia) and rows: deepretrieval prepare nq --task nq_no_reason --index wikipedia --input ...
#   (or the original's, picked up from data/local_index_search/no_reason/nq_serini_no_reason).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task nq_no_reason "data/local_index_search/no_reason/nq_serini_no_reason" "$@"
