#!/usr/bin/env bash
# Evaluate a model on BEIR SciFact (test split) against the original-query baseline.
# usage: scripts/eval/scifact.sh MODEL [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --base-url URL
# env: TASK (default scifact; scifact_no_reason for answer-only models), SPLIT (default test)
set -euo pipefail
[ $# -ge 1 ] || { sed -n '3,5p' "$0" | sed 's/^# //' >&2; exit 2; }
MODEL=$1; shift
exec deepretrieval eval --model "$MODEL" --task "${TASK:-scifact}" --split "${SPLIT:-test}" "$@"
