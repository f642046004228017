# Shared body of scripts/train/*.sh (sourced, not run): `deepretrieval train --task TASK` with the
# environment knobs every script takes.
#   ENGINE=verl|trl (default verl)   CONFIG=ppo|grpo|lora_3b_1gpu|file.yaml (verl; default ppo)
#   MODEL=policy model   OUT=run folder   INDEX=NAME[=PATH] (repeat with --index)   INIT_FROM=checkpoint
#   DATA=folder with train.parquet + test.parquet. Default: the original's preprocessed folder
#   (data/local_index_search/..., data/search_engine/..., data/sql/..., as `python
#   download_datasets.py` writes it) when it holds both files, else data/<task> or the bundled rows.
# DEEPRETRIEVAL=command to run instead of `deepretrieval` (tests).

# train_task TASK ORIGINAL_DATA_FOLDER [deepretrieval train options] [KEY=VALUE overrides]
train_task() {
  local task=$1 original_data=$2
  shift 2
  local engine="${ENGINE:-verl}"
  local args=(--task "$task" --engine "$engine")
  [[ "$engine" == verl ]] && args+=(--config "${CONFIG:-ppo}")
  [[ -n "${MODEL:-}" ]] && args+=(--model "$MODEL")
  [[ -n "${OUT:-}" ]] && args+=(--out "$OUT")
  if [[ -n "${DATA:-}" ]]; then
    args+=(--data "$DATA")
  elif [[ -n "$original_data" && -f "$original_data/train.parquet" && -f "$original_data/test.parquet" ]]; then
    echo "rows: $original_data (the original's preprocessed files)" >&2
    args+=(--data "$original_data")
  fi
  [[ -n "${INDEX:-}" ]] && args+=(--index "$INDEX")
  [[ -n "${INIT_FROM:-}" ]] && args+=(--init-from "$INIT_FROM")
  exec "${DEEPRETRIEVAL:-deepretrieval}" train "${args[@]}" "$@"
}

# not_here "what the original script ran" "what to do instead": for original scripts with no
# counterpart here; exits 2 with the message.
not_here() {
  echo "error: $(basename "$0"): $1 is not part of deepretrieval. $2" >&2
  exit 2
}
