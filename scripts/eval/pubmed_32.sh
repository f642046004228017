#!/usr/bin/env bash
# Evaluate a model on PubMed search with the Llama-3.2 checkpoint (the original's pubmed_32.sh).
# usage: scripts/eval/pubmed_32.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL (default: DeepRetrieval/DeepRetrieval-PubMed-3B-Llama)
# env: TASK (default pubmed; pubmed_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet; default data/search_engine/pubmed_32/test_full.parquet when it exists, else TASK's bundled rows)
# note: live PubMed E-utilities; set NCBI_API_KEY for 10 requests/s
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task pubmed test "data/search_engine/pubmed_32/test_full.parquet" "DeepRetrieval/DeepRetrieval-PubMed-3B-Llama" "$@"
