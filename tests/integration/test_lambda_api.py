"""Lambda's control-plane API, versions and aliases against the real local cluster: boto3 and the AWS CLI (from
PyPI) as clients, the operator running the functions, the gateway as its own ServiceAccount (docs/versions.md,
docs/versions.md)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import nats
import pytest
from botocore.exceptions import ClientError

from kltest import Cluster, wait_for
from kltest.platform import (
    Env,
    PlatformUnderTest,
    lambda_client,
    running_platform,
    start_gateway,
    stop_gateway,
    token_of,
)
from kubelambda.devcluster.servers import NatsServer, S3Server, SqsServer
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
ROLE = "arn:aws:iam::000000000000:role/default"


def handler(tag: str) -> str:
    return f"""
def handler(event, context):
    return {{"tag": {tag!r}, "version": context.function_version, "arn": context.invoked_function_arn}}
"""


def zipped(source: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("app.py", source)
    return out.getvalue()


STORE_KEY, STORE_SECRET = "kubelambda", "kubelambda-secret"  # SeaweedFS without IAM takes any key
GRACE = (
    10.0  # seconds an unreferenced zip is kept (well above a CreateFunction's store-then-apply at load 40)
)


@pytest.fixture(scope="module")
async def code_store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[S3Server]:
    """The platform's S3-compatible code store (SeaweedFS, as ``kubelambda dev up`` runs it)."""
    async with S3Server(tmp_path_factory.mktemp("code-store")) as server:
        yield server


@pytest.fixture(scope="module")
async def sqs_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SqsServer]:
    async with SqsServer(tmp_path_factory.mktemp("elasticmq")) as server:
        yield server


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer, code_store: S3Server, sqs_server: SqsServer
) -> AsyncIterator[PlatformUnderTest]:
    async with running_platform(
        cluster,
        kube,
        nats_url=nats_server.url,
        code_store_endpoint=code_store.endpoint,
        code_store_access_key_id=STORE_KEY,
        code_store_secret_access_key=STORE_SECRET,
        code_store_source_buckets=["uploads"],
        # The collector of unreferenced zips, quick (test_unreferenced_zips_are_deleted).
        code_store_gc_interval_seconds=1,
        code_store_gc_grace_seconds=GRACE,
        event_source_sqs_endpoint=sqs_server.endpoint,
    ) as platform:
        yield platform


def s3_client(store: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        region_name="us-east-1",
        aws_access_key_id=STORE_KEY,
        aws_secret_access_key=STORE_SECRET,
    )


def invoke_sync(client: Any, name: str, **kwargs: Any) -> tuple[JSON, str]:
    answer = client.invoke(FunctionName=name, Payload=b"{}", **kwargs)
    body = json.loads(answer["Payload"].read())
    assert "FunctionError" not in answer, body
    return body, answer["ResponseMetadata"]["HTTPHeaders"]["x-amz-executed-version"]


async def call(method: Any, **kwargs: Any) -> Any:
    """boto3 blocks and the gateway runs in this test's event loop: call it from a thread."""
    return await asyncio.to_thread(method, **kwargs)


async def wait_waiter(client: Any, name: str, **kwargs: Any) -> None:
    await asyncio.to_thread(
        client.get_waiter(name).wait, WaiterConfig={"Delay": 1, "MaxAttempts": 120}, **kwargs
    )


async def gateway_sees(env: Env, name: str) -> None:
    """The gateway's watch has the Function object ``name`` invocable (the API server answered the waiter
    first; the gateway's cache follows a moment later)."""
    await wait_for(
        lambda: asyncio.sleep(0, result=env.gateway.registry.functions.get((env.namespace, name))),
        lambda fn: fn is not None and fn.ready,
        what=f"the gateway to see {env.namespace}/{name} Ready",
        timeout=60,
    )


async def create_from(client: Any, fn: str, source: str | bytes, **kwargs: Any) -> JSON:
    """CreateFunction of a python3.11 ``app.handler`` from ``source`` (the module's text, or a zip)."""
    code = source if isinstance(source, bytes) else zipped(source)
    created: JSON = await call(
        client.create_function,
        FunctionName=fn,
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": code},
        **kwargs,
    )
    return created


async def create(client: Any, env: Env, name: str, tag: str, **kwargs: Any) -> JSON:
    fn = f"arn:aws:lambda:us-east-1:{env.namespace}:function:{name}"
    created = await create_from(client, fn, handler(tag), **kwargs)
    await wait_waiter(client, "function_active_v2", FunctionName=f"{env.namespace}/{name}")
    await gateway_sees(env, name)
    return created


async def publish(client: Any, env: Env, name: str) -> str:
    version: str = (await call(client.publish_version, FunctionName=f"{env.namespace}/{name}"))["Version"]
    await wait_waiter(
        client, "published_version_active", FunctionName=f"{env.namespace}/{name}", Qualifier=version
    )
    await gateway_sees(env, f"{name}-v{version}")
    return version


async def update_code(client: Any, env: Env, name: str, tag: str) -> None:
    await call(
        client.update_function_code, FunctionName=f"{env.namespace}/{name}", ZipFile=zipped(handler(tag))
    )
    await wait_waiter(client, "function_updated_v2", FunctionName=f"{env.namespace}/{name}")
    await wait_for(
        lambda: asyncio.to_thread(invoke_sync, client, f"{env.namespace}/{name}"),
        lambda answer: answer[0]["tag"] == tag,
        what=f"$LATEST of {name} to run {tag} (its pods roll)",
        timeout=120,
    )


async def test_create_invoke_publish_update_and_delete(env: Env) -> None:
    client = lambda_client(env.url)
    created = await create(client, env, "crud", "one", Description="first")
    assert created["Version"] == "$LATEST"
    assert created["FunctionArn"] == f"arn:aws:lambda:us-east-1:{env.namespace}:function:crud"
    assert created["Runtime"] == "python3.11"
    assert created["Role"] == f"arn:aws:iam::{env.namespace}:role/default"
    body, version = await asyncio.to_thread(invoke_sync, client, f"{env.namespace}/crud")
    assert (body["tag"], body["version"], version) == ("one", "$LATEST", "$LATEST")

    assert await publish(client, env, "crud") == "1"
    await update_code(client, env, "crud", "two")
    # $LATEST runs the new code while version 1 keeps the old, by Qualifier and by the ARN's suffix.
    body, version = await asyncio.to_thread(invoke_sync, client, f"{env.namespace}/crud")
    assert (body["tag"], version) == ("two", "$LATEST")
    body, version = await asyncio.to_thread(invoke_sync, client, f"{env.namespace}/crud", Qualifier="1")
    assert (body["tag"], body["version"], version) == ("one", "1", "1")
    arn = f"arn:aws:lambda:us-east-1:{env.namespace}:function:crud"
    body, version = await asyncio.to_thread(invoke_sync, client, f"{arn}:1")
    assert (body["tag"], version, body["arn"]) == ("one", "1", f"{arn}:1")

    latest = await call(client.get_function_configuration, FunctionName=f"{env.namespace}/crud")
    assert latest["Description"] == "first"  # UpdateFunctionCode leaves the rest of the configuration
    got = await call(client.get_function, FunctionName=f"{env.namespace}/crud", Qualifier="1")
    assert (got["Configuration"]["Version"], got["Configuration"]["State"]) == ("1", "Active")
    versions = await call(client.list_versions_by_function, FunctionName=f"{env.namespace}/crud")
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1"]
    # kubectl shows the version as a Function with its columns.
    table = env.cluster.kubectl("get", "functions", "-n", env.namespace).stdout
    row = next(line.split() for line in table.splitlines() if line.startswith("crud-v1 "))
    assert row[1:4] == ["python3.11", "crud", "1"]

    await call(client.delete_function, FunctionName=f"{env.namespace}/crud")
    with pytest.raises(ClientError) as info:
        await call(client.get_function, FunctionName=f"{env.namespace}/crud")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    listed = await env.kube.list(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=env.namespace)
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == []


async def invoke_many(
    url: str, fn: str, qualifier: str, count: int, *, concurrency: int
) -> list[tuple[JSON, str]]:
    """``count`` synchronous invocations, ``concurrency`` at a time, from this event loop (aiohttp: no boto3
    threads fighting the in-process gateway for the GIL); each answer's body and ``X-Amz-Executed-Version``.

    Retried after a pause, as the SDKs retry them: a throttle (429: every instance of the drawn version busy past
    the slot wait while another starts); anything else fails at once, a ServiceException (500) too: it was an
    instance being scaled down closing a kept-alive connection the gateway had just sent the call on (the agent
    now answers with Connection: close until requests stop, runtime-images/agent/main.go)."""
    target = (
        f"{url}/2015-03-31/functions/{urllib.parse.quote(fn, safe='/')}/invocations?Qualifier={qualifier}"
    )
    slots = asyncio.Semaphore(concurrency)
    retried: Counter[int] = Counter()

    async def one(http: aiohttp.ClientSession) -> tuple[JSON, str]:
        for _ in range(100):
            async with slots, http.post(target, data=b"{}") as resp:
                body = await resp.json(content_type=None)
                if resp.status == 200:
                    assert "X-Amz-Function-Error" not in resp.headers, body
                    return body, resp.headers["X-Amz-Executed-Version"]
                assert resp.status == 429, (resp.status, body)
                retried[resp.status] += 1
            await asyncio.sleep(0.2)
        raise AssertionError(f"100 tries of one call were all retried: {body}")

    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(one(http) for _ in range(count)))
    print(f"{count} invocations of {fn}:{qualifier}, {concurrency} at a time; retried: {dict(retried)}")
    return answers


# 1,000 calls of a weighted alias: about 100 s at load 40, over pytest's default 300 s once with boto3 in threads.
@pytest.mark.timeout(900)
async def test_a_weighted_alias_splits_invocations_and_moves_at_once(env: Env) -> None:
    client = lambda_client(env.url)
    fn = f"{env.namespace}/canary"
    # A 30 s timeout: 1,000 calls at load 30-50 saw a warm handler miss the default 3 s (the test is about shares).
    await create(client, env, "canary", "one", Timeout=30)
    assert await publish(client, env, "canary") == "1"
    await update_code(client, env, "canary", "two")
    assert await publish(client, env, "canary") == "2"
    alias = await call(
        client.create_alias,
        FunctionName=fn,
        Name="live",
        FunctionVersion="1",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}},
    )
    assert alias["AliasArn"] == f"arn:aws:lambda:us-east-1:{env.namespace}:function:canary:live"
    await wait_for(
        lambda: asyncio.sleep(0, result=env.gateway.registry.aliases.get((env.namespace, "canary", "live"))),
        lambda found: found is not None,
        what="the gateway to see alias live",
    )
    answers = await invoke_many(env.url, fn, "live", 1000, concurrency=8)
    executed = Counter(version for _, version in answers)
    assert set(executed) <= {"1", "2"}, executed
    assert all(body["tag"] == {"1": "one", "2": "two"}[version] for body, version in answers)
    print(f"alias live (1 + 10 % on 2), 1,000 invocations: {dict(executed)}")
    assert 70 <= executed["2"] <= 130, executed  # 10 % ± 3 pp
    got = await call(client.get_alias, FunctionName=fn, Name="live")
    assert got["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.1}}

    # Moving the alias fully to 2 takes effect for the very next call (this gateway's cache takes the write).
    await call(client.update_alias, FunctionName=fn, Name="live", FunctionVersion="2", RoutingConfig={})
    answers = [await asyncio.to_thread(invoke_sync, client, f"{fn}:live") for _ in range(20)]
    assert {version for _, version in answers} == {"2"}
    aliases = await call(client.list_aliases, FunctionName=fn)
    assert [(a["Name"], a["FunctionVersion"]) for a in aliases["Aliases"]] == [("live", "2")]
    table = env.cluster.kubectl("get", "functionaliases", "-n", env.namespace).stdout
    assert table.split("\n")[1].split()[:4] == ["canary.live", "canary", "live", "2"], table

    # A version an alias uses cannot be deleted; an unused one can.
    with pytest.raises(ClientError) as info:
        await call(client.delete_function, FunctionName=fn, Qualifier="2")
    assert info.value.response["Error"]["Code"] == "ResourceConflictException"
    await call(client.delete_function, FunctionName=fn, Qualifier="1")
    with pytest.raises(ClientError) as info:
        await call(client.invoke, FunctionName=fn, Qualifier="1", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    await call(client.delete_alias, FunctionName=fn, Name="live")
    with pytest.raises(ClientError) as info:
        await call(client.invoke, FunctionName=fn, Qualifier="live", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


async def test_errors_are_lambdas(env: Env) -> None:
    client = lambda_client(env.url)
    fn = f"{env.namespace}/errs"

    async def error_of(method: Any, **kwargs: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as info:
            await call(method, **kwargs)
        error = info.value.response["Error"]
        return error["Code"], error["Message"]

    assert (await error_of(client.get_function, FunctionName=fn))[0] == "ResourceNotFoundException"
    code, message = await error_of(
        client.create_function,
        FunctionName=fn,
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        MemorySize=16384,
        Code={"ZipFile": zipped(handler("x"))},
    )
    assert code == "InvalidParameterValueException", message
    assert "memoryMB" in message, message
    code, message = await error_of(
        client.create_function,
        FunctionName=fn,
        Runtime="python3.11",
        Role="lambda-role",
        Handler="app.handler",
        Code={"ZipFile": zipped(handler("x"))},
    )
    assert code == "InvalidParameterValueException", message
    assert "Role" in message, message
    code, message = await error_of(
        client.create_function,
        FunctionName=fn,
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": b"not a zip"},
    )
    assert code == "InvalidParameterValueException", message
    assert "Code.ZipFile" in message, message
    await create(client, env, "errs", "one")
    code, _ = await error_of(
        client.create_function,
        FunctionName=fn,
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": zipped(handler("x"))},
    )
    assert code == "ResourceConflictException"
    assert (await error_of(client.invoke, FunctionName=fn, Qualifier="7"))[0] == "ResourceNotFoundException"
    assert (await error_of(client.invoke, FunctionName=fn, Qualifier="nope"))[
        0
    ] == "ResourceNotFoundException"
    code, _ = await error_of(client.create_alias, FunctionName=fn, Name="live", FunctionVersion="9")
    assert code == "ResourceNotFoundException"
    code, _ = await error_of(client.get_alias, FunctionName=fn, Name="live")
    assert code == "ResourceNotFoundException"
    code, _ = await error_of(client.publish_version, FunctionName=fn, CodeSha256="0" * 64)
    assert code == "PreconditionFailedException"
    # A field another manager owns (a GitOps tool set the memory) is a conflict, never a silent overwrite.
    env.cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=gitops",
        "-n",
        env.namespace,
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kubelambda.io/v1alpha1",
                "kind": "Function",
                "metadata": {"name": "errs"},
                "spec": {"memoryMB": 192},
            }
        ),
    )
    code, message = await error_of(client.update_function_configuration, FunctionName=fn, MemorySize=256)
    assert code == "ResourceConflictException", message
    assert "gitops" in message, message
    assert env.cluster.kubectl_json("get", "function", "errs", "-n", env.namespace)["spec"]["memoryMB"] == 192
    code, message = await error_of(
        client.update_function_configuration, FunctionName=fn, Timeout=7, RevisionId="1"
    )
    assert code == "PreconditionFailedException", message
    assert "RevisionId" in message, message
    updated = await call(client.update_function_configuration, FunctionName=fn, Timeout=7)
    assert (updated["Timeout"], updated["MemorySize"]) == (7, 192)
    # LoggingConfig (docs/logs.md): Lambda's fields, through boto3's own validation and the CRD's rule.
    assert updated["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/aws/lambda/errs"}
    logging_config = {"LogFormat": "JSON", "ApplicationLogLevel": "WARN"}
    updated = await call(client.update_function_configuration, FunctionName=fn, LoggingConfig=logging_config)
    assert updated["LoggingConfig"] == {
        **logging_config,
        "SystemLogLevel": "INFO",
        "LogGroup": "/aws/lambda/errs",
    }
    spec = env.cluster.kubectl_json("get", "function", "errs", "-n", env.namespace)["spec"]
    assert spec["logging"] == {"logFormat": "JSON", "applicationLogLevel": "WARN"}
    bad = {"LogFormat": "Text", "SystemLogLevel": "WARN"}
    code, message = await error_of(client.update_function_configuration, FunctionName=fn, LoggingConfig=bad)
    assert (code, message) == (
        "InvalidParameterValueException",
        "LoggingConfig.SystemLogLevel: a log level needs LogFormat JSON",
    )
    concurrency = await call(client.put_function_concurrency, FunctionName=fn, ReservedConcurrentExecutions=3)
    assert concurrency["ReservedConcurrentExecutions"] == 3
    got = await call(client.get_function_concurrency, FunctionName=fn)
    assert got["ReservedConcurrentExecutions"] == 3
    await call(client.delete_function_concurrency, FunctionName=fn)
    assert "ReservedConcurrentExecutions" not in await call(client.get_function_concurrency, FunctionName=fn)
    settings = await call(client.get_account_settings)
    assert settings["AccountLimit"]["ConcurrentExecutions"] == 1000


async def test_the_aws_cli_manages_functions(env: Env, tmp_path: Path) -> None:
    (tmp_path / "code.zip").write_bytes(zipped(handler("cli")))
    aws_env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    fn = f"arn:aws:lambda:us-east-1:{env.namespace}:function:cli"

    def aws(*args: str) -> Any:
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "aws"),
                "lambda",
                *args,
                "--endpoint-url",
                env.url,
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            env=aws_env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    created = await asyncio.to_thread(
        aws,
        "create-function",
        "--function-name",
        fn,
        "--runtime",
        "python3.11",
        "--role",
        ROLE,
        "--handler",
        "app.handler",
        "--zip-file",
        f"fileb://{tmp_path / 'code.zip'}",
        "--publish",
    )
    assert created["Version"] == "1"
    await asyncio.to_thread(
        aws, "wait", "published-version-active", "--function-name", fn, "--qualifier", "1"
    )
    await asyncio.to_thread(aws, "wait", "function-active-v2", "--function-name", fn)
    alias = await asyncio.to_thread(
        aws, "create-alias", "--function-name", fn, "--name", "prod", "--function-version", "1"
    )
    assert alias["FunctionVersion"] == "1"
    await gateway_sees(env, "cli-v1")
    out = tmp_path / "out.json"
    answer = await asyncio.to_thread(
        aws, "invoke", "--function-name", fn, "--qualifier", "prod", "--payload", "{}",
        str(out),
    )  # fmt: skip
    assert answer["ExecutedVersion"] == "1"
    assert json.loads(out.read_text())["tag"] == "cli"
    versions = await asyncio.to_thread(aws, "list-versions-by-function", "--function-name", fn)
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1"]

    # kubelambda's own commands, through the same API.
    def kubelambda(*args: str) -> Any:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "kubelambda"), *args, "--endpoint-url", env.url, "-o", "json"],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    published = await asyncio.to_thread(kubelambda, "publish", fn)
    assert published["Version"] == "1"  # nothing changed since version 1: Lambda answers that version
    listed = await asyncio.to_thread(kubelambda, "versions", fn)
    assert [v["Version"] for v in listed] == ["$LATEST", "1"]
    moved = await asyncio.to_thread(
        kubelambda, "alias", "update", fn, "--alias", "prod", "--version", "$LATEST"
    )
    assert moved[0]["FunctionVersion"] == "$LATEST"
    created_alias = await asyncio.to_thread(
        kubelambda, "alias", "create", fn, "--alias", "beta", "--version", "1"
    )
    assert (created_alias[0]["Name"], created_alias[0]["FunctionVersion"]) == ("beta", "1")
    aliases = await asyncio.to_thread(kubelambda, "alias", "list", fn)
    assert [(a["Name"], a["FunctionVersion"]) for a in aliases] == [("beta", "1"), ("prod", "$LATEST")]
    kubectl_aliases = env.cluster.kubectl("get", "functionaliases", "-n", env.namespace).stdout.splitlines()
    assert sorted(line.split()[:4] for line in kubectl_aliases[1:]) == [
        ["cli.beta", "cli", "beta", "1"],
        ["cli.prod", "cli", "prod", "$LATEST"],
    ]
    await asyncio.to_thread(aws, "delete-function", "--function-name", fn)


async def test_the_api_authorises_with_rbac_verbs(cluster: Cluster, kube: KubeClient, namespace: str) -> None:
    """A caller with get and list but not create on functions: ListFunctions answers (its own namespace), and
    CreateFunction is AccessDenied, before anything is written."""
    gateway, url = await start_gateway(cluster, kube, auth_mode="kubernetes")
    try:
        await kube.create(
            resource_path("v1", "serviceaccounts", namespace=namespace), {"metadata": {"name": "reader"}}
        )
        await kube.create(
            resource_path("rbac.authorization.k8s.io/v1", "roles", namespace=namespace),
            {
                "metadata": {"name": "reader"},
                "rules": [
                    {"apiGroups": ["kubelambda.io"], "resources": ["functions"], "verbs": ["get", "list"]}
                ],
            },
        )
        await kube.create(
            resource_path("rbac.authorization.k8s.io/v1", "rolebindings", namespace=namespace),
            {
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )
        token = await token_of(kube, namespace, "reader")
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/2015-03-31/functions/", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"Functions": []}
            body = {
                "FunctionName": "denied",
                "Runtime": "python3.11",
                "Role": ROLE,
                "Handler": "app.handler",
                "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
            }
            async with http.post(f"{url}/2015-03-31/functions", json=body, headers=headers) as resp:
                assert resp.status == 403
                assert resp.headers["x-amzn-ErrorType"] == "AccessDeniedException"
                message = (await resp.json())["message"]
                assert "lambda:CreateFunction" in message, message
                assert "verb create" in message, message
            async with http.get(f"{url}/2015-03-31/functions/") as resp:
                assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert (
            await kube.get_or_none(
                resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name="denied")
            )
            is None
        )
    finally:
        await stop_gateway(gateway)


RECORDER = """
import json, os, urllib.request

def handler(event, context):
    body = json.dumps({"version": context.function_version, "bodies": [r["body"] for r in event["Records"]]})
    request = urllib.request.Request(os.environ["RECORDS_URL"], data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return {}
"""


async def test_a_queue_trigger_follows_its_alias(env: Env, nats_server: NatsServer) -> None:
    """A Trigger naming ``fn:live`` delivers to the version the alias names, and follows it when it moves."""
    client = lambda_client(env.url)
    fn = f"{env.namespace}/queued"
    key = f"{env.namespace}-queued"
    await create_from(
        client, fn, RECORDER, Environment={"Variables": {"RECORDS_URL": env.records.url(key), "RELEASE": "1"}}
    )
    await wait_waiter(client, "function_active_v2", FunctionName=fn)
    assert await publish(client, env, "queued") == "1"
    await call(
        client.update_function_configuration,
        FunctionName=fn,
        Environment={"Variables": {"RECORDS_URL": env.records.url(key), "RELEASE": "2"}},
    )
    await wait_waiter(client, "function_updated_v2", FunctionName=fn)
    assert await publish(client, env, "queued") == "2"
    await call(client.create_alias, FunctionName=fn, Name="live", FunctionVersion="1")

    stream = f"versions{env.namespace.replace('-', '')}"
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        env.apply(
            {
                "apiVersion": "kubelambda.io/v1alpha1",
                "kind": "Trigger",
                "metadata": {"name": "follow"},
                "spec": {
                    "function": "queued:live",
                    "queue": {
                        "nats": {"url": nats_server.url, "stream": stream, "subject": f"{stream}.in"},
                        "batchSize": 1,
                    },
                },
            }
        )
        await js.publish(f"{stream}.in", b"first")
        got = await env.records.wait(key, 1, timeout=120)
        assert (got[0]["version"], got[0]["bodies"]) == ("1", ["first"])
        await call(client.update_alias, FunctionName=fn, Name="live", FunctionVersion="2")
        await js.publish(f"{stream}.in", b"second")
        got = await env.records.wait(key, 2, timeout=120)
        assert (got[1]["version"], got[1]["bodies"]) == ("2", ["second"])
        trigger = env.cluster.kubectl_json("get", "trigger", "follow", "-n", env.namespace)
        ready = {c["type"]: c for c in trigger["status"]["conditions"]}
        assert ready["FunctionMissing"]["status"] == "False"
    finally:
        await nc.close()


BLOB_HANDLER = """
import hashlib, os

def handler(event, context):
    with open(os.path.join(os.path.dirname(__file__), "data", "blob.bin"), "rb") as f:
        blob = f.read()
    return {"tag": TAG, "blob": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
"""


def blob_zip(tag: str, blob: bytes) -> bytes:
    """A zip no ConfigMap could hold: a module, and a binary file in a folder."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("app.py", f"TAG = {tag!r}\n" + BLOB_HANDLER)
        archive.writestr("data/blob.bin", blob)
    return out.getvalue()


async def http_get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read()


# Three rollouts from zero with a 3 MiB zip: over pytest's default 300 s once at load 85.
@pytest.mark.timeout(900)
async def test_zips_go_to_the_code_store(env: Env, code_store: S3Server) -> None:
    """A binary 3 MiB zip with a folder (no ConfigMap holds it) is stored by its sha256 and fetched by the pods;
    GetFunction's Code.Location downloads it; CodeSha256 is Lambda's base64; S3Bucket/S3Key/S3ObjectVersion
    name a zip in the store."""
    client = lambda_client(env.url)
    fn = f"{env.namespace}/blobs"
    blob = os.urandom(3 * 1024 * 1024)
    code = blob_zip("zip", blob)
    created = await create_from(client, fn, code)
    assert created["CodeSha256"] == base64.b64encode(hashlib.sha256(code).digest()).decode()
    assert created["CodeSize"] == len(code)
    await wait_waiter(client, "function_active_v2", FunctionName=fn)
    await gateway_sees(env, "blobs")
    body, _ = await asyncio.to_thread(invoke_sync, client, fn)
    assert body == {"tag": "zip", "blob": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    obj = env.cluster.kubectl_json("get", "function", "blobs", "-n", env.namespace)
    assert obj["spec"]["code"]["archive"]["sha256"] == hashlib.sha256(code).hexdigest()
    configmaps = env.cluster.kubectl_json("get", "configmaps", "-n", env.namespace)["items"]
    assert [c["metadata"]["name"] for c in configmaps if c["metadata"]["name"].startswith("blobs")] == []

    got = await call(client.get_function, FunctionName=fn)
    assert got["Configuration"]["CodeSha256"] == created["CodeSha256"]
    location = got["Code"]["Location"]
    assert await http_get(location) == (200, code)
    status, _ = await http_get(location.replace("signature=", "signature=0"))
    assert status == 403
    # PublishVersion takes the CodeSha256 GetFunction answered.
    version = (await call(client.publish_version, FunctionName=fn, CodeSha256=created["CodeSha256"]))[
        "Version"
    ]
    assert version == "1"

    # S3Bucket/S3Key/S3ObjectVersion: an older version of an object in an allowed bucket of the store.
    s3 = s3_client(code_store)
    await asyncio.to_thread(s3.create_bucket, Bucket="uploads")
    await asyncio.to_thread(
        s3.put_bucket_versioning, Bucket="uploads", VersioningConfiguration={"Status": "Enabled"}
    )
    first = blob_zip("s3-old", b"old")
    put = await asyncio.to_thread(s3.put_object, Bucket="uploads", Key="app.zip", Body=first)
    await asyncio.to_thread(s3.put_object, Bucket="uploads", Key="app.zip", Body=blob_zip("s3-new", b"new"))
    updated = await call(
        client.update_function_code,
        FunctionName=fn,
        S3Bucket="uploads",
        S3Key="app.zip",
        S3ObjectVersion=put["VersionId"],
    )
    assert updated["CodeSha256"] == base64.b64encode(hashlib.sha256(first).digest()).decode()
    await wait_waiter(client, "function_updated_v2", FunctionName=fn)
    await wait_for(
        lambda: asyncio.to_thread(invoke_sync, client, fn),
        lambda answer: answer[0]["tag"] == "s3-old",
        what="$LATEST of blobs to run the zip from S3",
        timeout=120,
    )
    body, version = await asyncio.to_thread(invoke_sync, client, fn, Qualifier="1")
    assert (body["tag"], body["size"], version) == ("zip", len(blob), "1")

    async def error_of(**kwargs: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as info:
            await call(client.update_function_code, FunctionName=fn, **kwargs)
        return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]

    code_, message = await error_of(S3Bucket="elsewhere", S3Key="app.zip")
    assert code_ == "InvalidParameterValueException", message
    assert "S3Bucket" in message, message
    code_, message = await error_of(S3Bucket="uploads", S3Key="missing.zip")
    assert code_ == "InvalidParameterValueException", message
    assert "NoSuchKey" in message, message
    code_, message = await error_of(ZipFile=b"not a zip")
    assert code_ == "InvalidParameterValueException", message
    assert "Code.ZipFile" in message, message
    await call(client.delete_function, FunctionName=fn)
    # Every store call above (put, read_source, serve, the collector's passes) used the gateway's one S3 client.
    store = env.gateway.code_store
    assert store is not None
    assert store.clients_made == 1


async def test_unreferenced_zips_are_deleted(env: Env, code_store: S3Server) -> None:
    """Issue 19: a zip no Function, version or alias references is deleted after the grace period, by the one
    collecting replica (this gateway alone: no peers); referenced ones stay, and a deleted function's go."""
    client = lambda_client(env.url)
    s3 = s3_client(code_store)
    fn = f"{env.namespace}/collected"
    zips = {tag: zipped(handler(tag)) for tag in ("one", "two", "three")}
    keys = {tag: f"sha256/{hashlib.sha256(data).hexdigest()}.zip" for tag, data in zips.items()}

    async def stored(tag: str) -> bool:
        listed = await asyncio.to_thread(s3.list_objects_v2, Bucket="kubelambda-code", Prefix=keys[tag])
        return any(o["Key"] == keys[tag] for o in listed.get("Contents", []))

    await create_from(client, fn, zips["one"], Publish=True)  # version 1 keeps "one"
    await call(client.update_function_code, FunctionName=fn, ZipFile=zips["two"])
    await call(client.update_function_code, FunctionName=fn, ZipFile=zips["three"])  # $LATEST: "three"
    last_upload = time.time()
    assert [await stored(tag) for tag in zips] == [True, True, True]
    collector = env.gateway.code_collector
    assert collector is not None
    await wait_for(
        lambda: stored("two"), lambda found: not found, what="zip two (unreferenced) deleted", timeout=90
    )
    # A whole pass that began after the referenced zips were past the grace period left them.
    await wait_for(
        lambda: asyncio.sleep(0, result=collector.last_pass_started),
        lambda started: started > last_upload + GRACE,
        what="a collector pass past the grace period",
        timeout=90,
    )
    assert [await stored("one"), await stored("three")] == [True, True]
    listed = await env.kube.list(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=env.namespace)
    )
    archives = {
        i["metadata"]["name"]: i["spec"]["code"]["archive"]["sha256"]
        for i in listed["items"]
        if i["metadata"]["name"].startswith("collected")
    }
    assert archives == {
        "collected": hashlib.sha256(zips["three"]).hexdigest(),
        "collected-v1": hashlib.sha256(zips["one"]).hexdigest(),
    }

    await call(client.delete_function, FunctionName=fn)
    for tag in ("one", "three"):
        await wait_for(
            lambda tag=tag: stored(tag), lambda found: not found, what=f"zip {tag} deleted", timeout=90
        )


SINK = """
import json, os, urllib.request

def handler(event, context):
    body = json.dumps({"version": context.function_version, "condition": event["requestContext"]["condition"]})
    request = urllib.request.Request(os.environ["RECORDS_URL"], data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return {}
"""


async def test_tags_and_a_destination_naming_an_alias(env: Env) -> None:
    """Tags are an annotation and labels; PutFunctionEventInvokeConfig's OnSuccess names ``sink:live`` and the
    record of an Event invocation reaches the version the alias names."""
    client = lambda_client(env.url)
    key = f"{env.namespace}-sink"
    arn = f"arn:aws:lambda:us-east-1:{env.namespace}:function"
    await create_from(
        client,
        f"{env.namespace}/sink",
        SINK,
        Environment={"Variables": {"RECORDS_URL": env.records.url(key)}},
    )
    await wait_waiter(client, "function_active_v2", FunctionName=f"{env.namespace}/sink")
    assert await publish(client, env, "sink") == "1"
    await call(client.create_alias, FunctionName=f"{env.namespace}/sink", Name="live", FunctionVersion="1")
    await create(client, env, "source", "src", Tags={"team": "payments", "cost centre": "R&D 42"})

    assert (await call(client.list_tags, Resource=f"{arn}:source"))["Tags"] == {
        "team": "payments",
        "cost centre": "R&D 42",
    }
    await call(client.tag_resource, Resource=f"{arn}:source", Tags={"stage": "prod"})
    await call(client.untag_resource, Resource=f"{arn}:source", TagKeys=["cost centre"])
    assert (await call(client.list_tags, Resource=f"{arn}:source"))["Tags"] == {
        "team": "payments",
        "stage": "prod",
    }
    labels = env.cluster.kubectl_json("get", "function", "source", "-n", env.namespace)["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith("tags.kubelambda.io/")} == {
        "tags.kubelambda.io/team": "payments",
        "tags.kubelambda.io/stage": "prod",
    }
    table = env.cluster.kubectl(
        "get", "fn", "-n", env.namespace, "-l", "tags.kubelambda.io/team=payments"
    ).stdout
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["source"]

    fn = f"{env.namespace}/source"
    with pytest.raises(ClientError) as info:
        await call(client.get_function_event_invoke_config, FunctionName=fn)
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    config = await call(
        client.put_function_event_invoke_config,
        FunctionName=fn,
        MaximumRetryAttempts=0,
        DestinationConfig={"OnSuccess": {"Destination": f"{arn}:sink:live"}},
    )
    assert config["DestinationConfig"] == {"OnSuccess": {"Destination": f"{arn}:sink:live"}}
    assert config["MaximumRetryAttempts"] == 0
    obj = env.cluster.kubectl_json("get", "function", "source", "-n", env.namespace)
    assert obj["spec"]["async"]["onSuccess"] == {"function": "sink:live"}
    assert obj["metadata"]["labels"]["tags.kubelambda.io/team"] == "payments"  # the tags stay
    got = await call(client.get_function_event_invoke_config, FunctionName=fn)
    assert (got["MaximumRetryAttempts"], got["MaximumEventAgeInSeconds"]) == (0, 21600)
    updated = await call(
        client.update_function_event_invoke_config, FunctionName=fn, MaximumEventAgeInSeconds=600
    )
    assert (updated["MaximumEventAgeInSeconds"], updated["DestinationConfig"]) == (
        600,
        config["DestinationConfig"],
    )
    with pytest.raises(ClientError) as info:
        await call(
            client.put_function_event_invoke_config,
            FunctionName=fn,
            DestinationConfig={"OnFailure": {"Destination": "arn:aws:sns:us-east-1:000000000000:topic"}},
        )
    assert info.value.response["Error"]["Code"] == "InvalidParameterValueException"
    assert "DestinationConfig.OnFailure.Destination" in info.value.response["Error"]["Message"]

    await gateway_sees(env, "source")
    await call(client.invoke, FunctionName=fn, InvocationType="Event", Payload=b"{}")
    got_records = await env.records.wait(key, 1, timeout=120)
    assert got_records[0] == {"version": "1", "condition": "Success"}
    await call(client.delete_function_event_invoke_config, FunctionName=fn)
    listed = await call(client.list_function_event_invoke_configs, FunctionName=fn)
    assert listed["FunctionEventInvokeConfigs"] == []


async def test_event_source_mappings_are_triggers(env: Env, sqs_server: SqsServer) -> None:
    """An SQS event source mapping through the API is a Trigger kubectl shows, delivers the queue's messages to
    ``fn:live``, and Update/List/Delete map onto it."""
    client = lambda_client(env.url)
    fn = f"{env.namespace}/mapped"
    key = f"{env.namespace}-mapped"
    await create_from(client, fn, RECORDER, Environment={"Variables": {"RECORDS_URL": env.records.url(key)}})
    await wait_waiter(client, "function_active_v2", FunctionName=fn)
    assert await publish(client, env, "mapped") == "1"
    await call(client.create_alias, FunctionName=fn, Name="live", FunctionVersion="1")
    sqs = boto3.client(
        "sqs", endpoint_url=sqs_server.endpoint, region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="x",
    )  # fmt: skip
    queue = f"esm-{env.namespace}"
    queue_url = (await asyncio.to_thread(sqs.create_queue, QueueName=queue))["QueueUrl"]
    source_arn = f"arn:aws:sqs:us-east-1:000000000000:{queue}"

    created = await call(
        client.create_event_source_mapping,
        FunctionName=f"{fn}:live",
        EventSourceArn=source_arn,
        BatchSize=1,
    )
    uuid = created["UUID"]
    assert created["EventSourceArn"] == source_arn
    assert created["FunctionArn"] == f"arn:aws:lambda:us-east-1:{env.namespace}:function:mapped:live"
    assert (created["BatchSize"], created["State"]) == (1, "Creating")
    trigger = env.cluster.kubectl_json("get", "trigger", f"esm-{uuid}", "-n", env.namespace)
    assert trigger["spec"]["function"] == "mapped:live"
    assert trigger["spec"]["queue"]["sqs"]["queueUrl"] == f"{sqs_server.endpoint}/000000000000/{queue}"
    assert queue_url.endswith(f"/000000000000/{queue}")
    await wait_for(
        lambda: call(client.get_event_source_mapping, UUID=uuid),
        lambda got: got["State"] == "Enabled",
        what="the mapping's Trigger Ready",
        timeout=180,
    )
    await asyncio.to_thread(sqs.send_message, QueueUrl=queue_url, MessageBody="hello")
    got = await env.records.wait(key, 1, timeout=120)
    assert (got[0]["version"], got[0]["bodies"]) == ("1", ["hello"])

    updated = await call(client.update_event_source_mapping, UUID=uuid, BatchSize=5, Enabled=False)
    assert updated["BatchSize"] == 5
    got_mapping = await call(client.get_event_source_mapping, UUID=uuid)
    assert (got_mapping["BatchSize"], got_mapping["State"]) == (5, "Disabled")
    listed = await call(client.list_event_source_mappings, FunctionName=fn)
    assert [m["UUID"] for m in listed["EventSourceMappings"]] == [uuid]
    listed = await call(
        client.list_event_source_mappings, EventSourceArn="arn:aws:sqs:us-east-1:000000000000:other"
    )
    assert listed["EventSourceMappings"] == []
    with pytest.raises(ClientError) as info:
        await call(
            client.create_event_source_mapping,
            FunctionName=fn,
            EventSourceArn="arn:aws:dynamodb:us-east-1:000000000000:table/t/stream/x",
        )
    assert info.value.response["Error"]["Code"] == "InvalidParameterValueException"
    assert "EventSourceArn" in info.value.response["Error"]["Message"]

    deleted = await call(client.delete_event_source_mapping, UUID=uuid)
    assert deleted["State"] == "Deleting"
    with pytest.raises(ClientError) as info:
        await call(client.get_event_source_mapping, UUID=uuid)
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
