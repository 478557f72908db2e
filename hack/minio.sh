#!/usr/bin/env bash
# Builds the MinIO server the bucket bridge's notification tests run (a real store sending S3-format event
# notifications to the bridge's webhook) from its Go module, cached:
#   ~/.cache/kubelambda/bin/minio-<MINIO_VERSION>/minio
# MinIO publishes no semver tags: the version is the Go module proxy's pseudo-version of a commit (the newest
# served; its code is that of RELEASE.2025-10-15T17-29-55Z plus README changes). A directory holding a
# `.complete` stamp is never rebuilt. Safe to run concurrently (flock). Prints the binary's path on stdout.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
# MinIO is AGPL-3.0: it is only run as a separate test server here, never linked into kubelambda.
set -euo pipefail
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c  # keep in step with tests/kltest/minio.py
cache=${KUBELAMBDA_CACHE:-$HOME/.cache/kubelambda}
dir=$cache/bin/minio-$MINIO_VERSION
mkdir -p "$cache/bin"
exec 9>"$cache/.minio.lock"
flock 9
if [[ ! -f "$dir/.complete" ]]; then
  command -v go >/dev/null || { echo "minio: Go is required to build MinIO from its module" >&2; exit 1; }
  echo "minio: building github.com/minio/minio@$MINIO_VERSION into $dir (a cold build takes minutes)" >&2
  started=$SECONDS
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "github.com/minio/minio@$MINIO_VERSION" >&2
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "minio: built in $((SECONDS - started)) s" >&2
fi
echo "$dir/minio"
