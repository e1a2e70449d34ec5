#!/usr/bin/env bash
# Draft-accuracy ablation on SmolLM2 at equal budget: every arm trains from scratch on the same features
# (configs/ge_data_smollm2.yaml), with the same schedule and number of optimizer steps (configs/train_smollm2.yaml,
# EPOCHS epochs), and differs only in the settings listed below. The held-out k-step accuracies of each arm's last
# evaluation (test_acc_step0..2 = draft steps 1..3) are then tabulated by scripts/ablation_table.py.
#   bash scripts/ablate_drafts.sh [ARM ...]        # default: every arm, in the order below
#   EPOCHS=1 THREADS=2 STOP_AFTER=0 ...            # budget per arm, CPU threads, pause after N steps (resume: rerun)
#   BENCH=0 ...                                    # skip the benchmark: vanilla + every arm's draft, interleaved,
#   QUESTIONS=20 TEMPERATURES="0.0 1.0" MAX_NEW_TOKENS=128   # on every 4th MT-bench question (tau, alpha, speedup)
# Outputs: outputs/ablation/<arm>/{draft,metrics.jsonl,checkpoints}, outputs/ablation-bench/ (answers, reports);
# every run resumes after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
export OMP_NUM_THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}

JAKIRO="draft.num_experts=2 draft.experts_per_token=2 draft.parallel_head=true"
EAGLE2="draft.num_experts=1 draft.experts_per_token=1 draft.parallel_head=false draft.expert_intermediate_size=1536"
WIDE="draft.expert_intermediate_size=1536"   # Jakiro's two experts each as wide as EAGLE-2's MLP
declare -A ARM=(
  [jakiro-k1]="$JAKIRO train.unroll_steps=1"
  [jakiro-k3]="$JAKIRO train.unroll_steps=3"
  [eagle2-k1]="$EAGLE2 train.unroll_steps=1"
  [eagle2-k3]="$EAGLE2 train.unroll_steps=3"
  [jakiro-k3-init]="$JAKIRO train.unroll_steps=3 draft.init_from_target=true"
  [eagle2-k3-init]="$EAGLE2 train.unroll_steps=3 draft.init_from_target=true"
  [jakiro-wide-k3]="$JAKIRO $WIDE train.unroll_steps=3"
  [jakiro-k1-init]="$JAKIRO train.unroll_steps=1 draft.init_from_target=true"
  [eagle2-k1-init]="$EAGLE2 train.unroll_steps=1 draft.init_from_target=true"
)
ORDER=(jakiro-k1 jakiro-k3 eagle2-k1 eagle2-k3 jakiro-k3-init eagle2-k3-init jakiro-wide-k3 jakiro-k1-init eagle2-k1-init)
arms=("$@")
[ ${#arms[@]} -gt 0 ] || arms=("${ORDER[@]}")
for name in "${arms[@]}"; do
  [ -n "${ARM[$name]:-}" ] || { echo "unknown arm '$name' (choose from: ${ORDER[*]})" >&2; exit 2; }
done

python -m jakiro.common.assets --only smollm2,sharegpt
python -m jakiro.ge_data --config ge_data_smollm2
for name in "${arms[@]}"; do
  sets=(--set "train.output_dir=outputs/ablation/$name" --set "train.num_epochs=${EPOCHS:-1}"
        --set "train.stop_after_steps=${STOP_AFTER:-0}")
  for kv in ${ARM[$name]}; do sets+=(--set "$kv"); done
  echo "== $name: ${ARM[$name]}"
  python -m jakiro.train.main --config train_smollm2 "${sets[@]}" --resume
done
python scripts/ablation_table.py outputs/ablation
[ "${BENCH:-1}" != 0 ] || exit 0
bench=(--arm vanilla eval.method=baseline)
for name in "${arms[@]}"; do
  bench+=(--arm "$name" "model.draft_path=outputs/ablation/$name/draft" tree.lookup_tokens=0)
done
python -m jakiro.evaluation.benchmark --config smollm2 --out-dir outputs/ablation-bench --every 4 \
  --questions "${QUESTIONS:-20}" --temperatures ${TEMPERATURES:-0.0 1.0} --max-new-tokens "${MAX_NEW_TOKENS:-128}" \
  "${bench[@]}"
