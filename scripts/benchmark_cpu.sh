#!/usr/bin/env bash
# The CPU speed comparison on MT-bench with the shipped SmolLM2 drafts: vanilla decoding, Hugging Face prompt lookup,
# the previous generation's Jakiro draft (shipped:smollm2-jakiro-v1, on the same tree), the EAGLE-2 draft, Jakiro
# (both sibling modes, and with exact verification), Jakiro with the prompt-lookup branch (batched and exact
# verification) and Jakiro* (alone and with the prompt-lookup branch), interleaved question by question in one
# process (python -m jakiro.evaluation.benchmark), the config's dtype (auto: bf16 where the CPU has AMX or
# AVX512-BF16, else fp32), batch 1, max_new_tokens 256, T = 0 and 1 (the two exact-verification arms at T = 0
# only: exact verification matters only for greedy equality).
# Outputs in OUT_DIR (default outputs/benchmark/cpu): answer JSONL per arm and temperature, speed.json per
# temperature, report.md (the tables) and speed.png (needs matplotlib: bash scripts/setup.sh assets,plot).
# Resumable: rerun the same command after a kill.
#   bash scripts/benchmark_cpu.sh                       # all 80 questions (hours on a 2-core CPU)
#   EVERY=4 bash scripts/benchmark_cpu.sh               # every 4th question: 20, from all 8 categories
#   QUESTIONS=10 MAX_NEW_TOKENS=128 bash scripts/benchmark_cpu.sh   # a shorter run
#   EXACT=0 bash scripts/benchmark_cpu.sh               # without the exact-verification arms (where the config's
#                                                       # dtype resolves to fp32, which matched plain decoding on all
#                                                       # 80 questions without them, and where they cost the most)
#   bash scripts/benchmark_cpu.sh --report-only         # the reports of a stopped run, answering nothing
# Extra arguments go to the benchmark, e.g. --set tree.total_token=16 (applies to every arm).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
OUT_DIR=${OUT_DIR:-outputs/benchmark/cpu}
questions=()
[ -z "${QUESTIONS:-}" ] || questions=(--questions "$QUESTIONS")
exact=(--arm jakiro-exact model.draft_path=shipped:smollm2-jakiro tree.lookup_tokens=0
  generation.exact_verification=true
  --arm jakiro-lookup-exact model.draft_path=shipped:smollm2-jakiro tree.lookup_tokens=10
  generation.exact_verification=true
  --greedy-only jakiro-exact jakiro-lookup-exact)
[ "${EXACT:-1}" != 0 ] || exact=()
python -m jakiro.common.assets --only smollm2,mtbench
python -m jakiro.evaluation.benchmark --config smollm2 --out-dir "$OUT_DIR" --plot \
  --temperatures ${TEMPERATURES:-0.0 1.0} --max-new-tokens "${MAX_NEW_TOKENS:-256}" --every "${EVERY:-1}" \
  "${questions[@]}" \
  --arm vanilla eval.method=baseline \
  --arm pld eval.method=pld \
  --arm jakiro-v1 model.draft_path=shipped:smollm2-jakiro-v1 tree.sibling_mode=mixture tree.lookup_tokens=0 \
  --arm eagle2 model.draft_path=shipped:smollm2-eagle2 tree.lookup_tokens=0 \
  --arm jakiro model.draft_path=shipped:smollm2-jakiro tree.sibling_mode=mixture tree.lookup_tokens=0 \
  --arm jakiro-per-expert model.draft_path=shipped:smollm2-jakiro tree.sibling_mode=per_expert tree.lookup_tokens=0 \
  --arm jakiro-lookup model.draft_path=shipped:smollm2-jakiro tree.lookup_tokens=10 \
  --arm jakiro_star eval.method=jakiro_star model.draft_path=shipped:smollm2-jakiro_star tree.static_tree=cpu8 \
    tree.lookup_tokens=0 \
  --arm jakiro_star-lookup eval.method=jakiro_star model.draft_path=shipped:smollm2-jakiro_star \
    tree.static_tree=cpu8 tree.lookup_tokens=10 \
  "${exact[@]}" \
  "$@"
