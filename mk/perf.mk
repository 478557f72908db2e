# Performance at scale (issue 24): each figure beside a floor or peer measured in the same run.

# CPU microseconds per warm call in the gateway process beside a floor aiohttp proxy and the agent.
.PHONY: bench-gateway-cpu
bench-gateway-cpu: venv binaries runtimes-build
	$(PY) bench/gateway_cpu.py --requests 3000

# 200 concurrent first calls to one function at zero; 100 functions woken at once (beside a plain scale-up
# of the same pods and Lambda's 1,000 environments per 10 s).
.PHONY: bench-burst
bench-burst: venv binaries runtimes-build
	$(PY) bench/burst_bench.py --calls 200 --functions 100

# The agent beside OpenFaaS' of-watchdog (HTTP mode) with the same no-op Python handler: throughput, p50/p99, idle
# RSS (of-watchdog built by hack/of-watchdog.sh; OF_WATCHDOG_SRC=<a git clone> when the Go module proxy refuses it).
.PHONY: bench-agent-peer
bench-agent-peer: venv agent
	$(PY) bench/agent_bench.py --peer
