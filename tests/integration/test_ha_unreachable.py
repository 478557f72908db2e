"""An instance that does not accept connections for a while (issue 18): a call is not throttled for it.

Under load (load 70-110 on this machine) a gateway's connect to the only ready instance timed out and the call
got a 429 (ConcurrentInvocationLimitExceeded), as if the function were at its limit. Here the stall is real: the
instance's agent is stopped (SIGSTOP) and its listening socket's accept queue filled, so the kernel drops the
gateway's SYNs, as for an agent (or a machine) too loaded to accept; the call connects again until the agent
accepts, or fails at its deadline with a retryable ServiceException that says what happened, never a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from kltest import Cluster, wait_for
from kltest.platform import PlatformUnderTest, deploy, python_function, running_platform
from kubelambda.kube import KubeClient

pytestmark = pytest.mark.integration
HANDLER = """
def handler(event, context):
    return {"ok": True}
"""
SHORT_TIMEOUT = 3  # the function timeout of the call that fails: no cold-start allowance is added (below)


@pytest.fixture(scope="module")
async def platform(cluster: Cluster, kube: KubeClient) -> AsyncIterator[PlatformUnderTest]:
    # No cold-start allowance: a call's deadline is its function's timeout after it was taken.
    async with running_platform(cluster, kube, cold_start_allowance_seconds=0) as running:
        yield running


def listener_pid(endpoint: str) -> int:
    """The process listening on ``endpoint`` (``ip:port``, a pod's own address): its agent."""
    out = subprocess.run(
        ["ss", "-Hltnp", f"src {endpoint}"], check=True, capture_output=True, text=True
    ).stdout
    pids = {
        int(part.split("=")[1]) for part in out.replace(",", " ").replace(")", " ").split() if "pid=" in part
    }
    assert len(pids) == 1, (endpoint, out)
    return pids.pop()


def fill_accept_queue(endpoint: str) -> list[socket.socket]:
    """Connections to a listener that accepts none until its queue is full (a connect gets no answer)."""
    host, port = endpoint.rsplit(":", 1)
    held: list[socket.socket] = []
    for _ in range(10_000):  # the agent's backlog is net.core.somaxconn (4096 by default)
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect((host, int(port)))
        except TimeoutError:
            s.close()
            return held
        held.append(s)
    for s in held:
        s.close()
    raise AssertionError(f"the accept queue of {endpoint} never filled")


@contextlib.contextmanager
def stalled(endpoint: str) -> Iterator[None]:
    """The agent at ``endpoint`` stopped and its accept queue full until the block ends (then it runs on)."""
    pid = listener_pid(endpoint)
    os.kill(pid, signal.SIGSTOP)
    held: list[socket.socket] = []
    try:
        held = fill_accept_queue(endpoint)
        yield
    finally:
        for s in held:
            s.close()
        os.kill(pid, signal.SIGCONT)


async def only_instance(
    platform: PlatformUnderTest, cluster: Cluster, namespace: str, name: str, *, timeout: int
) -> str:
    """Deploys ``name`` with exactly one instance; its endpoint once the gateway knows it ready."""
    doc = python_function(
        name, HANDLER, timeoutSeconds=timeout, scaling={"minInstances": 1, "maxInstances": 1}
    )
    await deploy(cluster, platform.gateway, namespace, doc)
    [endpoint] = await wait_for(
        lambda: asyncio.sleep(0, result=platform.gateway.registry.ready_endpoints((namespace, name))),
        lambda found: len(found) == 1,
        what=f"the instance of {name} ready",
        timeout=120,
    )
    return str(endpoint)


async def invoke(url: str, namespace: str, name: str) -> tuple[int, str | None, Any]:
    """The status, the error type (``x-amzn-ErrorType``) and the body of one call."""
    path = f"{url}/2015-03-31/functions/{namespace}/{name}/invocations"
    async with aiohttp.ClientSession() as http, http.post(path, data=b"{}") as resp:
        return resp.status, resp.headers.get("x-amzn-ErrorType"), json.loads(await resp.read())


def connects_timed_out(caplog: pytest.LogCaptureFixture) -> int:
    return sum("did not accept a connection within" in r.getMessage() for r in caplog.records)


async def test_a_call_waits_for_an_instance_slow_to_accept(
    platform: PlatformUnderTest,
    cluster: Cluster,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The only instance (maxInstances 1) accepts no connection for a while: the call is answered once it
    does (on main this call got a 429 at the first connect timeout)."""
    caplog.set_level(logging.INFO, logger="kubelambda.gateway.invoke_path")
    endpoint = await only_instance(platform, cluster, namespace, "slowaccept", timeout=60)
    with stalled(endpoint):
        call = asyncio.create_task(invoke(platform.url, namespace, "slowaccept"))
        # Two connects that got no answer (the call still waiting), then the agent runs on.
        await wait_for(
            lambda: asyncio.sleep(0, result=(connects_timed_out(caplog), call.done())),
            lambda seen: seen[0] >= 2 or seen[1],
            what="two connects to the stalled agent timed out",
            timeout=60,
        )
        assert not call.done(), call.result()
    assert await call == (200, None, {"ok": True})


async def test_a_call_fails_with_a_service_error_at_its_deadline(
    platform: PlatformUnderTest,
    cluster: Cluster,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The only instance accepts no connection until the call's deadline: a 500 ServiceException (retryable)
    that says no connection could be made, not a 429; the function did not run."""
    caplog.set_level(logging.INFO, logger="kubelambda.gateway.invoke_path")
    endpoint = await only_instance(platform, cluster, namespace, "neveraccepts", timeout=SHORT_TIMEOUT)
    with stalled(endpoint):
        status, error, body = await invoke(platform.url, namespace, "neveraccepts")
    assert (status, error) == (500, "ServiceException"), body
    assert "No connection could be made to an instance of" in body["message"], body
    assert connects_timed_out(caplog) >= 1
    # The agent runs on: calls are answered again.
    await wait_for(
        lambda: invoke(platform.url, namespace, "neveraccepts"),
        lambda got: got == (200, None, {"ok": True}),
        what="a call answered once the agent runs on",
        timeout=60,
    )
