#!/usr/bin/env bash
# Images from Docker into a kind node's containerd without unpacking them: `hack/kind-load.sh NODE IMAGE...`.
# `kind load docker-image` unpacks every layer of every image at once (`ctr images import` with a snapshotter):
# 13 minutes for the 12 images of `make images` here, and a code image's load outlived its test's timeout. The
# node's containerd CRI unpacks an image when a container first uses it (what the container node does with its
# own imports, kubelambda.devcluster._containernode.import_image), so only the images used are unpacked, once.
# The same `ctr` import hack/kind-node-image.sh makes for the node image's own images.
set -euo pipefail
node=${1:?usage: kind-load.sh NODE IMAGE...}
shift
(($#)) || { echo "kind-load.sh: no image given" >&2; exit 2; }
docker save "$@" | docker exec -i "$node" ctr -n k8s.io images import --all-platforms --no-unpack --digests - >&2
