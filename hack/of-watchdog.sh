#!/usr/bin/env bash
# Builds OpenFaaS' of-watchdog (the peer of our agent in `make bench-agent-peer`, HTTP mode) from its Go module,
# cached (hack/lib/cached-tool.sh):
#   ~/.cache/kubelambda/bin/of-watchdog-<OF_WATCHDOG_VERSION>/of-watchdog
# Prints the binary's path on stdout.
# of-watchdog's tags (0.11.6) are not Go module versions, so the module is asked for by the tag's pseudo-version.
# When the Go module proxy refuses it (it answered 403 "This module version is not available" for
# the version list, the tag and the pseudo-version on 2026-12-05), OF_WATCHDOG_SRC may name a git repository of
# of-watchdog (a clone): the tag is built from it with its own vendor/ directory, offline.
# of-watchdog is MIT-licensed; it is only run as a separate benchmark peer here, never linked into kubelambda.
set -euo pipefail
OF_WATCHDOG_VERSION=0.11.6
OF_WATCHDOG_MODULE_VERSION=v0.0.0-20260513144341-9bdadb1e8c68 # the commit tagged 0.11.6
source "$(dirname "$0")/lib/cached-tool.sh"

build() {
  command -v go >/dev/null || { echo "of-watchdog: Go is required to build it from its module" >&2; exit 1; }
  if GOBIN="$1" GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "github.com/openfaas/of-watchdog@$OF_WATCHDOG_MODULE_VERSION"; then
    return
  fi
  if [[ -z ${OF_WATCHDOG_SRC:-} ]]; then
    echo "of-watchdog: the Go module proxy did not serve github.com/openfaas/of-watchdog@$OF_WATCHDOG_MODULE_VERSION" \
      "(tag $OF_WATCHDOG_VERSION); set OF_WATCHDOG_SRC to a git clone of github.com/openfaas/of-watchdog" >&2
    exit 1
  fi
  echo "of-watchdog: building tag $OF_WATCHDOG_VERSION from $OF_WATCHDOG_SRC (its vendor/ directory)" >&2
  local src
  src=$(mktemp -d)
  git --git-dir="$(git -C "$OF_WATCHDOG_SRC" rev-parse --absolute-git-dir)" archive "$OF_WATCHDOG_VERSION" \
    | tar -x -C "$src"
  (cd "$src" && GOFLAGS=-mod=vendor GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$1/of-watchdog" .)
  rm -rf "$src"
}
cached_tool of-watchdog "$OF_WATCHDOG_VERSION" of-watchdog build
