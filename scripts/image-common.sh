# Shared by build-image.sh and smoke-image.sh (sourced): image names and the container engine.
# REGISTRY, TAG, QUEUEPROXY_IMAGE, SAMPLEAPP_IMAGE and CONTAINER_ENGINE override the defaults.
# shellcheck shell=bash

registry=${REGISTRY:-ghcr.io/example}
tag=${TAG:-0.1.0}
queueproxy_image=${QUEUEPROXY_IMAGE:-$registry/queueproxy:$tag}
sampleapp_image=${SAMPLEAPP_IMAGE:-$registry/sampleapp:$tag}

container_engine() {
    if [[ -n ${CONTAINER_ENGINE:-} ]]; then
        echo "$CONTAINER_ENGINE"
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null; then
        echo podman
    else
        echo "$(basename "$0"): neither a running Docker daemon nor podman found" >&2
        exit 1
    fi
}
engine=$(container_engine)
