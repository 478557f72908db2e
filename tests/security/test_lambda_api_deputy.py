"""Review of issue 17: the Lambda control-plane API (gateway/lambdaapi.py) writes Functions with the gateway's own
rights, which reach every namespace. Is the gateway a confused deputy?

The attack: a caller who may do everything with Functions in its own namespace names a Function of another
namespace (an ARN's account field is the namespace) in CreateFunction, UpdateFunctionCode, UpdateFunctionConfiguration
and DeleteFunction, counting on the gateway's rights there. Expected: AccessDeniedException for each, decided by a
SubjectAccessReview of the caller for the namespace and name the call writes, and the other namespace's objects
unchanged, although the gateway itself may write there (kubectl auth can-i says so). docs/security.md says why the
writes are not made by impersonating the caller.
"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kltest import Cluster
from kltest.cluster import create_namespace
from kltest.platform import SYSTEM_NS, install_crds, python_function, start_gateway, stop_gateway, token_of
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
ROLE = "arn:aws:iam::000000000000:role/default"


def _zip() -> str:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return 1\n")
    return base64.b64encode(data.getvalue()).decode()


ZIP = _zip()


@pytest.fixture
async def other_namespace(kube: KubeClient) -> AsyncIterator[str]:
    name = await create_namespace(kube, "victim")
    yield name
    await kube.delete(resource_path("v1", "namespaces", name=name))


async def writer_token(kube: KubeClient, namespace: str) -> str:
    """A ServiceAccount that may do everything with Functions, in ``namespace`` only."""
    await kube.create(
        resource_path("v1", "serviceaccounts", namespace=namespace), {"metadata": {"name": "writer"}}
    )
    await kube.create(
        resource_path("rbac.authorization.k8s.io/v1", "rolebindings", namespace=namespace),
        {
            "metadata": {"name": "writer"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "kubelambda-editor",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": namespace}],
        },
    )
    return await token_of(kube, namespace, "writer")


def function_path(namespace: str, name: str) -> str:
    return resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name=name)


async def test_a_caller_cannot_write_functions_where_it_has_no_rights_though_the_gateway_has(
    cluster: Cluster, kube: KubeClient, namespace: str, other_namespace: str
) -> None:
    gateway_user = f"system:serviceaccount:{SYSTEM_NS}:kubelambda-gateway"
    await install_crds(cluster, kube)
    gateway, url = await start_gateway(cluster, kube, auth_mode="kubernetes")
    try:
        can = cluster.kubectl("auth", "can-i", "create", "functions.kubelambda.io", "-n", other_namespace,
                              "--as", gateway_user, check=False)  # fmt: skip
        assert can.stdout.strip() == "yes", "the gateway itself may write there (the deputy has the rights)"
        headers = {"Authorization": f"Bearer {await writer_token(kube, namespace)}"}
        cluster.apply(python_function("target", "def handler(e, c):\n    return 1\n"), other_namespace)
        before = await kube.get(function_path(other_namespace, "target"))
        arn = f"arn:aws:lambda:us-east-1:{other_namespace}:function"
        base = f"{url}/2015-03-31/functions"
        calls: list[tuple[str, str, JSON | None, str]] = [
            ("POST", base, {"FunctionName": f"{arn}:planted", "Runtime": "python3.11", "Role": ROLE,
                            "Handler": "app.handler", "Code": {"ZipFile": ZIP}}, "lambda:CreateFunction"),
            ("PUT", f"{base}/{arn}:target/code", {"ZipFile": ZIP}, "lambda:UpdateFunctionCode"),
            ("PUT", f"{base}/{arn}:target/configuration", {"Environment": {"Variables": {"X": "1"}}},
             "lambda:UpdateFunctionConfiguration"),
            ("POST", f"{base}/{arn}:target/versions", {}, "lambda:PublishVersion"),
            ("DELETE", f"{base}/{arn}:target", None, "lambda:DeleteFunction"),
        ]  # fmt: skip
        async with aiohttp.ClientSession() as http:
            # Its own namespace works: the refusals below are about the namespace, not the caller.
            own = {"FunctionName": "mine", "Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
                   "Code": {"ZipFile": ZIP}}  # fmt: skip
            async with http.post(base, json=own, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
            for method, path, body, action in calls:
                async with http.request(method, path, json=body, headers=headers) as resp:
                    assert resp.status == 403, (action, await resp.text())
                    assert resp.headers["x-amzn-ErrorType"] == "AccessDeniedException"
                    message = (await resp.json())["message"]
                    assert action in message, message
                    assert other_namespace in message, message
        assert await kube.get_or_none(function_path(other_namespace, "planted")) is None
        after = await kube.get(function_path(other_namespace, "target"))
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        listed = await kube.list(
            resource_path("kubelambda.io/v1alpha1", "functions", namespace=other_namespace)
        )
        assert [f["metadata"]["name"] for f in listed["items"]] == ["target"]
    finally:
        await stop_gateway(gateway)
