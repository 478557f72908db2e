#!/usr/bin/env bash
# Builds a Go function (a main package using github.com/aws/aws-lambda-go/lambda) into the code of a `go`
# or `provided` Function: an executable named `bootstrap` at the top of OUT_DIR, as Lambda's provided.al2023
# runtime expects. Used by runtime-images/go/Dockerfile and, locally, by kubelambda.runtimes.build_go_function.
#
#   build-bootstrap.sh MODULE_DIR OUT_DIR [PACKAGE]     PACKAGE defaults to "." (the module's root)
#
# Static (CGO_ENABLED=0), so it runs on any base image; `lambda.norpc` leaves out the go1.x RPC mode that
# only Lambda's retired go1.x runtime used. GOOS/GOARCH from the environment pick the target (linux/amd64,
# linux/arm64), GOFLAGS and GOPROXY pass through.
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 MODULE_DIR OUT_DIR [PACKAGE]" >&2
  exit 2
fi
module="$1"
out="$2"
package="${3:-.}"
go="${GO:-go}"
if ! command -v "$go" >/dev/null 2>&1; then
  echo "build-bootstrap: no Go toolchain ('$go' not found); install Go >= 1.26" >&2
  exit 1
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$module"
CGO_ENABLED=0 GOOS="${GOOS:-linux}" "$go" build -trimpath -tags lambda.norpc -ldflags "-s -w" \
  -o "$out/bootstrap" "$package"
echo "$out/bootstrap"
