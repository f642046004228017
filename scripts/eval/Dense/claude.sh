#!/usr/bin/env bash
# The original's Dense API baseline (Dense/claude.sh): an API model writes queries for a
# BEIR dataset (dense index); scored like the trained models (answer extracted leniently).
# usage: scripts/eval/Dense/claude.sh DATASET [MODEL_NAME] [extra `deepretrieval eval` options]
#   DATASET: scifact (bundled), nfcorpus, fever, hotpotqa, fiqa, msmarco_beir, ... (others need
#            `deepretrieval prepare beir --name DATASET --dense MODEL`)
#   MODEL_NAME: default claude-3.5 (claude-3.5, claude-haiku, or an Anthropic model id)
# env: ANTHROPIC_API_KEY; ROWS (default data/local_index_search/$DATASET/dense/test.parquet if present)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../lib/eval.sh"
api_eval_dataset claude "claude-3.5" "_dense" "data/local_index_search/%s/dense/test.parquet" "$@"
