"""Start, wait for, invoke and stop an agent described by a LocalCommand."""

from __future__ import annotations

import http.client
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

from kubelambda.runtimes._command import LocalCommand


class LocalFunctionError(RuntimeError):
    """The agent did not start, exited, or a wait ran past its deadline."""


@dataclass(frozen=True)
class InvokeResult:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def function_error(self) -> str | None:
        return self.headers.get("x-amz-function-error")

    @property
    def outcome(self) -> str | None:
        return self.headers.get("x-kubelambda-outcome")


class LocalFunction:
    """An agent process with its runtime workers, its output collected line by line."""

    def __init__(self, command: LocalCommand) -> None:
        self.command = command
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        url = urllib.parse.urlsplit(command.base_url)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 80

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self.command.argv,
            env=self.command.env,
            cwd=self.command.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, name="agent-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            with self._cond:
                self._lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /readyz until it answers 200; fail early if the agent exits."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise LocalFunctionError(f"agent exited before it was ready:\n{self.logs()}")
            try:
                status, _, body = self._request("GET", "/readyz", None, {}, timeout=2.0)
                if status == 200:
                    return
                last = f"{status} {body!r}"
            except OSError as e:
                last = str(e)
            with self._cond:
                self._cond.wait(0.02)  # woken early by output; the poll interval otherwise
        raise LocalFunctionError(f"agent not ready after {timeout}s (last answer: {last}):\n{self.logs()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the agent drains), then SIGKILL after ``timeout``; returns the exit code."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        return self._proc.returncode

    def signal_term(self) -> None:
        if self._proc is not None:
            self._proc.terminate()

    def wait_exit(self, timeout: float) -> int:
        if self._proc is None:
            raise LocalFunctionError("not started")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LocalFunctionError(f"agent still running after {timeout}s:\n{self.logs()}") from None

    def __enter__(self) -> LocalFunction:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- calls -------------------------------------------------------------------------------------

    def invoke(
        self, payload: bytes | str = b"{}", *, headers: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> InvokeResult:
        body = payload.encode() if isinstance(payload, str) else payload
        status, hdrs, data = self._request("POST", "/invoke", body, dict(headers or {}), timeout=timeout)
        return InvokeResult(status, hdrs, data)

    def get(self, path: str, *, timeout: float = 10.0) -> InvokeResult:
        status, hdrs, data = self._request("GET", path, None, {}, timeout=timeout)
        return InvokeResult(status, hdrs, data)

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], *, timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    # --- output ------------------------------------------------------------------------------------

    def logs(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first output line matching ``pattern``, waiting up to ``timeout`` for it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise LocalFunctionError(f"no output line matched {pattern!r} within {timeout}s:\n{self.logs()}")
