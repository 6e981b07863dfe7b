#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite. Exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WEIGHTPRINT_VENV:-.venv}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$HOME/.cache/weightprint/numba}
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
