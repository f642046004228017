#!/usr/bin/env bash
# PubMed Boolean search with Llama-3.2-3B-Instruct (the original's pubmed_32.sh) — on `deepretrieval train --task pubmed`.
#
# Usage: scripts/train/pubmed_32.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/pubmed_32.sh --dry-run
#   scripts/train/pubmed_32.sh --gpus 8 trainer.total_epochs=5
# Rows: bundled (deepretrieval prepare pubmed), or the original's from data/search_engine/pubmed_32.
# Set NCBI_API_KEY for 10 requests/s.
set -euo pipefail
MODEL="${MODEL:-meta-llama/Llama-3.2-3B-Instruct}"
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task pubmed "data/search_engine/pubmed_32" "$@"
