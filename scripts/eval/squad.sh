#!/usr/bin/env bash
# Evaluate a model on SQuAD evidence seeking (the original's squad.sh).
# usage: scripts/eval/squad.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL (default: DeepRetrieval/DeepRetrieval-SQuAD-BM25-3B-200)
# env: TASK (default squad; squad_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet; default data/local_index_search/squad/test.parquet when it exists, else TASK's bundled rows)
# note: no bundled rows: deepretrieval prepare squad --index wikipedia --input ... (ROWS=...), and a 'wikipedia' index
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task squad test "data/local_index_search/squad/test.parquet" "DeepRetrieval/DeepRetrieval-SQuAD-BM25-3B-200" "$@"
