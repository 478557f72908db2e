"""Stream brokers on loopback for the tests, benchmarks and the local cluster: Kafka (KRaft) and kinesalite.

| server | program | where it comes from |
|---|---|---|
| :class:`KafkaServer` (KRaft, broker + controller in one JVM) | ``java kafka.Kafka`` | Maven Central jars, ``hack/stream-servers.sh`` |
| :class:`KinesisServer` (Kinesis API) | ``node`` + ``kinesalite`` | npm ``kinesalite``, ``hack/stream-servers.sh`` |

Redis Streams and NATS JetStream come from :mod:`kubelambda.devcluster.servers` (``RedisServer``, ``NatsServer``).
Both programs are installed, cached, by ``hack/stream-servers.sh`` (``make stream-servers``); a missing install
is an error saying so, never a silent skip.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import uuid
from pathlib import Path

from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster.servers import HOST, LocalServer, ServerMissing, _exchange, _http_ok, find_program

KAFKA_VERSION = "4.3.1"
KINESALITE_VERSION = "3.3.3"


def kafka_cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes in URL-safe base64 without padding, never starting with ``-``
    (Kafka's own ``Uuid.randomUuid`` draws again for those too: a command line would read one as an option; the
    one-in-64 chance failed ``kafka-storage format -t <id>`` in CI)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def cache_dir() -> Path:
    root = os.environ.get("KUBELAMBDA_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubelambda"


def _installed(folder: Path, what: str) -> Path:
    if not (folder / ".complete").exists():
        raise ServerMissing(
            f"{what} is not installed in {folder}: run hack/stream-servers.sh (make stream-servers)"
        )
    return folder


def kafka_properties(*, node_id: int, port: int, controller_port: int, log_dir: Path, partitions: int) -> str:
    """A one-node KRaft configuration (broker and controller), tuned to start fast and keep little state."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": str(partitions),
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.flush.interval.messages": "1000000",
    }
    return "".join(f"{k}={v}\n" for k, v in settings.items())


def _api_versions_request() -> bytes:
    # ApiVersions v0: request header v1 (api key 18, version 0, correlation id 1, client id).
    client = b"kubelambda"
    body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
    return struct.pack(">i", len(body)) + body


def _api_versions_ok(data: bytes) -> bool:
    # size (4) + correlation id (4) + error code (2) == 0
    return len(data) >= 10 and struct.unpack(">i", data[4:8])[0] == 1 and data[8:10] == b"\x00\x00"


class KafkaServer(LocalServer):
    """Kafka in KRaft mode, one JVM as broker and controller; ``bootstrap`` is ``127.0.0.1:<port>``.

    ``partitions`` is the default partition count of auto-created topics.
    """

    name = "kafka"

    def __init__(
        self, data_dir: Path, *, port: int | None = None, partitions: int = 1, heap_mb: int = 384
    ) -> None:
        self.partitions = partitions
        self.heap_mb = heap_mb
        super().__init__(data_dir, port=port)

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.controller_port = free_port()

    def _own_ports(self) -> list[int]:
        return [self.port, self.controller_port]

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _java(self) -> list[str]:
        lib = _installed(cache_dir() / f"kafka-{KAFKA_VERSION}", f"Kafka {KAFKA_VERSION}") / "lib"
        java = find_program("java", provided_by="a JDK >= 17 (Debian default-jdk-headless)")
        return [
            java,
            "-Xms64m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-Xshare:auto",
            "-Djava.awt.headless=true",
            "-cp",
            f"{lib}/*",
        ]

    async def _launch(self) -> None:
        java = self._java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(
            kafka_properties(
                node_id=1,
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.data_dir / "data",
                partitions=self.partitions,
            )
        )
        if not (self.data_dir / "data" / "meta.properties").exists():
            fmt = self._spawn(
                [
                    *java,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={kafka_cluster_id()}",
                    f"--config={config}",
                ]
            )
            code = await _wait_exit(fmt)
            self.procs.remove(fmt)
            if code != 0:
                raise RuntimeError(f"kafka-storage format exited with {code}:\n{self._tail()}")
        self._spawn([*java, "kafka.Kafka", str(config)])
        request = _api_versions_request()
        await self._wait(lambda: _exchange(self.port, request, expect=_api_versions_ok, size=64), timeout=90)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    return int(await asyncio.to_thread(proc.wait, 120))


class KinesisServer(LocalServer):
    """kinesalite (in-memory) on 127.0.0.1; ``endpoint`` is its HTTP URL. Streams become ACTIVE at once."""

    name = "kinesalite"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def _launch(self) -> None:
        home = _installed(
            cache_dir() / f"kinesalite-{KINESALITE_VERSION}", f"kinesalite {KINESALITE_VERSION}"
        )
        node = find_program("node", provided_by="Debian nodejs")
        index = home / "node_modules" / "kinesalite" / "index.js"
        options = {"createStreamMs": 0, "deleteStreamMs": 0, "updateStreamMs": 0, "shardLimit": 1000}
        # The CLI listens on every address; started from its module it listens on loopback only.
        script = (
            f"require({json.dumps(str(index))})({json.dumps(options)})"
            f".listen({self.port}, {json.dumps(HOST)}, () => console.log('kinesalite listening'))"
        )
        self._spawn([node, "-e", script])
        await self._wait(lambda: _http_ok(self.endpoint), timeout=30)
