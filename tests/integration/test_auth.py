"""Who may invoke what (gateway/auth, docs/security.md), on the real local cluster with boto3 as the client: the
gateway in ``auth_mode=kubernetes``, SigV4 access keys made with ``kubelambda access-key``, ServiceAccount
bearer tokens checked with TokenReview, and RBAC (verb ``invoke``) decided with SubjectAccessReview."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import botocore
import botocore.exceptions
import pytest
import redis.asyncio as aioredis
from botocore.config import Config

from kltest import Cluster, wait_for
from kltest.bridge import BridgeProcess, checkpoint_written
from kltest.platform import (
    SYSTEM_NS,
    RunningOperator,
    deploy,
    install_crds,
    lambda_client,
    python_function,
    start_gateway,
    start_operator,
    stop_gateway,
    token_of,
)
from kubelambda import metrics
from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.asyncworker.dlq import list_dead_letters
from kubelambda.asyncworker.queue import EventQueue
from kubelambda.devcluster.servers import RedisServer, S3Server
from kubelambda.gateway.app import Gateway
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.bridge import bridge_name, checkpoint_name

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
CACHE_SECONDS = 2.0
RBAC = "rbac.authorization.k8s.io/v1"
HANDLER = """
def handler(event, context):
    print("ran", context.aws_request_id)
    return {"echo": event}
"""
ID_HANDLER = """
def handler(event, context):
    return {"requestId": context.aws_request_id}
"""


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: Any
) -> AsyncIterator[tuple[RunningOperator, Gateway, str]]:
    await install_crds(cluster, kube)
    gateway, url = await start_gateway(
        cluster,
        kube,
        auth_mode="kubernetes",
        auth_cache_seconds=CACHE_SECONDS,
        http_routes=True,
        nats_url=nats_server.url,
    )
    # Bridges (pods, as their own ServiceAccounts) invoke through this gateway.
    operator = await start_operator(cluster, kube, problem_retry_seconds=1.0, gateway_url=url)
    try:
        yield operator, gateway, url
    finally:
        await stop_gateway(gateway)
        await operator.stop()


async def kubelambda(
    cluster: Cluster, *args: str, kubeconfig: Any = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess (in a thread: the gateway shares this event loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kubelambda", *args, "--kubeconfig", str(kubeconfig or cluster.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def service_account(kube: KubeClient, namespace: str, name: str) -> None:
    await kube.create(
        resource_path("v1", "serviceaccounts", namespace=namespace), {"metadata": {"name": name}}
    )


async def create_key(cluster: Cluster, namespace: str, account: str) -> tuple[str, str]:
    done = await kubelambda(cluster, "access-key", "create", f"{namespace}/{account}", "-o", "json")
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)
    assert key["serviceAccount"] == f"{namespace}/{account}"
    return key["accessKeyId"], key["secretAccessKey"]


async def bind_invoker(kube: KubeClient, namespace: str, name: str, subject_ns: str, account: str) -> None:
    await kube.create(
        resource_path("rbac.authorization.k8s.io/v1", "rolebindings", namespace=namespace),
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "kubelambda-invoker",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": subject_ns}],
        },
    )


async def error_of(client: Any, name: str, **kwargs: Any) -> tuple[str, str, int]:
    """The Lambda error code, message and HTTP status of a refused invoke (fails when it was not refused); boto3
    runs in a thread, as the gateway shares this event loop."""
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        await asyncio.to_thread(client.invoke, FunctionName=name, Payload=b"{}", **kwargs)
    error = caught.value.response["Error"]
    return (
        error["Code"],
        error.get("Message", ""),
        caught.value.response["ResponseMetadata"]["HTTPStatusCode"],
    )


def refusals(reason: str) -> float:
    return metrics.GATEWAY_AUTH_REFUSALS.labels(reason)._value.get()


async def test_the_four_refusals_and_nothing_runs(
    platform: tuple[RunningOperator, Gateway, str], cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, python_function("hello", HANDLER))
    name = f"{namespace}/hello"
    before = {
        r: refusals(r)
        for r in ("MissingAuthenticationToken", "UnrecognizedClient", "InvalidSignature", "AccessDenied")
    }

    unsigned = lambda_client(url, signature_version=botocore.UNSIGNED)
    assert await error_of(unsigned, name) == (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
        403,
    )

    unknown = lambda_client(url, "KLAKAAAAAAAAAAAAAAAA", "x" * 40)
    code, _, status = await error_of(unknown, name)
    assert (code, status) == ("UnrecognizedClientException", 403)

    await service_account(kube, namespace, "caller")
    key_id, secret = await create_key(cluster, namespace, "caller")
    await wait_for(
        lambda: _sleep0(gateway.auth.keys.get(key_id)),
        lambda k: k is not None,
        what="the gateway to see the key",
    )
    wrong = lambda_client(url, key_id, secret[::-1])
    code, message, status = await error_of(wrong, name)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert "signature we calculated does not match" in message

    signed = lambda_client(url, key_id, secret)
    for kwargs in ({}, {"InvocationType": "DryRun"}, {"InvocationType": "Event"}, {"LogType": "Tail"}):
        code, message, status = await error_of(signed, name, **kwargs)
        assert (code, status) == ("AccessDeniedException", 403), kwargs
        assert f"system:serviceaccount:{namespace}:caller" in message
        assert "lambda:InvokeFunction" in message
        assert f"arn:aws:lambda:us-east-1:{namespace}:function:hello" in message
    # A Function that does not exist is refused the same way: a caller without rights learns nothing.
    assert (await error_of(signed, f"{namespace}/nothing"))[0] == "AccessDeniedException"

    # Nothing was queued or run: the Function is still at zero, without a cold start.
    scale = await kube.get(
        resource_path("apps/v1", "deployments", namespace=namespace, name="hello", subresource="scale")
    )
    assert scale["spec"].get("replicas", 0) == 0
    assert metrics.GATEWAY_COLD_STARTS.labels(namespace, "hello")._value.get() == 0
    after = {r: refusals(r) - n for r, n in before.items()}
    assert after == {
        "MissingAuthenticationToken": 1,
        "UnrecognizedClient": 1,
        "InvalidSignature": 1,
        "AccessDenied": 5,
    }

    # HTTP routes answer as a function URL with AWS_IAM: 403 Forbidden, the reason in x-amzn-ErrorType.
    async with aiohttp.ClientSession() as http, http.get(f"{url}/http/{namespace}/hello/") as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert await resp.json() == {"Message": "Forbidden"}


async def _sleep0(value: Any) -> Any:
    return value


async def test_rbac_binding_grants_and_its_removal_revokes(
    platform: tuple[RunningOperator, Gateway, str], cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, python_function("target", HANDLER))
    other = f"t-{secrets.token_hex(4)}"
    await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": other}})
    try:
        await service_account(kube, other, "app")
        token = await token_of(kube, other, "app")
        target = f"{url}/2015-03-31/functions/{namespace}%2Ftarget/invocations"

        async def invoke(bearer: str = token, **headers: str) -> tuple[int, str, bytes]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    target, data=b'{"n": 1}', headers={"Authorization": f"Bearer {bearer}", **headers}
                ) as resp,
            ):
                return resp.status, resp.headers.get("x-amzn-ErrorType", ""), await resp.read()

        status, error, _ = await invoke("not-a-token")
        assert (status, error) == (403, "UnrecognizedClientException")
        status, error, body = await invoke()
        assert (status, error) == (403, "AccessDeniedException")
        assert f"system:serviceaccount:{other}:app" in json.loads(body)["message"]

        await bind_invoker(kube, namespace, "app-invokes", other, "app")
        status, error, body = await wait_for(
            invoke, lambda r: r[0] == 200, what="the binding to take effect", timeout=CACHE_SECONDS + 60
        )
        assert json.loads(body) == {"echo": {"n": 1}}
        dry, _, _ = await invoke(**{"X-Amz-Invocation-Type": "DryRun"})
        assert dry == 204

        await kube.delete(
            resource_path(
                "rbac.authorization.k8s.io/v1", "rolebindings", namespace=namespace, name="app-invokes"
            )
        )
        removed = time.monotonic()
        await wait_for(
            invoke,
            lambda r: r[1] == "AccessDeniedException",
            what="the removed binding to stop the caller",
            timeout=CACHE_SECONDS + 5,
        )
        assert time.monotonic() - removed <= CACHE_SECONDS + 5
    finally:
        await kube.delete(resource_path("v1", "namespaces", name=other))


async def test_an_access_key_works_until_it_is_revoked(
    platform: tuple[RunningOperator, Gateway, str], cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, python_function("keyed", HANDLER))
    await service_account(kube, namespace, "ci")
    await bind_invoker(kube, namespace, "ci-invokes", namespace, "ci")
    key_id, secret = await create_key(cluster, namespace, "ci")
    listed = await kubelambda(cluster, "access-key", "list", "-n", namespace, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [k["accessKeyId"] for k in json.loads(listed.stdout)] == [key_id]
    assert secret not in listed.stdout
    client = lambda_client(url, key_id, secret)

    def invoke() -> Any:
        try:
            answer = client.invoke(FunctionName=f"{namespace}/keyed", Payload=b'{"k": 1}', LogType="Tail")
        except botocore.exceptions.ClientError as e:
            return e.response["Error"]["Code"]
        return json.loads(answer["Payload"].read())

    result = await wait_for(
        lambda: _thread(invoke),
        lambda r: isinstance(r, dict),
        what="the signed invoke to succeed",
        timeout=90,
    )
    assert result == {"echo": {"k": 1}}

    done = await kubelambda(cluster, "access-key", "delete", key_id)
    assert done.returncode == 0, done.stderr
    revoked = time.monotonic()
    await wait_for(
        lambda: _thread(invoke),
        lambda r: r == "UnrecognizedClientException",
        what="the revoked key to stop working",
        timeout=10,
    )
    assert time.monotonic() - revoked <= 10


@pytest.mark.usefixtures("platform")  # the platform's namespace, where the key would be written
async def test_a_key_only_for_a_service_account_one_may_act_as(
    cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    """`access-key create` checks, with a SelfSubjectAccessReview, that its user may act as the ServiceAccount."""
    await service_account(kube, namespace, "creator")
    await service_account(kube, namespace, "victim")
    # The creator may write Secrets in the system namespace (so writing the key is not what stops it) but may not
    # create tokens for victim.
    rbac = "rbac.authorization.k8s.io/v1"
    role = f"{namespace}-key-writer"
    await kube.create(
        resource_path(rbac, "roles", namespace=SYSTEM_NS),
        {
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "list"]}],
        },
    )
    try:
        await kube.create(
            resource_path(rbac, "rolebindings", namespace=SYSTEM_NS),
            {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": "creator", "namespace": namespace}],
            },
        )
        token = await token_of(kube, namespace, "creator")
        config = yaml_kubeconfig(cluster, token)
        done = await kubelambda(cluster, "access-key", "create", f"{namespace}/victim", kubeconfig=config)
        assert done.returncode == 1
        assert f"you may not act as ServiceAccount {namespace}/victim" in done.stderr
    finally:
        await kube.delete(resource_path(rbac, "roles", namespace=SYSTEM_NS, name=role))
        await kube.delete(resource_path(rbac, "rolebindings", namespace=SYSTEM_NS, name=role))


def yaml_kubeconfig(cluster: Cluster, token: str) -> Any:
    """The cluster's kubeconfig with its user replaced by a bearer token."""
    import yaml

    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path = cluster.kubeconfig.with_name(f"kubeconfig-{secrets.token_hex(4)}")
    path.write_text(yaml.safe_dump(config))
    return path


async def _thread(work: Any) -> Any:
    return await asyncio.to_thread(work)


async def test_internal_headers_only_from_the_platform(
    platform: tuple[RunningOperator, Gateway, str], cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    """A tenant's Event with a bridge's idempotency key gets its own request id (it can never suppress the
    bridge's event in JetStream's duplicate window); the platform's key is taken as sent; a tenant cannot pick
    the request id of a synchronous invoke with the async worker's header."""
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, python_function("ids", ID_HANDLER))
    target = f"{url}/2015-03-31/functions/{namespace}%2Fids/invocations"
    tokens = {}
    for ns, account in ((namespace, "tenant"), (namespace, "ids-bridge"), (SYSTEM_NS, f"{namespace}-worker")):
        await service_account(kube, ns, account)
        await bind_invoker(kube, namespace, f"{account}-invokes", ns, account)
        tokens[account] = await token_of(kube, ns, account)

    async def post(account: str, **headers: str) -> tuple[int, str, bytes]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                target, data=b"{}", headers={"Authorization": f"Bearer {tokens[account]}", **headers}
            ) as resp,
        ):
            return resp.status, resp.headers.get("X-Amzn-RequestId", ""), await resp.read()

    event = {"X-Amz-Invocation-Type": "Event", "X-Kubelambda-Idempotency-Key": "object-v1"}
    bridge = await wait_for(
        lambda: post("ids-bridge", **event), lambda r: r[0] == 202, what="the bridge's Event"
    )
    tenant = await post("tenant", **event)
    assert tenant[0] == 202
    assert tenant[1] != bridge[1]
    assert (await post("tenant", **event))[1] == tenant[1]  # still idempotent for the tenant itself
    assert (await post("ids-bridge", **event))[1] == bridge[1]
    platform_id = await post(f"{namespace}-worker", **event)
    assert platform_id[0] == 202
    assert platform_id[1] == str(uuid.uuid5(uuid.NAMESPACE_URL, f"kubelambda:{namespace}/ids/object-v1"))

    forged = {"X-Kubelambda-Async-Request-Id": "forged-request-id"}
    status, _, body = await post("tenant", **forged)
    assert status == 200, body
    assert json.loads(body)["requestId"] != "forged-request-id"
    status, _, body = await post(f"{namespace}-worker", **forged)
    # Seen once (1 of 4 loaded full runs): 502 right after the tenant's 200, cause not found; the body names
    # the error the gateway gave, so the next one says which.
    assert status == 200, body
    assert json.loads(body)["requestId"] == "forged-request-id"
    await kube.delete(resource_path("v1", "serviceaccounts", namespace=SYSTEM_NS, name=f"{namespace}-worker"))


async def test_http_triggers_are_aws_iam_unless_auth_type_none(
    platform: tuple[RunningOperator, Gateway, str], cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, python_function("site", HANDLER))
    cors = {
        "allowOrigins": ["https://app.example"],
        "allowMethods": ["GET"],
        "allowHeaders": ["authorization"],
    }
    for name, auth in (("private", None), ("public", "NONE")):
        http: JSON = {
            "path": f"/{name}",
            "methods": ["GET"],
            "cors": cors,
            **({"authType": auth} if auth else {}),
        }
        cluster.apply(
            {
                "apiVersion": "kubelambda.io/v1alpha1",
                "kind": "Trigger",
                "metadata": {"name": name},
                "spec": {"function": "site", "http": http},
            },
            namespace,
        )
    await service_account(kube, namespace, "browser")
    await bind_invoker(kube, namespace, "browser-invokes", namespace, "browser")
    token = await token_of(kube, namespace, "browser")

    async def get(path: str, **headers: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/api/{namespace}{path}", headers=headers) as resp,
        ):
            return resp.status, resp.headers.get("x-amzn-ErrorType", "")

    assert await wait_for(
        lambda: get("/public"), lambda r: r[0] == 200, what="the public route", timeout=90
    ) == (200, "")
    assert await wait_for(lambda: get("/private"), lambda r: r[0] != 404, what="the private route") == (
        403,
        "MissingAuthenticationTokenException",
    )
    assert await get("/private", Authorization=f"Bearer {token}") == (200, "")

    # A browser: the preflight is answered by the gateway (no credentials needed), the unsigned call is refused,
    # and both carry the CORS headers so the page can read the refusal.
    browser = {"Origin": "https://app.example"}
    async with aiohttp.ClientSession() as http:
        async with http.options(
            f"{url}/api/{namespace}/private", headers={**browser, "Access-Control-Request-Method": "GET"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert resp.headers["Access-Control-Allow-Methods"] == "GET"
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization"
        async with http.get(f"{url}/api/{namespace}/private", headers=browser) as resp:
            assert resp.status == 403
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        async with http.get(
            f"{url}/api/{namespace}/private", headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers


FAILING = """
def handler(event, context):
    raise ValueError("asked to fail")
"""


async def test_a_function_destination_needs_the_sources_identity_to_may_invoke_it(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    nats_server: Any,
) -> None:
    """As a Lambda execution role needs lambda:InvokeFunction on a destination: the source's ServiceAccount
    (here the namespace's default) without invoke on the target -> the record is dead-lettered with the reason."""
    _, gateway, url = platform
    await deploy(cluster, gateway, namespace, python_function("sink", HANDLER))
    doc = python_function("src", FAILING)
    doc["spec"]["async"] = {"maxRetries": 0, "onFailure": {"function": "sink"}}
    await deploy(cluster, gateway, namespace, doc)
    await service_account(kube, namespace, "caller")
    await bind_invoker(kube, namespace, "caller-invokes", namespace, "caller")
    token = await token_of(kube, namespace, "caller")

    async def event() -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/2015-03-31/functions/{namespace}%2Fsrc/invocations",
                data=b"{}",
                headers={"Authorization": f"Bearer {token}", "X-Amz-Invocation-Type": "Event"},
            ) as resp,
        ):
            return resp.status

    async def dead_letters() -> list[Any]:
        queue = await EventQueue.connect(nats_server.url, stream=gateway.settings.async_stream)
        try:
            return await list_dead_letters(queue, namespace)
        finally:
            await queue.close()

    assert await wait_for(event, lambda s: s == 202, what="the Event accepted") == 202
    (letter,) = await wait_for(dead_letters, bool, what="the record dead-lettered", timeout=120)
    assert "AccessDeniedException" in letter.reason
    assert f"system:serviceaccount:{namespace}:default" in letter.reason
    assert f"arn:aws:lambda:us-east-1:{namespace}:function:sink" in letter.reason
    assert letter.record["requestContext"]["condition"] == "RetriesExhausted"

    # Granted: once the denial is out of the decision cache (CACHE_SECONDS), records go to the sink.
    await bind_invoker(kube, namespace, "default-invokes", namespace, "default")
    sent = metrics.ASYNC_DESTINATION_RECORDS.labels(namespace, "src", "function")

    async def records_sent_after_another_event() -> float:
        assert await event() == 202
        return float(sent._value.get())

    await wait_for(
        records_sent_after_another_event,
        lambda n: n > 0,
        what="a record sent to the sink",
        timeout=120,
        interval=1.0,
    )


RECORDER = """
import json, os, urllib.request

def handler(event, context):
    body = json.dumps({"event": event}).encode()
    request = urllib.request.Request(os.environ["RECORDS_URL"], data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return {"ok": True}
"""


async def test_a_schedule_bridge_invokes_as_its_own_service_account(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Any,
) -> None:
    """The bridge pod presents its ServiceAccount's token; the operator's Role grants it invoke on exactly its
    Function, so a schedule Trigger delivers with auth on."""
    _, gateway, _ = platform
    doc = python_function("ticker", RECORDER, environment={"RECORDS_URL": records.url(f"{namespace}-ticker")})
    await deploy(cluster, gateway, namespace, doc)
    cluster.apply(
        {
            "apiVersion": "kubelambda.io/v1alpha1",
            "kind": "Trigger",
            "metadata": {"name": "every-minute"},
            "spec": {"function": "ticker", "schedule": {"expression": "cron(* * * * ? *)"}},
        },
        namespace,
    )
    role = await bridge_role(kube, namespace, "every-minute")
    assert {
        "apiGroups": ["kubelambda.io"],
        "resources": ["functions"],
        "resourceNames": ["ticker"],
        "verbs": ["invoke"],
    } in role["rules"]
    (got,) = await records.wait(f"{namespace}-ticker", 1, timeout=150)
    assert got["event"]["detail-type"] == "Scheduled Event"


async def bridge_role(kube: KubeClient, namespace: str, trigger: str) -> JSON:
    """The Role the operator made for the bridge of ``trigger`` (bound to its ServiceAccount), once it exists."""
    role: JSON = await wait_for(
        lambda: kube.get_or_none(
            resource_path(RBAC, "roles", namespace=namespace, name=bridge_name(trigger))
        ),
        lambda r: r is not None,
        what=f"the Role of Trigger {trigger}'s bridge",
    )
    return role


async def bridge_kubeconfig(cluster: Cluster, kube: KubeClient, namespace: str, trigger: str) -> Path:
    """A kubeconfig whose user is the ServiceAccount the operator made for ``trigger``'s bridge (once its Role
    exists): a bridge process run with it authenticates to the API server and to the gateway (bearer token) as
    the bridge's pod does."""
    await bridge_role(kube, namespace, trigger)
    path: Path = yaml_kubeconfig(cluster, await token_of(kube, namespace, bridge_name(trigger)))
    return path


async def let_read_trigger(kube: KubeClient, namespace: str, account: str, trigger: str) -> None:
    """Lets ``account`` do what the bridge of ``trigger`` does with the API server (read it, write its status and
    checkpoint), but not invoke its Function: the bridge of one Trigger aimed at another Trigger's Function."""
    name = f"{account}-runs-{trigger}"
    await kube.create(
        resource_path(RBAC, "roles", namespace=namespace),
        {
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["triggers"],
                    "resourceNames": [trigger],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [GROUP],
                    "resources": ["triggers/status"],
                    "resourceNames": [trigger],
                    "verbs": ["get", "patch"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [checkpoint_name(trigger)],
                    "verbs": ["get", "patch", "update"],
                },
            ],
        },
    )
    await kube.create(
        resource_path(RBAC, "rolebindings", namespace=namespace),
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )


def disabled_trigger(name: str, function: str, **source: JSON) -> JSON:
    """A Trigger the operator makes the bridge objects of (ServiceAccount, Role, checkpoint) but runs no pod for:
    the test runs the bridge itself, as a process."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"function": function, "enabled": False, **source},
    }


@pytest.fixture(scope="module")
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    async with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


async def test_a_queue_bridge_delivers_only_to_the_function_it_was_granted(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Any,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """A Redis queue Trigger's bridge, as its ServiceAccount, delivers to its Function. The same bridge identity
    aimed at a Function it was not granted is refused (AccessDenied): the gateway's refusal is a platform error to
    the bridge, which holds the message (no delivery attempt used, nothing dead-lettered) and delivers it once
    the grant exists."""
    _, gateway, url = platform
    for fn in ("sink", "other"):
        doc = python_function(fn, RECORDER, environment={"RECORDS_URL": records.url(f"{namespace}-{fn}")})
        await deploy(cluster, gateway, namespace, doc)
    redis = aioredis.from_url(redis_server.url)
    try:
        for name, fn in (("jobs", "sink"), ("stray", "other")):
            cluster.apply(
                disabled_trigger(
                    name,
                    fn,
                    queue={
                        "redis": {"url": redis_server.url, "key": name},
                        "batchSize": 10,
                        "maxBatchingWindowSeconds": 0,
                    },
                ),
                namespace,
            )
        config = await bridge_kubeconfig(cluster, kube, namespace, "jobs")
        await bridge_role(kube, namespace, "stray")
        await let_read_trigger(kube, namespace, bridge_name("jobs"), "stray")

        with BridgeProcess(cluster, namespace, "jobs", gateway_url=url, log_dir=tmp_path, kubeconfig=config):
            await redis.xadd("jobs", {"body": b"to-sink"})
            (got,) = await records.wait(f"{namespace}-sink", 1, timeout=120)
            assert [r["body"] for r in got["event"]["Records"]] == ["to-sink"]

        denied = refusals("AccessDenied")
        stray = BridgeProcess(
            cluster,
            namespace,
            "stray",
            gateway_url=url,
            log_dir=tmp_path,
            kubeconfig=config,
            KUBELAMBDA_BRIDGE_QUEUE_BACKOFF_MAX_SECONDS="1",
        )
        with stray:
            await redis.xadd("stray", {"body": b"to-other"})
            await wait_for(
                lambda: asyncio.sleep(0, result=stray.log()),
                lambda text: "gateway answered 403" in text,
                what="the stray bridge refused",
                timeout=120,
            )
            assert refusals("AccessDenied") > denied
            # Held, not lost: delivered to this bridge and not acknowledged, nothing dead-lettered.
            (group,) = await redis.xinfo_groups("stray")
            assert group["pending"] == 1
            assert await redis.xlen("stray:dlq") == 0
            assert records.of(f"{namespace}-other") == []

            await bind_invoker(kube, namespace, "jobs-bridge-invokes-other", namespace, bridge_name("jobs"))
            (got,) = await records.wait(f"{namespace}-other", 1, timeout=120)
            (record,) = got["event"]["Records"]
            assert record["body"] == "to-other"
            assert record["attributes"]["ApproximateReceiveCount"] == "1"
            await wait_for(
                lambda: redis.xinfo_groups("stray"),
                lambda groups: groups[0]["pending"] == 0,
                what="the message acknowledged",
            )
    finally:
        await redis.aclose()


async def test_a_bucket_bridge_delivers_only_to_the_function_it_was_granted(
    platform: tuple[RunningOperator, Gateway, str],
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Any,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """A polling bucket Trigger's bridge (SeaweedFS), as its ServiceAccount, delivers each new object to its
    Function (Event invocations, later run by the async worker as the platform). Aimed at a Function it was not
    granted, its events are refused (AccessDenied) and retried with backoff, the checkpoint held back, until the
    grant exists; then the object's event arrives."""
    _, gateway, url = platform
    for fn in ("sink", "other"):
        doc = python_function(fn, RECORDER, environment={"RECORDS_URL": records.url(f"{namespace}-{fn}")})
        await deploy(cluster, gateway, namespace, doc)
    async with S3Server(tmp_path_factory.mktemp("seaweedfs")) as s3_server:
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"}),
        )
        await asyncio.to_thread(s3.create_bucket, Bucket="uploads")
        for name, fn in (("files", "sink"), ("stray", "other")):
            bucket = {
                "endpoint": s3_server.endpoint,
                "bucket": "uploads",
                "mode": "poll",
                "pollIntervalSeconds": 1,
                "filter": {"prefix": f"{name}/"},
            }
            cluster.apply(disabled_trigger(name, fn, bucket=bucket), namespace)
        config = await bridge_kubeconfig(cluster, kube, namespace, "files")
        await bridge_role(kube, namespace, "stray")
        await let_read_trigger(kube, namespace, bridge_name("files"), "stray")

        for name, fn in (("files", "sink"), ("stray", "other")):
            bridge = BridgeProcess(
                cluster, namespace, name, gateway_url=url, log_dir=tmp_path, kubeconfig=config
            )
            with bridge:
                await wait_for(
                    lambda n=name: checkpoint_written(kube, namespace, n),
                    bool,
                    what=f"{name}'s first listing",
                )
                await asyncio.to_thread(s3.put_object, Bucket="uploads", Key=f"{name}/a.txt", Body=b"a")
                if name == "stray":
                    await wait_for(
                        lambda b=bridge: asyncio.sleep(0, result=b.log()),
                        lambda text: (
                            "Gateway refused an event of Trigger" in text
                            and f"{bridge_name('files')} is not authorized to perform: lambda:InvokeFunction"
                            in text
                        ),
                        what="the stray bridge refused",
                        timeout=120,
                    )
                    assert records.of(f"{namespace}-other") == []
                    # The checkpoint stays before the refused object (the first listing's empty prefix).
                    held = await checkpoint_written(kube, namespace, name)
                    assert held is not None
                    assert held["data"]["count"] == "0"
                    await bind_invoker(
                        kube, namespace, "files-bridge-invokes-other", namespace, bridge_name("files")
                    )
                (got,) = await records.wait(f"{namespace}-{fn}", 1, timeout=120)
                (event,) = got["event"]["Records"]
                assert event["s3"]["object"]["key"] == f"{name}/a.txt"
                assert event["eventName"] == "ObjectCreated:Put"
