# The container node (kubelambda dev up --node container; docs/local-cluster.md "The container node") and the e2e
# suite on it. Included by the top-level Makefile.

.PHONY: node-binaries node-packages node-images e2e e2e-deps bench-container-node

# kubelet, kube-proxy (the pinned Kubernetes module), CoreDNS and kube-router, built once into ~/.cache/kubelambda/bin.
node-binaries: binaries
	bash hack/kube-binaries.sh node

# Debian's containerd, runc, CNI plugins, conntrack, ipset (kube-router), and Docker with debootstrap (the images
# are built with Docker on Debian bases bootstrapped here: hack/images.sh) (root). .ci/run installs the same list.
NODE_PACKAGES := containerd runc containernetworking-plugins conntrack iptables ipset docker.io debootstrap
node-packages:
	@missing=$$(for p in $(NODE_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# The e2e suite (tests/e2e): the chart on the container node, Functions invoked with boto3 through its gateway,
# ending with `dev down` and a check that nothing is left on the host. `make test` runs it last (docs/local-cluster.md).
e2e: e2e-deps
	$(PY) -m pytest -q tests/e2e

# What the e2e suite needs built: the images, the node's binaries and its own images (pause, NATS).
e2e-deps: venv node-packages images node-binaries node-images

# The pause and NATS images of the container node (hack/node-images.sh; `dev up --node container` makes them too).
# docker-up first: beside `make images` (make -j), the daemon hack/images.sh starts may not answer yet.
node-images: venv docker-up
	bash hack/node-images.sh >/dev/null

# Cold start from zero, container node beside process node in the same run (p50/p95, steps); then on the
# container node the warm pool's cold start and the memory of the platform's pods and of idle function pods.
bench-container-node: venv node-packages images node-binaries
	$(PY) bench/container_node_bench.py --runs 20
