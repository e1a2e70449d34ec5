#!/usr/bin/env bash
# Set up the environment and run the main job: speculative vs plain decoding on MT-bench questions with the
# embedded SmolLM2 target. Arguments go to `python -m jakiro.demo` (e.g. --questions 10, --set tree.depth=5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh assets
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || . .venv/bin/activate
python -m jakiro.demo "$@"
