"""Issue 17, item 8: server-side request forgery through what a tenant chooses and the platform fetches.

The platform here allows exactly one loopback address (127.0.0.2, where a stand-in for an allowed outside
receiver listens) and no other: ``url`` destinations aimed at loopback, the cloud metadata address and the API
server are refused and dead-lettered with the reason, a destination that redirects is not followed, and code URLs
are refused the same way by the init container; the receiver the platform allows still gets its records. The
Function's egress NetworkPolicy leaves out the metadata addresses (the local cluster does not enforce
NetworkPolicies, so that part checks the policy object the operator applies)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kltest import Cluster, wait_for
from kltest.files import FileServer, serve_files, zip_bytes
from kltest.platform import (
    ASYNC_STREAM,
    FAST_ASYNC,
    PlatformUnderTest,
    python_function,
    running_platform,
)
from kltest.records import Records
from kubelambda.api.v1alpha1.function import FunctionSpec
from kubelambda.asyncworker.dlq import DeadLetter, list_dead_letters
from kubelambda.asyncworker.queue import EventQueue
from kubelambda.devcluster.servers import NatsServer
from kubelambda.egress import METADATA
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.deployment import make_deployment
from kubelambda.resources.names import FunctionObject
from kubelambda.settings import OperatorSettings

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
ALLOWED_HOST = "127.0.0.2"  # the one loopback address this module's platform allows
HANDLER = """
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"ok": True}
"""


class Receiver:
    """An allowed destination on 127.0.0.2: ``/ok`` keeps what it is sent, ``/redirect`` answers 307 to
    ``target`` (a refused address) and counts the attempts."""

    def __init__(self) -> None:
        self.got: list[JSON] = []
        self.redirected = 0
        self.target = ""
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def ok(request: web.Request) -> web.Response:
            self.got.append(await request.json())
            return web.Response(status=204)

        async def redirect(request: web.Request) -> web.Response:
            self.redirected += 1
            raise web.HTTPTemporaryRedirect(self.target)

        app = web.Application()
        app.router.add_post("/ok", ok)
        app.router.add_post("/redirect", redirect)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, ALLOWED_HOST, 0).start()
        self.url = f"http://{ALLOWED_HOST}:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    running = Receiver()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def platform(
    cluster: Cluster, kube: KubeClient, nats_server: NatsServer
) -> AsyncIterator[PlatformUnderTest]:
    """The gateway allowing only 127.0.0.2 to url destinations; the operator denying functions the metadata
    addresses (as the chart does)."""
    async with running_platform(
        cluster,
        kube,
        nats_url=nats_server.url,
        url_allow_cidrs=[f"{ALLOWED_HOST}/32"],
        operator_settings={"function_egress_deny_cidrs": [str(n) for n in METADATA]},
        **FAST_ASYNC,
    ) as platform:
        yield platform


async def dead_letters(nats_url: str, namespace: str) -> list[DeadLetter]:
    queue = await EventQueue.connect(nats_url, stream=ASYNC_STREAM)
    try:
        return await list_dead_letters(queue, namespace)
    finally:
        await queue.close()


async def send_event(url: str, namespace: str, name: str, payload: JSON) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/2015-03-31/functions/{namespace}/{name}/invocations",
            json=payload,
            headers={"X-Amz-Invocation-Type": "Event"},
        ) as resp,
    ):
        assert resp.status == 202, await resp.text()


async def test_url_destinations_reach_no_loopback_metadata_or_api_server_and_follow_no_redirect(
    platform: PlatformUnderTest,
    cluster: Cluster,
    kube: KubeClient,
    namespace: str,
    records: Records,
    receiver: Receiver,
    nats_server: NatsServer,
) -> None:
    api_server = platform.gateway.kube.server
    receiver.target = records.url("leaked")  # where the redirect points: loopback, refused
    attacks = {
        # name: (destination, the reason's words)
        "loopback": ("http://127.0.0.5:8080/x", "127.0.0.5 is a loopback address"),
        "by-name": ("http://localhost:8080/x", "refused to connect to localhost ("),
        "metadata": (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is a cloud metadata address",
        ),
        "api-server": (f"{api_server}/api/v1/secrets", "the Kubernetes API server's address"),
        "redirect": (
            f"{receiver.url}/redirect",
            "answered 307 (a redirect: destinations do not follow them)",
        ),
    }
    for name, (destination, _) in attacks.items():
        doc = python_function(
            name, HANDLER, **{"async": {"maxRetries": 0, "onSuccess": {"url": destination}}}
        )
        cluster.apply(doc, namespace)
    allowed = python_function(
        "allowed", HANDLER, **{"async": {"maxRetries": 0, "onSuccess": {"url": f"{receiver.url}/ok"}}}
    )
    cluster.apply(allowed, namespace)
    for name in [*attacks, "allowed"]:
        await wait_for(
            lambda n=name: asyncio.sleep(0, result=platform.gateway.registry.functions.get((namespace, n))),
            lambda fn: fn is not None and fn.ready,
            what=f"{name} Ready",
            timeout=90,
        )
        await send_event(platform.url, namespace, name, {"n": name})

    assert platform.gateway.settings.nats_url is not None
    letters = await wait_for(
        lambda: dead_letters(nats_server.url, namespace),
        lambda got: len({d.function for d in got}) >= len(attacks),
        what="a dead letter per refused destination",
        timeout=120,
    )
    reasons = {d.function: d.reason for d in letters}
    for name, (_, words) in attacks.items():
        assert words in reasons[name], (name, reasons[name])
    assert "allowed" not in reasons
    # The allowed receiver got its record; the redirect was asked once and never followed.
    (record,) = await wait_for(
        lambda: asyncio.sleep(0, result=list(receiver.got)), bool, what="the allowed record"
    )
    assert record["requestPayload"] == {"n": "allowed"}
    assert receiver.redirected == 1
    assert records.of("leaked") == []

    # Nothing else broke: the Functions still answer synchronous invocations.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{platform.url}/2015-03-31/functions/{namespace}/loopback/invocations", json={}) as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"ok": True}

    # The function's own egress leaves the metadata addresses out (the chart's default deny list).
    policy = await kube.get(
        resource_path("networking.k8s.io/v1", "networkpolicies", namespace=namespace, name="allowed-egress")
    )
    (rule,) = policy["spec"]["egress"]
    blocks = {p["ipBlock"]["cidr"]: p["ipBlock"].get("except") for p in rule["to"] if "ipBlock" in p}
    assert "169.254.169.254/32" in blocks["0.0.0.0/0"]
    assert "fd00:ec2::254/128" in blocks["::/0"]


ZIP = zip_bytes({"app.py": (b"def handler(event, context):\n    return 1\n", 0o100644)})
SHA = hashlib.sha256(ZIP).hexdigest()


@pytest.fixture(scope="module")
def code_server() -> Iterator[FileServer]:
    with serve_files({"/code.zip": ZIP}) as running:
        yield running


def fetch_code(url: str, tmp_path: Path, *, allow: list[str]) -> subprocess.CompletedProcess[str]:
    """``kubelambda fetch-code`` as the operator's init container runs it, for ``code.archive.url``."""
    spec = {
        "runtime": "python3.11",
        "handler": "app.handler",
        "code": {"archive": {"url": url, "sha256": SHA}},
    }
    fn = FunctionObject(
        name="f", namespace="ns", uid="u", generation=1, spec=FunctionSpec.model_validate(spec)
    )
    settings = OperatorSettings(kubeconfig=None, url_allow_cidrs=allow)
    (init,) = make_deployment(fn, image="runtime", settings=settings)["spec"]["template"]["spec"][
        "initContainers"
    ]
    (tmp_path / "volume").mkdir(parents=True)
    (tmp_path / "root" / "var").mkdir(parents=True)
    (tmp_path / "root" / "var" / "task").symlink_to(tmp_path / "volume")
    return subprocess.run(
        [sys.executable, "-m", "kubelambda", *init["args"]],
        env={
            **os.environ,
            "KUBELAMBDA_ROOTFS": str(tmp_path / "root"),
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_code_urls_reach_no_loopback_or_metadata_and_redirects_are_checked(
    code_server: FileServer, tmp_path: Path
) -> None:
    port = urllib.parse.urlsplit(code_server.url).port
    refused = {
        "loopback": (f"http://127.0.0.1:{port}/code.zip", [], "127.0.0.1 is a loopback address"),
        "metadata": ("http://169.254.169.254/latest/meta-data/x.zip", [], "a cloud metadata address"),
        "api-server": ("https://10.96.0.1/api/x.zip", [], "10.96.0.1 is the Kubernetes API server's address"),
    }
    for case, (url, allow, words) in refused.items():
        done = fetch_code(url, tmp_path / case, allow=allow)
        assert done.returncode == 1, (case, done.stdout)
        assert words in done.stderr, (case, done.stderr)
        assert list((tmp_path / case / "volume").iterdir()) == []
    # Allowed explicitly (a development machine): the same URL works.
    done = fetch_code(f"http://127.0.0.1:{port}/code.zip", tmp_path / "allowed", allow=["127.0.0.1/32"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "allowed" / "volume" / "app.py").exists()


@contextlib.contextmanager
def redirecting_to(target: str) -> Iterator[str]:
    """An allowed server (127.0.0.2) whose every GET redirects to ``target``; yields its URL."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((ALLOWED_HOST, 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{ALLOWED_HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_a_code_url_redirect_to_a_refused_address_is_refused(code_server: FileServer, tmp_path: Path) -> None:
    port = urllib.parse.urlsplit(code_server.url).port
    with redirecting_to(f"http://127.0.0.1:{port}/code.zip") as redirector:
        done = fetch_code(f"{redirector}/code.zip", tmp_path, allow=[f"{ALLOWED_HOST}/32"])
    assert done.returncode == 1, done.stdout
    assert "127.0.0.1 is a loopback address" in done.stderr
    assert list((tmp_path / "volume").iterdir()) == []
