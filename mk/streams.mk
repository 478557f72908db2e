# Stream brokers for the stream bridges' tests and benchmark (Kafka in KRaft mode, kinesalite), cached under
# ~/.cache/kubelambda by hack/stream-servers.sh. Included by the top-level Makefile.
.PHONY: stream-servers bench-streams

stream-servers:
	@bash hack/stream-servers.sh

# `make test` installs them first, so that a fresh machine fails here, with the installer's own message, if at all.
test-deps: stream-servers
integration: stream-servers

# Records/s end to end per stream source to a no-op function (batch 100 and 10, 3 rounds), beside the broker's own consumer
# throughput with the same client library in the same run.
bench-streams: venv binaries stream-servers
	$(PY) bench/stream_bench.py --records 20000

# Row changes/s through one PostgreSQL change-stream bridge beside psycopg2's own replication read rate, and
# commit → function start latency (docs/triggers-database.md).
.PHONY: bench-postgres
bench-postgres: venv binaries
	$(PY) bench/postgres_bench.py --records 20000
