# The per-pod agent and the runtime clients (runtime-images/). Included by the top-level Makefile.
AGENT_DIR := runtime-images/agent

.PHONY: agent agent-test agent-fuzz runtimes-ric runtimes-test agent-bench

# Builds (or finds cached) the static agent binary and prints its path.
agent:
	@bash hack/build-agent.sh

# go vet, gofmt and the race-enabled table tests of the agent.
agent-test:
	cd $(AGENT_DIR) && go vet ./...
	@cd $(AGENT_DIR) && unformatted="$$(gofmt -l .)" && if [ -n "$$unformatted" ]; then \
		echo "gofmt needed: $$unformatted"; exit 1; fi
	cd $(AGENT_DIR) && go test -race -count=1 ./...

# A short fuzzing run of the Runtime API request parsing.
agent-fuzz:
	cd $(AGENT_DIR) && go test -run '^$$' -fuzz FuzzRuntimeAPI -fuzztime 30s .

# Installs AWS's own runtime interface clients into the cache (the integration tests do it too).
runtimes-ric: venv
	$(PY) -m kubelambda.runtimes.ric

# The runtimes' tests through the real agent (Python and Node.js, ours and AWS's clients).
runtimes-test: venv agent
	$(PY) -m pytest tests/unit/runtimes tests/integration/runtimes -q

# Agent vs the AWS Lambda Runtime Interface Emulator, overhead and idle RSS.
agent-bench: venv agent
	$(PY) bench/agent_bench.py
