# Two images from one file (docs/deploy.md#building-the-images):
#   docker build -t ghcr.io/example/queueproxy:0.1.0 .                      # the sidecar (default)
#   docker build -t ghcr.io/example/sampleapp:0.1.0 --target sampleapp .    # the sample app
#
# Knative runs the sidecar with no command or args, runAsNonRoot without a UID, a read-only root
# filesystem, all capabilities dropped and no writable volume (docs/deploy.md#what-the-image-expects). Hence a numeric
# USER, an ENTRYPOINT that reads the environment contract, and bytecode compiled at build time.
#
# PYTHON_IMAGE is an argument so that a machine without a registry can build FROM a local base
# image holding the same Python (scripts/build-image.sh, docs/deploy.md#building-without-a-registry).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS source
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python3 -m venv /opt/venv
# README.md is only the package's long description; the glob lets a build without it go through.
COPY pyproject.toml README.md* ./
COPY queueproxy ./queueproxy
COPY sampleapp ./sampleapp

# The venv keeps our package and its runtime dependencies, not the tools that installed them.
# Hash-based .pyc files stay valid whatever timestamps the copy into the next stage leaves.
FROM source AS builder
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -m compileall -q -f --invalidation-mode unchecked-hash /opt/venv

# The same with the `grpc` extra, for the sample app's gRPC mode (SAMPLEAPP_PROTOCOL=grpc). Its
# own venv: grpcio and protobuf (~21 MB) stay out of the sidecar image, which never imports them.
FROM source AS sampleapp-builder
RUN /opt/venv/bin/pip install --no-cache-dir ".[grpc]" \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -m compileall -q -f --invalidation-mode unchecked-hash /opt/venv

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# The official python images ship the standard library without bytecode. On a read-only root
# every start would compile it again in memory, so compile what is missing once, here.
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
# Numeric, so that kubelet can check runAsNonRoot without a passwd entry.
USER 65532:65532

FROM runtime AS sampleapp
COPY --from=sampleapp-builder /opt/venv /opt/venv
# 8080 for HTTP and, in gRPC mode, for gRPC over h2c.
EXPOSE 8080
ENTRYPOINT ["sampleapp"]

# Last stage = the default target: the image for config-deployment's queue-sidecar-image.
FROM runtime AS queueproxy
COPY --from=builder /opt/venv /opt/venv
# queue-port (8012, or 8013 for h2c revisions), admin (8022), https-port (8112, with certs),
# http-autometric (9090), http-usermetric (9091).
EXPOSE 8012 8013 8022 8112 9090 9091
ENTRYPOINT ["queueproxy"]
