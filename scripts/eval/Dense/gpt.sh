#!/usr/bin/env bash
# The original's Dense API baseline (Dense/gpt.sh): an API model writes queries for a
# BEIR dataset (dense index); scored like the trained models (answer extracted leniently).
# usage: scripts/eval/Dense/gpt.sh DATASET [MODEL_NAME] [extra `deepretrieval eval` options]
#   DATASET: scifact (bundled), nfcorpus, fever, hotpotqa, fiqa, msmarco_beir, ... (others need
#            `deepretrieval prepare beir --name DATASET --dense MODEL`)
#   MODEL_NAME: default gpt-4o (gpt-4o-mini, gpt-35, ...)
# env: OPENAI_API_KEY, OPENAI_BASE_URL; ROWS (default data/local_index_search/$DATASET/dense/test.parquet if present)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../lib/eval.sh"
api_eval_dataset openai "gpt-4o" "_dense" "data/local_index_search/%s/dense/test.parquet" "$@"
