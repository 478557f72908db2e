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
