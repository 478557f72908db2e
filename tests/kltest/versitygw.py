"""VersityGW on loopback (posix backend): a real S3-compatible store that pushes bucket event notifications
(S3 format, through its webhook) to the bucket bridge, for the notification mode's tests.

The binary is built from VersityGW's Go module by hack/versitygw.sh (cached under ~/.cache/kubelambda;
`make test` builds it first). Missing Go or a failed build is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.parse
from pathlib import Path

from kubelambda.devcluster.servers import HOST, LocalServer, ServerMissing, _http_ok

REPO = Path(__file__).resolve().parents[2]
ROOT_USER, ROOT_PASSWORD = "kubelambda", "kubelambda-secret"


def versitygw_binary() -> str:
    """The cached VersityGW (hack/versitygw.sh builds it once, under a lock, and prints its path)."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "versitygw.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if done.returncode != 0:
        raise ServerMissing(f"hack/versitygw.sh could not build VersityGW:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def webhook_with_token(webhook: str, token: str, *, user: str = "kubelambda") -> str:
    """``http://host/events`` → ``http://<user>:<token>@host/events``: VersityGW cannot set headers; Go's HTTP
    client sends a URL's user information as ``Authorization: Basic``, which the bridge takes (password = token)."""
    url = urllib.parse.urlsplit(webhook)
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(token, safe='')}@{url.netloc}"
    return urllib.parse.urlunsplit(url._replace(netloc=netloc))


class VersityGWServer(LocalServer):
    """``versitygw posix`` (metadata in a sidecar directory, so any filesystem does, with or without xattrs) whose
    every bucket's object events are posted to ``webhook`` with the token as the Basic password. VersityGW
    notifies globally (no per-bucket notification configuration) and sends each event once (no queue, no retry);
    it posts a test event to the webhook when it starts, and does not start if nothing listens there."""

    name = "versitygw"

    def __init__(self, data_dir: Path, *, webhook: str, token: str) -> None:
        self.webhook = webhook
        self.token = token
        super().__init__(data_dir)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def _launch(self) -> None:
        program = await asyncio.to_thread(versitygw_binary)
        for sub in ("data", "meta"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("VGW_", "ROOT_"))},
            "ROOT_ACCESS_KEY": ROOT_USER,
            "ROOT_SECRET_KEY": ROOT_PASSWORD,
            # In the environment, not argv: the URL carries the token.
            "VGW_EVENT_WEBHOOK_URL": webhook_with_token(self.webhook, self.token),
        }
        self._spawn(
            [
                program, "--port", f"{HOST}:{self.port}", "--health", "/health", "--quiet",
                "posix", "--sidecar", str(self.data_dir / "meta"), str(self.data_dir / "data"),
            ],
            env=env,
        )  # fmt: skip
        await self._wait(lambda: _http_ok(f"{self.endpoint}/health"), timeout=60)
