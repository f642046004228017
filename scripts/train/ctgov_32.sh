#!/usr/bin/env bash
# ClinicalTrials.gov search with Llama-3.2-3B-Instruct (the original's ctgov_32.sh) — on `deepretrieval train --task ctgov`.
#
# Usage: scripts/train/ctgov_32.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/ctgov_32.sh --dry-run
#   scripts/train/ctgov_32.sh --gpus 8 trainer.total_epochs=5
# Rows: bundled (deepretrieval prepare ctgov), or the original's from data/search_engine/ctgov_32.
# Transfer as the original: INIT_FROM=<the pubmed_32 run's checkpoint>.
set -euo pipefail
MODEL="${MODEL:-meta-llama/Llama-3.2-3B-Instruct}"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task ctgov "data/search_engine/ctgov_32" "$@"
