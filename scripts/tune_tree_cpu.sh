#!/usr/bin/env bash
# Tree tuning for the embedded SmolLM2 target on this machine, by measurement:
#   1. the verification cost curve (python -m jakiro.evaluation.tree_costs);
#   2. the shipped Jakiro draft on several trees against vanilla decoding, interleaved question by question
#      (python -m jakiro.evaluation.benchmark, one arm per tree "total_token/depth/top_k"), T=0, bf16.
# Outputs in OUT_DIR (default outputs/benchmark/tree-tuning): answer files, report.md (speedup and tau per tree).
#   bash scripts/tune_tree_cpu.sh
#   TREES="8/3/4 12/3/4 16/4/4" EVERY=8 MAX_NEW_TOKENS=128 bash scripts/tune_tree_cpu.sh
# Extra arguments go to the benchmark (e.g. --set model.draft_path=shipped:smollm2-eagle2).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
OUT_DIR=${OUT_DIR:-outputs/benchmark/tree-tuning}
python -m jakiro.common.assets --only smollm2,mtbench
python -m jakiro.evaluation.tree_costs --config smollm2
arms=(--arm vanilla eval.method=baseline)
for tree in ${TREES:-6/2/3 8/3/4 12/3/4 16/4/4 24/4/6 32/5/8}; do
  IFS=/ read -r total depth top_k <<<"$tree"
  arms+=(--arm "tree-$total-$depth-$top_k" tree.total_token="$total" tree.depth="$depth" tree.top_k="$top_k")
done
python -m jakiro.evaluation.benchmark --config smollm2 --out-dir "$OUT_DIR" --temperatures 0.0 \
  --max-new-tokens "${MAX_NEW_TOKENS:-128}" --every "${EVERY:-8}" "${arms[@]}" "$@"
