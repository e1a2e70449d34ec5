#!/usr/bin/env bash
# The reference's eval_llama3_Jakiro_all.sh: Jakiro (method jakiro) at temperature 0,
# with the llama-3 chat template, over the six benches, then speed averaged over them. A thin alias
# of eval_family.sh: every option and environment variable of it works (see --help; later options win), e.g.
#   bash eval_metric/eval_llama3_Jakiro_all.sh --base-model-path TARGET --ea-model-path DRAFT --questions-dir DATA
set -euo pipefail
export FAMILY=${FAMILY:-llama3-jakiro} CONFIG=${CONFIG:-default} CHAT_TEMPLATE=${CHAT_TEMPLATE:-llama-3}
export METHODS=${METHODS:-jakiro} TEMPERATURES=${TEMPERATURES:-0.0}
exec bash "$(dirname "${BASH_SOURCE[0]}")/eval_family.sh" "$@"
