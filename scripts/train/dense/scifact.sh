#!/usr/bin/env bash
# BEIR scifact, dense retrieval: reward from nDCG (the original's dense/scifact.sh) — on `deepretrieval train --task scifact_dense`.
#
# Usage: scripts/train/dense/scifact.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/dense/scifact.sh --dry-run
#   scripts/train/dense/scifact.sh --gpus 8 trainer.total_epochs=5
# Rows: bundled; the dense index is built on first use (sentence-transformers).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../lib/train.sh"
train_task scifact_dense "data/local_index_search/scifact/dense" "$@"
