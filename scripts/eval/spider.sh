#!/usr/bin/env bash
# Evaluate a model on the bundled Spider subset (execution match) against the gold-SQL (upper bound) baseline.
# usage: scripts/eval/spider.sh [MODEL] [extra `deepretrieval eval` options]
#   MODEL: checkpoint folder, hub name, or openai:NAME --api-url URL (default: DeepRetrieval/DeepRetrieval-SQL-7B)
# env: TASK (default spider; spider_no_reason for answer-only models), SPLIT (default test),
#      ROWS (task rows parquet; default data/sql/spider/val.parquet when it exists, else TASK's bundled rows)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/eval.sh"
eval_task spider test "data/sql/spider/val.parquet" "DeepRetrieval/DeepRetrieval-SQL-7B" "$@"
