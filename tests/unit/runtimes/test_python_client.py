"""The Python runtime client's reading of Runtime API answers (runtime-images/python/bootstrap.py), against a real
socket that sends the answer as given: the head parsed in one piece when it is whole in the buffer, line by line
otherwise. (The ``bootstrap`` fixture: conftest.py.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


BODY = b'{"a": "\r\n\r\n"}'  # a body may hold what ends a head
EVENT_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: Req-1\r\n"
    b"Lambda-Runtime-Deadline-Ms:  1796510000000 \r\nContent-Length: %d\r\n\r\n" % len(BODY)
)


@pytest.mark.parametrize(
    ("pieces", "body"),
    [
        ([EVENT_HEAD + BODY], BODY),
        ([EVENT_HEAD[:40], EVENT_HEAD[40:] + BODY], BODY),  # the head's end not yet read: line by line
        ([EVENT_HEAD.replace(b"\r\n", b"\n") + BODY], BODY),  # bare LF lines
        (
            [
                b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: Req-1\r\nLambda-Runtime-Deadline-Ms: 1796510000000\r\n"
                b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n8;x=1\r\n "\r\n\r\n"}\r\n0\r\nTrailer: t\r\n\r\n'
            ],
            BODY,
        ),
    ],
    ids=["whole head", "head sent in two writes", "LF lines (line by line)", "chunked"],
)
def test_next_reads_headers_and_body(
    bootstrap: ModuleType, listener: socket.socket, pieces: list[bytes], body: bytes
) -> None:
    client = bootstrap.RuntimeClient(f"127.0.0.1:{listener.getsockname()[1]}")
    conn, _ = listener.accept()
    with conn:
        for piece in pieces:
            conn.sendall(piece)
        headers, got = client.next()
        assert got == body
        assert (
            headers["lambda-runtime-aws-request-id"] == "Req-1"
        )  # the value's case kept, the name's lowered
        assert headers["lambda-runtime-deadline-ms"] == "1796510000000"
        assert conn.recv(4096).startswith(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n")


def test_answers_one_after_another_on_one_connection(bootstrap: ModuleType, listener: socket.socket) -> None:
    """The 202 for a response and the next event can come in one read: each is read whole, nothing more."""
    client = bootstrap.RuntimeClient(f"127.0.0.1:{listener.getsockname()[1]}")
    conn, _ = listener.accept()
    accepted = b'HTTP/1.1 202 Accepted\r\nContent-Length: 16\r\n\r\n{"status":"OK"}\n'
    with conn:
        conn.sendall(accepted + EVENT_HEAD + BODY)
        status, answer = client._send_then_next(b"")
        assert (status, answer) == (202, b'{"status":"OK"}\n')
        headers, got = client.next()
        assert (headers["lambda-runtime-aws-request-id"], got) == ("Req-1", BODY)


def test_a_closed_connection_is_an_error(bootstrap: ModuleType, listener: socket.socket) -> None:
    client = bootstrap.RuntimeClient(f"127.0.0.1:{listener.getsockname()[1]}")
    conn, _ = listener.accept()
    conn.close()
    with pytest.raises(ConnectionError, match="closed the connection"):
        client._read_response()
