#!/usr/bin/env bash
# Evaluate a model on BIRD text-to-SQL (the original's bird.sh).
# usage: scripts/eval/bird.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL
# env: TASK (default bird; bird_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet; default data/sql/bird/test.parquet when it exists, else TASK's bundled rows)
# note: no bundled data: deepretrieval prepare bird --bird-dir DIR, then ROWS=data/bird/test.parquet
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task bird test "data/sql/bird/test.parquet" "" "$@"
