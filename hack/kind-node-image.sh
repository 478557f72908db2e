#!/usr/bin/env bash
# Assembles a kind node image on this machine, offline (`kind build node-image` fetches etcd, CoreDNS, pause and
# kindnetd from registries, and wants a newer ctr than Debian's): every piece comes from Debian packages or from
# Go modules built here.
#   1. kubeadm from the pinned Kubernetes module (kubelet, kubectl and the control plane: hack/kube-binaries.sh);
#   2. the images kubeadm's static pods and addons name, on the Debian base (hack/debian-bases.sh):
#      registry.k8s.io/kube-{apiserver,controller-manager,scheduler,proxy}:$KUBE_VERSION, etcd:<ETCD_VERSION>-0,
#      coredns/coredns:$COREDNS_VERSION; plus the pause image (hack/node-images.sh) and kube-router (pod network
#      policies, hack/kind-node/default-cni.yaml);
#   3. the node's root filesystem (hack/kind-node/Dockerfile: systemd, containerd, runc behind runc-wrapper,
#      CNI plugins, kubelet/kubeadm/kubectl, /kind/version, /kind/manifests/default-cni.yaml);
#   4. those images imported into the node's containerd (`ctr -n k8s.io images import --no-unpack`, pinned), and
#      the container committed as the node image.
# The node image's tag carries a hash of its inputs: an image that exists is kept. Needs Docker with the runc
# wrapper (hack/kind-docker.sh). Prints the node image on stdout, progress on stderr.
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda): kubeadm in kind-bin-<KUBE_VERSION>/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
say() { echo "kind-node-image: $*" >&2; }
started=$SECONDS

eval "$(bash "$here/kube-binaries.sh" node | sed -n 's/^\([A-Z_]*_BIN\)=\(.*\)$/\1="\2"/p')"
base=$(bash "$here/debian-bases.sh" bookworm)

# 1. kubeadm, from the module the control plane was built from (same go.mod/go.sum, same version stamp).
kind_bin=$cache/kind-bin-$KUBE_VERSION
if [[ ! -x $kind_bin/kubeadm ]]; then
  work=$cache/kind-build/kubeadm-$KUBE_VERSION
  mkdir -p "$work"
  cp "$cache/build/kube-$KUBE_VERSION/go.mod" "$cache/build/kube-$KUBE_VERSION/go.sum" "$work/"
  sed -i 's#^module .*#module kubelambda.local/kindkubeadm#' "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubeadm"\n' >"$work/tools.go"
  minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  say "building kubeadm $KUBE_VERSION (minutes on a cold cache)"
  (cd "$work" && GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$work/kubeadm" k8s.io/kubernetes/cmd/kubeadm)
  mkdir -p "$kind_bin"
  mv "$work/kubeadm" "$kind_bin/kubeadm"
fi

# 2. The images. component IMAGE BINARY [PACKAGES [ENTRYPOINT]]: the Debian base, Debian PACKAGES, BINARY in
# /usr/local/bin (kubeadm's manifests give the command) or at ENTRYPOINT.
component() {
  local image=$1 binary=$2 packages=${3:-} entrypoint=${4:-}
  if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image"
    return
  fi
  say "building $image"
  local ctx dest=/usr/local/bin/ tail=""
  ctx=$(mktemp -d)
  cp "$binary" "$ctx/"
  if [[ -n $entrypoint ]]; then dest=$entrypoint tail="ENTRYPOINT [\"$entrypoint\"]"; fi
  {
    echo "FROM $base"
    [[ -z $packages ]] || echo "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages && rm -rf /var/lib/apt/lists/*"
    echo "COPY ${binary##*/} $dest"
    echo "$tail"
  } >"$ctx/Dockerfile"
  nice -n 10 docker build -q -t "$image" "$ctx" >&2
  rm -rf "$ctx"
  echo "$image"
}
etcd_tag=${ETCD_VERSION#v}-0
kube_router_image=kubelambda.io/kind/kube-router:$KUBE_ROUTER_VERSION
images=(
  "$(component "registry.k8s.io/kube-apiserver:$KUBE_VERSION" "$KUBE_BIN/kube-apiserver")"
  "$(component "registry.k8s.io/kube-controller-manager:$KUBE_VERSION" "$KUBE_BIN/kube-controller-manager")"
  "$(component "registry.k8s.io/kube-scheduler:$KUBE_VERSION" "$KUBE_BIN/kube-scheduler")"
  "$(component "registry.k8s.io/kube-proxy:$KUBE_VERSION" "$NODE_BIN/kube-proxy" "iptables nftables conntrack")"
  "$(component "registry.k8s.io/etcd:$etcd_tag" "$ETCD_BIN/etcd")"
  "$(component "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$COREDNS_BIN/coredns" "" /coredns)"
  "$(component "$kube_router_image" "$KUBE_ROUTER_BIN/kube-router" "iptables ipset")"
  "$(bash "$here/node-images.sh" | grep '/pause:')"
)
pause=${images[-1]}

# 3. The node's root filesystem; its inputs' hash names the node image.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -r "$here/kind-node/." "$ctx/"
mkdir -p "$ctx/bin"
cp "$NODE_BIN/kubelet" "$kind_bin/kubeadm" "$KUBE_BIN/kubectl" "$ctx/bin/"
echo "$KUBE_VERSION" >"$ctx/version"
sed -i "s#@SANDBOX_IMAGE@#$pause#" "$ctx/containerd.toml"
sed -i "s#@KUBE_ROUTER_IMAGE@#$kube_router_image#" "$ctx/default-cni.yaml"
hash=$( (cd "$ctx" && find . -type f ! -path './bin/*' -print0 | sort -z | xargs -0 sha256sum;
  printf '%s\n' "${images[@]}" | xargs docker image inspect --format '{{.Id}}'; cat "$here/versions.env") | sha256sum | cut -c1-12)
node=kubelambda.io/kind/node:$KUBE_VERSION-$hash
if docker image inspect "$node" >/dev/null 2>&1; then
  say "$node present"
  echo "$node"
  exit 0
fi
say "building the node's root filesystem (Debian packages: a minute or two)"
nice -n 10 docker build -q -t "kubelambda.io/kind/node-base:$hash" --build-arg "BASE=$base" "$ctx" >&2

# 4. The images into the node's containerd, then commit. The container's overlay root cannot hold overlayfs
# snapshots: the images stay packed (--no-unpack); the CRI plugin unpacks each when a container first uses it.
cid=$(docker run -d --privileged --entrypoint sleep "kubelambda.io/kind/node-base:$hash" infinity)
trap 'docker rm -f "$cid" >/dev/null 2>&1 || true; rm -rf "$ctx"' EXIT
docker exec -d "$cid" sh -c 'containerd >/var/log/containerd-preload.log 2>&1'
for _ in $(seq 1 120); do
  docker exec "$cid" ctr version >/dev/null 2>&1 && break
  sleep 0.5
done
for image in "${images[@]}"; do
  say "importing $image"
  docker save "$image" | docker exec -i "$cid" ctr -n k8s.io images import --all-platforms --no-unpack --digests - >&2
  docker exec "$cid" ctr -n k8s.io images label "$image" io.cri-containerd.pinned=pinned >/dev/null
done
docker exec "$cid" sh -c 'kill $(pidof containerd); while pidof containerd >/dev/null; do sleep 0.2; done; rm -f /var/log/containerd-preload.log'
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
  --message "hack/kind-node-image.sh: $KUBE_VERSION" "$cid" "$node" >/dev/null
docker rmi "kubelambda.io/kind/node-base:$hash" >/dev/null 2>&1 || true
say "$node built in $((SECONDS - started)) s ($(docker image inspect --format '{{.Size}}' "$node" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$node"
