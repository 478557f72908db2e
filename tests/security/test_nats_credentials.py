"""Issue 17, item 5: NATS has credentials, and each component only the subjects it needs.

The attack: a tenant reads the NATS URL its own pods carry (the agents' log shipping, a Trigger bridge's
``onFailure.nats``: both are in its pods' specs) and uses it to read other namespaces' queued events and logs,
purge the Event queue, inject events, or call JetStream's API; or it connects with no credentials at all.
Expected: nats-server refuses each (no user: Authorization Violation; a user: a permissions violation for that
subject), while the platform, every component logged in as its own user (kubelambda.natsauth), still queues and
runs Event invocations and stores the function's log lines.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import nats
import nats.errors
import pytest

from kltest import Cluster, create_namespace, wait_for
from kltest.platform import (
    AGENT_KEY,
    FAST_ASYNC,
    Env,
    PlatformUnderTest,
    async_stream_drained,
    lambda_client,
    python_function,
    running_platform,
)
from kubelambda import logstore, natsauth
from kubelambda.devcluster.servers import NatsServer
from kubelambda.kube import KubeClient, resource_path
from kubelambda.logstore import stream_name

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
HANDLER = "def handler(event, context):\n    print('secret of', event['tenant'])\n    return {'ok': True}\n"


@pytest.fixture(scope="module")
async def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    passwords = natsauth.new_passwords()
    async with NatsServer(tmp_path_factory.mktemp("nats-users"), passwords=passwords) as server:
        yield server


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, secured_nats: NatsServer
) -> AsyncIterator[PlatformUnderTest]:
    """The gateway (with its in-process Event worker), the operator, the agents and the bridges, each as its own
    NATS user, as `kubelambda dev up` and the chart run them."""
    nats_ = secured_nats
    async with running_platform(
        cluster,
        kube,
        nats_url=nats_.url_as("gateway"),
        # Log shippers log in as their namespace's log user; the gateway's auth callout decides (natscallout).
        agent_nats_url=nats_.url,
        logauth_nats_url=nats_.url_as("logauth"),
        nats_callout_seed=nats_.callout_seed,
        # A pool pod ships as its function namespace's log user, from /specialize on.
        warm_pool_sizes={"python3.11": 1},
        warm_pool_max_lifetime_seconds=5.0,
        operator_settings={
            "nats_url": nats_.url_as("operator"),
            "bridge_nats_url": nats_.url_as("bridge"),
            "agent_nats_url": nats_.url,
        },
        **FAST_ASYNC,
    ) as platform:
        yield platform


class Connection:
    """A NATS connection that keeps what the server refused (nats-py reports it through ``error_cb``)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def open(self, url: str, **options: Any) -> Connection:
        async def note(error: Exception) -> None:
            self.errors.append(str(error).lower())

        self.nc = await nats.connect(
            natsauth.servers(url),
            error_cb=note,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
            **options,
        )
        return self

    async def refused(self, what: str, subject: str) -> None:
        """Waits for the server's ``permissions violation for <what> to "<subject>"``."""
        needle = f'permissions violation for {what} to "{subject.lower()}"'
        await wait_for(
            lambda: asyncio.sleep(0, result=self.errors),
            lambda errors: any(needle in e for e in errors),
            what=f"the server refusing {what} to {subject}",
            timeout=10,
        )


async def invoke_event(env: Env, name: str, payload: JSON) -> None:
    def call() -> None:
        response = lambda_client(env.url).invoke(
            FunctionName=f"{env.namespace}/{name}",
            InvocationType="Event",
            Payload=json.dumps(payload).encode(),
        )
        assert response["StatusCode"] == 202

    await asyncio.to_thread(call)


async def agent_url_of(env: Env, name: str) -> str:
    """What the tenant can read: the NATS URL its function's pods get (from the function's agent Secret)."""
    deployment = await env.kube.get(
        resource_path("apps/v1", "deployments", namespace=env.namespace, name=name)
    )
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "function"]
    [ref] = [
        e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "KUBELAMBDA_LOG_NATS_URL"
    ]
    secret = await env.kube.get(resource_path("v1", "secrets", namespace=env.namespace, name=ref["name"]))
    return base64.b64decode(secret["data"][ref["key"]]).decode()


async def test_every_component_works_as_its_own_nats_user(env: Env, secured_nats: NatsServer) -> None:
    doc = python_function("victim", HANDLER)
    doc["spec"]["scaling"] = {"warmPool": False}
    await env.deploy(doc)
    admin = secured_nats.url_as("admin")
    # The gateway queues it (user gateway), its worker runs it (gateway, in process), the agent ships the line
    # (agent) into the stream the operator made (operator).
    await invoke_event(env, "victim", {"tenant": env.namespace})
    await async_stream_drained(admin)
    assert natsauth.user_of(await agent_url_of(env, "victim")) == f"logs.{env.namespace}"

    # The gateway's logs route reads the store as the gateway's user (its answers come to its own inbox). The
    # agent's own lines outside the invocation may be stored in an earlier batch than the handler's line.
    async def read() -> tuple[int, list[JSON]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{env.url}/kubelambda/logs/{env.namespace}/victim") as resp,
        ):
            return resp.status, [
                json.loads(line) for line in (await resp.text()).splitlines() if line.strip()
            ]

    status, lines = await wait_for(
        read,
        lambda got: got[0] != 200 or any(env.namespace in str(r.get("message", "")) for r in got[1]),
        what=f"the handler's line in {stream_name(env.namespace)}, read through the gateway",
        timeout=90,
    )
    assert status == 200, lines
    assert lines[-1].get("done") is True, lines


async def test_nats_refuses_a_client_without_credentials(secured_nats: NatsServer) -> None:
    guessed = natsauth.log_password("not-the-agent-key-0123456789", "default", int(time.time()))
    for url in (
        secured_nats.url,
        natsauth.with_credentials(secured_nats.url, "agent", "guessed"),  # no shared agent user any more
        natsauth.with_credentials(secured_nats.url, "logs.default", guessed),
        natsauth.with_credentials(secured_nats.url, "logs.default", "1.0"),
    ):
        errors: list[str] = []

        async def note(error: Exception, errors: list[str] = errors) -> None:
            errors.append(str(error).lower())

        with pytest.raises((nats.errors.NoServersError, nats.errors.Error)):
            await nats.connect(
                url, error_cb=note, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5
            )
        assert any("authorization violation" in e for e in errors), errors


async def test_a_tenant_with_its_pods_agent_credentials_reads_no_events_nor_logs(
    env: Env, secured_nats: NatsServer
) -> None:
    doc = python_function("reader", HANDLER)
    doc["spec"]["scaling"] = {"warmPool": False}
    await env.deploy(doc)
    conn = await log_store_connection(await agent_url_of(env, "reader"))
    try:
        for subject in (
            "kubelambda.async.>",
            "kubelambda.dlq.>",
            "kubelambda.logs.>",
            ">",
            "_KL_INBOX.>",
            "_INBOX.>",
        ):
            await conn.nc.subscribe(subject)
            await conn.refused("subscription", subject)
        # JetStream's API: no stream listing, no consumer on another namespace's logs, no direct reads.
        js = conn.nc.jetstream(timeout=2)
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info("KUBELAMBDA_ASYNC")
        await conn.refused("publish", "$JS.API.STREAM.INFO.KUBELAMBDA_ASYNC")
        other = stream_name("someone-else")
        await conn.nc.publish(f"$JS.API.CONSUMER.CREATE.{other}", b"{}")
        await conn.refused("publish", f"$JS.API.CONSUMER.CREATE.{other}")
        # What the agent is for still works: a log record is stored and acknowledged.
        ack = await js.publish(f"kubelambda.logs.{env.namespace}.reader.none", b'{"message": "ok"}')
        assert ack.stream == stream_name(env.namespace)
    finally:
        await conn.nc.close()


async def test_a_tenant_with_a_bridges_credentials_cannot_touch_the_queues(
    env: Env, secured_nats: NatsServer
) -> None:
    admin = await Connection().open(secured_nats.url_as("admin"))
    conn = await Connection().open(secured_nats.url_as("bridge"))  # what the operator puts in bridge pods
    try:
        js = admin.nc.jetstream()
        before = (await js.stream_info("KUBELAMBDA_ASYNC")).state
        for subject in (
            "$JS.API.STREAM.PURGE.KUBELAMBDA_ASYNC",
            "$JS.API.STREAM.DELETE.KUBELAMBDA_ASYNC",
            f"kubelambda.async.{env.namespace}.victim",  # a forged Event
            f"kubelambda.logs.{env.namespace}.victim.none",  # a forged log line
            "$SYS.REQ.SERVER.PING",
        ):
            await conn.nc.publish(subject, b"{}")
            await conn.refused("publish", subject)
        await conn.nc.subscribe("kubelambda.async.>")
        await conn.refused("subscription", "kubelambda.async.>")
        after = (await js.stream_info("KUBELAMBDA_ASYNC")).state
        assert (after.first_seq, after.last_seq) == (before.first_seq, before.last_seq)
        # Tenants' own subjects (onFailure.nats) still get the bridge's records.
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def got(msg: Any) -> None:
            await received.put(msg.data)

        await admin.nc.subscribe("orders.failed", cb=got)
        await admin.nc.flush()
        await conn.nc.publish("orders.failed", b"record")
        await conn.nc.flush()
        try:
            assert await asyncio.wait_for(received.get(), 10) == b"record"
        except TimeoutError:
            state = (conn.nc.is_connected, admin.nc.is_connected, conn.errors[-3:], admin.errors)
            raise AssertionError(f"the bridge's record did not arrive: {state}") from None
    finally:
        await conn.nc.close()
        await admin.nc.close()


async def log_store_connection(url: str) -> Connection:
    """A connection as a namespace's log user, its inbox where that user may subscribe (as the agent's)."""
    namespace = (natsauth.user_of(url) or "").removeprefix(natsauth.LOG_USER_PREFIX)
    return await Connection().open(url, inbox_prefix=natsauth.log_inbox(namespace))


async def test_a_namespaces_log_credentials_write_only_its_own_log(
    env: Env, kube: KubeClient, secured_nats: NatsServer
) -> None:
    doc = python_function("shipper", HANDLER)
    doc["spec"]["scaling"] = {"warmPool": False}
    await env.deploy(doc)  # the operator makes the namespace's log stream and the agent Secret
    other = await create_namespace(kube, "other")
    admin = await Connection().open(secured_nats.url_as("admin"))
    try:
        await admin.nc.jetstream().add_stream(
            name=stream_name(other), subjects=[f"kubelambda.logs.{other}.>"]
        )
        conn = await log_store_connection(await agent_url_of(env, "shipper"))
        try:
            js = conn.nc.jetstream(timeout=5)
            # Its own namespace's log: stored and acknowledged.
            ack = await js.publish(f"kubelambda.logs.{env.namespace}.shipper.none", b'{"message": "mine"}')
            assert ack.stream == stream_name(env.namespace)
            # Another namespace's log: refused, nothing stored there.
            forged = f"kubelambda.logs.{other}.victim.none"
            await conn.nc.publish(forged, b'{"message": "forged"}')
            await conn.refused("publish", forged)
            for subject in (f"_INBOX.{other}.>", f"kubelambda.logs.{env.namespace}.>"):
                await conn.nc.subscribe(subject)
                await conn.refused("subscription", subject)
            assert (await admin.nc.jetstream().stream_info(stream_name(other))).state.messages == 0
        finally:
            await conn.nc.close()
        # Its password under the other namespace's user: not a login.
        own = await agent_url_of(env, "shipper")
        password = urlsplit(own).password or ""
        with pytest.raises((nats.errors.NoServersError, nats.errors.Error)):
            await log_store_connection(natsauth.with_credentials(own, natsauth.log_user(other), password))
    finally:
        await admin.nc.close()
        await kube.delete(resource_path("v1", "namespaces", name=other))


async def test_a_deleted_namespaces_log_credentials_stop_working(
    kube: KubeClient, secured_nats: NatsServer
) -> None:
    gone = await create_namespace(kube, "gone")
    created = natsauth.unix_seconds(
        (await kube.get(resource_path("v1", "namespaces", name=gone)))["metadata"]["creationTimestamp"]
    )
    url = natsauth.log_url(secured_nats.url, AGENT_KEY, gone, created)
    conn = await log_store_connection(url)  # works while the namespace is there
    await conn.nc.close()
    # A credential issued before the namespace was made (a deleted namespace's Function's) never works.
    with pytest.raises((nats.errors.NoServersError, nats.errors.Error)):
        await log_store_connection(natsauth.log_url(secured_nats.url, AGENT_KEY, gone, created - 1))
    await kube.delete(resource_path("v1", "namespaces", name=gone))

    async def refused() -> bool:
        try:
            other = await log_store_connection(url)
        except (nats.errors.NoServersError, nats.errors.Error):
            return True
        await other.nc.close()
        return False

    await wait_for(refused, bool, what=f"the log credentials of deleted namespace {gone} refused", timeout=60)


async def test_a_warm_pool_pod_ships_as_its_function_namespaces_log_user(
    env: Env, secured_nats: NatsServer
) -> None:
    await env.deploy(python_function("pooled", HANDLER))

    def call() -> tuple[str, dict[str, str]]:
        response = lambda_client(env.url).invoke(
            FunctionName=f"{env.namespace}/pooled", Payload=json.dumps({"tenant": env.namespace}).encode()
        )
        assert response["StatusCode"] == 200
        meta = response["ResponseMetadata"]
        return meta["RequestId"], meta["HTTPHeaders"]

    request_id, headers = await asyncio.to_thread(call)
    pod = headers.get("x-kubelambda-warm-pool")
    assert pod, f"not served by a warm-pool pod: {headers}"
    admin = secured_nats.url_as("admin")

    async def lines() -> list[logstore.LogRecord]:
        nc = await nats.connect(natsauth.servers(admin), **natsauth.connect_options(admin))
        try:
            query = logstore.LogQuery(env.namespace, "pooled", request_id=request_id)
            return [r async for r in logstore.read(nc, query)]
        finally:
            await nc.close()

    records = await wait_for(
        lines,
        lambda got: any(r.message.startswith("REPORT ") for r in got),
        what=f"request {request_id}'s REPORT, shipped by pool pod {pod}",
        timeout=90,
    )
    assert {r.pod for r in records} == {pod}
    assert f"secret of {env.namespace}" in [r.message for r in records]
