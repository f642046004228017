#!/usr/bin/env bash
# Evaluate a model on PubMed search, answer-only models (the original's pmd_no_reason.sh).
# usage: scripts/eval/pmd_no_reason.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL
# env: TASK (default pubmed_no_reason), SPLIT (default test),
#      ROWS (task rows parquet; default data/search_engine/no_reason/SearchEngine/pmd_no_reason/test_full.parquet when it exists, else TASK's bundled rows)
# note: live PubMed E-utilities; set NCBI_API_KEY for 10 requests/s
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task pubmed_no_reason test "data/search_engine/no_reason/SearchEngine/pmd_no_reason/test_full.parquet" "" "$@"
