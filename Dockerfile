# The kubelambda control-plane image: `kubelambda operator`, `gateway`, `async-worker`, `bridge`, `fetch-code`.
#   make image-kubelambda                       (docker buildx, this machine's platform, loaded into docker)
#   make image-kubelambda PLATFORMS=linux/amd64,linux/arm64 PUSH=1
# Multi-arch: every stage builds for $TARGETPLATFORM from a multi-arch base; no stage downloads a binary for a
# fixed architecture. Bases are pinned to exact releases (pin digests too when publishing: `PYTHON_IMAGE=...@sha256:...`).
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first (pinned in pyproject.toml), so that code changes reuse the cached layer.
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
RUN python -m venv /opt/kubelambda \
 && /opt/kubelambda/bin/pip install --no-compile . \
 && /opt/kubelambda/bin/python -m compileall -q /opt/kubelambda/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.source="https://github.com/kubelambda/kubelambda" \
      org.opencontainers.image.description="kubelambda control plane: operator, gateway, async worker, trigger bridges" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kubelambda /opt/kubelambda
ENV PATH=/opt/kubelambda/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
WORKDIR /tmp
# A numeric non-root user (the chart runs with runAsNonRoot and readOnlyRootFilesystem; /tmp is an emptyDir).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["python", "-m", "kubelambda"]
CMD ["--help"]
