#!/usr/bin/env bash
# Builds Jaeger v2 (the trace backend the tracing tests send OTLP to and query back) from its Go module, cached:
#   ~/.cache/kubelambda/bin/jaeger-<JAEGER_VERSION>/jaeger
# A directory holding a `.complete` stamp is never rebuilt. Safe to run concurrently (flock). Prints the binary's
# path on stdout.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
# Jaeger is Apache-2.0; it is only run as a separate test server here, never linked into kubelambda.
set -euo pipefail
JAEGER_VERSION=v1.75.0
cache=${KUBELAMBDA_CACHE:-$HOME/.cache/kubelambda}
dir=$cache/bin/jaeger-$JAEGER_VERSION
mkdir -p "$cache/bin"
exec 9>"$cache/.jaeger.lock"
flock 9
if [[ ! -f "$dir/.complete" ]]; then
  command -v go >/dev/null || { echo "jaeger: Go is required to build Jaeger from its module" >&2; exit 1; }
  echo "jaeger: building github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION into $dir" >&2
  started=$SECONDS
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  # Its go.mod has replace directives, which `go install pkg@version` refuses: build inside the module's own
  # source (fetched through the module proxy into the module cache), where they apply.
  src=$(GOFLAGS=-mod=mod go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" |
    sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -d "$src" ]] || { echo "jaeger: could not fetch github.com/jaegertracing/jaeger@$JAEGER_VERSION" >&2; exit 1; }
  (cd "$src" && GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$dir.tmp/jaeger" ./cmd/jaeger) >&2
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "jaeger: built in $((SECONDS - started)) s" >&2
fi
echo "$dir/jaeger"
