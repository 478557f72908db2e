#!/usr/bin/env bash
# Builds the VersityGW S3 gateway the bucket bridge's notification test runs (a real store, posix backend, sending
# S3-format event notifications to the bridge's webhook) from its Go module, cached (hack/lib/cached-tool.sh):
#   ~/.cache/kubelambda/bin/versitygw-<VERSITYGW_VERSION>/versitygw
# Prints the binary's path on stdout.
# VersityGW is Apache-2.0; it is only run as a separate test server here, never linked into kubelambda.
set -euo pipefail
VERSITYGW_VERSION=v1.8.0
source "$(dirname "$0")/lib/cached-tool.sh"

build() {
  command -v go >/dev/null || { echo "versitygw: Go is required to build VersityGW from its module" >&2; exit 1; }
  GOBIN="$1" GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
}
cached_tool versitygw "$VERSITYGW_VERSION" versitygw build
