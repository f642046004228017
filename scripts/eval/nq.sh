#!/usr/bin/env bash
# Evaluate a model on NQ-open evidence seeking (rank of the first answer-bearing passage) against the original-question baseline.
# usage: scripts/eval/nq.sh MODEL [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --base-url URL
# env: TASK (default nq; nq_no_reason for answer-only models), SPLIT (default dev)
# note: needs a 'wikipedia' passage index (`deepretrieval index --corpus passages.jsonl --name wikipedia`)
#       or rows from `deepretrieval prepare nq --index NAME` passed with --rows
set -euo pipefail
[ $# -ge 1 ] || { sed -n '3,5p' "$0" | sed 's/^# //' >&2; exit 2; }
MODEL=$1; shift
exec deepretrieval eval --model "$MODEL" --task "${TASK:-nq}" --split "${SPLIT:-dev}" "$@"
