"""MinIO on loopback: a real S3-compatible store that pushes bucket event notifications (S3 format, through its
webhook target) to the bucket bridge, for the notification mode's tests.

The binary is built from MinIO's Go module by hack/minio.sh (cached under ~/.cache/kubelambda; `make test`
builds it first). Missing Go or a failed build is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from kubelambda.devcluster._ports import free_port
from kubelambda.devcluster.servers import HOST, LocalServer, ServerMissing, _http_ok

REPO = Path(__file__).resolve().parents[2]
ROOT_USER, ROOT_PASSWORD = "kubelambda", "kubelambda-secret"


def minio_binary() -> str:
    """The cached MinIO server (hack/minio.sh builds it once, under a lock, and prints its path)."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "minio.sh")], capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise ServerMissing(f"hack/minio.sh could not build MinIO:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


class MinioServer(LocalServer):
    """``minio server`` with one webhook notification target (id ``TARGET``) posting to ``webhook`` with
    ``Authorization: Bearer <token>``, its queue on disk so that a notification the webhook did not take is
    sent again. A bucket sends to it once given a notification configuration naming ``arn``."""

    name = "minio"
    TARGET = "KUBELAMBDA"  # the env suffix is the id, case kept: arn:minio:sqs::KUBELAMBDA:webhook

    def __init__(self, data_dir: Path, *, webhook: str, token: str) -> None:
        self.webhook = webhook
        self.token = token
        super().__init__(data_dir)

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.console_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def arn(self) -> str:
        return f"arn:minio:sqs::{self.TARGET}:webhook"

    async def _launch(self) -> None:
        program = await asyncio.to_thread(minio_binary)
        target = self.TARGET
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MINIO_")},
            "MINIO_ROOT_USER": ROOT_USER,
            "MINIO_ROOT_PASSWORD": ROOT_PASSWORD,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            f"MINIO_NOTIFY_WEBHOOK_ENABLE_{target}": "on",
            f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}": self.webhook,
            f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{target}": self.token,
            f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{target}": str(self.data_dir / "queue"),
        }
        (self.data_dir / "queue").mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                program, "server", str(self.data_dir / "data"),
                "--address", f"{HOST}:{self.port}",
                "--console-address", f"{HOST}:{self.console_port}",
            ],
            env=env,
        )  # fmt: skip
        await self._wait(lambda: _http_ok(f"{self.endpoint}/minio/health/ready"), timeout=120)
