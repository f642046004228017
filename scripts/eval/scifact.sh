#!/usr/bin/env bash
# Evaluate a model on BEIR SciFact (test split) against the original-query baseline.
# usage: scripts/eval/scifact.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL
# env: TASK (default scifact; scifact_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet instead of TASK's bundled rows)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task scifact test "" "" "$@"
