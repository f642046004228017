#!/usr/bin/env bash
# PubMed Boolean search, answer only (no <think>) (the original's pmd_no_reason.sh) — on `deepretrieval train --task pubmed_no_reason`.
#
# Usage: scripts/train/pmd_no_reason.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/pmd_no_reason.sh --dry-run
#   scripts/train/pmd_no_reason.sh --gpus 8 trainer.total_epochs=5
# Rows: bundled (deepretrieval prepare pubmed --task pubmed_no_reason), or the original's.
# Set NCBI_API_KEY for 10 requests/s.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task pubmed_no_reason "data/search_engine/no_reason/SearchEngine/pmd_no_reason" "$@"
