#!/usr/bin/env bash
# Builds the VersityGW S3 gateway the bucket bridge's notification test runs (a real store, posix backend, sending
# S3-format event notifications to the bridge's webhook) from its Go module, cached:
#   ~/.cache/kubelambda/bin/versitygw-<VERSITYGW_VERSION>/versitygw
# A directory holding a `.complete` stamp is never rebuilt. Safe to run concurrently (flock). Prints the binary's
# path on stdout.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
# VersityGW is Apache-2.0; it is only run as a separate test server here, never linked into kubelambda.
set -euo pipefail
VERSITYGW_VERSION=v1.8.0
cache=${KUBELAMBDA_CACHE:-$HOME/.cache/kubelambda}
dir=$cache/bin/versitygw-$VERSITYGW_VERSION
mkdir -p "$cache/bin"
exec 9>"$cache/.versitygw.lock"
flock 9
if [[ ! -f "$dir/.complete" ]]; then
  command -v go >/dev/null || { echo "versitygw: Go is required to build VersityGW from its module" >&2; exit 1; }
  echo "versitygw: building github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION into $dir" >&2
  started=$SECONDS
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >&2
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "versitygw: built in $((SECONDS - started)) s" >&2
fi
echo "$dir/versitygw"
