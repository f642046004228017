#!/usr/bin/env bash
# TriviaQA evidence seeking (the original's triviaqa.sh) — on `deepretrieval train --task triviaqa`.
#
# Usage: scripts/train/triviaqa.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/triviaqa.sh --dry-run
#   scripts/train/triviaqa.sh --gpus 8 trainer.total_epochs=5
# Data: a passage index named 'wikipedia' (INDEX=wikipedia=/path, or deepretrieval index --corpus
#   passages.jsonl --name wikipedia) and rows: deepretrieval prepare triviaqa --index wikipedia --input ...
#   (or the original's, picked up from data/local_index_search/triviaqa).
# The original started from its NQ run: INIT_FROM=<nq checkpoint>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task triviaqa "data/local_index_search/triviaqa" "$@"
