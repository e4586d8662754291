#!/usr/bin/env bash
# The test command of README.md. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m slow        # the slow tests
#   bash scripts/test.sh tests/test_model_reference.py
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
exec python -m pytest -q -n 2 --durations=15 "$@"
