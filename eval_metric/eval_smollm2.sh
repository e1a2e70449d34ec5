#!/usr/bin/env bash
# Batch speed evaluation of the embedded SmolLM2-135M-Instruct target (config smollm2): eval_family.sh with this
# family's defaults. Every option and environment variable of eval_family.sh works here (see --help), e.g.
#   QUESTIONS_LIMIT=5 eval_metric/eval_smollm2.sh --ea-model-path outputs/train/final --temperatures 0.0
set -euo pipefail
export FAMILY=${FAMILY:-smollm2} CONFIG=${CONFIG:-smollm2}
exec bash "$(dirname "${BASH_SOURCE[0]}")/eval_family.sh" "$@"
