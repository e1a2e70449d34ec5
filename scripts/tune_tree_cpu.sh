#!/usr/bin/env bash
# Tree tuning for the embedded SmolLM2 target on this machine, by measurement:
#   1. the verification cost curve (python -m jakiro.evaluation.tree_costs);
#   2. the shipped Jakiro draft alone (no prompt-lookup branch) on several dynamic trees "total_token/depth/top_k"
#      against vanilla decoding at T = 0, interleaved question by question (python -m jakiro.evaluation.benchmark);
#   3. the shipped Jakiro* draft alone on several static trees (jakiro_star/tree_choices.py) against vanilla decoding
#      at T = 1, the same way (STAR_TREES="" skips it).
# Outputs in OUT_DIR (default outputs/benchmark/tree-tuning) and OUT_DIR-star: answer files, report.md (speedup and
# tau per tree).
#   bash scripts/tune_tree_cpu.sh
#   TREES="8/3/4 12/3/4 16/4/4" STAR_TREES="cpu8 cpu12" EVERY=8 MAX_NEW_TOKENS=128 bash scripts/tune_tree_cpu.sh
# Extra arguments go to both benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
OUT_DIR=${OUT_DIR:-outputs/benchmark/tree-tuning}
python -m jakiro.common.assets --only smollm2,mtbench
python -m jakiro.evaluation.tree_costs --config smollm2
arms=(--arm vanilla eval.method=baseline)
for tree in ${TREES-6/2/3 8/3/4 12/4/4 16/4/4 16/5/4 24/5/6 32/6/8}; do
  IFS=/ read -r total depth top_k <<<"$tree"
  arms+=(--arm "tree-$total-$depth-$top_k" tree.total_token="$total" tree.depth="$depth" tree.top_k="$top_k"
    tree.lookup_tokens=0)
done
python -m jakiro.evaluation.benchmark --config smollm2 --out-dir "$OUT_DIR" --temperatures 0.0 \
  --max-new-tokens "${MAX_NEW_TOKENS:-128}" --every "${EVERY:-8}" "${arms[@]}" "$@"
star_arms=()
for tree in ${STAR_TREES-cpu8 cpu12 cpu16}; do
  star_arms+=(--arm "star-$tree" eval.method=jakiro_star model.draft_path=shipped:smollm2-jakiro_star
    tree.static_tree="$tree" tree.lookup_tokens=0)
done
[ ${#star_arms[@]} -eq 0 ] || python -m jakiro.evaluation.benchmark --config smollm2 --out-dir "$OUT_DIR-star" \
  --temperatures 1.0 --max-new-tokens "${MAX_NEW_TOKENS:-128}" --every "${EVERY:-8}" \
  --arm vanilla eval.method=baseline "${star_arms[@]}" "$@"
