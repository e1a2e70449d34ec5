#!/usr/bin/env bash
# Reproduce the shipped SmolLM2 drafts from scratch with the project's own commands: features of the recovered
# ShareGPT subset (configs/ge_data_smollm2.yaml), then the same training recipe (configs/train_smollm2.yaml: same
# data, schedule and number of optimizer steps) for each architecture:
#   jakiro       2 experts (top-2) + CEPD parallel head
#   eagle2       1 dense expert as wide as the target's MLP (1536), no parallel head (the EAGLE-2 baseline)
#   jakiro_star  2 experts (top-2), no parallel head (static-tree decoupled sampling, package jakiro_star)
# Every step resumes: rerun the same command after a kill. Usage:
#   bash scripts/train_smollm2_drafts.sh [DRAFT ...]          # default: all three
#   STOP_AFTER=240 bash scripts/train_smollm2_drafts.sh        # pause each run after 240 optimizer steps
#   THREADS=1 ...                                              # CPU threads per training run
#   SHIP=1 ...                                                 # then write each finished draft, in bf16, to
#                                                              # jakiro/drafts/smollm2-<draft> (shipped:smollm2-<draft>)
# Outputs: outputs/train/smollm2-<draft>/{draft,metrics.jsonl,checkpoints}.
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

python -m jakiro.assets --only smollm2,sharegpt
python -m jakiro.ge_data --config ge_data_smollm2
for name in "${drafts[@]}"; do
  sets=(--set "train.output_dir=outputs/train/smollm2-$name" --set "train.stop_after_steps=${STOP_AFTER:-0}")
  for kv in ${ARCH[$name]}; do sets+=(--set "$kv"); done
  echo "== $name: ${ARCH[$name]}"
  python -m jakiro.train.main --config train_smollm2 "${sets[@]}" --resume
  if [ -n "${SHIP:-}" ]; then
    python - "outputs/train/smollm2-$name/draft" "jakiro/drafts/smollm2-$name" <<'PY'
import sys
import torch
from jakiro.model.draft import DraftHead
DraftHead.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2], dtype=torch.bfloat16)
print(f"shipped {sys.argv[1]} as {sys.argv[2]} (bf16)")
PY
  fi
done
