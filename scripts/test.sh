#!/usr/bin/env bash
# The test command of README.md: sets up .venv from both lock files if needed (the
# runtime + the test tools and PyTorch's CPU build), then runs the default suite
# (everything not marked slow). Extra arguments go to pytest:
#   bash scripts/test.sh -m slow        # the slow tests
#   bash scripts/test.sh tests/test_model_reference.py
set -euo pipefail
. "$(dirname "$0")/env.sh" test
export JAX_PLATFORMS=cpu
exec python -m pytest -q -n 2 --durations=15 "$@"
