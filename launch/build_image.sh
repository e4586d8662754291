#!/usr/bin/env bash
# Builds the training image (Dockerfile) and pushes it to a registry; prints its name.
#
#   bash launch/build_image.sh us-docker.pkg.dev/my-proj/my-repo [TAG]
#     -> us-docker.pkg.dev/my-proj/my-repo/neo_jax:TAG (default TAG: the commit, +dirty)
#   export NEO_JAX_IMAGE=$(bash launch/build_image.sh ... | tail -1)   # launch/xpk.py's default
#
# Needs docker (DOCKER=podman also works) and push access to the registry
# (gcloud auth configure-docker us-docker.pkg.dev). NO_PUSH=1 builds only.
set -euo pipefail
REGISTRY=${1:?usage: bash launch/build_image.sh REGISTRY [TAG]}
cd "$(dirname "$0")/.."
if [[ -n "${2:-}" ]]; then
  TAG=$2
elif TAG=$(git rev-parse --short HEAD 2>/dev/null); then
  [[ -z "$(git status --porcelain 2>/dev/null)" ]] || TAG="$TAG-dirty"
else
  TAG=$(date +%Y%m%d-%H%M%S)
fi
IMAGE="${REGISTRY%/}/neo_jax:$TAG"
DOCKER=${DOCKER:-docker}
"$DOCKER" build --platform=linux/amd64 -f Dockerfile -t "$IMAGE" .
if [[ -z "${NO_PUSH:-}" ]]; then
  "$DOCKER" push "$IMAGE"
fi
echo "$IMAGE"
