#!/usr/bin/env bash
# The original's MS MARCO subset API baseline (Dense/msmarco_subset/claude_no_reason.sh): claude-3.5 writes
# answer-only queries for a domain subset, dense retrieval.
# usage: scripts/eval/Dense/msmarco_subset/claude_no_reason.sh DATASET [extra `deepretrieval eval` options]
#   DATASET: msmarco_health, msmarco_science, msmarco_tech or msmarco_all (the original's folders)
# env: ANTHROPIC_API_KEY; MODEL_NAME (default claude-3.5);
#      ROWS (default data/local_index_search/no_reason/$DATASET/dense/test.parquet; no rows are bundled)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../lib/eval.sh"
[[ $# -ge 1 && "$1" != -* ]] || _usage
DATASET=$1; shift
api_eval claude msmarco_dense_no_reason_test "data/local_index_search/no_reason/$DATASET/dense/test.parquet" "${MODEL_NAME:-claude-3.5}" "$@"
