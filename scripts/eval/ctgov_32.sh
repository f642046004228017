#!/usr/bin/env bash
# Evaluate a model on ClinicalTrials.gov search on the original's ctgov_32 rows (the original's ctgov_32.sh).
# usage: scripts/eval/ctgov_32.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL (default: DeepRetrieval/DeepRetrieval-CTGov-3B)
# env: TASK (default ctgov; ctgov_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet; default data/search_engine/ctgov_32/test_full.parquet when it exists, else TASK's bundled rows)
# note: live ClinicalTrials.gov API
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task ctgov test "data/search_engine/ctgov_32/test_full.parquet" "DeepRetrieval/DeepRetrieval-CTGov-3B" "$@"
