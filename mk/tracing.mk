# OpenTelemetry traces (issue 20, docs/tracing.md). Included by the top-level Makefile.

# Jaeger v2, built from its Go module and cached (hack/jaeger.sh): the real trace backend the tracing tests send
# OTLP to and query back (tests/kltest/jaeger.py), and the tracing bench exports to.
.PHONY: jaeger
jaeger:
	@bash hack/jaeger.sh >/dev/null
test-deps: jaeger
integration: jaeger

# Warm invoke p50/p99 through gateways alike but for tracing: off (and a 2nd gateway off: the noise), on with
# sampling 0, 0.01 and 1 (spans to a real Jaeger), interleaved rounds in the same run.
.PHONY: bench-tracing
bench-tracing: venv binaries runtimes-build jaeger
	$(PY) bench/tracing_bench.py --rounds 8 --requests 300
