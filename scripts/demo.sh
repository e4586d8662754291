#!/usr/bin/env bash
# The main job of README.md: sets up .venv from the lock file if needed, then
# trains the demo NEO on the embedded real-image data set.
#   bash scripts/demo.sh                          # work directory /tmp/neo_demo
#   WORKDIR=runs/demo bash scripts/demo.sh --config.train.num_steps=100
# Run it again after a stop: it resumes from the newest checkpoint.
set -euo pipefail
. "$(dirname "$0")/env.sh"
exec python -m neo_jax.train --config configs/demo.py --workdir "${WORKDIR:-/tmp/neo_demo}" "$@"
