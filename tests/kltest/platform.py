"""The platform on the test cluster: CRDs, the operator and the gateway, each as its own ServiceAccount.

The operator runs in a thread with its own event loop (kopf cancels every task started after it in its loop
when it stops); the gateway runs in the test's loop. Both authenticate with a token of their ServiceAccount
(hack/operator-rbac.yaml, hack/gateway-rbac.yaml), so a permission missing there fails the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import boto3
import nats
import yaml
from botocore.config import Config

from kltest.cluster import Cluster
from kltest.records import Records
from kltest.wait import wait_for
from kubelambda.devcluster._ports import free_port, retry_taken_ports
from kubelambda.gateway.app import Gateway
from kubelambda.gateway.config import GatewaySettings
from kubelambda.kube import KubeClient, resource_path
from kubelambda.operator import Login, run
from kubelambda.ownership import POLICY_FILE, wait_ownership_policy
from kubelambda.resources.warmpool import POOL_RUNTIME_LABEL
from kubelambda.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
SYSTEM_NS = "kubelambda-system"
POOL_NS = "kubelambda-warm-pool"
"""The warm pools' namespace of their own (the gateway's default; hack/gateway-rbac.yaml creates it)."""
ASYNC_STREAM = "KUBELAMBDA_ASYNC"  # the gateway's default stream and its worker's consumer
ASYNC_CONSUMER = "kubelambda-async-worker"
LOOPBACK_ALLOWED = ["127.0.0.0/8"]
"""The tests' record receivers, code servers and stores listen on loopback, which url destinations and code URLs
may not reach unless the platform allows it (docs/security.md, "Outbound requests"): the tests allow it
explicitly; tests/security/test_ssrf.py runs the platform without it."""
JSON = dict[str, Any]


async def install_crds(cluster: Cluster, kube: KubeClient) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for name in ("functions.kubelambda.io", "triggers.kubelambda.io", "functionaliases.kubelambda.io"):
        await wait_for(
            lambda n=name: kube.get(
                resource_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=n)
            ),
            lambda crd: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            ),
            what=f"CRD {name} established",
        )


async def service_account_token(cluster: Cluster, kube: KubeClient, rbac_file: str, account: str) -> str:
    """Applies ``hack/<rbac_file>`` and returns a token of ``kubelambda-system/<account>``."""
    if await kube.get_or_none(resource_path("v1", "namespaces", name=SYSTEM_NS)) is None:
        await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": SYSTEM_NS}})
    cluster.kubectl("apply", "-f", str(REPO / "hack" / rbac_file))
    return await token_of(kube, SYSTEM_NS, account, seconds=7200)


async def token_of(kube: KubeClient, namespace: str, name: str, *, seconds: int = 3600) -> str:
    """A token of ServiceAccount ``namespace/name`` (TokenRequest), valid ``seconds``."""
    answer = await kube.create(
        resource_path("v1", "serviceaccounts", namespace=namespace, name=name, subresource="token"),
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        },
    )
    return str(answer["status"]["token"])


class RunningOperator:
    """``kubelambda.operator.run`` in a thread with its own event loop; ``stop()`` + ``start()`` restart it."""

    def __init__(self, login: Login, settings: OperatorSettings) -> None:
        self.login = login
        self.settings = settings
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def _main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(run(self.settings, login=self.login, ready_flag=ready, stop_flag=self.stop_flag))
        except BaseException as e:
            self.error = e

    async def start(self) -> None:
        ready = threading.Event()
        self.stop_flag = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._main, args=(ready,), name="operator", daemon=True)
        self.thread.start()
        await wait_for(
            lambda: asyncio.sleep(0, result=ready.is_set() or not self.thread or not self.thread.is_alive()),
            bool,
            what="the operator ready",
            timeout=60,
        )
        assert ready.is_set(), f"the operator stopped while starting: {self.error!r}"

    async def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 60)
            assert not self.thread.is_alive(), "the operator did not stop within 60 s"
        assert self.error is None, f"the operator failed: {self.error!r}"


AGENT_KEY = "test-agent-key-0123456789abcdef"
"""The platform's agent key in tests: the gateway shows agents the tokens derived from it."""


async def install_ownership_policy(cluster: Cluster, kube: KubeClient) -> None:
    """The ValidatingAdmissionPolicy that refuses the operator's applies onto objects of someone else's, as the
    chart and ``dev up`` install it, once the API server enforces it."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO.joinpath(*POLICY_FILE)))
    await wait_ownership_policy(kube)


async def start_operator(
    cluster: Cluster, kube: KubeClient, *, ownership_policy: bool = True, **settings: Any
) -> RunningOperator:
    """The operator as its ServiceAccount, with the ownership policy installed (``ownership_policy``)."""
    await install_crds(cluster, kube)
    if ownership_policy:
        await install_ownership_policy(cluster, kube)
    token = await service_account_token(cluster, kube, "operator-rbac.yaml", "kubelambda-operator")
    login = Login.from_kubeconfig(cluster.kubeconfig).with_token(token)
    settings.setdefault("url_allow_cidrs", LOOPBACK_ALLOWED)
    running = RunningOperator(login, OperatorSettings(kubeconfig=None, **settings))
    await running.start()
    return running


async def start_gateway(
    cluster: Cluster, kube: KubeClient, *, auth_mode: str = "none", **settings: Any
) -> tuple[Gateway, str]:
    """The gateway on a free port of 127.0.0.1 (another one if it is taken before the gateway binds it), as its
    ServiceAccount; returns it and its URL once ready.

    ``auth_mode`` is ``none`` unless a test is about who may invoke (tests/integration/test_auth.py): the other
    tests call it unsigned, as a trusted network would."""
    # The test agent key: harmless towards agents without a token (an operator started without it).
    settings.setdefault("agent_key", AGENT_KEY)
    token = await service_account_token(cluster, kube, "gateway-rbac.yaml", "kubelambda-gateway")
    client = Login.from_kubeconfig(cluster.kubeconfig).with_token(token).client()
    settings.setdefault("url_allow_cidrs", LOOPBACK_ALLOWED)
    if auth_mode != "none":
        cluster.kubectl("apply", "-f", str(REPO / "hack" / "invoker-rbac.yaml"))

    async def listen() -> tuple[Gateway, int]:
        port = free_port()
        gateway = Gateway(
            GatewaySettings(host="127.0.0.1", port=port, auth_mode=auth_mode, **settings), client
        )
        try:
            await gateway.start()
        except OSError:
            await gateway.stop()
            raise
        return gateway, port

    gateway, port = await retry_taken_ports(listen, what="the test gateway")
    url = f"http://127.0.0.1:{port}"

    async def readyz() -> int:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            return resp.status

    await wait_for(readyz, lambda status: status == 200, what="the gateway's first lists", timeout=30)
    return gateway, url


async def stop_gateway(gateway: Gateway, kube: KubeClient | None = None) -> None:
    """Stops ``gateway``; one that kept warm pools also takes them away, given the admin client ``kube``
    (:func:`remove_warm_pools`)."""
    await gateway.stop()
    await gateway.kube.close()
    if kube is not None and gateway.path.warm_pool is not None:
        await remove_warm_pools(kube)


async def remove_warm_pools(kube: KubeClient, *, timeout: float = 120) -> None:
    """Deletes the pool Deployments and every pool pod (free, claimed, specialised) and waits until they are gone:
    the session cluster is shared by the modules one after another, and a module's pools must not be the next
    one's (a pod another gateway claimed and never relabelled holds its pool's place, a pool grown under demand
    or a rollout to the next gateway's template keeps the node busy while the next module waits for its pods)."""
    deployments = resource_path("apps/v1", "deployments", namespace=POOL_NS)
    for d in (await kube.list(deployments))["items"]:
        await kube.delete(f"{deployments}/{d['metadata']['name']}", propagation="Background")
    pods = resource_path("v1", "pods", namespace=POOL_NS)
    selector = {"labelSelector": POOL_RUNTIME_LABEL}

    async def left() -> list[str]:
        names = [p["metadata"]["name"] for p in (await kube.list(pods, params=selector))["items"]]
        for name in names:  # the ReplicaSets' own are deleted with them; the released ones are deleted here
            await kube.delete(f"{pods}/{name}")
        return names

    await wait_for(left, lambda names: not names, what=f"no pool pods left in {POOL_NS}", timeout=timeout)


# Event invocations retried and backed off in fractions of a second, for tests of the async path.
FAST_ASYNC: dict[str, Any] = {
    "async_retry_delays_seconds": (0.2, 0.2),
    "async_backoff_min_seconds": 0.2,
    "async_backoff_max_seconds": 1.0,
}


# Fails the first attempt of an event with {"failFirst": <folder>} (a marker file per request id, which the
# function's process sees on the local node) and every attempt of one with {"alwaysFail": true}; returns {"i": i}.
FAIL_FIRST_HANDLER = """
import os


def handler(event, context):
    if event.get("alwaysFail"):
        raise ValueError("this event always fails")
    marker = event.get("failFirst")
    if marker:
        path = os.path.join(marker, context.aws_request_id)
        if not os.path.exists(path):
            open(path, "w").close()
            raise ValueError("the first attempt fails")
    return {"i": event["i"]}
"""


class PlatformUnderTest(NamedTuple):
    operator: RunningOperator
    gateway: Gateway
    url: str


@contextlib.asynccontextmanager
async def running_platform(
    cluster: Cluster,
    kube: KubeClient,
    *,
    operator_settings: dict[str, Any] | None = None,
    **gateway_settings: Any,
) -> AsyncIterator[PlatformUnderTest]:
    """The CRDs, the gateway (``gateway_settings`` over quick test defaults), then the operator (with
    ``operator_settings``), which gives the bridge pods it makes this gateway's URL; both stop on the way out (the
    operator may be stopped earlier)."""
    await install_crds(cluster, kube)
    settings: dict[str, Any] = {
        "slot_wait_seconds": 1.0,
        "autoscale_interval_seconds": 0.5,
        "agent_key": AGENT_KEY,  # agents answer only the gateway (docs/security.md)
        **gateway_settings,
    }
    gateway, url = await start_gateway(cluster, kube, **settings)
    try:
        # The operator runs as its chart ServiceAccount (hack/operator-rbac.yaml): every object it makes,
        # including Roles that grant Secrets, must be within what it holds.
        operator = await start_operator(
            cluster,
            kube,
            problem_retry_seconds=1.0,
            gateway_url=url,
            agent_key=settings["agent_key"],
            **(operator_settings or {}),
        )
        try:
            yield PlatformUnderTest(operator, gateway, url)
        finally:
            await operator.stop()
    finally:
        await stop_gateway(gateway, kube)


@dataclass
class Env:
    """What an integration test works with: the module's platform, the test's namespace and the module's record
    receiver (tests/conftest.py's ``env`` fixture)."""

    cluster: Cluster
    kube: KubeClient
    gateway: Gateway
    url: str
    namespace: str
    records: Records

    @property
    def nats_url(self) -> str:
        assert self.gateway.settings.nats_url, "this module's gateway has no NATS"
        return self.gateway.settings.nats_url

    def apply(self, manifest: JSON | list[JSON]) -> None:
        self.cluster.apply(manifest, self.namespace)

    async def deploy(self, doc: JSON) -> None:
        await deploy(self.cluster, self.gateway, self.namespace, doc)


async def async_stream_left(nats_url: str) -> str:
    """What is left of the Event invocations queue: '' once nothing is left in the stream nor delivered but
    unacknowledged."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = await js.stream_info(ASYNC_STREAM)
        consumer = await js.consumer_info(ASYNC_STREAM, ASYNC_CONSUMER)
        if stream.state.messages == 0 and consumer.num_ack_pending == 0 and consumer.num_pending == 0:
            return ""
        return (
            f"stream {stream.state}; ack pending {consumer.num_ack_pending}, pending {consumer.num_pending}"
        )
    finally:
        await nc.close()


async def async_stream_drained(nats_url: str, *, timeout: float = 60) -> None:
    await wait_for(
        lambda: async_stream_left(nats_url),
        lambda left: left == "",
        what="the async queue drained",
        timeout=timeout,
    )


def lambda_client(url: str, key_id: str = "kubelambda", secret: str = "kubelambda", **config: Any) -> Any:
    """boto3's Lambda client pointed at a gateway (no retries: a test sees every answer; botocore's ``max_attempts``
    counts retries, so 1 was one retry of every 429 and 5xx), signing with an access
    key (the default one exists only for gateways with auth off)."""
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=120, max_pool_connections=50, **config),
    )


def python_function(name: str, handler: str, **spec: Any) -> JSON:
    """examples/hello-python3.11 renamed, with ``handler`` as its app.py and ``spec`` fields overridden."""
    doc: JSON = copy.deepcopy(
        yaml.safe_load((REPO / "examples" / "hello-python3.11" / "function.yaml").read_text())
    )
    doc["metadata"]["name"] = name
    doc["spec"]["code"]["inline"] = {"app.py": handler}
    doc["spec"].update(spec)
    return doc


async def apply_ready(
    cluster: Cluster, kube: KubeClient, namespace: str, doc: JSON, *, timeout: float = 60
) -> None:
    """Applies a Function and waits for its Ready condition (for gateways the test runs as processes)."""
    cluster.apply(doc, namespace)
    name = doc["metadata"]["name"]
    await wait_for(
        lambda: kube.get(
            resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name=name)
        ),
        lambda fn: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (fn.get("status") or {}).get("conditions") or []
        ),
        what=f"Function {name} Ready",
        timeout=timeout,
    )


async def deploy(cluster: Cluster, gateway: Gateway, namespace: str, doc: JSON) -> None:
    """Applies a Function and waits until the gateway sees it invocable."""
    cluster.apply(doc, namespace)
    name = doc["metadata"]["name"]
    await wait_for(
        lambda: asyncio.sleep(0, result=gateway.registry.functions.get((namespace, name))),
        lambda fn: fn is not None and fn.ready,
        what=f"the gateway to see Function {namespace}/{name} Ready",
        timeout=60,
    )
