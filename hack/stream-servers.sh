#!/usr/bin/env bash
# Installs the stream brokers the tests, benchmarks and `kubelambda dev` start on loopback, cached:
#   Kafka (KRaft mode): kafka_2.13 and its runtime jars from Maven Central, resolved by Maven from
#     hack/kafka/pom.xml into $cache/kafka-<version>/lib (run with the machine's Java >= 17);
#   kinesalite (a Kinesis API server) from the npm registry into $cache/kinesalite-<version> (run with node).
# Safe to run concurrently (flock) and fast when both are there. Prints nothing on stdout.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda)
#   MVN / NPM          maven and npm commands (default: on PATH)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
mvn="${MVN:-mvn}"
npm="${NPM:-npm}"
# Keep in step with kubelambda.devcluster.streamservers (KAFKA_VERSION, KINESALITE_VERSION).
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/hack/kafka/pom.xml")"
kinesalite_version="3.3.3"

mkdir -p "$cache"
exec 9>"$cache/.stream-servers.lock"
flock 9

kafka="$cache/kafka-$kafka_version"
if [[ -f "$kafka/.complete" ]]; then
  echo "stream-servers: Kafka $kafka_version: $kafka" >&2
else
  for tool in "$mvn" java; do
    command -v "$tool" >/dev/null || { echo "stream-servers: '$tool' not found; install a JDK >= 17 and Maven (Debian: default-jdk-headless maven)" >&2; exit 1; }
  done
  echo "stream-servers: resolving Kafka $kafka_version with Maven into $kafka" >&2
  rm -rf "$kafka" && mkdir -p "$kafka"
  "$mvn" -q -B -Dstyle.color=never -f "$root/hack/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$kafka/lib" >&2
  touch "$kafka/.complete"
fi

kinesalite="$cache/kinesalite-$kinesalite_version"
if [[ -f "$kinesalite/.complete" ]]; then
  echo "stream-servers: kinesalite $kinesalite_version: $kinesalite" >&2
else
  for tool in "$npm" node; do
    command -v "$tool" >/dev/null || { echo "stream-servers: '$tool' not found; install Node.js and npm (Debian: nodejs npm)" >&2; exit 1; }
  done
  echo "stream-servers: installing kinesalite $kinesalite_version with npm into $kinesalite" >&2
  rm -rf "$kinesalite" && mkdir -p "$kinesalite"
  # In-memory store only: leveldown's native build (an install script) is not needed.
  "$npm" install --prefix "$kinesalite" --no-audit --no-fund --ignore-scripts --loglevel=error \
    "kinesalite@$kinesalite_version" >&2
  touch "$kinesalite/.complete"
fi
