# The Helm chart (helm/kubelambda), the images and the kind e2e cluster. Included by the top-level Makefile.
CHART := helm/kubelambda
HELM = $(shell bash hack/kube-binaries.sh helm 2>/dev/null | sed -n 's/^HELM_BIN=//p')/helm
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REGISTRY ?= ghcr.io/kubelambda
# docker buildx only (official bases): several platforms need PUSH=1 (a registry). Empty: this machine's platform.
PLATFORMS ?=
PUSH ?=
DOCKER ?= docker
# auto (official bases when Docker Hub answers, else Debian bases bootstrapped here), debian or official.
BASES ?= auto
IMAGES = IMAGE_REGISTRY=$(IMAGE_REGISTRY) VERSION=$(VERSION) BASES=$(BASES) PLATFORMS=$(PLATFORMS) PUSH=$(PUSH) \
	DOCKER=$(DOCKER) bash hack/images.sh
KIND_VERSION := v0.33.0
KIND ?= $(or $(shell command -v kind 2>/dev/null),go run sigs.k8s.io/kind@$(KIND_VERSION))
KIND_CLUSTER := kubelambda
E2E_NAMESPACE := kubelambda-system
# The runtime families (runtime-images/<family>/Dockerfile); hack/images.sh lists the tags of each
# (tests/unit/runtimes/test_runtimes_table.py: one per runtime of the runtime table at least). RUNTIME_IMAGES, the
# runtime images of the runtime table, comes from mk/runtime-images.mk (generated: make runtimes-generate).
RUNTIME_FAMILIES := python nodejs java ruby provided

.PHONY: chart-crds nats-authorization chart-lint chart-test require-docker docker-up images images-test image-kubelambda \
	$(addprefix image-runtime-,$(RUNTIME_FAMILIES)) kind-up kind-down

# Copies the generated CRDs (make crds) into the chart; tests/unit/test_chart.py fails when they drift.
chart-crds:
	rm -f $(CHART)/crds/kubelambda.io_*.yaml
	cp crds/kubelambda.io_*.yaml $(CHART)/crds/

# The NATS users and their permissions (operator/kubelambda/natsauth.py) as the chart's NATS reads them;
# tests/unit/test_chart.py fails when they drift.
nats-authorization: venv
	$(PY) -m kubelambda.natsauth > $(CHART)/files/nats-authorization.conf

# helm lint (default and maximal values), the chart's unit tests, and the install on the local cluster.
chart-lint: binaries
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/max-values.yaml

chart-test: venv binaries
	$(PY) -m pytest -q tests/unit/test_chart.py tests/integration/test_helm.py

# Everything below needs Docker; without it, it stops at once and says so.
require-docker:
	@command -v $(DOCKER) >/dev/null 2>&1 || { \
		echo "error: 'make $(MAKECMDGOALS)' needs Docker, and no '$(DOCKER)' command is on PATH." >&2; \
		echo "hint: without Docker, the same scenarios run on the local cluster: make integration" >&2; exit 2; }
	@$(DOCKER) info >/dev/null 2>&1 || { \
		echo "error: 'make $(MAKECMDGOALS)' needs Docker, and the Docker daemon does not answer ('$(DOCKER) info' failed)." >&2; \
		echo "hint: start Docker, or run the same scenarios on the local cluster: make integration" >&2; exit 2; }

# Installs Debian's docker.io if missing and starts dockerd when no daemon answers (root; idempotent).
docker-up:
	bash hack/docker-up.sh

# Every image the chart and the Functions use (docs/images.md), then their sizes. Starts Docker if needed; with no
# container registry reachable, builds on Debian bases bootstrapped here (BASES=auto), the control-plane image from
# the venv's wheelhouse (hack/wheelhouse.sh).
images: venv
	$(IMAGES)

# One image (all its tags), on a host whose Docker already answers.
image-kubelambda: require-docker
	$(IMAGES) kubelambda
$(addprefix image-runtime-,$(RUNTIME_FAMILIES)): image-runtime-%: require-docker
	$(IMAGES) runtime-$*

# The built images run for real: a hello Function per runtime image invoked through its agent, the memory
# limit seen inside, non-root users, no build tools (tests/images; not part of `make test` yet).
images-test: venv images
	$(PY) -m pytest tests/images -q

# kind: create the cluster (kind-config.yaml), build the images, load them into the node, install the chart
# (gateway on NodePort 30080, mapped to localhost:30080 by kind-config.yaml).
kind-up: require-docker binaries
	$(KIND) get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || $(KIND) create cluster --config kind-config.yaml --wait 120s
	$(MAKE) images PUSH=
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGE_REGISTRY)/kubelambda:$(VERSION) \
		$(addprefix $(IMAGE_REGISTRY)/,$(RUNTIME_IMAGES))
	$(HELM) upgrade --install kubelambda $(CHART) --namespace $(E2E_NAMESPACE) --create-namespace \
		--kube-context kind-$(KIND_CLUSTER) --set image.pullPolicy=Never \
		--set gateway.service.type=NodePort --set gateway.service.nodePort=30080 \
		--set gateway.httpRoutes=true --wait --timeout 5m

kind-down: require-docker
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# `make e2e-kind` (mk/kind.mk) is the e2e suite on a kind cluster assembled on this machine; `make e2e`
# (mk/container-node.mk) the same suite on this machine's container node.
