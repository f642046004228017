#!/usr/bin/env bash
# Evaluate a model on ClinicalTrials.gov search for TrialMind-SLR reviews (recall@3000 of included trials) against the original-query (review title) baseline.
# usage: scripts/eval/ctgov.sh MODEL [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --base-url URL
# env: TASK (default ctgov; ctgov_no_reason for answer-only models), SPLIT (default test)
# note: live ClinicalTrials.gov API
set -euo pipefail
[ $# -ge 1 ] || { sed -n '3,5p' "$0" | sed 's/^# //' >&2; exit 2; }
MODEL=$1; shift
exec deepretrieval eval --model "$MODEL" --task "${TASK:-ctgov}" --split "${SPLIT:-test}" "$@"
