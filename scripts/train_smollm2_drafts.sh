#!/usr/bin/env bash
# Reproduce the shipped SmolLM2 drafts from scratch with the project's own commands, in two stages that give every
# draft the same data, schedule and number of optimizer steps:
#   data     features of a recovered ShareGPT subset (configs/ge_data_smollm2.yaml); other ShareGPT conversations
#            answered by the target itself (configs/regenerate_smollm2.yaml; unpacked from the answers shipped in
#            jakiro/drafts/training-data/ unless REGENERATE=1) and their features
#            (configs/ge_data_smollm2_selfdistill.yaml)
#   stage 1  training from scratch on ShareGPT's answers (configs/train_smollm2.yaml), the 8k draft vocabulary picked
#            from ShareGPT's and the target's answers (draft.vocab_extra_data) -> outputs/train/smollm2-<draft>
#   stage 2  the stage-1 draft trained further on the target's own answers (configs/train_smollm2_selfdistill.yaml)
#            -> outputs/train/smollm2-<draft>-selfdistill
# The architectures:
#   jakiro       2 experts (top-2) + CEPD parallel head
#   eagle2       1 dense expert as wide as the target's MLP (1536), no parallel head (the EAGLE-2 baseline)
#   jakiro_star  2 experts (top-2), no parallel head (static-tree decoupled sampling, package jakiro_star)
# Every step resumes: rerun the same command after a kill. Ctrl-C or kill of this script stops the training runs
# cleanly (each checkpoints its last optimizer step first). Usage:
#   bash scripts/train_smollm2_drafts.sh [DRAFT ...]          # default: all three
#   STOP_AFTER=240 bash scripts/train_smollm2_drafts.sh        # pause each run after 240 optimizer steps
#   THREADS=1 ...                                              # CPU threads per training run (default 2; 1 with
#                                                              # JOBS > 1; the data steps always use every core)
#   JOBS=3 ...                                                 # train this many drafts at once in each stage, each
#                                                              # logging to <its output dir>.log: on 2 cores, 3 runs
#                                                              # of 1 thread train ~1.5x the tokens/s of one run of 2
#                                                              # (docs/pipeline-throughput.md)
#   STAGES=1 ...                                               # the data and stage 1 only (default: STAGES="1 2")
#   SHIP=1 ...                                                 # then write each finished stage-2 draft, in bf16, with
#                                                              # its training.json, to jakiro/drafts/smollm2-<draft>
#                                                              # (shipped:smollm2-<draft>; the previous generation
#                                                              # stays as shipped:smollm2-<draft>-v1)
#   TRAIN_DIR=DIR ...                                          # the training runs' folder (default outputs/train)
#   REGENERATE=1 ...                                           # answer the stage-2 conversations with the target
#                                                              # (~2 h on 2 cores) instead of unpacking the answers
#                                                              # the shipped drafts learned (jakiro/drafts/
#                                                              # training-data/; made on an AMX Xeon in bf16: another
#                                                              # CPU or dtype may answer some turns differently)
# Outputs: outputs/train/smollm2-<draft>[-selfdistill]/{draft,metrics.jsonl,checkpoints}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
JOBS=${JOBS:-1}
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "JOBS must be an integer >= 1, not '$JOBS'" >&2; exit 2; }
# threads per training run; the data steps (features, answers) run one process on all the threads they find
if [ "$JOBS" -gt 1 ]; then
  train_threads=${THREADS:-1}
else
  train_threads=${THREADS:-${OMP_NUM_THREADS:-2}}
fi

declare -A ARCH=(
  [jakiro]="draft.num_experts=2 draft.experts_per_token=2 draft.parallel_head=true"
  [eagle2]="draft.num_experts=1 draft.experts_per_token=1 draft.parallel_head=false draft.expert_intermediate_size=1536"
  [jakiro_star]="draft.num_experts=2 draft.experts_per_token=2 draft.parallel_head=false"
)
drafts=("$@")
[ ${#drafts[@]} -gt 0 ] || drafts=(jakiro eagle2 jakiro_star)
for name in "${drafts[@]}"; do
  [ -n "${ARCH[$name]:-}" ] || { echo "unknown draft '$name' (choose from: ${!ARCH[*]})" >&2; exit 2; }
done

stages=${STAGES:-1 2}
selfdistill=outputs/features/smollm2-selfdistill   # = data.output_dir of configs/ge_data_smollm2_selfdistill.yaml

train_dir=${TRAIN_DIR:-outputs/train}
output_dir() {  # output_dir STAGE DRAFT
  if [ "$1" = 1 ]; then echo "$train_dir/smollm2-$2"; else echo "$train_dir/smollm2-$2-selfdistill"; fi
}
train_1() {  # train_1 DRAFT: from scratch on ShareGPT's answers
  local name=$1 sets kv
  sets=(--set "train.output_dir=$(output_dir 1 "$name")" --set "train.stop_after_steps=${STOP_AFTER:-0}"
    --set "draft.vocab_extra_data=$selfdistill")
  for kv in ${ARCH[$name]}; do sets+=(--set "$kv"); done
  echo "== stage 1, $name: ${ARCH[$name]}"
  OMP_NUM_THREADS=$train_threads python -m jakiro.train.main --config train_smollm2 "${sets[@]}" --resume
}
train_2() {  # train_2 DRAFT: the stage-1 draft further on the target's own answers
  local name=$1
  echo "== stage 2, $name: from $(output_dir 1 "$name")/draft"
  OMP_NUM_THREADS=$train_threads python -m jakiro.train.main --config train_smollm2_selfdistill --resume \
    --set "train.output_dir=$(output_dir 2 "$name")" \
    --set "train.init_from=$(output_dir 1 "$name")/draft" --set "train.stop_after_steps=${STOP_AFTER:-0}"
}
running=()  # the training runs under way (each a subshell whose child is python -m jakiro.train.main)
stop_runs() {  # stop_runs EXIT_CODE: Ctrl-C / kill while training: each run checkpoints its last step and stops
  trap - INT TERM
  if [ ${#running[@]} -gt 0 ]; then
    echo "stopping the training runs: each saves a checkpoint first; rerun the same command to go on" >&2
    for pid in "${running[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    wait "${running[@]}" 2>/dev/null || true
  fi
  exit "$1"
}
train_all() {  # train_all STAGE: STAGE's training of every draft, JOBS at a time; each run is a background job
  # (also with JOBS=1: a trap runs only between commands, so the script can stop a run cleanly only while it waits)
  local stage=$1 i name log pid code failed=0 stopped=0
  trap 'stop_runs 130' INT
  trap 'stop_runs 143' TERM
  for ((i = 0; i < ${#drafts[@]}; i += JOBS)); do
    running=()
    for name in "${drafts[@]:i:JOBS}"; do
      if [ "$JOBS" -eq 1 ]; then
        "train_$stage" "$name" &
      else
        log=$(output_dir "$stage" "$name").log
        mkdir -p "$train_dir"
        echo "== stage $stage, $name: in the background, log in $log"
        "train_$stage" "$name" > "$log" 2>&1 &
      fi
      running+=($!)
    done
    for pid in "${running[@]}"; do
      wait "$pid" && code=0 || code=$?
      case $code in 0) ;; 130|143) stopped=$code ;; *) failed=1 ;; esac  # 130 / 143: a signal, after a checkpoint
    done
    running=()
    [ $failed = 0 ] || { echo "a stage-$stage run failed: see its log" >&2; exit 1; }
    if [ $stopped != 0 ]; then
      echo "a stage-$stage run was stopped (exit $stopped) after checkpointing: rerun the same command to go on" >&2
      exit $stopped
    fi
  done
  trap - INT TERM
}

regenerated=outputs/regenerated/smollm2-sharegpt.jsonl   # = regenerate.output_path of configs/regenerate_smollm2.yaml
shipped=jakiro/drafts/training-data/smollm2-sharegpt-regenerated.jsonl.gz  # the answers the shipped drafts learned
shipped_sha256=$(cat "$shipped.sha256" 2>/dev/null || true)  # of the uncompressed file
regenerate() {  # the target's answers: unpacked from $shipped unless REGENERATE=1 or a regeneration is under way
  if [ "${REGENERATE:-0}" = 0 ] && [ -n "$shipped_sha256" ] && [ ! -e "$regenerated.parts" ]; then
    if [ ! -e "$regenerated" ]; then
      echo "== the target's answers of the shipped drafts: $shipped -> $regenerated (REGENERATE=1 answers again)"
      mkdir -p "$(dirname "$regenerated")"
      gzip -dc "$shipped" > "$regenerated.tmp"
      mv "$regenerated.tmp" "$regenerated"
    fi
    if [ "$(sha256sum < "$regenerated" | cut -d' ' -f1)" = "$shipped_sha256" ]; then
      return 0
    fi
    echo "$regenerated is not $shipped unpacked: leaving it to python -m jakiro.ge_data.regenerate" >&2
  fi
  python -m jakiro.ge_data.regenerate --config regenerate_smollm2
}

python -m jakiro.common.assets --only smollm2,sharegpt
python -m jakiro.ge_data --config ge_data_smollm2
regenerate
python -m jakiro.ge_data --config ge_data_smollm2_selfdistill
[[ " $stages " != *" 1 "* ]] || train_all 1
[[ " $stages " != *" 2 "* ]] || train_all 2
if [ -n "${SHIP:-}" ]; then
  for name in "${drafts[@]}"; do
    python -m jakiro.train.ship "$(output_dir 2 "$name")/draft" "smollm2-$name" --force
  done
fi
