# kind on this machine, offline (docs/local-cluster.md "kind on this machine"): a node image assembled here from
# Debian packages and our own Kubernetes builds, then the e2e suite on it. Not part of `make test`.
# Included by the top-level Makefile; `make kind-up` (mk/chart.mk) is the kind of hosts with internet.
KIND_LOCAL_CLUSTER := kubelambda-local
KIND_LOCAL_BIN = $(HOME)/.cache/kubelambda/kind-$(KIND_VERSION)

.PHONY: kind-node-image kind-local-up kind-local-down e2e-kind

# The node image (kubelambda.io/kind/node:<KUBE_VERSION>-<inputs hash>): kubeadm, the control-plane images,
# systemd + Debian's containerd on the Debian base; cached, so a second run only checks (hack/kind-node-image.sh).
kind-node-image: require-docker venv binaries node-binaries
	bash hack/kind-docker.sh
	bash hack/kind-node-image.sh

# The cluster from that image, the images of `make images` imported (hack/kind-load.sh), the chart installed.
kind-local-up: require-docker venv images binaries node-binaries
	bash hack/kind-up.sh

kind-local-down:
	@if [ -x $(KIND_LOCAL_BIN)/kind ]; then $(KIND_LOCAL_BIN)/kind delete cluster --name $(KIND_LOCAL_CLUSTER); fi

# The e2e suite (tests/e2e) on that cluster (KUBELAMBDA_TEST_BACKEND=kind, read by tests/e2e/conftest.py).
e2e-kind: require-docker kind-local-up
	PATH=$(KIND_LOCAL_BIN):$$PATH KUBELAMBDA_TEST_BACKEND=kind KUBELAMBDA_KIND_CLUSTER=$(KIND_LOCAL_CLUSTER) \
		$(PY) -m pytest -q tests/e2e
