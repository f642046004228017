#!/usr/bin/env bash
# Evaluate a model on NQ-open evidence seeking (rank of the first answer-bearing passage) against the original-question baseline.
# usage: scripts/eval/nq.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL (default: DeepRetrieval/DeepRetrieval-NQ-BM25-3B)
# env: TASK (default nq; nq_no_reason for answer-only models), SPLIT (default dev),
#      ROWS (task rows parquet; default data/local_index_search/nq_serini/test.parquet when it exists, else TASK's bundled rows)
# note: needs a 'wikipedia' passage index (`deepretrieval index --corpus passages.jsonl --name wikipedia`)
#       or rows from `deepretrieval prepare nq --index NAME` passed as ROWS
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task nq dev "data/local_index_search/nq_serini/test.parquet" "DeepRetrieval/DeepRetrieval-NQ-BM25-3B" "$@"
