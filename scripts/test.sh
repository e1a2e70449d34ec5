#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,assets,webui
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
python -m jakiro.common.assets --only smollm2,mtbench,sharegpt
python -m pytest -q "$@"
