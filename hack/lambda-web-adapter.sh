#!/usr/bin/env bash
# Builds AWS Labs' Lambda Web Adapter (a public Lambda extension: it registers with the Extensions API and runs the
# Runtime API loop for a plain web app) from its published crate, cached (hack/lib/cached-tool.sh):
#   ~/.cache/kubelambda/bin/lambda-web-adapter-<VERSION>/lambda-adapter
# tests/integration/runtimes/test_web_adapter.py runs it from a function's /opt/extensions, as its Lambda layer
# does. Prints the binary's path on stdout. Apache-2.0; only run as a test extension, never shipped.
set -euo pipefail
LWA_VERSION=0.9.1
source "$(dirname "$0")/lib/cached-tool.sh"

build() {
  command -v cargo >/dev/null || { echo "lambda-web-adapter: cargo (Rust) is required to build it from its crate" >&2; exit 1; }
  local root
  root=$(mktemp -d)
  CARGO_TARGET_DIR="$root/target" cargo install --quiet --locked lambda_web_adapter --version "$LWA_VERSION" --root "$root"
  mv "$root/bin/lambda-adapter" "$1/"
  rm -rf "$root"
}
cached_tool lambda-web-adapter "$LWA_VERSION" lambda-adapter build
