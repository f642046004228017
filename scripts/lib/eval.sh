# Shared body of scripts/eval/*.sh (sourced, not run): `deepretrieval eval` for one task.
#   MODEL: first argument (unless it starts with -), else $MODEL, else the script's released
#          DeepRetrieval checkpoint (if the task has one); folder, hub name or openai:NAME
#   ROWS=task rows (parquet). Default: the original's preprocessed test file (as `python
#        download_datasets.py` writes it) when it exists — then a released checkpoint is
#        evaluated on the original prompts it was trained on (--prompt-format auto) —, else the
#        task's bundled rows (TASK, SPLIT).
# DEEPRETRIEVAL=command to run instead of `deepretrieval` (tests).

_usage() {
  sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# eval_task TASK SPLIT ORIGINAL_ROWS_FILE RELEASED_MODEL [MODEL] [deepretrieval eval options]
eval_task() {
  local task=$1 split=$2 original_rows=$3 released=$4
  shift 4
  local model=""
  if [[ $# -ge 1 && "$1" != -* ]]; then
    model=$1
    shift
  elif [[ -n "${MODEL:-}" ]]; then
    model=$MODEL
  elif [[ -n "$released" ]]; then
    model=$released
    echo "model: $model (the released DeepRetrieval checkpoint)" >&2
  else
    _usage
  fi
  local args=(--model "$model")
  local rows="${ROWS:-}"
  if [[ -z "$rows" && -n "$original_rows" && -f "$original_rows" ]]; then
    rows=$original_rows
    echo "rows: $rows (the original's preprocessed file)" >&2
  fi
  if [[ -n "$rows" ]]; then
    args+=(--rows "$rows")
    [[ -n "${TASK:-}" ]] && args+=(--task "$TASK")
  else
    args+=(--task "${TASK:-$task}" --split "${SPLIT:-$split}")
  fi
  exec "${DEEPRETRIEVAL:-deepretrieval}" eval "${args[@]}" "$@"
}

# api_eval PROVIDER TASK ORIGINAL_ROWS_FILE MODEL_NAME [deepretrieval eval options]
# The original's API baselines (src/eval/*/baselines/model_generate/{gpt,claude}.py):
# PROVIDER openai (key OPENAI_API_KEY, OPENAI_BASE_URL) or claude (key ANTHROPIC_API_KEY,
# Anthropic's OpenAI-compatible endpoint, ANTHROPIC_BASE_URL to change it). The original's model
# aliases are accepted: gpt-35, claude-3.5, claude-haiku.
api_eval() {
  local provider=$1 task=$2 original_rows=$3 name=$4
  shift 4
  case "$name" in
    gpt-35) name=gpt-3.5-turbo ;;
    claude-3.5|claude35) name=claude-3-5-sonnet-20240620 ;;
    claude-haiku|claude3) name=claude-3-haiku-20240307 ;;
  esac
  local args=(--model "openai:$name" --lenient)
  if [[ "$provider" == claude ]]; then
    args+=(--api-url "${ANTHROPIC_BASE_URL:-https://api.anthropic.com/v1/}")
    export OPENAI_API_KEY="${ANTHROPIC_API_KEY:-${OPENAI_API_KEY:-}}"
  elif [[ -n "${OPENAI_BASE_URL:-}" ]]; then
    args+=(--api-url "$OPENAI_BASE_URL")
  fi
  local rows="${ROWS:-}"
  [[ -z "$rows" && -n "$original_rows" && -f "$original_rows" ]] && rows=$original_rows
  if [[ -n "$rows" ]]; then
    echo "rows: $rows" >&2
    args+=(--rows "$rows")
  else
    args+=(--task "$task" --split "${SPLIT:-test}")
  fi
  exec "${DEEPRETRIEVAL:-deepretrieval}" eval "${args[@]}" "$@"
}

# api_eval_dataset PROVIDER DEFAULT_MODEL_NAME TASK_SUFFIX ROWS_PATTERN DATASET [MODEL_NAME] [options]
# The BM25/ and Dense/ API baselines' command line: the task is DATASET + TASK_SUFFIX, the
# original's rows file ROWS_PATTERN with %s = DATASET.
api_eval_dataset() {
  local provider=$1 name=$2 task_suffix=$3 rows_pattern=$4
  shift 4
  [[ $# -ge 1 && "$1" != -* ]] || _usage
  local dataset=$1
  shift
  if [[ $# -ge 1 && "$1" != -* ]]; then name=$1; shift; fi
  # shellcheck disable=SC2059
  api_eval "$provider" "${dataset}${task_suffix}" "$(printf "$rows_pattern" "$dataset")" "$name" "$@"
}
