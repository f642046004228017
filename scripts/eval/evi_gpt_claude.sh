#!/usr/bin/env bash
# The original's evidence-seeking API baseline (evi_gpt_claude.sh): an API model on NQ.
# usage: scripts/eval/evi_gpt_claude.sh [MODEL_NAME] [extra `deepretrieval eval` options]
#   MODEL_NAME: gpt-4o (default), gpt-4o-mini, gpt-35, or claude-3.5 / claude-haiku (Anthropic)
# env: OPENAI_API_KEY / ANTHROPIC_API_KEY; ROWS (default data/local_index_search/nq_serini/test.parquet if present)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
NAME="gpt-4o"
if [[ $# -ge 1 && "$1" != -* ]]; then NAME=$1; shift; fi
PROVIDER=openai
[[ "$NAME" == claude* ]] && PROVIDER=claude
SPLIT="${SPLIT:-dev}"  # the bundled NQ-open questions are its dev set
api_eval "$PROVIDER" nq "data/local_index_search/nq_serini/test.parquet" "$NAME" "$@"
