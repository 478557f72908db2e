"""kubelambda's Lambda runtime client for Python (standard library, and orjson when the runtime has it).

Started by the agent as ``python3 $LAMBDA_RUNTIME_DIR/bootstrap.py``. It loads ``$_HANDLER``
(``module.function``, ``/`` allowed in the module path) from ``$LAMBDA_TASK_ROOT`` and serves
invocations from the Lambda Runtime API at ``$AWS_LAMBDA_RUNTIME_API``, one at a time.

Events are decoded by orjson from the runtime's private folder ``_vendor/python<X.Y>/`` beside this file when it is
there (1.5-2 times as fast as json.loads on large events), with json.loads' result for every input; handlers
cannot see it (``EventDecoder``).
"""

from __future__ import annotations

import decimal
import gc
import importlib
import io
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple, cast

API_PREFIX = "/2018-06-01/runtime"
ERROR_CONTENT_TYPE = "application/vnd.aws.lambda.error+json"


class FaultError(Exception):
    """An error the runtime reports with a Lambda error type, e.g. Runtime.ImportModuleError."""

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.trace = trace or []


# --- Runtime API client ---------------------------------------------------------------------------


class RuntimeClient:
    """Talks HTTP/1.1 to the Runtime API over one kept-alive socket.

    A small hand-written client rather than http.client: it is on the path of every invocation,
    and it sends the answer to one event together with the request for the next (pipelining),
    saving a round trip per invocation.
    """

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._addr = (host, int(port))
        self._host_header = address.encode()
        self._next_request = (
            b"GET "
            + API_PREFIX.encode()
            + b"/invocation/next HTTP/1.1\r\nHost: "
            + self._host_header
            + b"\r\n\r\n"
        )
        self._next_sent = False
        self._connect()

    def _connect(self) -> None:
        self._sock = socket.create_connection(self._addr)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._rfile = cast(io.BufferedReader, self._sock.makefile("rb", buffering=65536))
        self._next_sent = False

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        rfile = self._rfile
        # The agent's answer head is almost always whole in the buffer after one read: parsed in one piece, it cost
        # about half of what a readline, two decodes and two strips per header did.
        buffered = rfile.peek(1)
        end = buffered.find(b"\r\n\r\n")
        if end < 0 or buffered.find(b"\n") != buffered.find(b"\r\n") + 1:  # not whole, or not CRLF lines
            status, headers = self._read_head_by_line()
        else:
            lines = rfile.read(end + 4).decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:-2]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = rfile.read(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(rfile.readline().split(b";", 1)[0], 16)
                if size == 0:
                    while rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(rfile.read(size))
                rfile.readline()
            body = b"".join(chunks)
        else:
            body = b""
        return status, headers, body

    def _read_head_by_line(self) -> tuple[int, dict[str, str]]:
        """The status and headers when the head is not whole in the buffer (or ends lines with a bare LF)."""
        rfile = self._rfile
        status_line = rfile.readline()
        if not status_line:
            raise ConnectionError("the Runtime API closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = rfile.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return status, headers

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        head = [
            f"POST {API_PREFIX}{path} HTTP/1.1",
            f"Host: {self._host_header.decode()}",
            f"Content-Length: {len(body)}",
        ]
        head.extend(f"{k}: {v}" for k, v in headers.items())
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    def next(self) -> tuple[dict[str, str], bytes]:
        for attempt in (1, 2):
            try:
                if not self._next_sent:
                    self._sock.sendall(self._next_request)
                self._next_sent = False
                status, headers, body = self._read_response()
                break
            except OSError:
                if attempt == 2:
                    raise
                self._sock.close()
                self._connect()  # the agent restarted its server; ask again on a fresh connection
        if status != 200:
            raise RuntimeError(f"Runtime API next answered {status}: {body[:200]!r}")
        return headers, body

    def _send_then_next(self, request: bytes) -> tuple[int, bytes]:
        """Send a response/error and the next "next" at once; return the response/error's answer."""
        self._sock.sendall(request + self._next_request)
        self._next_sent = True
        status, _, answer = self._read_response()
        return status, answer

    def respond(self, request_id: str, body: bytes, content_type: str) -> None:
        path = f"/invocation/{request_id}/response"
        status, answer = self._send_then_next(self._post(path, body, {"Content-Type": content_type}))
        if status == 413:
            # The agent answered the caller with Function.ResponseSizeTooLarge already.
            log_line(f"[ERROR] response for {request_id} refused: {answer.decode(errors='replace')}")
        elif status != 202:
            log_line(f"[ERROR] Runtime API refused the response for {request_id}: {status}")

    def error(self, request_id: str | None, error: dict[str, Any]) -> None:
        headers = {
            "Content-Type": ERROR_CONTENT_TYPE,
            "Lambda-Runtime-Function-Error-Type": str(error.get("errorType", "")),
        }
        body = json.dumps(error).encode()
        if request_id is None:
            self._sock.sendall(self._post("/init/error", body, headers))
            self._read_response()
            return
        self._send_then_next(self._post(f"/invocation/{request_id}/error", body, headers))


# --- handler loading ------------------------------------------------------------------------------


def load_handler(handler: str) -> Callable[[Any, Any], Any]:
    """Import ``module.function``; raise FaultError with Lambda's error type when that fails."""
    modname, dot, fname = handler.rpartition(".")
    if not dot or not modname or not fname:
        raise FaultError(
            "Runtime.MalformedHandlerName",
            f"Bad handler '{handler}': not enough values to unpack (expected 2, got 1)",
        )
    if modname.split(".")[0] in sys.builtin_module_names:
        raise FaultError(
            "Runtime.BuiltInModuleConflict", f"Cannot use built-in module {modname} as a handler module"
        )
    try:
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as e:
        raise FaultError("Runtime.ImportModuleError", f"Unable to import module '{modname}': {e}") from e
    except SyntaxError as e:
        trace = [f'  File "{e.filename}" Line {e.lineno}\n    {e.text}']
        raise FaultError(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{modname}': {e}", trace
        ) from e
    try:
        func = getattr(module, fname)
    except AttributeError:
        raise FaultError(
            "Runtime.HandlerNotFound", f"Handler '{fname}' missing on module '{modname}'"
        ) from None
    if not callable(func):
        raise FaultError(
            "Runtime.HandlerNotFound", f"Handler '{fname}' on module '{modname}' is not callable"
        )
    return func  # type: ignore[no-any-return]


# --- context --------------------------------------------------------------------------------------


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, data: dict[str, Any]) -> None:
        self.cognito_identity_id = data.get("cognitoIdentityId")
        self.cognito_identity_pool_id = data.get("cognitoIdentityPoolId")


class Client:
    __slots__ = ("app_package_name", "app_title", "app_version_code", "app_version_name", "installation_id")

    def __init__(self, data: dict[str, Any]) -> None:
        self.installation_id = data.get("installation_id")
        self.app_title = data.get("app_title")
        self.app_version_name = data.get("app_version_name")
        self.app_version_code = data.get("app_version_code")
        self.app_package_name = data.get("app_package_name")


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, data: dict[str, Any]) -> None:
        client = data.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = data.get("custom")
        self.env = data.get("env")


class FunctionEnv(NamedTuple):
    """What a context says about the function, from the environment the agent gave the runtime."""

    function_name: str | None
    function_version: str | None
    memory_limit_in_mb: str | None
    log_group_name: str | None
    log_stream_name: str | None

    @classmethod
    def read(cls) -> FunctionEnv:
        env = os.environ
        return cls(
            env.get("AWS_LAMBDA_FUNCTION_NAME"),
            env.get("AWS_LAMBDA_FUNCTION_VERSION"),
            env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            env.get("AWS_LAMBDA_LOG_GROUP_NAME"),
            env.get("AWS_LAMBDA_LOG_STREAM_NAME"),
        )


class LambdaContext:
    """The context object handlers receive, with the attribute names of Lambda's Python runtime."""

    def __init__(
        self,
        *,
        request_id: str,
        deadline_ms: int,
        invoked_function_arn: str,
        client_context: ClientContext | None,
        identity: CognitoIdentity,
        function: FunctionEnv | None = None,
    ) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        (
            self.function_name,
            self.function_version,
            self.memory_limit_in_mb,
            self.log_group_name,
            self.log_stream_name,
        ) = function or FunctionEnv.read()
        self.client_context = client_context
        self.identity = identity
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def __repr__(self) -> str:
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},function_name={self.function_name},"
            f"function_version={self.function_version},invoked_function_arn={self.invoked_function_arn}])"
        )


def make_context(
    headers: dict[str, str], request_id: str, function: FunctionEnv | None = None
) -> LambdaContext:
    cc_json = headers.get("lambda-runtime-client-context")
    cognito_json = headers.get("lambda-runtime-cognito-identity")
    return LambdaContext(
        request_id=request_id,
        deadline_ms=int(headers.get("lambda-runtime-deadline-ms") or 0),
        invoked_function_arn=headers.get("lambda-runtime-invoked-function-arn") or "",
        client_context=ClientContext(json.loads(cc_json)) if cc_json else None,
        identity=CognitoIdentity(json.loads(cognito_json) if cognito_json else {}),
        function=function,
    )


# --- (de)serialisation ----------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal):
        return int(obj) if obj == obj.to_integral_value() else float(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _ensure_ascii() -> bool:
    # Lambda's Python 3.12+ runtimes write unicode characters as they are; older ones escape them.
    env = os.environ.get("AWS_EXECUTION_ENV", "")
    version = env.removeprefix("AWS_Lambda_python")
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < (3, 12)


ENSURE_ASCII = _ensure_ascii()


# json.dumps with these options would build an encoder for every call.
_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=ENSURE_ASCII)


def marshal(result: Any) -> tuple[bytes, str]:
    if isinstance(result, bytes):
        return result, "application/unknown"
    try:
        return _ENCODER.encode(result).encode(), "application/json"
    except (TypeError, ValueError) as e:
        raise FaultError("Runtime.MarshalError", f"Unable to marshal response: {e}") from None


# Bytes → what a number token's neighbourhood looks like: every digit "0", every byte that may come before a
# number's digits in valid JSON ("[", ":", ",", whitespace, "-") ",".
_NUMBER_CONTEXT = bytes(
    ord("0") if b in b"0123456789" else ord(",") if b in b"[:, \t\n\r-" else b for b in range(256)
)
# 19 digits after such a byte: an integer that may lie outside orjson's 64 bits (it returns a float for those).
_LONG_INTEGER = b"," + b"0" * 19
_LONG_INTEGER_FIRST = re.compile(rb"[ \t\n\r]*-?[0-9]{19}")


def _may_hold_long_integer(body: bytes) -> bool:
    """True when ``body`` may hold an integer outside [-2**63, 2**64), for which orjson returns a float where
    json.loads returns an int. Also true for 19+ digit runs inside strings after a space, comma, colon or minus:
    those events are decoded by json.loads, only slower. About 0.6 ms for a 525 KB event (orjson: 3.5 ms)."""
    return _LONG_INTEGER in body.translate(_NUMBER_CONTEXT) or _LONG_INTEGER_FIRST.match(body) is not None


def _is_orjson(name: str) -> bool:
    return name == "orjson" or name.startswith("orjson.")


def load_orjson(vendor: str) -> Callable[[bytes], Any] | None:
    """orjson's ``loads`` from the folder ``vendor``, imported so that handlers cannot tell: the folder leaves
    ``sys.path`` again and orjson ``sys.modules`` (a handler's orjson imported before is put back), so that a
    handler's ``import orjson`` fails as on Lambda or loads the handler's own. The standard library modules orjson
    imports stay. None without it (an image built without it): events are then decoded by json.loads.
    """
    if not os.path.isdir(os.path.join(vendor, "orjson")):
        return None
    path = sys.path[:]
    others = {name: sys.modules.pop(name) for name in [n for n in sys.modules if _is_orjson(n)]}
    sys.path.insert(0, vendor)
    try:
        import orjson  # type: ignore[import-not-found, unused-ignore]

        loads: Callable[[bytes], Any] = orjson.loads
    except Exception as e:  # a broken folder, another Python's build: the standard library's decoder
        log_line(f"[WARNING] orjson in {vendor} could not be loaded, events are decoded by json: {e}")
        return None
    finally:
        sys.path[:] = path
        for key in [k for k in sys.path_importer_cache if k == vendor or k.startswith(vendor + os.sep)]:
            del sys.path_importer_cache[key]
        for name in [n for n in sys.modules if _is_orjson(n)]:
            del sys.modules[name]
        sys.modules.update(others)
    return loads


def vendor_folder() -> str:
    """The runtime's private folder of native modules for this Python: ``_vendor/python<X.Y>`` beside this file."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "_vendor", "python{}.{}".format(*sys.version_info[:2]))


def decode(body: bytes, native: Callable[[bytes], Any] | None = None) -> Any:
    """json.loads(body)'s result, or its exception, computed by ``native`` (orjson.loads) when it can be.

    orjson differs from json.loads by refusing some of what json.loads accepts (NaN and Infinity, numbers beyond a
    double's range, lone surrogates, UTF-16/32 and a UTF-8 BOM, nesting deeper than 1024): json.loads then decodes
    it, or raises its own error; and by returning a float for integers beyond 64 bits, which
    ``_may_hold_long_integer`` sends to json.loads first. The cyclic GC, which a decode's new containers would
    start over and over, is paused during it (when it was on).
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        if native is not None and not _may_hold_long_integer(body):
            try:
                return native(body)
            except Exception:
                pass  # json.loads below gives its own answer, or its own error
        return json.loads(body)
    finally:
        if paused:
            gc.enable()


# From this size on, events are decoded by orjson. Importing it costs ~13 ms (most of it the standard library
# modules it imports: dataclasses, inspect, uuid), paid at the first such event rather than by every cold start;
# below it, json.loads takes tens of microseconds and orjson would save a few.
NATIVE_DECODE_MIN_BYTES = 32 * 1024


class EventDecoder:
    """Decodes events as json.loads does: with orjson from ``vendor`` (``load_orjson``) for events of
    ``min_bytes`` or more, loaded at the first one; with json.loads for smaller ones, or without orjson."""

    def __init__(self, vendor: str, *, min_bytes: int = NATIVE_DECODE_MIN_BYTES) -> None:
        self._vendor = vendor
        self._min_bytes = min_bytes
        self._native: Callable[[bytes], Any] | None = None
        self._loaded = False

    def __call__(self, body: bytes) -> Any:
        if len(body) < self._min_bytes:
            return json.loads(body)
        if not self._loaded:
            self._loaded = True
            self._native = load_orjson(self._vendor)
        return decode(body, self._native)


def unmarshal(body: bytes, decode_event: Callable[[bytes], Any] = json.loads) -> Any:
    try:
        return decode_event(body)
    except ValueError as e:
        raise FaultError("Runtime.UnmarshalError", f"Unable to unmarshal input: {e}") from None


# --- errors and logs ------------------------------------------------------------------------------


def error_from_exception(exc: BaseException, request_id: str | None) -> dict[str, Any]:
    if isinstance(exc, FaultError):
        error_type, message, trace = exc.error_type, exc.message, exc.trace
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        # Drop the runtime's own frames so the trace starts in user code.
        while frames and frames[0].filename == __file__:
            frames.pop(0)
        error_type, message = type(exc).__name__, str(exc)
        trace = traceback.format_list(frames)
    error: dict[str, Any] = {"errorMessage": message, "errorType": error_type}
    if request_id:
        error["requestId"] = request_id
    error["stackTrace"] = trace
    return error


def log_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def json_logs() -> bool:
    """Lambda's LoggingConfig.LogFormat JSON, which the agent passes as AWS_LAMBDA_LOG_FORMAT (docs/logs.md)."""
    return os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"


def log_error(error: dict[str, Any]) -> None:
    if json_logs():
        stamp = time.strftime(JSON_TIME_FORMAT, time.gmtime())
        log_line(json.dumps({"timestamp": stamp, "level": "ERROR", **error}, default=str, ensure_ascii=False))
        return
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error.get("stackTrace"):
        lines.append("Traceback (most recent call last):")
        lines.extend(line.rstrip("\n") for line in error["stackTrace"])
    log_line("\n".join(lines))


_request_id = ""


class LambdaFormatter(logging.Formatter):
    """Lambda's text log format: [LEVEL]\\t<UTC time>\\t<request id>\\t<message>."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s", "%Y-%m-%dT%H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        record.aws_request_id = _request_id
        return super().format(record)


JSON_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# A LogRecord's own attributes; any other (``extra=...``) becomes a field of the JSON line.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """Lambda's JSON application log format, one object a line: timestamp, level, message, logger, requestId,
    and for an exception errorType, errorMessage, stackTrace and location; ``extra`` fields are added."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(datefmt=JSON_TIME_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        level = min(50, max(0, record.levelno)) // 10 * 10
        out: dict[str, Any] = {
            "timestamp": self.formatTime(record, self.datefmt),
            "level": logging.getLevelName(level),
            "message": record.msg if isinstance(record.msg, dict) and not record.args else record.getMessage(),
            "logger": record.name,
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["errorType"] = record.exc_info[0].__name__
            out["errorMessage"] = str(record.exc_info[1])
            out["stackTrace"] = traceback.format_tb(record.exc_info[2])
            out["location"] = f"{record.pathname}:{record.funcName}:{record.lineno}"
        if _request_id:
            out["requestId"] = _request_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out and key != "aws_request_id":
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


# AWS_LAMBDA_LOG_LEVEL names Lambda's levels; Python's logging knows them as these.
_PYTHON_LEVELS = {"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}


def setup_logging() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter() if json_logs() else LambdaFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO").upper()
    root.setLevel(_PYTHON_LEVELS.get(level, level))


# --- the loop -------------------------------------------------------------------------------------


def serve(
    client: RuntimeClient,
    handler: Callable[[Any, Any], Any],
    *,
    decode_event: Callable[[bytes], Any] | None = None,
) -> None:
    global _request_id
    function = FunctionEnv.read()  # once: five environment reads a call were a tenth of the client's own time
    decode_event = decode_event or EventDecoder(vendor_folder())
    while True:
        headers, body = client.next()
        request_id = headers["lambda-runtime-aws-request-id"]
        _request_id = request_id
        trace_id = headers.get("lambda-runtime-trace-id")
        if trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        try:
            context = make_context(headers, request_id, function)
            result = handler(unmarshal(body, decode_event), context)
            payload, content_type = marshal(result)
        except Exception as e:
            error = error_from_exception(e, request_id)
            log_error(error)
            client.error(request_id, error)
            continue
        client.respond(request_id, payload, content_type)


def await_function() -> None:
    """A warm-pool pod's runtime starts before it has a function (docs/warm-pools.md): the agent sets
    KUBELAMBDA_AWAIT_SPECIALIZATION=1, and this call blocks until the pod is given a function, then adopts
    the function's environment. Everything above (the interpreter, these imports) is then off the cold path."""
    import http.client

    host, _, port = os.environ["AWS_LAMBDA_RUNTIME_API"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("GET", "/2018-06-01/kubelambda/specialization")
    answer = json.loads(conn.getresponse().read())
    conn.close()
    for key in answer.get("unset", []):
        os.environ.pop(key, None)
    os.environ.update(answer.get("env", {}))


def main() -> None:
    if os.environ.get("KUBELAMBDA_AWAIT_SPECIALIZATION") == "1":
        await_function()
    setup_logging()
    task_root = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
    # sys.path[0] is this file's folder (the one it links to, if it is a link); the function's code comes first.
    here = {os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.realpath(__file__))}
    sys.path[:] = [task_root] + [p for p in sys.path if os.path.abspath(p or ".") not in here]
    client = RuntimeClient(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""))
    except Exception as e:
        error = error_from_exception(e, None)
        log_error(error)
        client.error(None, error)
        sys.exit(1)
    serve(client, handler)


if __name__ == "__main__":
    main()
