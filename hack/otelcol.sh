#!/usr/bin/env bash
# Builds an OpenTelemetry Collector with the OTLP receiver and contrib's file exporter (the real receiver the log
# export tests send OTLP to, then read back from its file) from the Collector's Go modules, cached
# (hack/lib/cached-tool.sh):
#   ~/.cache/kubelambda/bin/otelcol-<OTELCOL_VERSION>/otelcol
# Prints the binary's path on stdout. The Collector is Apache-2.0; it is only run as a separate test server
# here, never linked into kubelambda. All its modules are at one release.
set -euo pipefail
OTELCOL_VERSION=v0.165.0      # go.opentelemetry.io/collector/{otelcol,receiver/otlpreceiver}
OTELCOL_CONTRIB_VERSION=v0.165.1 # ...collector-contrib/exporter/fileexporter, contrib's release of the same one
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/cached-tool.sh"

build() {
  command -v go >/dev/null || { echo "otelcol: Go is required to build the Collector from its modules" >&2; exit 1; }
  local src
  src=$(mktemp -d)
  cp "$here/otelcol/main.go" "$src/"
  (
    cd "$src"
    export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0
    go mod init kubelambda.io/otelcol >/dev/null 2>&1
    go get "go.opentelemetry.io/collector/otelcol@$OTELCOL_VERSION" \
      "go.opentelemetry.io/collector/receiver/otlpreceiver@$OTELCOL_VERSION" \
      "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$OTELCOL_CONTRIB_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$1/otelcol" .
  )
  rm -rf "$src"
}
# The cache key has main.go's hash: a changed main.go builds anew.
cached_tool otelcol "$OTELCOL_VERSION-$(sha256sum "$here/otelcol/main.go" | cut -c1-12)" otelcol build
