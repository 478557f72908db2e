# Queue bridges (RabbitMQ, NATS JetStream, Redis Streams, SQS API). Included by the top-level Makefile.
# ElasticMQ, the SQS-compatible server of the tests and the benchmark, is resolved from Maven Central by
# kubelambda.devcluster.servers.SqsServer on first use (cached under ~/.cache/kubelambda); `queue-servers` does it ahead.
.PHONY: queue-servers bench-queues

queue-servers: venv
	$(PY) -c 'from kubelambda.devcluster.servers import elasticmq_classpath; print(elasticmq_classpath())'

# Records/s end to end per broker to a no-op function (batch 100 and 10), beside the broker's own consumer
# throughput with the same client library in the same run.
bench-queues: venv binaries queue-servers
	$(PY) bench/queue_bench.py --messages 10000

# `make test` resolves ElasticMQ first, so that a fresh machine fails here, with Maven's own message, if at all.
test-deps: queue-servers
integration: queue-servers
