"""Lambda's control-plane API, versions and aliases against the real local cluster: boto3 and the AWS CLI (from
PyPI) as clients, the operator running the functions, the gateway as its own ServiceAccount (docs/lambda-api.md,
docs/versions.md)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
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
from kubelambda.devcluster.servers import NatsServer
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


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer
) -> AsyncIterator[PlatformUnderTest]:
    async with running_platform(cluster, kube, nats_url=nats_server.url) as platform:
        yield platform


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


async def create(client: Any, env: Env, name: str, tag: str, **kwargs: Any) -> JSON:
    created: JSON = await call(
        client.create_function,
        FunctionName=f"arn:aws:lambda:us-east-1:{env.namespace}:function:{name}",
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": zipped(handler(tag))},
        **kwargs,
    )
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


async def test_a_weighted_alias_splits_invocations_and_moves_at_once(env: Env) -> None:
    client = lambda_client(env.url)
    fn = f"{env.namespace}/canary"
    await create(client, env, "canary", "one")
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
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(8) as pool:
        answers = await asyncio.gather(
            *(
                loop.run_in_executor(pool, lambda: invoke_sync(client, fn, Qualifier="live"))
                for _ in range(1000)
            )
        )
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
    aliases = await asyncio.to_thread(kubelambda, "alias", "list", fn)
    assert [(a["Name"], a["FunctionVersion"]) for a in aliases] == [("prod", "$LATEST")]
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
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", RECORDER)
    await call(
        client.create_function,
        FunctionName=fn,
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": code.getvalue()},
        Environment={"Variables": {"RECORDS_URL": env.records.url(key), "RELEASE": "1"}},
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
