#!/usr/bin/env bash
# Builds the kubelambda agent as a static binary, cached by a hash of its sources, and prints the
# binary's path on stdout (progress goes to stderr). Rebuilds only when the sources change.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
#   GO                 go command (default: go on PATH)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/runtime-images/agent"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
go="${GO:-go}"

if ! command -v "$go" >/dev/null 2>&1; then
  echo "build-agent: no Go toolchain ('$go' not found); install Go >= 1.26" >&2
  exit 1
fi

# The hash covers every non-test Go source, go.mod and the toolchain version.
hash="$(
  cd "$src"
  {
    "$go" env GOVERSION GOOS GOARCH
    find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) ! -name '*_test.go' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)"
out="$cache/bin/agent-$hash/kubelambda-agent"

if [[ -x "$out" ]]; then
  echo "build-agent: up to date: $out" >&2
else
  echo "build-agent: building $out" >&2
  mkdir -p "$(dirname "$out")"
  tmp="$out.tmp.$$"
  (cd "$src" && CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w" -o "$tmp" .)
  mv -f "$tmp" "$out"
fi
echo "$out"
