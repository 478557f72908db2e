#!/usr/bin/env bash
# Builds kubelambda's Java runtime client with Maven, cached by a hash of its sources, and prints the
# folder to use as LAMBDA_RUNTIME_DIR (its lib/ holds the client jar and aws-lambda-java-core) on stdout.
# Progress goes to stderr. Rebuilds only when runtime-images/java changes.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
#   MVN                maven command (default: mvn on PATH)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/runtime-images/java"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
mvn="${MVN:-mvn}"

for tool in "$mvn" java javac; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build-runtime-java: '$tool' not found; install a JDK >= 17 and Maven (Debian: default-jdk-headless maven)" >&2
    exit 1
  fi
done

# The hash covers the POM and every source file (the jar is compiled for release 17: the JDK does not matter).
hash="$(
  cd "$src"
  find pom.xml src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
)"
out="$cache/runtimes/java-$hash"

if [[ -f "$out/lib/kubelambda-java-runtime.jar" ]]; then
  echo "build-runtime-java: up to date: $out" >&2
else
  echo "build-runtime-java: building $out" >&2
  mkdir -p "$cache/runtimes"
  work="$(mktemp -d "$cache/runtimes/java-build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  cp -r "$src/pom.xml" "$src/src" "$work/"
  (cd "$work" && "$mvn" -q -B package -DskipTests >&2)
  mkdir -p "$work/out/lib"
  cp "$work/target/kubelambda-java-runtime.jar" "$work"/target/lib/*.jar "$work/out/lib/"
  # A concurrent build that won the race leaves the same files: keep whichever landed first.
  mv -T "$work/out" "$out" 2>/dev/null || [[ -f "$out/lib/kubelambda-java-runtime.jar" ]]
fi
echo "$out"
