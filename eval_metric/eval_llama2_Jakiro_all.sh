#!/usr/bin/env bash
# The reference's eval_llama2_Jakiro_all.sh: Jakiro (method jakiro) at temperature 0,
# with the llama-2 chat template, over the six benches, then speed averaged over them. A thin alias
# of eval_family.sh: every option and environment variable of it works (see --help; later options win), e.g.
#   bash eval_metric/eval_llama2_Jakiro_all.sh --base-model-path TARGET --ea-model-path DRAFT --questions-dir DATA
set -euo pipefail
export FAMILY=${FAMILY:-llama2-jakiro} CONFIG=${CONFIG:-default} CHAT_TEMPLATE=${CHAT_TEMPLATE:-llama-2}
export METHODS=${METHODS:-jakiro} TEMPERATURES=${TEMPERATURES:-0.0}
exec bash "$(dirname "${BASH_SOURCE[0]}")/eval_family.sh" "$@"
