#!/usr/bin/env bash
# Evaluate a model on BEIR SciFact with dense retrieval (all-MiniLM-L6-v2) against the original-query baseline.
# usage: scripts/eval/scifact_dense.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL
# env: TASK (default scifact_dense; scifact_dense_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet instead of TASK's bundled rows)
# note: the dense index is built on first use (a few minutes on CPU)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task scifact_dense test "" "" "$@"
