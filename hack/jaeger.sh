#!/usr/bin/env bash
# Builds Jaeger v2 (the trace backend the tracing tests send OTLP to and query back) from its Go module, cached
# (hack/lib/cached-tool.sh):
#   ~/.cache/kubelambda/bin/jaeger-<JAEGER_VERSION>/jaeger
# Prints the binary's path on stdout.
# Jaeger is Apache-2.0; it is only run as a separate test server here, never linked into kubelambda.
set -euo pipefail
JAEGER_VERSION=v1.75.0
source "$(dirname "$0")/lib/cached-tool.sh"

build() {
  command -v go >/dev/null || { echo "jaeger: Go is required to build Jaeger from its module" >&2; exit 1; }
  # Its go.mod has replace directives, which `go install pkg@version` refuses: build inside the module's own
  # source (fetched through the module proxy into the module cache), where they apply.
  local src
  src=$(GOFLAGS=-mod=mod go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" |
    sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -d "$src" ]] || { echo "jaeger: could not fetch github.com/jaegertracing/jaeger@$JAEGER_VERSION" >&2; exit 1; }
  (cd "$src" && GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$1/jaeger" ./cmd/jaeger)
}
cached_tool jaeger "$JAEGER_VERSION" jaeger build
