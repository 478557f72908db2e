"""Fixtures: the real agent binary, run with a real runtime over a folder of test functions.

Every function gets its own loopback IP (as pods do in the local cluster), so tests never fight
over ports.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from kubelambda.runtimes import (
    LocalFunction,
    agent_binary,
    build_go_function,
    compile_java_function,
    java_runtime_dir,
    local_command,
)
from kubelambda.runtimes.table import RUNTIMES

FUNCTIONS = Path(__file__).parent / "functions"
FAMILY = {"python3.12": "python", "nodejs20": "nodejs", "ruby3.3": "ruby", "provided": "provided"}

StartFunction = Callable[..., LocalFunction]


@pytest.fixture(scope="session")
def agent() -> Path:
    return agent_binary()


@pytest.fixture(scope="session")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed; the Node.js runtime tests need it")
    return found


def _tool(name: str, why: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; {why} (.ci/run installs it)")
    return found


@pytest.fixture(scope="session")
def ruby() -> str:
    return _tool("ruby", "the Ruby runtime tests need it")


@pytest.fixture(scope="session")
def java_runtime() -> Path:
    """Our Java client, built by hack/build-runtime-java.sh (Maven) on first use and cached."""
    _tool("java", "the Java runtime tests need a JDK >= 17")
    return java_runtime_dir()


@pytest.fixture(scope="session")
def java_code(java_runtime: Path) -> Path:
    """tests/.../functions/java compiled against aws-lambda-java-core (cached by source hash)."""
    _tool("javac", "the Java runtime tests compile their handlers")
    return compile_java_function(FUNCTIONS / "java")


@pytest.fixture(scope="session")
def go_code() -> Path:
    """tests/.../functions/go built with aws-lambda-go into a bootstrap binary (cached by source hash)."""
    _tool("go", "the Go runtime tests build their handler")
    return build_go_function(FUNCTIONS / "go")


def free_loopback(ports: Sequence[int]) -> str:
    for _ in range(50):
        ip = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        socks = []
        try:
            for port in ports:
                s = socket.socket()
                socks.append(s)
                s.bind((ip, port))
            return ip
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free loopback address found")


@pytest.fixture
def start_function(agent: Path, node: str, tmp_path: Path) -> Iterator[StartFunction]:
    started: list[LocalFunction] = []

    def start(
        runtime: str,
        handler: str,
        *,
        workers: int = 1,
        timeout_s: float = 3.0,
        memory_mb: int = 256,
        code: Path | None = None,
        runtime_cmd: list[str] | None = None,
        environment: dict[str, str] | None = None,
        wait: bool = True,
    ) -> LocalFunction:
        ip = free_loopback([8080, *range(9001, 9001 + workers)])
        cmd = local_command(
            runtime,
            code or FUNCTIONS / FAMILY[runtime],
            handler,
            agent=agent,
            listen=f"{ip}:8080",
            workers=workers,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            function_name="test-fn",
            base_env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
            environment={"GREETING": "hello", **(environment or {})},
            runtime_cmd=runtime_cmd,
            interpreter=node if RUNTIMES[runtime].family == "nodejs" else None,
        )
        fn = LocalFunction(cmd)
        started.append(fn)
        fn.start()
        if wait:
            fn.wait_ready(timeout=30)
        return fn

    yield start
    for fn in started:
        fn.stop()
