#!/usr/bin/env bash
# Prepare a Python environment for Jakiro and install the package (idempotent; a second run is quick).
#
# * Uses the active virtualenv / conda env if there is one, else creates .venv in the repository.
# * Keeps any torch that is already importable (e.g. a CUDA build); otherwise installs the CPU wheel torch==2.13.0
#   before anything else, so that no dependency can pull a multi-GB CUDA torch.
# * Installs jakiro in editable mode with the extras given as arguments (default: test,assets), holding the libraries
#   it reaches into at the releases in scripts/tested-versions.txt (JAKIRO_TESTED_VERSIONS=0: the newest allowed).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,assets}"
python="${PYTHON:-python3}"

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    if "$python" -c "import torch" 2>/dev/null; then
      echo "[setup] creating .venv that sees the system's torch"
      "$python" -m venv --system-site-packages .venv
    else
      echo "[setup] creating .venv"
      "$python" -m venv .venv
    fi
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi

if python -c "import torch" 2>/dev/null; then
  echo "[setup] keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing the CPU build of torch 2.13.0"
  python -m pip install --disable-pip-version-check -q "torch==2.13.0"
fi
pins=(-c scripts/tested-versions.txt)
if [ "${JAKIRO_TESTED_VERSIONS:-1}" = 0 ]; then
  pins=()
  echo "[setup] installing jakiro[$extras] with the newest releases pyproject.toml allows"
else
  echo "[setup] installing jakiro[$extras] with the tested $(grep -v '^#' scripts/tested-versions.txt | paste -sd' ')"
fi
# --use-pep517: some sdists among the dependencies (wavedrom, via fschat) only build in an isolated PEP 517
# environment on a cold pip cache (their setup_requires egg fetch misses transitive dependencies)
python -m pip install --disable-pip-version-check -q --use-pep517 ${pins[@]+"${pins[@]}"} -e ".[$extras]"
