#!/usr/bin/env bash
# Evaluate a model on PubMed search for TrialMind-SLR reviews (recall@3000 of included studies) against the original-query (review title) baseline.
# usage: scripts/eval/pubmed.sh MODEL [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --base-url URL
# env: TASK (default pubmed; pubmed_no_reason for answer-only models), SPLIT (default test)
# note: live PubMed E-utilities; set NCBI_API_KEY for 10 requests/s
set -euo pipefail
[ $# -ge 1 ] || { sed -n '3,5p' "$0" | sed 's/^# //' >&2; exit 2; }
MODEL=$1; shift
exec deepretrieval eval --model "$MODEL" --task "${TASK:-pubmed}" --split "${SPLIT:-test}" "$@"
