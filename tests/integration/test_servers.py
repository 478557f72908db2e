"""The brokers and stores the platform's tests and the local cluster start: each answers its real protocol; and
a server whose port is taken between "found free" and "bound" starts again on new ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.devcluster._controlplane import ControlPlane, Endpoints
from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster._process import alive
from kubelambda.devcluster.servers import HOST, NatsServer, RabbitMQServer, RedisServer, S3Server

pytestmark = pytest.mark.integration


async def roundtrip(port: int, send: bytes, until: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(send)
        await writer.drain()
        data = b""
        while until not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()


async def test_nats_with_jetstream(tmp_path: Path) -> None:
    async with NatsServer(tmp_path) as server:
        greeting = await roundtrip(server.port, b'CONNECT {"verbose":false}\r\nPING\r\n', b"PONG")
        assert greeting.startswith(b"INFO ")
        info = json.loads(greeting.split(b"\r\n", 1)[0][5:])
        assert info["jetstream"] is True
        pids = [p.pid for p in server.procs]
    assert not any(alive(pid) for pid in pids)


async def test_redis(tmp_path: Path) -> None:
    async with RedisServer(tmp_path) as server:
        out = await roundtrip(server.port, b"SET k v\r\nGET k\r\n", b"$1\r\nv\r\n")
        assert out == b"+OK\r\n$1\r\nv\r\n"


async def test_rabbitmq_speaks_amqp(tmp_path: Path) -> None:
    async with RabbitMQServer(tmp_path) as server:
        frame = await roundtrip(server.port, b"AMQP\x00\x00\x09\x01", b"\xce")
        # A method frame (type 1) on channel 0 carrying connection.start (class 10, method 10).
        assert frame[0] == 1
        assert frame[7:11] == b"\x00\x0a\x00\x0a"
        pids = [p.pid for p in server.procs]
    assert not any(alive(pid) for pid in pids)  # epmd too


async def test_s3_put_and_get_an_object(tmp_path: Path) -> None:
    async with S3Server(tmp_path) as server:

        def put_get() -> bytes:
            for url, data in (
                (f"{server.endpoint}/bucket", None),
                (f"{server.endpoint}/bucket/hello.txt", b"hi"),
            ):
                req = urllib.request.Request(url, data=data or b"", method="PUT")
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.status == 200
            with urllib.request.urlopen(f"{server.endpoint}/bucket/hello.txt", timeout=10) as resp:
                body: bytes = resp.read()
                return body

        assert await asyncio.to_thread(put_get) == b"hi"


async def test_a_broker_whose_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind((HOST, port))
        server = RedisServer(tmp_path)
        server.port = port  # as if it had picked this port a moment before someone took it
        async with server:
            assert server.port != port
            assert await roundtrip(server.port, b"PING\r\n", b"+PONG")
            assert "Address already in use" in server.log.read_text()


async def test_s3_whose_port_another_server_answers_on_starts_on_another(tmp_path: Path) -> None:
    """Another HTTP server (here one answering as SeaweedFS' filer does) listens on the S3 port picked: it
    answers the readiness probe, but ours never listened there, so the start goes on until ours does (on new
    ports, after it exits saying the port is in use). CI once got a filer's JSON from a test S3 endpoint."""

    async def filer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.readuntil(b"\r\n\r\n"):
                body = b'{"name":"events"}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    taken = free_port(offset=10000)  # a port SeaweedFS could have picked (its gRPC port, + 10000, free too)
    other = await asyncio.start_server(filer, HOST, taken)
    try:
        server = S3Server(tmp_path)
        server.s3_port = server.port = (
            taken  # as if it had picked it a moment before the other server bound it
        )
        async with server:
            assert server.s3_port != taken
            assert "address already in use" in server.log.read_text()

            def listing() -> bytes:
                with urllib.request.urlopen(f"{server.endpoint}/", timeout=10) as resp:
                    body: bytes = resp.read()
                    return body

            assert b"ListAllMyBucketsResult" in await asyncio.to_thread(listing)
    finally:
        other.close()
        await other.wait_closed()


async def test_the_control_plane_starts_again_on_new_ports_when_the_api_servers_was_taken(
    tmp_path: Path,
) -> None:
    ports = Endpoints.allocate()
    taken = ports.apiserver
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", taken))
        plane = ControlPlane(tmp_path, await asyncio.to_thread(ensure_binaries, quiet=True), ports=ports)
        try:
            await plane.start(controllers=False)
            assert plane.ports.apiserver != taken
            assert "address already in use" in (tmp_path / "logs" / "kube-apiserver.log").read_text()
            assert plane.server == f"https://127.0.0.1:{plane.ports.apiserver}"
        finally:
            await plane.stop()
