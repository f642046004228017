#!/usr/bin/env bash
# Evaluate a model on an MS MARCO domain subset, BM25 (the original's msmarco.sh; DOMAIN=health|science|tech|all).
# usage: scripts/eval/msmarco.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL
# env: TASK (default msmarco_sparse_test), SPLIT (default test),
#      ROWS (task rows parquet; default data/local_index_search/msmarco_${DOMAIN:-health}/sparse/test.parquet when it exists, else TASK's bundled rows)
# note: no bundled rows or index: the original's rows (download_datasets.py) and INDEX served as msmarco
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task msmarco_sparse_test test "data/local_index_search/msmarco_${DOMAIN:-health}/sparse/test.parquet" "" "$@"
