#!/usr/bin/env bash
# PubMed Boolean search (PICO → query), reward tiers on recall@3000 — verl, live E-utilities.
#
# Usage: scripts/train/pubmed.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE=verl|trl (default verl)   CONFIG=ppo|grpo|lora_3b_1gpu|file.yaml (default ppo)
#   MODEL=...  DATA=folder with train/test.parquet (default data/pubmed)  OUT=run folder
# Examples:
#   scripts/train/pubmed.sh --dry-run
#   scripts/train/pubmed.sh --gpus 8 trainer.total_epochs=5
#   ENGINE=trl scripts/train/pubmed.sh --model smollm2 --steps 50
# Starts the retrieval service for the task, waits for /health, trains, stops the service on
# exit (also on Ctrl-C or failure) and prints where checkpoints and logs are.
# Rows: deepretrieval prepare pubmed --out data/pubmed
# Set NCBI_API_KEY for 10 requests/s instead of 3; results are cached by the service.
set -euo pipefail
ENGINE="${ENGINE:-verl}"
args=(--task "pubmed" --engine "$ENGINE")
[[ "$ENGINE" == verl ]] && args+=(--config "${CONFIG:-ppo}")
[[ -n "${MODEL:-}" ]] && args+=(--model "$MODEL")
[[ -n "${OUT:-}" ]] && args+=(--out "$OUT")
[[ -n "${DATA:-}" ]] && args+=(--data "$DATA")

exec "${DEEPRETRIEVAL:-deepretrieval}" train "${args[@]}" "$@"
