#!/usr/bin/env bash
# The original's scripts/train/cold_start.sh: the SQL SFT cold start (src/cold_start/sql/sft.py). Not available here; prints what to use instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
not_here "the SQL SFT cold start (src/cold_start/sql/sft.py)" "RL starts from an instruct model or any checkpoint: MODEL=... scripts/train/spider.sh (or bird.sh)."
