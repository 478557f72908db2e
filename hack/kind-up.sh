#!/usr/bin/env bash
# `make kind-local-up`: kind on this machine, offline. Docker with the runc wrapper (hack/kind-docker.sh), kind
# itself (sigs.k8s.io/kind from the Go module proxy, cached), the node image assembled here
# (hack/kind-node-image.sh), `kind create cluster` with hack/kind-config.yaml; then the images of `make images`
# and the platform's NATS imported into the node, unpacked when first used (hack/kind-load.sh, not `kind load`),
# and the chart installed as on the container node (kubelambda.devcluster._chart: restricted namespace, NATS on
# a hostPath volume, gateway on NodePort 30080 of the node address, enforced NetworkPolicies). A cluster that exists is kept; images and chart are re-applied.
# Prints KIND=, KUBECONFIG=, NODE_IP= and GATEWAY_URL= on stdout, progress and timings on stderr.
#   KIND_CLUSTER       cluster name (default kubelambda-local)
#   KUBELAMBDA_CACHE   cache root (default ~/.cache/kubelambda): kind in kind-<version>/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache="${KUBELAMBDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubelambda}"
kind_version=v0.33.0
name=${KIND_CLUSTER:-kubelambda-local}
registry=ghcr.io/kubelambda
system_ns=kubelambda-system
say() { echo "kind-up: $*" >&2; }
step() { say "$1: $((SECONDS - t0)) s"; t0=$SECONDS; }
t0=$SECONDS

bash "$here/kind-docker.sh"
kind=$cache/kind-$kind_version/kind
if [[ ! -x $kind ]]; then
  say "building kind $kind_version (sigs.k8s.io/kind from the Go module proxy)"
  GOBIN=$cache/kind-$kind_version.tmp GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 \
    nice -n 10 go install "sigs.k8s.io/kind@$kind_version"
  rm -rf "$cache/kind-$kind_version" && mv "$cache/kind-$kind_version.tmp" "$cache/kind-$kind_version"
fi
node_image=$(bash "$here/kind-node-image.sh")
step "node image $node_image"
eval "$(bash "$here/kube-binaries.sh" | sed -n 's/^\([A-Z_]*_BIN\)=\(.*\)$/\1="\2"/p')"

state=$root/.kubelambda/kind
mkdir -p "$state"
kubeconfig=$state/kubeconfig
if ! "$kind" get clusters 2>/dev/null | grep -qx "$name"; then
  sed "s/@ETCD_TAG@/${ETCD_VERSION#v}-0/" "$here/kind-config.yaml" >"$state/kind-config.yaml"
  say "kind create cluster --name $name --image $node_image"
  "$kind" create cluster --name "$name" --config "$state/kind-config.yaml" --image "$node_image" \
    --kubeconfig "$kubeconfig" --wait 300s >&2
  step "kind create cluster (node Ready)"
fi
"$kind" get kubeconfig --name "$name" >"$kubeconfig"
export KUBECONFIG=$kubeconfig
kubectl=$KUBE_BIN/kubectl
node=$name-control-plane
node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$node")

# The images: the control plane and every runtime image Docker holds (make images), and the NATS image.
nats_image=$(NATS_SERVER=${NATS_SERVER:-$root/.venv/bin/nats-server} bash "$here/node-images.sh" | grep '/nats:')
mapfile -t images < <(docker image ls --format '{{.Repository}}:{{.Tag}}' "$registry/*" | grep -v ':<none>$' | sort)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
printf '%s\n' "${images[@]}" | grep -qx "$registry/kubelambda:$version" \
  || { say "error: image $registry/kubelambda:$version is not in Docker: make images"; exit 1; }
bash "$here/kind-load.sh" "$node" "$nats_image" "${images[@]}"
step "images into the node (${#images[@]} images + NATS, hack/kind-load.sh)"

# NATS's volume: a directory in the node owned by NATS's user, and a PersistentVolume bound to its claim.
pv_dir=/var/lib/kubelambda/pv/nats-0
docker exec "$node" sh -c "mkdir -p $pv_dir && chown 65532:65532 $pv_dir"
# Released by a `helm uninstall` that deleted the claim (uninstall.keepData off): emptied and made again for the
# next install's claim, as the container node does (kubelambda.devcluster._chart).
if [[ $("$kubectl" get pv kubelambda-dev-nats-data -o 'jsonpath={.status.phase}' --ignore-not-found) == Released ]]; then
  "$kubectl" delete pv kubelambda-dev-nats-data --wait >&2
  docker exec "$node" sh -c "find $pv_dir -mindepth 1 -delete"
fi
"$kubectl" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $system_ns
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
    pod-security.kubernetes.io/audit: restricted
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: kubelambda-dev-nats-data
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard  # the PVC gets kind's default class; this PV is bound to it ahead
  hostPath: {path: $pv_dir, type: Directory}
  claimRef: {namespace: $system_ns, name: data-kubelambda-nats-0}
YAML
nats_repo=${nats_image%:*}
# Gateways at 100m CPU requested, not 250m: the kind node also runs the control plane (750m of its CPUs
# requested on a 2-core machine), and three gateways at 250m left no room for the CPU test's 1769 MB function.
"$HELM_BIN/helm" upgrade --install kubelambda "$root/helm/kubelambda" --namespace "$system_ns" --create-namespace \
  --set image.pullPolicy=Never \
  --set "nats.image.registry=${nats_repo%%/*}" --set "nats.image.repository=${nats_repo#*/}" \
  --set "nats.image.tag=${nats_image##*:}" --set nats.image.pullPolicy=Never \
  --set gateway.service.type=NodePort --set gateway.service.nodePort=30080 \
  --set async.worker.separate=true \
  --set gateway.resources.requests.cpu=100m \
  --set "networkPolicy.apiServerCIDRs={$node_ip/32}" --set "networkPolicy.apiServerPorts={6443}" \
  --wait --timeout 8m >&2
step "helm upgrade --install"
echo "KIND=$kind"
echo "KUBECONFIG=$kubeconfig"
echo "NODE_IP=$node_ip"
echo "GATEWAY_URL=http://$node_ip:30080"
