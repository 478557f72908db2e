"""Function logs exported over OpenTelemetry (docs/logs.md, "Export"), end to end on real servers: a real agent
ships its invocations' log to a real nats-server (the platform's NATS users: the agent as ``agent``), the
exporter (``kubelambda log-export``'s, logged in as ``exporter``) reads the namespace's log stream and sends
OTLP/HTTP to a real OpenTelemetry Collector (hack/otelcol.sh), whose file exporter the test reads back.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from kltest.agentmetrics import agent_metrics as scrape_agent_metrics
from kltest.otelcol import ExportedLog, OtelCollector
from kltest.wait import wait_for
from kubelambda import logexport, logstore, metrics, natsauth, natscallout
from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster._process import spawn, stop
from kubelambda.devcluster.servers import NatsServer
from kubelambda.logstore_ship import LogShipper
from kubelambda.runtimes import agent_binary, local_command, runtime_images_dir

pytestmark = pytest.mark.integration

NAMESPACE = "team-otlp"
LOG_KEY = "log-export-test-key-0123456789"
HANDLER = """
import json


def handler(event, context):
    print("plain line", event["tag"])
    print(json.dumps({"level": "ERROR", "message": "json line", "tag": event["tag"]}))
    return {"requestId": context.aws_request_id}
"""


@contextlib.asynccontextmanager
async def log_store(
    tmp: Path, *, user_ttl_seconds: int = natscallout.USER_TTL_SECONDS
) -> AsyncIterator[NatsServer]:
    """A NATS server with the platform's users, NAMESPACE's log stream, and the gateway's auth callout admitting
    NAMESPACE's log shippers with user JWTs of ``user_ttl_seconds``."""
    async with NatsServer(tmp, passwords=natsauth.new_passwords()) as server:
        nc = await nats.connect(
            server.url_as("operator"), **natsauth.connect_options(server.url_as("operator"))
        )
        try:  # the operator makes the namespace's stream before the Function's pods start
            await logstore.ensure_stream(nc, NAMESPACE, logstore.Retention())
        finally:
            await nc.close()
        # The gateway's auth callout admits the agent as its namespace's log user (no cluster here: the
        # namespace is taken to exist since the epoch).
        callout = natscallout.LogAuthService(
            server.url_as("logauth"),
            issuer=natscallout.Issuer(server.callout_seed or ""),
            agent_key=LOG_KEY,
            namespaces=lambda ns: asyncio.sleep(0, result=0 if ns == NAMESPACE else None),
            user_ttl_seconds=user_ttl_seconds,
        )
        await callout.start()
        try:
            yield server
        finally:
            await callout.stop()


@contextlib.asynccontextmanager
async def shipping_agent(server: NatsServer, tmp: Path, **env_extra: str) -> AsyncIterator[str]:
    """A real agent running a Python handler, shipping its log as NAMESPACE's log user; yields its invoke URL."""
    code = tmp / "code"
    code.mkdir(parents=True)
    (code / "app.py").write_text(HANDLER)
    cmd = local_command(
        "python3.12",
        code,
        "app.handler",
        agent=agent_binary(),
        listen=f"127.0.0.1:{free_port()}",
        runtime_api=f"127.0.0.1:{free_port()}",
        function_name="exported",
        timeout_s=30,
        runtime_cmd=[sys.executable, str(runtime_images_dir() / "python" / "bootstrap.py"), "app.handler"],
        base_env={"PATH": "/usr/bin:/bin"},
    )
    env = {
        **cmd.env,
        "KUBELAMBDA_LOG_NATS_URL": natsauth.log_url(server.url, LOG_KEY, NAMESPACE, 1),
        "KUBELAMBDA_FUNCTION_NAMESPACE": NAMESPACE,
        "KUBELAMBDA_POD_NAME": "exported-7d9f-abcde",
        **env_extra,
    }
    proc = spawn(cmd.argv, log=tmp / "agent.log", env=env, cwd=Path(cmd.cwd))
    try:
        yield cmd.invoke_url
    finally:
        await stop(proc, grace_seconds=10)


@pytest.fixture(scope="module")
async def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    async with log_store(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="module")
async def agent(secured_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with shipping_agent(secured_nats, tmp_path_factory.mktemp("agent")) as url:
        yield url


def invoke(url: str, tag: str) -> str:
    """One invocation; its request id."""
    host, _, port = url.split("/")[2].partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(
            "POST", "/invoke", body=json.dumps({"tag": tag}), headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        return str(json.loads(body)["requestId"])
    finally:
        conn.close()


async def invoked(url: str, tag: str) -> str:
    async def attempt() -> str | None:  # the agent may still be starting
        try:
            return await asyncio.to_thread(invoke, url, tag)
        except OSError:
            return None

    return str(await wait_for(attempt, bool, what="the agent answering", timeout=60, interval=0.2))


@contextlib.asynccontextmanager
async def exporting(nats_server: NatsServer, endpoint: str) -> AsyncIterator[None]:
    settings = logexport.LogExportSettings(
        nats_url=nats_server.url_as("exporter"), endpoint=endpoint, rescan_seconds=0.5, metrics_address=""
    )
    task = asyncio.create_task(logexport.LogExporter(settings).run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def of_request(logs: list[ExportedLog], request_id: str) -> list[ExportedLog]:
    return [r for r in logs if r.attributes.get("faas.invocation_id") == request_id]


async def exported(collector: OtelCollector, request_id: str) -> list[ExportedLog]:
    """The request's records once its REPORT reached the Collector."""

    async def got() -> list[ExportedLog]:
        return of_request(collector.logs(), request_id)

    return list(
        await wait_for(
            got,
            lambda rs: any(r.body.startswith("REPORT ") for r in rs),
            what=f"{request_id}'s REPORT exported",
        )
    )


async def test_an_invocations_records_reach_the_collector_with_their_attributes(
    secured_nats: NatsServer, agent: str, tmp_path: Path
) -> None:
    async with OtelCollector(tmp_path / "otelcol") as collector, exporting(secured_nats, collector.endpoint):
        request_id = await invoked(agent, "first")
        records = await exported(collector, request_id)
        # The exporter's acknowledgements reach the store (its NATS user may send them): nothing left to redeliver.
        admin = secured_nats.url_as("admin")
        nc = await nats.connect(admin, **natsauth.connect_options(admin))
        try:
            stream, js = logstore.stream_name(NAMESPACE), nc.jetstream()
            await wait_for(
                lambda: js.consumer_info(stream, logexport.CONSUMER),
                lambda info: (info.num_ack_pending, info.num_pending) == (0, 0),
                what="every exported message acknowledged",
            )
        finally:
            await nc.close()

    bodies = [r.body for r in records]
    assert bodies[0].startswith(f"START RequestId: {request_id} "), bodies
    assert "plain line first" in bodies, bodies
    assert bodies[-1].startswith(f"REPORT RequestId: {request_id}\t"), bodies
    assert len(bodies) == len(set(bodies)) == 5, bodies  # START, two lines, END, REPORT: each once
    for r in records:
        assert r.resource == {
            "service.name": "exported",
            "service.namespace": NAMESPACE,
            "faas.name": "exported",
            "faas.version": "$LATEST",
            "faas.instance": "exported-7d9f-abcde",
            "k8s.namespace.name": NAMESPACE,
            "k8s.pod.name": "exported-7d9f-abcde",
        }, r
        assert r.attributes == {"faas.invocation_id": request_id, "log.iostream": "stdout"}, r
        assert 0 < r.time_unix_nano <= r.observed_time_unix_nano, r
    (json_line,) = [r for r in records if r.body.startswith("{")]
    assert json.loads(json_line.body)["message"] == "json line"
    assert (json_line.severity_number, json_line.severity_text) == (
        17,
        "ERROR",
    )  # the level, as --level reads it
    (plain,) = [r for r in records if r.body == "plain line first"]
    assert (plain.severity_number, plain.severity_text) == (0, "")


async def test_records_wait_in_the_store_while_the_collector_is_down(
    secured_nats: NatsServer, agent: str, tmp_path: Path
) -> None:
    """The exporter acknowledges records only once the endpoint took them: a Collector that is down loses none,
    and what was exported before is not sent again (the durable consumer resumes where it stopped)."""
    port = free_port()
    failures = metrics.LOG_EXPORT_FAILURES.labels(NAMESPACE)
    async with (
        OtelCollector(tmp_path / "before", port=port) as collector,
        exporting(secured_nats, collector.endpoint),
    ):
        before = await invoked(agent, "before")
        await exported(collector, before)
        await collector.stop()
        failed = failures._value.get()
        during = await invoked(agent, "during")

        async def failures_now() -> float:
            return float(failures._value.get())

        await wait_for(failures_now, lambda n: n > failed, what="a failed OTLP request (Collector down)")
        async with OtelCollector(tmp_path / "after", port=port) as again:
            records = await exported(again, during)
            assert len(records) == 5, [r.body for r in records]
            assert not of_request(again.logs(), before), "records exported before the outage were sent again"
    assert metrics.LOG_EXPORT_RECORDS.labels(NAMESPACE, "rejected")._value.get() == 0


def agent_metrics(url: str) -> dict[str, float]:
    host, _, port = url.split("/")[2].partition(":")
    return scrape_agent_metrics(host, int(port), "kubelambda_agent_log_")


async def test_an_agent_renews_its_login_before_it_expires_and_drops_nothing(tmp_path: Path) -> None:
    """The callout's user JWTs expire (here after 3 s): NATS then closes the connection, and what the agent had
    sent without an acknowledgement yet could not be counted as stored. The agent logs in again before (here
    after 1 s), once what it sent is acknowledged: invocations all along, every record stored, none dropped. An
    agent that does not renew in time is cut by the server at expiry (it logs in again), which shows the
    expiry is real."""
    async with (
        log_store(tmp_path / "nats", user_ttl_seconds=3) as server,
        shipping_agent(server, tmp_path / "renewing", KUBELAMBDA_LOG_RENEW_SECONDS="1") as renewing,
        shipping_agent(server, tmp_path / "late", KUBELAMBDA_LOG_RENEW_SECONDS="3600") as late,
    ):
        await invoked(renewing, "first")
        await invoked(late, "first")
        loop = asyncio.get_running_loop()
        until = loop.time() + 8
        n = 1
        while loop.time() < until:  # invocations across several renewals (and the other agent's expiries)
            await asyncio.to_thread(invoke, renewing, f"n{n}")
            n += 1

        def settled(m: dict[str, float]) -> bool:
            return (
                m["kubelambda_agent_log_records_buffered"] == m["kubelambda_agent_log_records_inflight"] == 0
            )

        got = await wait_for(
            lambda: asyncio.to_thread(agent_metrics, renewing),
            settled,
            what="the renewing agent's records settled",
        )
        assert got["kubelambda_agent_log_records_dropped_total"] == 0, got
        assert (
            got["kubelambda_agent_log_records_stored_total"]
            == got["kubelambda_agent_log_records_queued_total"]
        )
        assert got["kubelambda_agent_log_records_stored_total"] >= 5 * n, (n, got)
        assert got["kubelambda_agent_log_connections_total"] >= 5, got  # a login a second, or so
        cut = await wait_for(
            lambda: asyncio.to_thread(agent_metrics, late),
            lambda m: m["kubelambda_agent_log_connections_total"] >= 2,
            what="the server closing the late agent's expired login",
        )
        assert cut["kubelambda_agent_log_records_stored_total"] >= 5, cut


async def test_a_bridge_ships_as_its_triggers_namespace_and_into_no_other(secured_nats: NatsServer) -> None:
    """A Trigger bridge's shipper (kubelambda/logstore_ship.py) logs in with its Trigger's namespace's log
    credential (what the operator gives it, through the callout): its lines are stored there, and the same
    credential aimed at another namespace's log subjects is refused by the server, nothing stored there."""
    url = natsauth.log_url(secured_nats.url, LOG_KEY, NAMESPACE, 1)
    other = "other-team"
    admin = secured_nats.url_as("admin")
    anc = await nats.connect(admin, **natsauth.connect_options(admin))
    try:
        await logstore.ensure_stream(anc, other, logstore.Retention())
        shipper = LogShipper(
            url, namespace=NAMESPACE, function="bridged", pod="nightly-bridge-1", component="bridge/nightly"
        )
        logger = logging.getLogger("kubelambda.test.bridge-credentials")
        logger.addHandler(shipper)
        logger.setLevel(logging.INFO)
        try:
            shipper.start()
            logger.info("fired")
            await shipper.aclose()
        finally:
            logger.removeHandler(shipper)
        got = [r async for r in logstore.read(anc, logstore.LogQuery(NAMESPACE, "bridged"))]
        assert [(r.message, r.pod) for r in got] == [
            ("[INFO]\tkubelambda.test.bridge-credentials: fired", "nightly-bridge-1")
        ]
        errors: list[str] = []

        async def note(error: Exception) -> None:
            errors.append(str(error).lower())

        nc = await nats.connect(
            url,
            error_cb=note,
            inbox_prefix=natsauth.log_inbox(NAMESPACE),
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
        try:
            forged = f"kubelambda.logs.{other}.victim.none"
            await nc.publish(forged, b'{"message": "forged"}')
            await nc.flush()
            await wait_for(
                lambda: asyncio.sleep(0, result=errors),
                lambda es: any(f'permissions violation for publish to "{forged}"' in e for e in es),
                what=f"the server refusing {forged}",
            )
        finally:
            await nc.close()
        assert (await anc.jetstream().stream_info(logstore.stream_name(other))).state.messages == 0
    finally:
        await anc.close()
