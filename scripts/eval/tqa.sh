#!/usr/bin/env bash
# Evaluate a model on TriviaQA evidence seeking (the original's tqa.sh).
# usage: scripts/eval/tqa.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL (default: DeepRetrieval/DeepRetrieval-TriviaQA-BM25-3B)
# env: TASK (default triviaqa; triviaqa_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet; default data/local_index_search/triviaqa/test.parquet when it exists, else TASK's bundled rows)
# note: no bundled rows: deepretrieval prepare triviaqa --index wikipedia --input ... (ROWS=...), and a 'wikipedia' index
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task triviaqa test "data/local_index_search/triviaqa/test.parquet" "DeepRetrieval/DeepRetrieval-TriviaQA-BM25-3B" "$@"
