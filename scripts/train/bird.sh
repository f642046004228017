#!/usr/bin/env bash
# BIRD text-to-SQL, execution match (the original's bird.sh) — on `deepretrieval train --task bird`.
#
# Usage: scripts/train/bird.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE, CONFIG, MODEL, DATA, OUT, INDEX, INIT_FROM: see scripts/lib/train.sh
# Examples:
#   scripts/train/bird.sh --dry-run
#   scripts/train/bird.sh --gpus 8 trainer.total_epochs=5
# Data: not bundled. deepretrieval prepare bird --bird-dir BIRD_DIR (rows + databases bird/<db_id>).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
train_task bird "data/sql/bird" "$@"
