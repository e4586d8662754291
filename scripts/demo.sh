#!/usr/bin/env bash
# The main job of README.md: sets up .venv from requirements-lock.txt if needed (the
# runtime: no PyTorch), then trains the demo NEO on the embedded real-image data set.
#   bash scripts/demo.sh                          # work directory /tmp/neo_demo
#   WORKDIR=runs/demo bash scripts/demo.sh --config.train.num_steps=100
# Run it again after a stop: it resumes from the newest checkpoint.
set -euo pipefail
. "$(dirname "$0")/env.sh" runtime
exec python -m neo_jax.train --config demo --workdir "${WORKDIR:-/tmp/neo_demo}" "$@"
