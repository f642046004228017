#!/usr/bin/env bash
# Serve a trained query-rewriting model with vLLM's OpenAI-compatible server, for
# `deepretrieval rewrite --api-url`, `query_rewrite.py` and `deepretrieval eval --model openai:NAME`.
#
# usage: ./vllm_host.sh MODEL [--port 8000] [--max-len 2048] [--tp 1] [--host 0.0.0.0]
#                             [--name SERVED_NAME] [--gpu-util 0.9] [-- EXTRA VLLM SERVE ARGS]
#
# The served model name defaults to MODEL. The checkpoint's generation_config.json sampling defaults
# are ignored (--generation-config vllm): clients pin decoding themselves.
set -euo pipefail

usage() {
    sed -n '5,6p' "$0" | sed 's/^# //' >&2
    exit "${1:-2}"
}

[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; -*) echo "error: the first argument is the model (path or hub name)" >&2; usage ;; esac
MODEL=$1
shift
PORT=8000
MAX_LEN=2048
TP=1
HOST=0.0.0.0
NAME=""
GPU_UTIL=0.9
need() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "error: $1 needs a value" >&2; usage; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --port) need "$@"; PORT=$2; shift 2 ;;
        --max-len) need "$@"; MAX_LEN=$2; shift 2 ;;
        --tp) need "$@"; TP=$2; shift 2 ;;
        --host) need "$@"; HOST=$2; shift 2 ;;
        --name) need "$@"; NAME=$2; shift 2 ;;
        --gpu-util) need "$@"; GPU_UTIL=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        *) echo "error: unknown option $1 (pass vLLM options after --)" >&2; usage ;;
    esac
done
for pair in "port:$PORT" "max-len:$MAX_LEN" "tp:$TP"; do
    case "${pair#*:}" in
        ''|*[!0-9]*) echo "error: --${pair%%:*} must be a positive integer, got '${pair#*:}'" >&2; exit 2 ;;
    esac
done
if ! command -v vllm >/dev/null 2>&1; then
    echo "error: vllm is not installed (pip install vllm on a machine with a GPU)" >&2
    exit 127
fi
echo "serving $MODEL as '${NAME:-$MODEL}' on http://$HOST:$PORT/v1 (max len $MAX_LEN, tensor parallel $TP)" >&2
exec vllm serve "$MODEL" --host "$HOST" --port "$PORT" --max-model-len "$MAX_LEN" \
    --tensor-parallel-size "$TP" --served-model-name "${NAME:-$MODEL}" \
    --gpu-memory-utilization "$GPU_UTIL" --generation-config vllm "$@"
