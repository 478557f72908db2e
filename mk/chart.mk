# The Helm chart (helm/kubelambda), the images and the kind e2e cluster. Included by the top-level Makefile.
CHART := helm/kubelambda
HELM = $(shell bash hack/kube-binaries.sh helm 2>/dev/null | sed -n 's/^HELM_BIN=//p')/helm
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REGISTRY ?= ghcr.io/kubelambda
# buildx platforms: one (this machine's) loads the image into docker; several need PUSH=1 (a registry).
PLATFORMS ?= linux/$(shell uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/')
PUSH ?=
DOCKER ?= docker
BUILDX = $(DOCKER) buildx build --platform $(PLATFORMS) $(if $(PUSH),--push,--load)
KIND_VERSION := v0.33.0
KIND ?= $(or $(shell command -v kind 2>/dev/null),go run sigs.k8s.io/kind@$(KIND_VERSION))
KIND_CLUSTER := kubelambda
E2E_NAMESPACE := kubelambda-system
# runtime family → the tags its Dockerfile builds (build-arg name and value per tag).
RUNTIME_FAMILIES := python nodejs java ruby provided

.PHONY: chart-crds chart-lint chart-test require-docker images image-kubelambda \
	$(addprefix image-runtime-,$(RUNTIME_FAMILIES)) kind-up kind-down e2e

# Copies the generated CRDs (make crds) into the chart; tests/unit/test_chart.py fails when they drift.
chart-crds:
	rm -f $(CHART)/crds/kubelambda.io_*.yaml
	cp crds/kubelambda.io_*.yaml $(CHART)/crds/

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

image-kubelambda: require-docker
	$(BUILDX) -f Dockerfile -t $(IMAGE_REGISTRY)/kubelambda:$(VERSION) .

image-runtime-python: require-docker
	$(BUILDX) -f runtime-images/python/Dockerfile --build-arg PYTHON_VERSION=3.12 -t $(IMAGE_REGISTRY)/runtime-python:3.12 runtime-images
	$(BUILDX) -f runtime-images/python/Dockerfile --build-arg PYTHON_VERSION=3.13 -t $(IMAGE_REGISTRY)/runtime-python:3.13 runtime-images
image-runtime-nodejs: require-docker
	$(BUILDX) -f runtime-images/nodejs/Dockerfile --build-arg NODE_VERSION=20 -t $(IMAGE_REGISTRY)/runtime-nodejs:20 runtime-images
	$(BUILDX) -f runtime-images/nodejs/Dockerfile --build-arg NODE_VERSION=22 -t $(IMAGE_REGISTRY)/runtime-nodejs:22 runtime-images
image-runtime-java: require-docker
	$(BUILDX) -f runtime-images/java/Dockerfile --build-arg JAVA_VERSION=21 -t $(IMAGE_REGISTRY)/runtime-java:21 runtime-images
image-runtime-ruby: require-docker
	$(BUILDX) -f runtime-images/ruby/Dockerfile --build-arg RUBY_VERSION=3.3 -t $(IMAGE_REGISTRY)/runtime-ruby:3.3 runtime-images
image-runtime-provided: require-docker
	$(BUILDX) -f runtime-images/provided/Dockerfile -t $(IMAGE_REGISTRY)/runtime-provided:latest runtime-images
	$(BUILDX) -f runtime-images/provided/Dockerfile --build-arg RUNTIME_NAME=go -t $(IMAGE_REGISTRY)/runtime-provided:go runtime-images

images: image-kubelambda $(addprefix image-runtime-,$(RUNTIME_FAMILIES))

# kind: create the cluster (kind-config.yaml), build the images, load them into the node, install the chart
# (gateway on NodePort 30080, mapped to localhost:30080 by kind-config.yaml).
kind-up: require-docker binaries
	$(KIND) get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || $(KIND) create cluster --config kind-config.yaml --wait 120s
	$(MAKE) images PLATFORMS=$(PLATFORMS) PUSH=
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGE_REGISTRY)/kubelambda:$(VERSION) \
		$(foreach t,python:3.12 python:3.13 nodejs:20 nodejs:22 java:21 ruby:3.3 provided:latest provided:go,$(IMAGE_REGISTRY)/runtime-$(t))
	$(HELM) upgrade --install kubelambda $(CHART) --namespace $(E2E_NAMESPACE) --create-namespace \
		--kube-context kind-$(KIND_CLUSTER) --set image.pullPolicy=Never \
		--set gateway.service.type=NodePort --set gateway.service.nodePort=30080 \
		--set gateway.httpRoutes=true --wait --timeout 5m

kind-down: require-docker
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# The integration suite against kind (KUBELAMBDA_TEST_BACKEND=kind, read by tests/kltest/cluster.py).
e2e: require-docker kind-up
	KUBELAMBDA_TEST_BACKEND=kind KUBELAMBDA_KIND_CLUSTER=$(KIND_CLUSTER) $(PY) -m pytest -q tests/integration
