#!/usr/bin/env bash
# Natural Questions (open), evidence seeking: rank of the first answer-bearing passage — verl.
#
# Usage: scripts/train/nq.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE=verl|trl (default verl)   CONFIG=ppo|grpo|lora_3b_1gpu|file.yaml (default ppo)
#   MODEL=...  DATA=folder with train/test.parquet (default data/nq)  OUT=run folder
# Examples:
#   scripts/train/nq.sh --dry-run
#   scripts/train/nq.sh --gpus 8 trainer.total_epochs=5
#   ENGINE=trl scripts/train/nq.sh --model smollm2 --steps 50
# Starts the retrieval service for the task, waits for /health, trains, stops the service on
# exit (also on Ctrl-C or failure) and prints where checkpoints and logs are.
# Rows: deepretrieval prepare nq --out data/nq
# Index: a passage index named 'wikipedia'; INDEX=wikipedia=/path/to/index (default: the index root).
set -euo pipefail
ENGINE="${ENGINE:-verl}"
args=(--task "nq" --engine "$ENGINE")
[[ "$ENGINE" == verl ]] && args+=(--config "${CONFIG:-ppo}")
[[ -n "${MODEL:-}" ]] && args+=(--model "$MODEL")
[[ -n "${OUT:-}" ]] && args+=(--out "$OUT")
[[ -n "${DATA:-}" ]] && args+=(--data "$DATA")
[[ -n "${INDEX:-}" ]] && args+=(--index "$INDEX")
exec "${DEEPRETRIEVAL:-deepretrieval}" train "${args[@]}" "$@"
