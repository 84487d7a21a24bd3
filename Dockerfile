# syntax=docker/dockerfile:1
#
# tokensidecar image: one image for every command (run, once, webhook, rotate).
#
# Two stages so that nothing used to build the package reaches the image that runs next
# to a model server: the builder turns the source tree into a wheel, the final stage
# installs that one wheel (and its runtime dependencies from the index) and nothing else.
# tests/test_dockerfile.py runs these same RUN steps in a clean virtualenv in CI, because
# no Docker engine is available there; keep every step a plain command that can be
# replayed outside Docker.

# Pinned by full version tag (not `3.11-slim`), so a rebuild gets the same interpreter.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md LICENSE /src/
COPY tokensidecar /src/tokensidecar
# --no-deps: only tokensidecar's own wheel; dependencies are resolved in the final stage.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM ${PYTHON_IMAGE}
# Keep in step with tokensidecar/__init__.py (tests/test_dockerfile.py checks it).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tokensidecar" \
      org.opencontainers.image.description="Keeps short-lived Hugging Face tokens fresh inside Kubernetes model-serving pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/tokensidecar/tokensidecar" \
      org.opencontainers.image.documentation="https://github.com/tokensidecar/tokensidecar/tree/main/docs"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in every manifest, so
#   writing .pyc files could only fail; the wheel's install step compiles them once.
# PYTHONUNBUFFERED: log lines reach `kubectl logs` when they are written, not when a
#   buffer fills (or never, if the container is killed).
# MALLOC_ARENA_MAX=2: glibc gives each thread that allocates its own malloc arena, up to
#   8 per CPU core of the *node*; the Kubernetes watch thread, hvac calls in the executor
#   and aiohttp's resolver threads would each keep one, multiplying resident memory of
#   a sidecar that needs a few MiB. Two arenas keep it small and stable under its limit.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir /wheels/tokensidecar-*.whl && rm -rf /wheels

# A numeric UID/GID (the "nonroot" user of distroless images) so that Kubernetes'
# runAsNonRoot can check it without a passwd entry.
USER 65532:65532
ENTRYPOINT ["tokensidecar"]
CMD ["run"]
