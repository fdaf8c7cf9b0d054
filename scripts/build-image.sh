#!/usr/bin/env bash
# Build the sidecar image and the sample-app image from ./Dockerfile with Docker or Podman.
#
#   scripts/build-image.sh                        # ghcr.io/example/{queueproxy,sampleapp}:0.1.0
#   REGISTRY=registry.example.com/me TAG=dev scripts/build-image.sh
#
# Environment:
#   REGISTRY, TAG          image names are $REGISTRY/queueproxy:$TAG and $REGISTRY/sampleapp:$TAG
#   QUEUEPROXY_IMAGE, SAMPLEAPP_IMAGE   full names, overriding the two above
#   CONTAINER_ENGINE       docker | podman (default: docker if its daemon answers, else podman)
#   PYTHON_IMAGE           base image for both stages (default python:3.11-slim, the Dockerfile's)
#   BUILD_OPTS             extra build flags, word-split
#
# Without a reachable registry (docs/deploy.md#building-without-a-registry): make a local base
# image, then
#   PYTHON_IMAGE=localhost/debian-python:bookworm \
#     BUILD_OPTS="--pull=never --isolation=chroot" scripts/build-image.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

source "$here/image-common.sh"

build_args=()
if [[ -n ${PYTHON_IMAGE:-} ]]; then
    build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
fi
read -r -a extra_opts <<<"${BUILD_OPTS:-}"

build() {
    local target=$1 image=$2
    echo "build-image: $engine build --target $target -t $image" >&2
    "$engine" build "${build_args[@]}" "${extra_opts[@]}" --target "$target" -t "$image" .
}
build queueproxy "$queueproxy_image"
build sampleapp "$sampleapp_image"

"$engine" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E "^(${queueproxy_image}|${sampleapp_image}) " || true
