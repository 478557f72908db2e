# The README's commands. `make test` is what CI runs (.ci/run).
PY ?= .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: venv lint types test unit integration demo bench bench-cluster bench-gateway binaries clean
.DEFAULT_GOAL := test

# Installed from the wheelhouse of the pins (hack/wheelhouse.sh, cached: a second venv needs no package index; the
# control-plane image is built from the same wheels).
# The install builds kubelambda._native (native/, Rust: setup.py) in place, cargo's build cached in NATIVE_TARGET_DIR
# (a warm rebuild takes seconds); a change to its sources reinstalls.
NATIVE_TARGET_DIR ?= $(HOME)/.cache/kubelambda/cargo
venv: .venv/.installed
.venv/.installed: pyproject.toml setup.py native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	CARGO_TARGET_DIR="$(NATIVE_TARGET_DIR)" .venv/bin/pip install -q --no-index \
	  --find-links "$$(PYTHON=.venv/bin/python bash hack/wheelhouse.sh)" -e '.[test]'
	touch $@

# The Kubernetes binaries (hack/kube-binaries.sh): the control plane, etcd, helm. `KUBE_BINARIES="all node"` adds the
# container node's kubelet and kube-proxy to the same go build; .ci/run leaves them to `make node-binaries`, built in
# the background during pytest (its packages shared with the control plane come from the Go build cache).
KUBE_BINARIES ?= all
binaries:
	bash hack/kube-binaries.sh $(KUBE_BINARIES)

lint: venv
	$(PY) -m ruff check operator tests bench
	$(PY) -m ruff format --check operator tests bench

types: venv
	$(PY) -m mypy

unit: venv
	$(PY) -m pytest tests/unit -q

integration: venv binaries
	$(PY) -m pytest tests/integration -q

# Lint, types, the agent's Go checks, every Python test (unit + integration on the real local cluster), then the
# e2e suite on the container node (root; mk/container-node.mk, docs/local-cluster.md "The e2e suite").
test: test-local
	$(MAKE) e2e

# `make test` without the e2e suite (.ci/run runs the two parts, the e2e suite's prerequisites building meanwhile).
# --durations: the slowest tests, for whoever wants the suite faster.
# PYTEST_WORKERS: pytest processes (pytest-xdist), each with a local cluster of its own, running whole test modules
# (--dist loadfile) in the order tests/conftest.py gives (the longest first); 0 = one process, no xdist. The suite
# mostly waits (control planes, pods, brokers), so two workers on two cores halve its wall time
# (docs/local-cluster.md, "Running the tests").
PYTEST_WORKERS ?= 2
.PHONY: test-local
test-local: lint types agent-test test-deps
	$(PY) -m pytest -q --durations=30 -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# What `make test` builds or fetches before its tests (mk/*.mk add theirs: test servers, runtime clients).
.PHONY: test-deps prepare
test-deps: binaries

# Everything `make test` builds, the e2e suite's images and node binaries included (e2e-deps), for a parallel make,
# so that the CPU-bound compiles (Kubernetes, Jaeger, the Collector, the Lambda Web Adapter) run beside the
# network-bound fetches (Go modules, Maven, npm, the images' Debian packages). The longest first: make starts the
# prerequisites in this order. .ci/run builds it in two parts: `make -j4 --output-sync=target prepare-local` (what
# pytest needs, and the agent tests' compiles), then e2e-deps in the background (niced) while the tests run.
.PHONY: prepare-local
prepare: prepare-local e2e-deps
prepare-local: binaries runtimes-ric-aws_lambda_ric jaeger venv test-deps agent-test-build

demo: venv binaries
	bash hack/demo.sh

# Every benchmark prints its figures beside a baseline or peer measured in the same run.
bench: bench-cluster agent-bench bench-operator bench-gateway bench-warm-pool bench-async bench-auth

bench-cluster: venv binaries
	$(PY) bench/local_cluster.py --pods 50

bench-gateway: venv binaries runtimes-build
	$(PY) bench/gateway_bench.py --cold 20 --requests 3000

# Warm invokes through a gateway with auth on (SigV4, bearer) beside one with auth off, and a cache miss's cost.
.PHONY: bench-auth
bench-auth: venv binaries runtimes-build
	$(PY) bench/auth_bench.py --rounds 10 --requests 300

# Cold starts from zero with and without the warm pool (Python, Node.js), beside a warm invoke (docs/warm-pools.md).
.PHONY: bench-warm-pool
bench-warm-pool: venv binaries runtimes-build
	$(PY) bench/warm_pool_bench.py --runs 20

# Invoke p50 through an alias beside $LATEST and the version; CreateFunction to first invoke beside kubectl create.
.PHONY: bench-versions
bench-versions: venv binaries runtimes-build
	$(PY) bench/versions_bench.py --requests 2000 --creates 5

clean:
	rm -rf .venv .kubelambda

# Per-component targets (runtime-images/agent and the runtimes) live in mk/*.mk.
include mk/*.mk

# The Function and Trigger CRDs, generated from the pydantic models (a unit test fails when they drift).
.PHONY: crds
crds: venv
	$(PY) -m kubelambda.api crds

# 1,000 Functions applied at once: time to Deployments + statuses, operator peak RSS, API writes per Function.
.PHONY: bench-operator
bench-operator: venv binaries
	$(PY) bench/operator_scale.py --functions 1000

# Many Functions present: operator and gateway RSS, the gateway's CPU per warm call with 10, 1,000, 3,000, 10,000 present.
.PHONY: bench-functions-many
bench-functions-many: venv binaries
	$(PY) bench/functions_many.py --functions 1000,3000,10000

# Event invocations: accepted/s through the gateway beside raw JetStream publish-with-ack, end-to-end throughput
# to a no-op function and the queue's oldest event age (issue 7).
.PHONY: bench-async
bench-async: venv binaries
	$(PY) bench/async_bench.py --events 6000 --clients 32
