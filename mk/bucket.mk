# The bucket bridge (issue 8). Included by the top-level Makefile.
.PHONY: bench-bucket

# Upload → function start p50/p95 in notification and poll mode, and events/s through one bridge, each beside a
# baseline measured in the same run (PutObject alone, Event invocations straight to the gateway).
bench-bucket: venv binaries
	$(PY) bench/bucket_bench.py --samples 40 --events 1000 --poll-interval 1

# VersityGW, built from its Go module and cached (hack/versitygw.sh): the real store whose bucket notifications
# the notification mode's integration test receives (tests/kltest/versitygw.py).
.PHONY: versitygw
versitygw:
	@bash hack/versitygw.sh >/dev/null
test-deps: versitygw
integration: versitygw
