"""Credentials for the API server: a kubeconfig, the pod's ServiceAccount, or a token; given to kubelambda's own
client (operator, bridges, CLI) and, through :func:`kubelambda.operator.connection_info`, to kopf."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import yaml

from kubelambda.kube._client import KubeClient

_IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _in_cluster_dir() -> Path:
    """The mounted ServiceAccount token; on the local node mounts live under ``$KUBELAMBDA_ROOTFS``."""
    rootfs = os.environ.get("KUBELAMBDA_ROOTFS")
    return Path(rootfs) / str(_IN_CLUSTER_DIR).lstrip("/") if rootfs else _IN_CLUSTER_DIR


@dataclass(frozen=True)
class Login:
    """One API server and one identity: a bearer token, or a client certificate."""

    server: str
    ca_pem: bytes
    token: str | None = None
    token_file: Path | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str]) -> Self:
        config = yaml.safe_load(Path(path).read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config.get("current-context"))
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])

        def data(key: str) -> bytes | None:
            if user.get(f"{key}-data") or cluster.get(f"{key}-data"):
                return base64.b64decode(user.get(f"{key}-data") or cluster[f"{key}-data"])
            file = user.get(key) or cluster.get(key)
            return Path(file).read_bytes() if file else None

        ca = data("certificate-authority")
        if ca is None:
            raise ValueError(f"{path}: the cluster has no certificate-authority")
        return cls(
            server=cluster["server"],
            ca_pem=ca,
            token=user.get("token"),
            cert_pem=data("client-certificate"),
            key_pem=data("client-key"),
        )

    @classmethod
    def in_cluster(cls, *, directory: Path | None = None) -> Self:
        directory = directory or _in_cluster_dir()
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return cls(
            server=f"https://{host}:{port}",
            ca_pem=(directory / "ca.crt").read_bytes(),
            token_file=directory / "token",
        )

    def with_token(self, token: str) -> Login:
        """The same server as a different identity (e.g. a ServiceAccount's token from the TokenRequest API)."""
        return Login(server=self.server, ca_pem=self.ca_pem, token=token)

    def current_token(self) -> str | None:
        """The bearer token now: a token file is re-read on every call (the kubelet rotates bound tokens)."""
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token

    def client(self) -> KubeClient:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        if self.cert_pem and self.key_pem:
            with tempfile.TemporaryDirectory(prefix="kubelambda-login-") as tmp:
                cert, key = Path(tmp, "crt"), Path(tmp, "key")
                cert.write_bytes(self.cert_pem)
                key.write_bytes(self.key_pem)
                ctx.load_cert_chain(str(cert), str(key))
        return KubeClient(self.server, ssl_context=ctx, token_file=self.token_file, token=self.token)


def default_login(kubeconfig: str | None) -> Login:
    """The explicit kubeconfig, else in-cluster credentials, else ``$KUBECONFIG`` / ``~/.kube/config``."""
    if kubeconfig:
        return Login.from_kubeconfig(kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and _in_cluster_dir().exists():
        return Login.in_cluster()
    path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
    return Login.from_kubeconfig(path)
