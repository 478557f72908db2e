#!/usr/bin/env bash
# Builds kubelambda._native (native/, Rust with PyO3, abi3: one build for every Python from 3.11 on) as a shared
# library named for Python's import, cached by a hash of its sources, and prints its path on stdout (progress goes
# to stderr): the control-plane image built on a Debian base takes it (hack/images.sh, the Dockerfile's
# NATIVE_FROM=native-prebuilt). A venv builds the module itself (setup.py, make venv); both share cargo's build.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
#   CARGO              cargo command (default: cargo on PATH)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/native"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
cargo="${CARGO:-cargo}"

if ! command -v "$cargo" >/dev/null 2>&1; then
  echo "build-native: no Rust toolchain ('$cargo' not found); install Rust (rustup) >= 1.85" >&2
  exit 1
fi

# The hash covers the crate's sources, its manifest and lock file, and the toolchain.
hash="$(
  cd "$src"
  {
    "$cargo" --version
    rustc --version --verbose
    find . -type f \( -name '*.rs' -o -name 'Cargo.toml' -o -name 'Cargo.lock' \) -not -path './target/*' -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)"
out="$cache/bin/native-$hash/_native.abi3.so"

if [[ -f "$out" ]]; then
  echo "build-native: up to date: $out" >&2
else
  echo "build-native: building $out" >&2
  # Its own target folder: setup.py's build (make venv) configures PyO3 for the venv's Python, and two builds
  # taking turns in one folder would each rebuild PyO3.
  export CARGO_TARGET_DIR="$cache/cargo-abi3"
  # abi3 on Linux needs no interpreter: the build does not depend on which Python is on PATH.
  PYO3_NO_PYTHON=1 "$cargo" build --release --locked --manifest-path "$src/Cargo.toml" >&2
  mkdir -p "$(dirname "$out")"
  cp "$CARGO_TARGET_DIR/release/lib_native.so" "$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
fi
echo "$out"
