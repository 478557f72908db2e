#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries from Go modules and caches them:
#   ~/.cache/kubelambda/bin/<KUBE_VERSION>/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
#   ~/.cache/kubelambda/bin/etcd-<ETCD_VERSION>/etcd
#   ~/.cache/kubelambda/bin/helm-<HELM_VERSION>/helm
#   ~/.cache/kubelambda/bin/node-<KUBE_VERSION>/{kubelet,kube-proxy}  (`node`: only for the container node)
#   ~/.cache/kubelambda/bin/coredns-<COREDNS_VERSION>/coredns          (`node` too)
#   ~/.cache/kubelambda/bin/kube-router-<KUBE_ROUTER_VERSION>/kube-router  (`node` too: its NetworkPolicy controller)
# A directory holding a `.complete` stamp is never rebuilt; change a pin in hack/versions.env to rebuild.
# Prints the three directories (KUBE_BIN=, ETCD_BIN=, HELM_BIN=) on stdout, progress on stderr.
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

build_kube() {
  local work=$cache/build/kube-$KUBE_VERSION
  mkdir -p "$work"
  log "fetching k8s.io/kubernetes@$KUBE_VERSION"
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
  cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$work" && go mod tidy -e >&2 2>&1 || true)
  local ldflags
  kube_ldflags "${minor_patch%%.*}"
  local tmp=$kube_bin.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    log "building $cmd $KUBE_VERSION (several minutes on a cold cache)"
    (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  touch "$tmp/.complete"
  rm -rf "$kube_bin"; mv "$tmp" "$kube_bin"
}

# kube_ldflags MINOR: sets $ldflags, the version stamp kubectl, kubeadm and the kubelet report.
kube_ldflags() {
  local major=1 minor=$1
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"
}

# The container node's kubelet and kube-proxy, from the same module as the control plane (build_kube made it).
build_node() {
  local work=$cache/build/kube-$KUBE_VERSION
  [[ -f $work/go.mod ]] || { log "no $work/go.mod: build the control plane first (kube-binaries.sh kube)"; return 1; }
  local minor_patch=${KUBE_VERSION#v1.}
  local ldflags
  kube_ldflags "${minor_patch%%.*}"
  local tmp=$node_bin.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  for cmd in kubelet kube-proxy; do
    log "building $cmd $KUBE_VERSION (several minutes on a cold cache)"
    (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  touch "$tmp/.complete"
  rm -rf "$node_bin"; mv "$tmp" "$node_bin"
}

build_coredns() {
  build_single coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns "$coredns_bin" "-s -w"
}

# build_single NAME MODULE VERSION PACKAGE DEST LDFLAGS: one binary from one Go module, built in a throwaway
# module that requires it (so its own go.mod, replaces aside, decides the dependency versions).
# kube-router's NetworkPolicy controller (iptables + ipset; the container node runs it with only --run-firewall).
build_kube_router() {
  build_single kube-router github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "$kube_router_bin" \
    "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION"
}

build_single() {
  local name=$1 module=$2 version=$3 package=$4 dest=$5 ldflags=$6
  local work=$cache/build/$name-$version
  mkdir -p "$work"
  printf 'module kubelambda.local/%sbuild\n\ngo 1.24\n\nrequire %s %s\n' "$name" "$module" "$version" > "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > "$work/tools.go"
  log "building $name $version"
  (cd "$work" && go mod tidy >&2 2>&1)
  local tmp=$dest.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$name" "$package")
  touch "$tmp/.complete"
  rm -rf "$dest"; mv "$tmp" "$dest"
}

build_etcd() {
  build_single etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "$etcd_bin" "-s -w"
}

build_helm() {
  build_single helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$helm_bin" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

want=${1:-all}
# One build at a time per cache (a test run and `dev up` may start together). When everything asked for is
# cached there is nothing to build: no lock, so a lookup never waits behind another build (a make -n did, 60 s).
complete=true
for name in kube etcd helm; do
  dir_var=${name}_bin
  if [[ $want == all || $want == "$name" ]] && [[ ! -f ${!dir_var}/.complete ]]; then complete=false; fi
done
if [[ $want == node ]]; then  # the container node's: the control plane's module, kubelet, kube-proxy, CoreDNS, kube-router
  for dir in "$kube_bin" "$node_bin" "$coredns_bin" "$kube_router_bin"; do [[ -f $dir/.complete ]] || complete=false; done
fi
if ! $complete; then
  mkdir -p "$cache"
  exec 9>"$cache/.build.lock"
  flock 9
fi

if [[ $want == all || $want == kube ]]; then
  [[ -f $kube_bin/.complete ]] && log "kube $KUBE_VERSION cached in $kube_bin" || build_kube
fi
if [[ $want == all || $want == etcd ]]; then
  [[ -f $etcd_bin/.complete ]] && log "etcd $ETCD_VERSION cached in $etcd_bin" || build_etcd
fi
if [[ $want == all || $want == helm ]]; then
  [[ -f $helm_bin/.complete ]] && log "helm $HELM_VERSION cached in $helm_bin" || build_helm
fi
# Not part of `all`: only the container node (kubelambda dev up --node container) needs them.
if [[ $want == node ]]; then
  [[ -f $kube_bin/.complete ]] || build_kube
  [[ -f $node_bin/.complete ]] && log "kubelet, kube-proxy $KUBE_VERSION cached in $node_bin" || build_node
  [[ -f $coredns_bin/.complete ]] && log "coredns $COREDNS_VERSION cached in $coredns_bin" || build_coredns
  [[ -f $kube_router_bin/.complete ]] && log "kube-router $KUBE_ROUTER_VERSION cached in $kube_router_bin" \
    || build_kube_router
  echo "NODE_BIN=$node_bin"
  echo "COREDNS_BIN=$coredns_bin"
  echo "KUBE_ROUTER_BIN=$kube_router_bin"
fi
echo "KUBE_BIN=$kube_bin"
echo "ETCD_BIN=$etcd_bin"
echo "HELM_BIN=$helm_bin"
