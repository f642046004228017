#!/usr/bin/env bash
# Spider text-to-SQL, reward 1.1 on execution match — verl.
#
# Usage: scripts/train/spider.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE=verl|trl (default verl)   CONFIG=ppo|grpo|lora_3b_1gpu|file.yaml (default ppo)
#   MODEL=...  DATA=folder with train/test.parquet (default data/spider)  OUT=run folder
# Examples:
#   scripts/train/spider.sh --dry-run
#   scripts/train/spider.sh --gpus 8 trainer.total_epochs=5
#   ENGINE=trl scripts/train/spider.sh --model smollm2 --steps 50
# Starts the retrieval service for the task, waits for /health, trains, stops the service on
# exit (also on Ctrl-C or failure) and prints where checkpoints and logs are.
# Rows: deepretrieval prepare spider --out data/spider (the bundled databases serve as indexes spider/<db>).
set -euo pipefail
ENGINE="${ENGINE:-verl}"
args=(--task "spider" --engine "$ENGINE")
[[ "$ENGINE" == verl ]] && args+=(--config "${CONFIG:-ppo}")
[[ -n "${MODEL:-}" ]] && args+=(--model "$MODEL")
[[ -n "${OUT:-}" ]] && args+=(--out "$OUT")
[[ -n "${DATA:-}" ]] && args+=(--data "$DATA")

exec "${DEEPRETRIEVAL:-deepretrieval}" train "${args[@]}" "$@"
