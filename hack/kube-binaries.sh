#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries from Go modules and caches them:
#   ~/.cache/kubelambda/bin/<KUBE_VERSION>/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
#   ~/.cache/kubelambda/bin/etcd-<ETCD_VERSION>/etcd
#   ~/.cache/kubelambda/bin/helm-<HELM_VERSION>/helm
#   ~/.cache/kubelambda/bin/node-<KUBE_VERSION>/{kubelet,kube-proxy}  (`node`: only for the container node)
#   ~/.cache/kubelambda/bin/coredns-<COREDNS_VERSION>/coredns          (`node` too)
#   ~/.cache/kubelambda/bin/kube-router-<KUBE_ROUTER_VERSION>/kube-router  (`node` too: its NetworkPolicy controller)
# A directory holding a `.complete` stamp is never rebuilt; change a pin in hack/versions.env to rebuild.
#   hack/kube-binaries.sh [all|kube|etcd|helm|node]...   (default: all; `all node`: everything in one go build)
# Prints the directories (KUBE_BIN=, ETCD_BIN=, HELM_BIN=, with `node` NODE_BIN= ...) on stdout, progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${KUBELAMBDA_CACHE:-$HOME/.cache/kubelambda}
export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0

log() { printf '[kube-binaries] %s\n' "$*" >&2; }

kube_bin=$cache/bin/$KUBE_VERSION
etcd_bin=$cache/bin/etcd-$ETCD_VERSION
helm_bin=$cache/bin/helm-$HELM_VERSION
node_bin=$cache/bin/node-$KUBE_VERSION
coredns_bin=$cache/bin/coredns-$COREDNS_VERSION
kube_router_bin=$cache/bin/kube-router-$KUBE_ROUTER_VERSION
control_plane_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
node_cmds=(kubelet kube-proxy)

# prepare_kube: the throwaway module that requires k8s.io/kubernetes, its dependencies downloaded.
prepare_kube() {
  local work=$cache/build/kube-$KUBE_VERSION
  mkdir -p "$work"
  log "fetching k8s.io/kubernetes@$KUBE_VERSION"
  local began=$SECONDS
  local modfile
  modfile=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local minor_patch=${KUBE_VERSION#v1.}
  # Our own module depends on k8s.io/kubernetes; each of its ./staging/src/k8s.io/X replaces becomes
  # k8s.io/X v0.<minor>.<patch>, the same release published as its own module.
  {
    echo "module kubelambda.local/kubebuild"
    echo
    grep -E '^go [0-9]' "$modfile"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$modfile" | grep -Eo 'k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' \
      | awk -v v="v0.$minor_patch" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > "$work/go.mod"
  # Every command either build may want, so that go.mod and go.sum do not depend on which one ran first.
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for cmd in "${control_plane_cmds[@]}" "${node_cmds[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
    printf ')\n'
  } > "$work/tools.go"
  (cd "$work" && go mod tidy -e >&2 2>&1 || true)
  log "fetched k8s.io/kubernetes and its dependencies in $((SECONDS - began)) s"
}

# build_kube_cmds DEST CMD...: the Kubernetes commands in ONE go build (each package compiles once, the links run
# beside the compiles), into DEST.
build_kube_cmds() {
  local dest=$1; shift
  local work=$cache/build/kube-$KUBE_VERSION
  local minor_patch=${KUBE_VERSION#v1.} ldflags pkgs=() cmd
  kube_ldflags "${minor_patch%%.*}"
  for cmd in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
  log "building $* $KUBE_VERSION (several minutes on a cold cache)"
  mkdir -p "$dest"
  local began=$SECONDS
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$dest/" "${pkgs[@]}")
  log "built $* in $((SECONDS - began)) s"
}

# build_kube [node]: the control plane's commands (and with `node` the kubelet and kube-proxy too, in the same
# go build) into $kube_bin (and $node_bin).
build_kube() {
  local cmds=("${control_plane_cmds[@]}") tmp=$kube_bin.tmp cmd
  [[ ${1:-} == node ]] && cmds+=("${node_cmds[@]}")
  prepare_kube
  rm -rf "$tmp"
  build_kube_cmds "$tmp" "${cmds[@]}"
  if [[ ${1:-} == node ]]; then
    rm -rf "$node_bin.tmp"; mkdir -p "$node_bin.tmp"
    for cmd in "${node_cmds[@]}"; do mv "$tmp/$cmd" "$node_bin.tmp/"; done
    touch "$node_bin.tmp/.complete"
    rm -rf "$node_bin"; mv "$node_bin.tmp" "$node_bin"
  fi
  touch "$tmp/.complete"
  rm -rf "$kube_bin"; mv "$tmp" "$kube_bin"
}

# kube_ldflags MINOR: sets $ldflags, the version stamp kubectl, kubeadm and the kubelet report.
kube_ldflags() {
  local major=1 minor=$1
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"
}

# The container node's kubelet and kube-proxy alone, from the same module as the control plane.
build_node() {
  local tmp=$node_bin.tmp
  [[ -f $cache/build/kube-$KUBE_VERSION/go.mod ]] || prepare_kube
  rm -rf "$tmp"
  build_kube_cmds "$tmp" "${node_cmds[@]}"
  touch "$tmp/.complete"
  rm -rf "$node_bin"; mv "$tmp" "$node_bin"
}

# prepare_single NAME MODULE VERSION PACKAGE: a throwaway module that requires MODULE (so its own go.mod, replaces
# aside, decides the dependency versions), its dependencies downloaded.
prepare_single() {
  local name=$1 module=$2 version=$3 package=$4
  local work=$cache/build/$name-$version
  mkdir -p "$work"
  printf 'module kubelambda.local/%sbuild\n\ngo 1.24\n\nrequire %s %s\n' "$name" "$module" "$version" > "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > "$work/tools.go"
  (cd "$work" && go mod tidy 2>&1)
}

# build_single NAME VERSION PACKAGE DEST LDFLAGS: its binary, in the module prepare_single made.
build_single() {
  local name=$1 version=$2 package=$3 dest=$4 ldflags=$5
  local work=$cache/build/$name-$version tmp=$dest.tmp
  log "building $name $version"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local began=$SECONDS
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$name" "$package")
  log "built $name in $((SECONDS - began)) s"
  touch "$tmp/.complete"
  rm -rf "$dest"; mv "$tmp" "$dest"
}

# single NAME: sets module, version, package, dest and ldflags of one of the single-module binaries.
single() {
  case $1 in
    etcd) module=go.etcd.io/etcd/server/v3 version=$ETCD_VERSION package=go.etcd.io/etcd/server/v3 dest=$etcd_bin
      ldflags="-s -w" ;;
    helm) module=helm.sh/helm/v3 version=$HELM_VERSION package=helm.sh/helm/v3/cmd/helm dest=$helm_bin
      ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    coredns) module=github.com/coredns/coredns version=$COREDNS_VERSION package=github.com/coredns/coredns
      dest=$coredns_bin ldflags="-s -w" ;;
    # kube-router's NetworkPolicy controller (iptables + ipset; the container node runs it with only --run-firewall).
    kube-router) module=github.com/cloudnativelabs/kube-router/v2 version=$KUBE_ROUTER_VERSION
      package=github.com/cloudnativelabs/kube-router/v2/cmd/kube-router dest=$kube_router_bin
      ldflags="-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" ;;
  esac
}

# What to build: all (the control plane, etcd, helm: the default), kube, etcd, helm, and node (the container
# node's: the control plane's module, kubelet, kube-proxy, CoreDNS, kube-router; not part of `all`). Several at once
# (`all node`) share one go build of the Kubernetes commands.
kube=false node=false singles=()
for want in "${@:-all}"; do
  case $want in
    all) kube=true; singles+=(etcd helm) ;;
    kube) kube=true ;;
    etcd | helm) singles+=("$want") ;;
    node) kube=true; node=true; singles+=(coredns kube-router) ;;
    *) log "error: unknown '$want' (want all, kube, etcd, helm or node)"; exit 2 ;;
  esac
done
((${#singles[@]} == 0)) || mapfile -t singles < <(printf '%s\n' "${singles[@]}" | awk '!seen[$0]++')

# missing: sets kube_todo, node_todo and singles_todo to what has no `.complete` stamp yet.
missing() {
  kube_todo=false node_todo=false singles_todo=()
  if $kube && [[ ! -f $kube_bin/.complete ]]; then kube_todo=true; fi
  if $node && [[ ! -f $node_bin/.complete ]]; then node_todo=true; fi
  local name
  for name in "${singles[@]}"; do
    single "$name"
    [[ -f $dest/.complete ]] || singles_todo+=("$name")
  done
}
missing
# One build at a time per cache (a test run and `dev up` may start together). When everything asked for is
# cached there is nothing to build: no lock, so a lookup never waits behind another build (a make -n did, 60 s).
if $kube_todo || $node_todo || ((${#singles_todo[@]})); then
  mkdir -p "$cache"
  exec 9>"$cache/.build.lock"
  flock 9
  missing  # what another build finished while this one waited is not built again
fi

# The other modules download (network) in the background while the Kubernetes commands compile (CPU); each is
# compiled once its download is done. A failed download stops the script with its log.
logs=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$logs"' EXIT
declare -A fetching=()
for name in "${singles_todo[@]}"; do
  single "$name"
  log "fetching $module@$version"
  prepare_single "$name" "$module" "$version" "$package" >"$logs/$name" 2>&1 &
  fetching[$name]=$!
done
if $kube_todo; then
  if $node_todo; then build_kube node; else build_kube; fi
elif $node_todo; then
  build_node
fi
for name in "${singles_todo[@]}"; do
  single "$name"
  if ! wait "${fetching[$name]}"; then
    log "error: fetching $module@$version failed:"
    cat "$logs/$name" >&2
    exit 1
  fi
  cat "$logs/$name" >&2
  build_single "$name" "$version" "$package" "$dest" "$ldflags"
done
if $kube && [[ -f $kube_bin/.complete ]]; then log "kube $KUBE_VERSION: $kube_bin"; fi
if $node && [[ -f $node_bin/.complete ]]; then log "kubelet, kube-proxy $KUBE_VERSION: $node_bin"; fi
for name in "${singles[@]}"; do
  single "$name"
  log "$name $version: $dest"
done

if $node; then
  echo "NODE_BIN=$node_bin"
  echo "COREDNS_BIN=$coredns_bin"
  echo "KUBE_ROUTER_BIN=$kube_router_bin"
fi
echo "KUBE_BIN=$kube_bin"
echo "ETCD_BIN=$etcd_bin"
echo "HELM_BIN=$helm_bin"
