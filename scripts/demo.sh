#!/usr/bin/env bash
# Set up (see setup.sh) and run the main job on the embedded default model (SmolLM2-135M from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${WEIGHTPRINT_VENV:-.venv}
exec "$VENV/bin/weightprint" demo --out "${1:-out/demo}"
