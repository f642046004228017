#!/usr/bin/env bash
# The original's BM25 API baseline (BM25/claude_no_reason.sh): an API model writes answer-only queries for a
# BEIR dataset; scored like the trained models (answer extracted leniently).
# usage: scripts/eval/BM25/claude_no_reason.sh DATASET [MODEL_NAME] [extra `deepretrieval eval` options]
#   DATASET: scifact (bundled), nfcorpus, fever, hotpotqa, fiqa, msmarco_beir, ... (others need
#            `deepretrieval prepare beir --name DATASET`)
#   MODEL_NAME: default claude-3.5 (claude-3.5, claude-haiku, or an Anthropic model id)
# env: ANTHROPIC_API_KEY; ROWS (default data/local_index_search/no_reason/BM25/$DATASET/test.parquet if present)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../lib/eval.sh"
api_eval_dataset claude "claude-3.5" "_no_reason" "data/local_index_search/no_reason/BM25/%s/test.parquet" "$@"
