#!/usr/bin/env bash
# Evaluate a model on BEIR SciFact with dense retrieval (all-MiniLM-L6-v2) against the original-query baseline.
# usage: scripts/eval/scifact_dense.sh MODEL [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --base-url URL
# env: TASK (default scifact_dense; scifact_dense_no_reason for answer-only models), SPLIT (default test)
# note: the dense index is built on first use (a few minutes on CPU)
set -euo pipefail
[ $# -ge 1 ] || { sed -n '3,5p' "$0" | sed 's/^# //' >&2; exit 2; }
MODEL=$1; shift
exec deepretrieval eval --model "$MODEL" --task "${TASK:-scifact_dense}" --split "${SPLIT:-test}" "$@"
