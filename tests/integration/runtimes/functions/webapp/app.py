"""A plain web app, no Lambda code in it: what AWS Labs' Lambda Web Adapter puts behind a function."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        data = json.dumps(
            {"method": self.command, "path": self.path, "body": body, "x-test": self.headers.get("x-test")}
        ).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-App", "webapp")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, fmt: str, *args: object) -> None:
        print("webapp:", fmt % args, file=sys.stderr, flush=True)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["AWS_LWA_PORT"])), Handler).serve_forever()
