#!/usr/bin/env bash
# SciFact with dense retrieval (all-MiniLM-L6-v2 index scifact_dense) — verl.
#
# Usage: scripts/train/scifact_dense.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE=verl|trl (default verl)   CONFIG=ppo|grpo|lora_3b_1gpu|file.yaml (default ppo)
#   MODEL=...  DATA=folder with train/test.parquet (default data/scifact_dense)  OUT=run folder
# Examples:
#   scripts/train/scifact_dense.sh --dry-run
#   scripts/train/scifact_dense.sh --gpus 8 trainer.total_epochs=5
#   ENGINE=trl scripts/train/scifact_dense.sh --model smollm2 --steps 50
# Starts the retrieval service for the task, waits for /health, trains, stops the service on
# exit (also on Ctrl-C or failure) and prints where checkpoints and logs are.
# Rows: bundled; the dense index is built on first use (sentence-transformers).
set -euo pipefail
ENGINE="${ENGINE:-verl}"
args=(--task "scifact_dense" --engine "$ENGINE")
[[ "$ENGINE" == verl ]] && args+=(--config "${CONFIG:-ppo}")
[[ -n "${MODEL:-}" ]] && args+=(--model "$MODEL")
[[ -n "${OUT:-}" ]] && args+=(--out "$OUT")
[[ -n "${DATA:-}" ]] && args+=(--data "$DATA")

exec "${DEEPRETRIEVAL:-deepretrieval}" train "${args[@]}" "$@"
