# The kubelambda control-plane image: `kubelambda operator`, `gateway`, `async-worker`, `bridge`, `fetch-code`.
#   make image-kubelambda                       (docker buildx, this machine's platform, loaded into docker)
#   make image-kubelambda PLATFORMS=linux/amd64,linux/arm64 PUSH=1
# Multi-arch: every stage builds for $TARGETPLATFORM from a multi-arch base; no stage downloads a binary for a
# fixed architecture. Bases are pinned to exact releases (pin digests too when publishing: `BASE=...@sha256:...`).
# Offline (no container registry; `make images` = hack/images.sh does this): a Debian base bootstrapped here,
# with Python from Debian's packages, and the dependencies from the host's wheelhouse of the pins
# (hack/wheelhouse.sh; hack/images.sh puts it in a copy of the context as .prebuilt/wheels/):
#   --build-arg BASE=kubelambda/debian:bookworm --build-arg PACKAGES=python3 --build-arg BUILD_PACKAGES=python3-venv
ARG BASE=python:3.12.12-slim-bookworm
# Where kubelambda._native (native/, Rust: the PostgreSQL change stream's pgoutput decoding) comes from: native-build
# compiles it (Rust's official image, multi-arch, crates from crates.io); native-prebuilt takes
# .prebuilt/native/_native.abi3.so (hack/images.sh builds it on the host, hack/build-native.sh, for a Debian base).
# abi3: one build serves the base's Python, 3.11 or later.
ARG NATIVE_FROM=native-build
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
# Debian packages to install on a plain Debian base (none on the official image): in the final stage, and in addition
# in the build stage.
ARG PACKAGES=""
ARG BUILD_PACKAGES=""

# The wheels of the pins for the base's Python when the context has them in .prebuilt/wheels/: then pip installs from
# them alone, without the package index; else (the repository as the context) from the index. (A stage, not a bind
# mount of .prebuilt/wheels: that path is not always there; the dependency layer below is keyed by the wheels'
# content, so a code change does not reinstall them.)
FROM ${BASE} AS wheels
RUN --mount=type=bind,target=/context \
    mkdir /wheels && if [ -d /context/.prebuilt/wheels ]; then cp /context/.prebuilt/wheels/*.whl /wheels/; fi

FROM ${RUST_IMAGE} AS native-build
WORKDIR /src
COPY native/ ./
RUN --mount=type=cache,target=/cargo-target \
    CARGO_TARGET_DIR=/cargo-target PYO3_NO_PYTHON=1 cargo build --release --locked \
 && mkdir /out && cp /cargo-target/release/lib_native.so /out/_native.abi3.so

# (A bind mount of the context, as the wheels stage: .prebuilt/ is only in hack/images.sh's copy of it.)
FROM ${BASE} AS native-prebuilt
RUN --mount=type=bind,target=/context mkdir /out && cp /context/.prebuilt/native/_native.abi3.so /out/

FROM ${NATIVE_FROM} AS native

FROM ${BASE} AS build
ARG PACKAGES
ARG BUILD_PACKAGES
RUN if [ -n "$PACKAGES$BUILD_PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $PACKAGES $BUILD_PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first (pinned in pyproject.toml), installed with an empty stand-in package, so that code changes
# reuse that layer and reinstall only kubelambda itself.
# A build host behind a TLS-intercepting proxy passes its CA bundle as a secret (hack/images.sh passes this host's):
#   --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca-certificates --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && python3 -m venv /opt/kubelambda \
 && mkdir -p operator/kubelambda && touch operator/kubelambda/__init__.py README.md \
 && /opt/kubelambda/bin/pip install --no-compile . \
 && rm -rf operator build README.md
COPY README.md ./
COPY operator/ ./operator/
RUN --mount=type=secret,id=ca-certificates --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && /opt/kubelambda/bin/pip install --no-compile --no-deps --force-reinstall . \
 && /opt/kubelambda/bin/python -m compileall -q /opt/kubelambda/lib
# The native module beside the package (pyproject.toml alone builds no extension: setup.py is not in the context),
# imported once so that a module this Python cannot load fails the build, not the bridge.
RUN --mount=type=bind,from=native,source=/out,target=/native \
    cp /native/_native.abi3.so "$(/opt/kubelambda/bin/python -c 'import kubelambda, os; print(os.path.dirname(kubelambda.__file__))')/" \
 && /opt/kubelambda/bin/python -c 'import kubelambda._native'

FROM ${BASE}
ARG PACKAGES
RUN if [ -n "$PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi
LABEL org.opencontainers.image.source="https://github.com/kubelambda/kubelambda" \
      org.opencontainers.image.description="kubelambda control plane: operator, gateway, async worker, trigger bridges" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kubelambda /opt/kubelambda
ENV PATH=/opt/kubelambda/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
WORKDIR /tmp
# A numeric non-root user (the chart runs with runAsNonRoot and readOnlyRootFilesystem; /tmp is an emptyDir), with a
# passwd entry: the operator's peering identity comes from getpass.getuser(), which fails for an unnamed uid.
RUN groupadd --gid 65532 kubelambda \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kubelambda
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["python", "-m", "kubelambda"]
CMD ["--help"]
