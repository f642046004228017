#!/usr/bin/env bash
# ClinicalTrials.gov search (PICO → query), recall@3000 — verl; optionally transfer from PubMed.
#
# Usage: scripts/train/ctgov.sh [deepretrieval train options] [KEY=VALUE overrides]
#   ENGINE=verl|trl (default verl)   CONFIG=ppo|grpo|lora_3b_1gpu|file.yaml (default ppo)
#   MODEL=...  DATA=folder with train/test.parquet (default data/ctgov)  OUT=run folder
# Examples:
#   scripts/train/ctgov.sh --dry-run
#   scripts/train/ctgov.sh --gpus 8 trainer.total_epochs=5
#   ENGINE=trl scripts/train/ctgov.sh --model smollm2 --steps 50
# Starts the retrieval service for the task, waits for /health, trains, stops the service on
# exit (also on Ctrl-C or failure) and prints where checkpoints and logs are.
# Rows: deepretrieval prepare ctgov --out data/ctgov
# Transfer training as in the paper: INIT_FROM=runs/pubmed-verl/checkpoints scripts/train/ctgov.sh
set -euo pipefail
ENGINE="${ENGINE:-verl}"
args=(--task "ctgov" --engine "$ENGINE")
[[ "$ENGINE" == verl ]] && args+=(--config "${CONFIG:-ppo}")
[[ -n "${MODEL:-}" ]] && args+=(--model "$MODEL")
[[ -n "${OUT:-}" ]] && args+=(--out "$OUT")
[[ -n "${DATA:-}" ]] && args+=(--data "$DATA")
[[ -n "${INIT_FROM:-}" ]] && args+=(--init-from "$INIT_FROM")
exec "${DEEPRETRIEVAL:-deepretrieval}" train "${args[@]}" "$@"
