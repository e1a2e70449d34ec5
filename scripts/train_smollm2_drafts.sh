#!/usr/bin/env bash
# Reproduce the shipped SmolLM2 drafts from scratch with the project's own commands, in two stages that give every
# draft the same data, schedule and number of optimizer steps:
#   data     features of a recovered ShareGPT subset (configs/ge_data_smollm2.yaml); other ShareGPT conversations
#            answered by the target itself (configs/regenerate_smollm2.yaml) and their features
#            (configs/ge_data_smollm2_selfdistill.yaml)
#   stage 1  training from scratch on ShareGPT's answers (configs/train_smollm2.yaml), the 8k draft vocabulary picked
#            from ShareGPT's and the target's answers (draft.vocab_extra_data) -> outputs/train/smollm2-<draft>
#   stage 2  the stage-1 draft trained further on the target's own answers (configs/train_smollm2_selfdistill.yaml)
#            -> outputs/train/smollm2-<draft>-selfdistill
# The architectures:
#   jakiro       2 experts (top-2) + CEPD parallel head
#   eagle2       1 dense expert as wide as the target's MLP (1536), no parallel head (the EAGLE-2 baseline)
#   jakiro_star  2 experts (top-2), no parallel head (static-tree decoupled sampling, package jakiro_star)
# Every step resumes: rerun the same command after a kill. Usage:
#   bash scripts/train_smollm2_drafts.sh [DRAFT ...]          # default: all three
#   STOP_AFTER=240 bash scripts/train_smollm2_drafts.sh        # pause each run after 240 optimizer steps
#   THREADS=1 ...                                              # CPU threads per training run
#   STAGES=1 ...                                               # the data and stage 1 only (default: STAGES="1 2")
#   SHIP=1 ...                                                 # then write each finished stage-2 draft, in bf16, with
#                                                              # its training.json, to jakiro/drafts/smollm2-<draft>
#                                                              # (shipped:smollm2-<draft>; the previous generation
#                                                              # stays as shipped:smollm2-<draft>-v1)
# Outputs: outputs/train/smollm2-<draft>[-selfdistill]/{draft,metrics.jsonl,checkpoints}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
export OMP_NUM_THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}

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
python -m jakiro.common.assets --only smollm2,sharegpt
python -m jakiro.ge_data --config ge_data_smollm2
python -m jakiro.ge_data.regenerate --config regenerate_smollm2
python -m jakiro.ge_data --config ge_data_smollm2_selfdistill
if [[ " $stages " == *" 1 "* ]]; then
  for name in "${drafts[@]}"; do
    sets=(--set "train.output_dir=outputs/train/smollm2-$name" --set "train.stop_after_steps=${STOP_AFTER:-0}"
      --set "draft.vocab_extra_data=$selfdistill")
    for kv in ${ARCH[$name]}; do sets+=(--set "$kv"); done
    echo "== stage 1, $name: ${ARCH[$name]}"
    python -m jakiro.train.main --config train_smollm2 "${sets[@]}" --resume
  done
fi
if [[ " $stages " == *" 2 "* ]]; then
  for name in "${drafts[@]}"; do
    echo "== stage 2, $name: from outputs/train/smollm2-$name/draft"
    python -m jakiro.train.main --config train_smollm2_selfdistill --resume \
      --set "train.output_dir=outputs/train/smollm2-$name-selfdistill" \
      --set "train.init_from=outputs/train/smollm2-$name/draft" --set "train.stop_after_steps=${STOP_AFTER:-0}"
  done
fi
if [ -n "${SHIP:-}" ]; then
  for name in "${drafts[@]}"; do
    python -m jakiro.train.ship "outputs/train/smollm2-$name-selfdistill/draft" "smollm2-$name" --force
  done
fi
