#!/usr/bin/env bash
# Batch speed evaluation of one model family: for every bench and temperature, answer the questions with each
# method (plain decoding first), write a speed report per bench, and end with a table averaged over the benches.
# Settings come from options, else environment variables, else defaults that work with the embedded assets.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: eval_metric/eval_family.sh [options] [-- extra generator arguments]

Runs, for each bench B and temperature T:
  python -m jakiro.evaluation.gen_baseline_answer ...   -> OUT_DIR/B/FAMILY-baseline-temperature-T.jsonl
  python -m jakiro.evaluation.gen_ea_answer --method M  -> OUT_DIR/B/FAMILY-M-temperature-T.jsonl
  python -m jakiro.evaluation.speed ...                 -> OUT_DIR/B/speed-temperature-T.json
then prints speedup / tau per bench and method and their mean over the benches (speed --average).
Answer files are resumed: questions already answered are skipped.

options (environment variable in brackets, default after '='):
  --family NAME            [FAMILY=smollm2]   name used in answer files and model ids
  --config NAME|PATH       [CONFIG=smollm2]   config file of jakiro.common.config (tree, dtype, chat template, ...)
  --base-model-path DIR    [BASE_MODEL_PATH=] target model; empty = the config's (embedded SmolLM2)
  --ea-model-path DIR      [EA_MODEL_PATH=]   trained draft; empty = the config's (else an untrained draft)
  --chat-template NAME     [CHAT_TEMPLATE=]   auto, llama-3 or a FastChat template; empty = the config's
  --questions-dir DIR      [QUESTIONS_DIR=]   holds B/question.jsonl per bench; without it only MT-bench runs
                                              (embedded); benches without a question file are skipped
  --benches "B ..."        [BENCHES="mt_bench humaneval gsm8k alpaca sum qa"]
  --temperatures "T ..."   [TEMPERATURES="0.0 1.0"]
  --methods "M ..."        [METHODS=jakiro]   compared with plain decoding: jakiro, jakiro_star, pld, assisted
  --out-dir DIR            [OUT_DIR=outputs/eval/FAMILY]
  --questions-limit N      [QUESTIONS_LIMIT=] only the first N questions per bench (smoke runs); empty = all
  --max-new-tokens N       [MAX_NEW_TOKENS=]  per turn; empty = the config's generation.max_new_tokens
  --warmup N               [WARMUP=]          untimed warm-up runs; empty = the config's eval.warmup (3)
  --plot FILE              [PLOT=]            also write a PNG of speedup and tau (needs matplotlib)
  --python EXE             [PYTHON=python]
  -h, --help               this help
Arguments after '--' go to every generator, e.g. -- --set model.dtype=float32 --set model.device=cuda
EOF
}

FAMILY=${FAMILY:-smollm2}
CONFIG=${CONFIG:-smollm2}
BASE_MODEL_PATH=${BASE_MODEL_PATH:-}
EA_MODEL_PATH=${EA_MODEL_PATH:-}
CHAT_TEMPLATE=${CHAT_TEMPLATE:-}
QUESTIONS_DIR=${QUESTIONS_DIR:-}
BENCHES=${BENCHES:-"mt_bench humaneval gsm8k alpaca sum qa"}
TEMPERATURES=${TEMPERATURES:-"0.0 1.0"}
METHODS=${METHODS:-jakiro}
OUT_DIR=${OUT_DIR:-}
QUESTIONS_LIMIT=${QUESTIONS_LIMIT:-}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-}
WARMUP=${WARMUP:-}
PLOT=${PLOT:-}
PYTHON=${PYTHON:-python}
EXTRA=()

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    --family|--config|--base-model-path|--ea-model-path|--chat-template|--questions-dir|--benches|--temperatures|\
    --methods|--out-dir|--questions-limit|--max-new-tokens|--warmup|--plot|--python)
      [ $# -ge 2 ] || { echo "error: $1 needs a value (see --help)" >&2; exit 2; }
      case "$1" in
        --family) FAMILY=$2 ;; --config) CONFIG=$2 ;; --base-model-path) BASE_MODEL_PATH=$2 ;;
        --ea-model-path) EA_MODEL_PATH=$2 ;; --chat-template) CHAT_TEMPLATE=$2 ;; --questions-dir) QUESTIONS_DIR=$2 ;;
        --benches) BENCHES=$2 ;; --temperatures) TEMPERATURES=$2 ;; --methods) METHODS=$2 ;; --out-dir) OUT_DIR=$2 ;;
        --questions-limit) QUESTIONS_LIMIT=$2 ;; --max-new-tokens) MAX_NEW_TOKENS=$2 ;; --warmup) WARMUP=$2 ;;
        --plot) PLOT=$2 ;; --python) PYTHON=$2 ;;
      esac
      shift 2 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT_DIR=${OUT_DIR:-outputs/eval/$FAMILY}

# settings shared by every generator call
COMMON=(--config "$CONFIG")
[ -n "$BASE_MODEL_PATH" ] && COMMON+=(--base-model-path "$BASE_MODEL_PATH")
[ -n "$EA_MODEL_PATH" ] && COMMON+=(--ea-model-path "$EA_MODEL_PATH")
[ -n "$CHAT_TEMPLATE" ] && COMMON+=(--chat-template "$CHAT_TEMPLATE")
[ -n "$QUESTIONS_LIMIT" ] && COMMON+=(--question-end "$QUESTIONS_LIMIT")
[ -n "$MAX_NEW_TOKENS" ] && COMMON+=(--max-new-tokens "$MAX_NEW_TOKENS")
[ -n "$WARMUP" ] && COMMON+=(--warmup "$WARMUP")
COMMON+=(${EXTRA[@]+"${EXTRA[@]}"})

answers() { echo "$OUT_DIR/$bench/$FAMILY-$1-temperature-$temperature.jsonl"; }  # reads $bench, $temperature
compared_methods=()
for method in $METHODS; do [ "$method" = baseline ] || compared_methods+=("$method"); done
[ ${#compared_methods[@]} -gt 0 ] || { echo "error: --methods names no method besides baseline" >&2; exit 2; }

reports=()
for bench in $BENCHES; do
  questions=()
  if [ -n "$QUESTIONS_DIR" ] && [ -f "$QUESTIONS_DIR/$bench/question.jsonl" ]; then
    questions=(--question-file "$QUESTIONS_DIR/$bench/question.jsonl")
  elif [ "$bench" != mt_bench ]; then
    echo "skipping $bench: no question file ${QUESTIONS_DIR:-(no --questions-dir)}/$bench/question.jsonl"
    continue
  fi
  for temperature in $TEMPERATURES; do
    echo "== $bench, temperature $temperature"
    for method in baseline "${compared_methods[@]}"; do
      [ "$method" = baseline ] && module=gen_baseline_answer || module=gen_ea_answer
      "$PYTHON" -m "jakiro.evaluation.$module" "${COMMON[@]}" ${questions[@]+"${questions[@]}"} \
        --method "$method" --bench-name "$bench" --temperature "$temperature" --model-id "$FAMILY-$method" \
        --answer-file "$(answers "$method")"
    done
    compared=()
    for method in "${compared_methods[@]}"; do compared+=(--method "$(answers "$method")"); done
    report="$OUT_DIR/$bench/speed-temperature-$temperature.json"
    "$PYTHON" -m jakiro.evaluation.speed --baseline "$(answers baseline)" "${compared[@]}" --bench "$bench" \
      --json "$report"
    reports+=("$report")
  done
done

[ ${#reports[@]} -gt 0 ] || { echo "error: no bench had questions; nothing was evaluated" >&2; exit 1; }
echo "== mean over benches ($FAMILY)"
average=(--average "${reports[@]}")
[ -n "$PLOT" ] && average+=(--plot "$PLOT")
"$PYTHON" -m jakiro.evaluation.speed "${average[@]}"
