#!/usr/bin/env bash
# Docker for kind on this VM: the runc wrapper (hack/kind-node/runc-wrapper, which drops CAP_SYS_RESOURCE, absent
# from the VM's bounding set) registered as dockerd's default runtime, so that kind's privileged node containers
# start; then a daemon that answers (hack/docker-up.sh). Idempotent: merges into /etc/docker/daemon.json and
# reloads a running dockerd with SIGHUP (runtimes are reloadable; running containers are not touched).
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda); the wrapper is installed in kind-runc/ there
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
say() { echo "kind-docker: $*" >&2; }

bash "$here/docker-up.sh"
command -v jq >/dev/null 2>&1 || { say "installing jq (the wrapper edits OCI specs with it)"; apt-get install -y -qq jq >&2; }
wrapper=$cache/kind-runc/runc
mkdir -p "${wrapper%/*}"
if ! cmp -s "$here/kind-node/runc-wrapper" "$wrapper"; then
  install -m 0755 "$here/kind-node/runc-wrapper" "$wrapper.tmp" && mv -f "$wrapper.tmp" "$wrapper"
fi
conf=/etc/docker/daemon.json
current=$(cat "$conf" 2>/dev/null || echo '{}')
wanted=$(jq --arg p "$wrapper" '.runtimes["kubelambda-runc"] = {path: $p} | .["default-runtime"] = "kubelambda-runc"' <<<"$current")
if [[ $(jq -S . <<<"$current") != $(jq -S . <<<"$wanted") ]]; then
  say "registering $wrapper as dockerd's default runtime in $conf"
  mkdir -p /etc/docker
  printf '%s\n' "$wanted" >"$conf.tmp" && mv -f "$conf.tmp" "$conf"
  kill -HUP "$(cat /var/run/docker.pid)"
  for _ in $(seq 1 40); do
    [[ $(docker info --format '{{.DefaultRuntime}}' 2>/dev/null) == kubelambda-runc ]] && break
    sleep 0.25
  done
fi
[[ $(docker info --format '{{.DefaultRuntime}}') == kubelambda-runc ]] || {
  say "error: dockerd's default runtime is $(docker info --format '{{.DefaultRuntime}}'), not kubelambda-runc ($conf)"
  exit 1
}
say "dockerd answers, default runtime kubelambda-runc ($wrapper)"
