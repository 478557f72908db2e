"""The ``kubelambda.io/dev/httpserver`` test image: answers every GET with the pod's name and address.

Listens on ``$KUBELAMBDA_POD_IP`` (the pod's own loopback address) and ``$PORT`` (default 8080).
``/healthz`` answers 200 while the file ``$KUBELAMBDA_ROOTFS/tmp/unhealthy`` does not exist, so tests can
make a liveness probe fail from the outside.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            unhealthy = Path(os.environ.get("KUBELAMBDA_ROOTFS", "/"), "tmp", "unhealthy").exists()
            self._send(500 if unhealthy else 200, {"healthy": not unhealthy})
            return
        self._send(
            200, {"pod": os.environ.get("HOSTNAME", ""), "ip": os.environ.get("KUBELAMBDA_POD_IP", "")}
        )

    def _send(self, status: int, payload: dict[str, object]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def main() -> None:
    host = os.environ.get("KUBELAMBDA_POD_IP", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer((host, port), _Handler)

    def _stop(signum: int, frame: FrameType | None) -> None:
        print("received SIGTERM, shutting down", flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
