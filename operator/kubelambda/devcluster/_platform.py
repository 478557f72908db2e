"""kubelambda itself on the local cluster: CRDs, NATS JetStream, the code store (SeaweedFS), and the operator and
the gateway as supervised processes.

Each runs with a token of its own ServiceAccount (``hack/operator-rbac.yaml``, ``hack/gateway-rbac.yaml``), so
the local platform has exactly the permissions the chart grants; the gateway listens on 127.0.0.1 with auth on
(``auth_mode=kubernetes``, as the chart's default), and a developer access key (ServiceAccount
``default/kubelambda-developer``, bound to ``kubelambda-invoker`` in every namespace) is made for the CLI and the
AWS SDKs (``<state>/dev.json``, the state folder of docs/local-cluster.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kubelambda import natsauth
from kubelambda.devcluster._binaries import Binaries, repo_root
from kubelambda.devcluster._ports import (
    PortTaken,
    address_in_use,
    bindable,
    fixed_ports_held,
    free_port,
    retry_taken_ports,
)
from kubelambda.devcluster._process import spawn, stop
from kubelambda.devcluster.servers import NatsServer, S3Server
from kubelambda.kube import KubeClient, resource_path
from kubelambda.ownership import POLICY_FILE, wait_ownership_policy

logger = logging.getLogger(__name__)
SYSTEM_NS = "kubelambda-system"
TOKEN_SECONDS = 365 * 24 * 3600
DEFAULT_GATEWAY_PORT = 8090
DEFAULT_NATS_PORT = 4222
DEVELOPER_NAMESPACE = "default"
DEVELOPER_ACCOUNT = "kubelambda-developer"
CODE_STORE_ACCESS_KEY = "kubelambda"  # SeaweedFS without IAM takes any key; the secret signs the code URLs
CODE_STORE_SOURCE_BUCKET = (
    "uploads"  # the bucket CreateFunction's S3Bucket/S3Key may name (docs/local-cluster.md)
)


def _kubeconfig_with_token(admin: Path, token: str, target: Path, user: str) -> Path:
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": user, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = user
    target.write_text(yaml.safe_dump(config, sort_keys=True))
    target.chmod(0o600)
    return target


def _preferred(port: int) -> int | None:
    """``port`` when it is free (a stable URL across restarts), else None (any free port)."""
    return port if bindable("127.0.0.1", port) else None


@dataclass
class Platform:
    state_dir: Path
    binaries: Binaries
    admin_kubeconfig: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateway_url: str = ""
    nats: NatsServer | None = None  # holds Event invocations (JetStream, file storage under <state>/nats)
    code_store: S3Server | None = (
        None  # the control-plane API's zips (SeaweedFS, data under <state>/code-store)
    )
    access_key_id: str = ""  # the developer's access key (dev.json), allowed to invoke every Function
    secret_access_key: str = ""
    moved: list[str] = field(default_factory=list)  # "gateway: port 8090 was taken; it listens at …"
    gateway_port: int = DEFAULT_GATEWAY_PORT  # kept when free (dev up --gateway-port)
    nats_port: int = DEFAULT_NATS_PORT  # kept when free (dev up --nats-port)
    _commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    _restarted: dict[str, float] = field(default_factory=dict)

    async def _token(self, kube: KubeClient, account: str) -> str:
        result = await kube.create(
            resource_path("v1", "serviceaccounts", namespace=SYSTEM_NS, name=account, subresource="token"),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": TOKEN_SECONDS},
            },
        )
        return str(result["status"]["token"])

    def _kubectl(self, *args: str) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.admin_kubeconfig)}
        subprocess.run(
            [str(self.binaries.kubectl), *args], check=True, capture_output=True, env=env, timeout=120
        )

    async def start(self) -> None:
        root = repo_root()
        await asyncio.to_thread(
            self._kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(root / "crds")
        )
        await asyncio.to_thread(
            self._kubectl, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/functions.kubelambda.io", "crd/triggers.kubelambda.io", "crd/functionaliases.kubelambda.io",
        )  # fmt: skip
        # The operator's applies never take over an object of someone else's (docs/security.md).
        await asyncio.to_thread(
            self._kubectl,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(root.joinpath(*POLICY_FILE)),
        )
        async with KubeClient.from_kubeconfig(self.admin_kubeconfig) as kube:
            await wait_ownership_policy(kube)
            if await kube.get_or_none(resource_path("v1", "namespaces", name=SYSTEM_NS)) is None:
                await kube.create(resource_path("v1", "namespaces"), {"metadata": {"name": SYSTEM_NS}})
            for rbac in ("operator-rbac.yaml", "gateway-rbac.yaml", "invoker-rbac.yaml"):
                await asyncio.to_thread(self._kubectl, "apply", "-f", str(root / "hack" / rbac))
            operator_token = await self._token(kube, "kubelambda-operator")
            gateway_token = await self._token(kube, "kubelambda-gateway")
            await self._developer_key(kube)
        operator_config = _kubeconfig_with_token(
            self.admin_kubeconfig,
            operator_token,
            self.state_dir / "operator.kubeconfig",
            "kubelambda-operator",
        )
        gateway_config = _kubeconfig_with_token(
            self.admin_kubeconfig, gateway_token, self.state_dir / "gateway.kubeconfig", "kubelambda-gateway"
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith("KUBELAMBDA_")}
        agent_key = _agent_key(self.state_dir / "agent.key")
        # The code store of the control-plane API (CreateFunction's zips), on any free port (Functions reference their
        # zips through the gateway's URL, never the store's), before the fixed ports' lock below.
        self.code_store = S3Server(self.state_dir / "code-store")
        await self.code_store.start()
        logger.info("The code store (SeaweedFS) listens at %s", self.code_store.endpoint)
        # From "is the fixed port free?" to "it listens": one step on this machine (fixed_ports_held).
        async with fixed_ports_held():
            nats = await self._start_servers(base, agent_key, gateway_config)
        self._spawn(
            "kubelambda-operator",
            [sys.executable, "-m", "kubelambda", "operator"],
            {
                **base,
                "KUBELAMBDA_KUBECONFIG": str(operator_config),
                "KUBELAMBDA_GATEWAY_URL": self.gateway_url,
                "KUBELAMBDA_NATS_URL": nats.url_as("operator"),  # log streams
                "KUBELAMBDA_BRIDGE_NATS_URL": nats.url_as("bridge"),  # Trigger bridges' onFailure.nats
                # Function pods' log shipping, as their namespace's own log user (natscallout).
                "KUBELAMBDA_AGENT_NATS_URL": nats.url,
                "KUBELAMBDA_AGENT_KEY": agent_key,
                # Function pods' fetch-code downloads the API's zips from the gateway, which listens on 127.0.0.1
                # (the pods share this machine's network): that one loopback address only (docs/local-cluster.md).
                "KUBELAMBDA_URL_ALLOW_CIDRS": '["127.0.0.1/32"]',
            },
        )

    async def _start_servers(self, base: dict[str, str], agent_key: str, gateway_config: Path) -> NatsServer:
        """NATS and the code store, then the gateway, NATS and the gateway on their fixed ports when free; the NATS
        server."""
        # NATS users, one per component, each with only its subjects (docs/security.md, "NATS").
        passwords = _nats_passwords(self.state_dir / "nats-users.json")
        self.nats = NatsServer(self.state_dir / "nats", port=_preferred(self.nats_port), passwords=passwords)
        await self.nats.start()
        logger.info("NATS JetStream for Event invocations listens at %s", self.nats.url)
        if not self.nats.url.endswith(f":{self.nats_port}"):
            self._moved("nats", self.nats_port, self.nats.url)
        assert self.code_store is not None
        store = self.code_store
        store_secret = _secret_file(self.state_dir / "code-store.key")
        preferred = _preferred(self.gateway_port)
        nats = self.nats

        async def gateway() -> None:
            nonlocal preferred
            port = preferred or free_port()
            preferred = None  # a second try takes any free port
            self.gateway_url = f"http://127.0.0.1:{port}"
            log = self.state_dir / "logs" / "kubelambda-gateway.log"
            mark = log.stat().st_size if log.exists() else 0
            self._spawn(
                "kubelambda-gateway",
                [sys.executable, "-m", "kubelambda", "gateway"],
                {
                    **base,
                    "KUBELAMBDA_GATEWAY_KUBECONFIG": str(gateway_config),
                    "KUBELAMBDA_GATEWAY_HOST": "127.0.0.1",
                    "KUBELAMBDA_GATEWAY_PORT": str(port),
                    "KUBELAMBDA_GATEWAY_HTTP_ROUTES": "true",
                    "KUBELAMBDA_GATEWAY_WARM_POOL_SIZES": '{"python3.11": 2, "nodejs20": 1}',
                    "KUBELAMBDA_GATEWAY_NATS_URL": nats.url_as("gateway"),
                    "KUBELAMBDA_GATEWAY_AGENT_NATS_URL": nats.url,
                    # The auth callout of the log shippers' logins (kubelambda.natscallout).
                    "KUBELAMBDA_GATEWAY_LOGAUTH_NATS_URL": nats.url_as("logauth"),
                    "KUBELAMBDA_GATEWAY_NATS_CALLOUT_SEED": nats.callout_seed or "",
                    "KUBELAMBDA_GATEWAY_AUTH_MODE": "kubernetes",
                    "KUBELAMBDA_GATEWAY_AUTH_NAMESPACE": SYSTEM_NS,
                    "KUBELAMBDA_GATEWAY_AGENT_KEY": agent_key,
                    "KUBELAMBDA_GATEWAY_CODE_STORE_ENDPOINT": store.endpoint,
                    "KUBELAMBDA_GATEWAY_CODE_STORE_ACCESS_KEY_ID": CODE_STORE_ACCESS_KEY,
                    "KUBELAMBDA_GATEWAY_CODE_STORE_SECRET_ACCESS_KEY": store_secret,
                    "KUBELAMBDA_GATEWAY_CODE_STORE_SOURCE_BUCKETS": json.dumps([CODE_STORE_SOURCE_BUCKET]),
                    "KUBELAMBDA_GATEWAY_CODE_URL": self.gateway_url,
                },
            )
            try:
                await self._wait_gateway()
            except RuntimeError as e:
                with log.open("rb") as f:
                    f.seek(mark)
                    said = f.read().decode(errors="replace")
                if address_in_use(said):
                    raise PortTaken(f"the gateway could not bind port {port}") from e
                raise

        # The operator gives bridges the gateway's URL: the gateway has its port first.
        await retry_taken_ports(gateway, what="the gateway")
        if not self.gateway_url.endswith(f":{self.gateway_port}"):
            self._moved("gateway", self.gateway_port, self.gateway_url)
        return nats

    def _moved(self, what: str, port: int, url: str) -> None:
        note = (
            f"{what}: port {port} was taken (another platform or program listens there); it listens at {url}"
        )
        logger.warning("%s", note)
        self.moved.append(note)

    async def _developer_key(self, kube: KubeClient) -> None:
        """The developer's ServiceAccount, allowed to invoke every Function, and its access key (kept across
        restarts of the local cluster: the one already stored is reused)."""
        from kubelambda.gateway.auth.keys import SELECTOR, from_secret, new_key, secrets_path, to_secret

        account = resource_path(
            "v1", "serviceaccounts", namespace=DEVELOPER_NAMESPACE, name=DEVELOPER_ACCOUNT
        )
        if await kube.get_or_none(account) is None:
            await kube.create(
                resource_path("v1", "serviceaccounts", namespace=DEVELOPER_NAMESPACE),
                {"metadata": {"name": DEVELOPER_ACCOUNT}},
            )
        await kube.apply(
            resource_path("rbac.authorization.k8s.io/v1", "clusterrolebindings", name=DEVELOPER_ACCOUNT),
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": DEVELOPER_ACCOUNT},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "kubelambda-invoker",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": DEVELOPER_ACCOUNT, "namespace": DEVELOPER_NAMESPACE}
                ],
            },
            field_manager="kubelambda-dev",
        )
        # ... and to manage Functions and aliases (kubectl, and the control-plane API: docs/versions.md).
        editor = f"{DEVELOPER_ACCOUNT}-editor"
        await kube.apply(
            resource_path("rbac.authorization.k8s.io/v1", "clusterrolebindings", name=editor),
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": editor},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "kubelambda-editor",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": DEVELOPER_ACCOUNT, "namespace": DEVELOPER_NAMESPACE}
                ],
            },
            field_manager="kubelambda-dev",
        )
        listing = await kube.list(secrets_path(SYSTEM_NS), params=SELECTOR)
        for item in listing["items"]:
            key = from_secret(item)
            if key is not None and (key.namespace, key.service_account) == (
                DEVELOPER_NAMESPACE,
                DEVELOPER_ACCOUNT,
            ):
                break
        else:
            key = new_key(
                DEVELOPER_NAMESPACE,
                DEVELOPER_ACCOUNT,
                created_by="kubelambda dev up",
                description="developer key",
            )
            await kube.create(secrets_path(SYSTEM_NS), to_secret(key, namespace=SYSTEM_NS))
        self.access_key_id, self.secret_access_key = key.access_key_id, key.secret_access_key

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # Kept so that check_running can start the component again with the same command.
        self._commands[name] = (argv, env)
        self.procs[name] = spawn(argv, log=self.state_dir / "logs" / f"{name}.log", env=env)

    async def _wait_gateway(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.gateway_url}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)

        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = self.state_dir / "logs" / f"{name}.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RuntimeError(f"{name} exited with status {proc.returncode} while starting:\n{tail}")
            try:
                if await asyncio.to_thread(ready):
                    return
            except (OSError, urllib.error.URLError) as e:
                last = repr(e)
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the gateway was not ready at {self.gateway_url} within {timeout:.0f} s: {last}")

    def check_running(self) -> None:
        """Starts again a component that exited (as its Deployment would), at most every 5 s, with the tail of
        its log; the cluster itself keeps running."""
        now = time.monotonic()
        for name, proc in list(self.procs.items()):
            if proc.poll() is None or now - self._restarted.get(name, 0.0) < 5.0:
                continue
            log = self.state_dir / "logs" / f"{name}.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            logger.warning(
                "%s exited with status %s; starting it again. Last log lines:\n%s",
                name,
                proc.returncode,
                tail,
            )
            argv, env = self._commands[name]
            self.procs[name] = spawn(argv, log=log, env=env)
            self._restarted[name] = now

    def pids(self) -> dict[str, int]:
        pids = {name: proc.pid for name, proc in self.procs.items()}
        if self.nats is not None:
            for proc in self.nats.procs:
                pids["nats"] = proc.pid
        if self.code_store is not None:
            for proc in self.code_store.procs:
                pids["code-store"] = proc.pid
        return pids

    async def stop(self) -> None:
        for proc in self.procs.values():
            await stop(proc, grace_seconds=10)
        self.procs.clear()
        if self.nats is not None:
            await self.nats.stop()
            self.nats = None
        if self.code_store is not None:
            await self.code_store.stop()
            self.code_store = None


def _nats_passwords(path: Path) -> dict[str, str]:
    """The NATS users' passwords, generated once and kept in the state folder (running pods hold them)."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if set(known) != set(natsauth.USERS):
        known = {**natsauth.new_passwords(), **{u: p for u, p in known.items() if u in natsauth.USERS}}
        path.write_text(json.dumps(known))
        path.chmod(0o600)
    return known


def _agent_key(path: Path) -> str:
    """The platform's agent key (docs/security.md), generated once and kept in the state folder."""
    return _secret_file(path)


def _secret_file(path: Path) -> str:
    """A random secret generated once and kept in the state folder (the agent key; the code store's secret key,
    from which the gateway derives the signing key of the code URLs that Functions keep in their spec)."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()
