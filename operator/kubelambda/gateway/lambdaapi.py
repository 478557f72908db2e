"""Lambda's control-plane API (rest-json, the 2015-03-31 paths botocore's service model routes), on the
gateway's port: functions, versions, aliases, reserved concurrency, account settings (docs/versions.md).

Every call takes the gateway's auth step (gateway/auth): the caller's identity, then a SubjectAccessReview of
the RBAC verb the call needs on ``functions.kubelambda.io`` (``functionaliases`` for alias writes), so the API
never lets a caller do more than kubectl would. A bare FunctionName is in the caller's namespace (its
ServiceAccount's; the gateway's default namespace without auth); an ARN names it in the account field.

What the API writes are ordinary objects kubectl shows: a Function (``$LATEST``), a Function per published
version (``<name>-v<N>``, ``spec.versionOf``, owned by the Function) and a FunctionAlias per alias (owned by
the Function). Writes are server-side applies with field manager ``kubelambda-lambda-api`` and no force: a
field another manager (kubectl, a GitOps tool) owns with another value is a ResourceConflictException.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kubelambda.api.v1alpha1 import API_VERSION, FunctionSpec, alias_object_name
from kubelambda.api.v1alpha1.alias import ALIAS_NAME
from kubelambda.gateway.auth import NOBODY, Authoriser, AuthRefused, Identity
from kubelambda.gateway.codestore import CODE_PATH, ZIP_MAX_BYTES, CodeStore, StoreError, check_zip
from kubelambda.gateway.config import GatewaySettings
from kubelambda.gateway.errors import error_response
from kubelambda.gateway.functionname import BadFunctionName, FunctionRef, parse_function_name
from kubelambda.gateway.guarded import GuardedRoutes
from kubelambda.gateway.registry import Registry
from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, KubeClient, resource_path
from kubelambda.resources.configmap import CONFIGMAP_LIMIT_BYTES, code_sha256
from kubelambda.resources.names import version_object_name
from kubelambda.resources.status import find_condition

logger = logging.getLogger(__name__)

FIELD_MANAGER = "kubelambda-lambda-api"
VERSION_OF_LABEL = "kubelambda.io/version-of"
"""On a published version's Function object: the Function it is a version of."""
ALIAS_OF_LABEL = "kubelambda.io/alias-of"
"""On a FunctionAlias: the Function it names a version of."""
LAST_VERSION_ANNOTATION = "kubelambda.io/last-version"
"""On a Function: the highest version number ever published (numbers are never reused, as in Lambda)."""
DESCRIPTION_ANNOTATION = "kubelambda.io/description"
CODE_SIZE_ANNOTATION = "kubelambda.io/code-size"
"""On a Function whose zip the API stored: the zip's size in bytes (Lambda's CodeSize)."""
NO_ROLE = "default"  # Role .../role/default: no serviceAccountName (no token mounted)
BODY_MAX_BYTES = ZIP_MAX_BYTES * 4 // 3 + 64 * 1024  # the zip, base64 in JSON, and the rest of the request
SMALL_BODY_MAX_BYTES = 1024 * 1024
_ROLE = re.compile(r"^arn:aws[a-zA-Z-]*:iam::(?P<account>[^:]+):role/(?:[^:]*/)?(?P<name>[^/:]+)$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_INLINE_FILE = re.compile(r"^[A-Za-z0-9_][-._A-Za-z0-9]*$")
# Lambda's runtime identifiers and kubelambda's (docs/runtimes.md).
_LAMBDA_RUNTIMES = {"provided.al2023": "provided", "provided.al2": "provided"}
_PROBLEMS = {"Failed"}


class Failure(Exception):
    """A Lambda error: its type and message (the HTTP status comes from gateway/errors.py)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _not_found(what: str) -> Failure:
    return Failure("ResourceNotFoundException", f"{what} not found")


def _bad(field: str, message: str) -> Failure:
    return Failure("InvalidParameterValueException", f"{field}: {message}")


def kube_failure(e: ApiError, what: str) -> Failure:
    """An API server refusal as Lambda's error type."""
    if e.status == 404:
        return _not_found(what)
    if e.status == 409:
        hint = (
            " (another field manager owns a field this call changes: change it where it is managed, e.g. "
            "with kubectl or in Git)"
            if "conflict with" in e.message
            else ""
        )
        return Failure("ResourceConflictException", f"{what}: {e.message}{hint}")
    if e.status in (400, 422):
        return Failure("InvalidParameterValueException", f"{what}: {e.message}")
    if e.status == 403:
        return Failure("ServiceException", f"The gateway may not write {what}: {e.message}")
    return Failure("ServiceException", f"{what}: {e.status} {e.message}")


# ---- what Lambda calls things -------------------------------------------------------------------------


def lambda_runtime(runtime: str) -> str:
    if runtime.startswith("nodejs"):
        return f"{runtime}.x"
    if runtime == "provided":
        return "provided.al2023"
    return runtime


def kube_runtime(value: Any) -> str:
    if not isinstance(value, str):
        raise _bad("Runtime", f"{value!r} is not a runtime")
    if value in _LAMBDA_RUNTIMES:
        return _LAMBDA_RUNTIMES[value]
    return value.removesuffix(".x") if value.startswith("nodejs") else value


def role_account(role: Any, namespace: str) -> str | None:
    """The ServiceAccount a Role ARN names: ``arn:aws:iam::<namespace>:role/<serviceaccount>`` (a twelve-digit
    account stands for the function's namespace). ``role/default`` is no ServiceAccount: the function runs
    without a token, as a Function without ``serviceAccountName`` does (and a warm pool may serve it)."""
    if not isinstance(role, str):
        raise _bad("Role", f"{role!r} is not an IAM role ARN")
    match = _ROLE.match(role)
    if match is None:
        raise _bad(
            "Role", f"{role!r} is not an IAM role ARN (arn:aws:iam::<namespace>:role/<serviceaccount>)"
        )
    account, name = match.group("account"), match.group("name")
    if not account.isdigit() and account != namespace:
        raise _bad("Role", f"{role!r} names namespace {account!r}; the function is in {namespace!r}")
    if not _NAME.match(name) or len(name) > 253:
        raise _bad("Role", f"{name!r} is not a ServiceAccount name")
    return None if name == NO_ROLE else name


def role_arn(namespace: str, service_account: str | None) -> str:
    return f"arn:aws:iam::{namespace}:role/{service_account or NO_ROLE}"


def unzip_inline(data: bytes) -> dict[str, str]:
    """A zip's files as ``code.inline`` (plain text files at the top level, under the ConfigMap limit)."""
    if len(data) > ZIP_MAX_BYTES:
        raise Failure(
            "RequestEntityTooLargeException",
            f"Code.ZipFile is {len(data)} bytes; direct uploads are limited to {ZIP_MAX_BYTES} bytes",
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise _bad("Code.ZipFile", f"not a zip archive ({e})") from e
    files: dict[str, str] = {}
    size = 0
    for info in archive.infolist():
        if info.is_dir():
            continue
        if not _INLINE_FILE.match(info.filename):
            raise Failure(
                "CodeStorageExceededException",
                f"Code.ZipFile: {info.filename!r} is not a top-level file; without a code store (docs/versions.md, "
                "'Code') a zip must hold plain files only",
            )
        size += info.file_size
        if size > CONFIGMAP_LIMIT_BYTES:
            raise Failure(
                "CodeStorageExceededException",
                f"Code.ZipFile unpacks to more than {CONFIGMAP_LIMIT_BYTES} bytes; without a code store "
                "(docs/versions.md, 'Code') a zip must fit in a ConfigMap",
            )
        try:
            files[info.filename] = archive.read(info).decode()
        except UnicodeDecodeError as e:
            raise Failure(
                "CodeStorageExceededException",
                f"Code.ZipFile: {info.filename!r} is not UTF-8 text; without a code store (docs/versions.md, "
                "'Code') a zip must hold text files only",
            ) from e
    if not files:
        raise _bad("Code.ZipFile", "the archive holds no files")
    return files


def _zip_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _bad("Code.ZipFile", "must be base64 (boto3 and the AWS CLI encode it)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad("Code.ZipFile", f"not base64: {e}") from e


def code_of(code: Any) -> JSON:
    """``spec.code`` from Lambda's ``Code`` (ZipFile or ImageUri) without a code store."""
    if not isinstance(code, dict):
        raise _bad("Code", "must be an object with ZipFile or ImageUri")
    if "ZipFile" in code:
        return {"inline": unzip_inline(_zip_bytes(code["ZipFile"]))}
    if "ImageUri" in code:
        return {"image": code["ImageUri"]}
    if "S3Bucket" in code or "S3Key" in code:
        raise _bad(
            "Code.S3Bucket",
            "S3Bucket/S3Key need the platform's code store (KUBELAMBDA_GATEWAY_CODE_STORE_ENDPOINT, unset on this "
            "gateway); upload ZipFile, or reference the bucket in the Function's spec.code.s3 with kubectl",
        )
    raise _bad("Code", "set ZipFile or ImageUri")


def _int(body: JSON, field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(field, f"{value!r} is not an integer")
    return value


def spec_changes(body: JSON, namespace: str, name: str = "") -> JSON:
    """The spec fields a CreateFunction / UpdateFunctionConfiguration body sets (camelCase, as the CRD)."""
    out: JSON = {}
    if "Runtime" in body:
        out["runtime"] = kube_runtime(body["Runtime"])
    if "Handler" in body:
        out["handler"] = body["Handler"]
    for field, key in (("MemorySize", "memoryMB"), ("Timeout", "timeoutSeconds")):
        value = _int(body, field)
        if value is not None:
            out[key] = value
    if "EphemeralStorage" in body:
        storage = body["EphemeralStorage"]
        size = storage.get("Size") if isinstance(storage, dict) else None
        if not isinstance(size, int):
            raise _bad("EphemeralStorage.Size", f"{size!r} is not an integer")
        out["ephemeralStorageMB"] = size
    if "Environment" in body:
        env = body["Environment"]
        variables = env.get("Variables", {}) if isinstance(env, dict) else None
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            raise _bad("Environment.Variables", "must map names to strings")
        out["environment"] = variables
    if "Role" in body:
        out["serviceAccountName"] = role_account(body["Role"], namespace)  # None: no ServiceAccount
    if "LoggingConfig" in body:
        out["logging"] = logging_of(body["LoggingConfig"], name)
    return out


_LOG_LEVELS = {
    "ApplicationLogLevel": ("applicationLogLevel", ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")),
    "SystemLogLevel": ("systemLogLevel", ("DEBUG", "INFO", "WARN")),
}


def logging_of(config: Any, function: str) -> JSON:
    """``spec.logging`` from Lambda's ``LoggingConfig`` (docs/logs.md): LogFormat Text or JSON, the levels (JSON
    only, as Lambda refuses them with Text), LogGroup only as Lambda's default ``/aws/lambda/<name>``."""
    if not isinstance(config, dict):
        raise _bad("LoggingConfig", "must be an object with LogFormat, ApplicationLogLevel, SystemLogLevel")
    fmt = config.get("LogFormat", "Text")
    if fmt not in ("Text", "JSON"):
        raise _bad("LoggingConfig.LogFormat", f"{fmt!r} is not one of Text, JSON")
    out: JSON = {"logFormat": fmt}
    for field, (key, allowed) in _LOG_LEVELS.items():
        if field not in config:
            continue
        level = config[field]
        if level not in allowed:
            raise _bad(f"LoggingConfig.{field}", f"{level!r} is not one of {', '.join(allowed)}")
        if fmt != "JSON":
            raise _bad(f"LoggingConfig.{field}", "a log level needs LogFormat JSON")
        out[key] = level
    group = config.get("LogGroup")
    if group is not None and group != f"/aws/lambda/{function}":
        raise _bad(
            "LoggingConfig.LogGroup",
            f"{group!r}: kubelambda keeps a function's log in its namespace's log store (docs/logs.md); only the "
            "default /aws/lambda/<function name> is accepted",
        )
    return out


def logging_config(spec: FunctionSpec, name: str) -> JSON:
    """Lambda's ``LoggingConfig`` of a Function (Lambda answers the levels, INFO by default, only for JSON)."""
    logging = spec.logging
    out: JSON = {"LogFormat": logging.log_format if logging is not None else "Text"}
    if logging is not None and logging.log_format == "JSON":
        out["ApplicationLogLevel"] = logging.application_log_level or "INFO"
        out["SystemLogLevel"] = logging.system_log_level or "INFO"
    out["LogGroup"] = f"/aws/lambda/{name}"
    return out


def check_spec(spec: JSON) -> None:
    """The model's own checks before the API server's (its messages name the Lambda field less well)."""
    try:
        FunctionSpec.model_validate(spec)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _bad(f"spec.{where}", first["msg"]) from e


# ---- responses ----------------------------------------------------------------------------------------


def state_of(body: JSON) -> tuple[str, str, str]:
    """``(State, StateReason, LastUpdateStatus)`` from a Function's status, for boto3's waiters."""
    meta = body["metadata"]
    status = body.get("status") or {}
    ready = find_condition(status, "Ready")
    current = status.get("observedGeneration") == meta.get("generation")
    if ready is None or not current:
        return "Pending", "The operator has not reconciled this configuration yet", "InProgress"
    reason, message = ready.get("reason", ""), ready.get("message", "")
    if ready.get("status") == "True" or reason == "InstancesStarting":
        return "Active", message, "Successful"
    if reason == "Reconciling":
        return "Pending", message, "InProgress"
    return "Failed", f"{reason}: {message}", "Failed"


def configuration(body: JSON, region: str) -> JSON:
    """Lambda's ``FunctionConfiguration`` of a Function object (``$LATEST`` or a published version)."""
    meta = body["metadata"]
    spec = FunctionSpec.model_validate(body.get("spec") or {})
    namespace = meta["namespace"]
    name = spec.version_of.function if spec.version_of is not None else meta["name"]
    version = str(spec.version_of.version) if spec.version_of is not None else "$LATEST"
    arn = FunctionRef(namespace, name).arn(region)
    state, reason, update = state_of(body)
    code = spec.code
    size = sum(len(v.encode()) for v in code.inline.values()) if code.inline is not None else 0
    size = int((meta.get("annotations") or {}).get(CODE_SIZE_ANNOTATION, size))
    out: JSON = {
        "FunctionName": name,
        "FunctionArn": arn if version == "$LATEST" else f"{arn}:{version}",
        "Runtime": lambda_runtime(spec.runtime),
        "Role": role_arn(namespace, spec.service_account_name),
        "Handler": spec.handler,
        "CodeSize": size,
        "Description": (meta.get("annotations") or {}).get(DESCRIPTION_ANNOTATION, ""),
        "Timeout": spec.timeout_seconds,
        "MemorySize": spec.memory_mb,
        "LastModified": _last_modified(meta),
        "CodeSha256": lambda_sha256(code_sha256(code)),
        "Version": version,
        "Environment": {"Variables": dict(spec.environment)},
        "RevisionId": meta.get("resourceVersion", ""),
        "State": state,
        "StateReason": reason,
        "LastUpdateStatus": update,
        "PackageType": "Image" if code.image is not None else "Zip",
        "Architectures": ["x86_64"],
        "EphemeralStorage": {"Size": spec.ephemeral_storage_mb},
        "LoggingConfig": logging_config(spec, name),
    }
    if update == "Failed":
        out["LastUpdateStatusReason"] = reason
    return out


def lambda_sha256(hex_digest: str) -> str:
    """Lambda's ``CodeSha256``: the base64 of the digest (of the zip, for stored and archive code)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def same_sha256(given: str, hex_digest: str) -> bool:
    """``given`` (Lambda's base64, or hex) names ``hex_digest``."""
    return given in (hex_digest, lambda_sha256(hex_digest))


def _last_modified(meta: JSON) -> str:
    """The last write of any manager (else the creation), in Lambda's format (``2024-01-02T03:04:05.000+0000``)."""
    times = [e.get("time", "") for e in meta.get("managedFields") or [] if e.get("time")]
    when = max(times) if times else meta.get("creationTimestamp", "")
    return when.replace("Z", ".000+0000") if when else ""


def alias_configuration(body: JSON, region: str) -> JSON:
    spec = body["spec"]
    arn = FunctionRef(body["metadata"]["namespace"], spec["function"]).arn(region)
    out: JSON = {
        "AliasArn": f"{arn}:{spec['name']}",
        "Name": spec["name"],
        "FunctionVersion": spec["functionVersion"],
        "Description": spec.get("description", ""),
        "RevisionId": body["metadata"].get("resourceVersion", ""),
    }
    if spec.get("routing"):
        out["RoutingConfig"] = {
            "AdditionalVersionWeights": {r["version"]: r["weight"] for r in spec["routing"]}
        }
    return out


def _json(data: JSON | None, status: int = 200) -> web.Response:
    if data is None:
        return web.Response(status=status)
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


# ---- the API ------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request: who calls, which function (when the path names one), and the JSON body."""

    request: web.Request
    identity: Identity
    namespace: str  # the caller's namespace, or the one the FunctionName's ARN names
    ref: FunctionRef | None
    body: JSON


Handler = Callable[["LambdaApi", Call], Awaitable[web.Response]]


def _functions(namespace: str, name: str | None = None) -> str:
    return resource_path(API_VERSION, "functions", namespace=namespace, name=name)


def _aliases(namespace: str, name: str | None = None) -> str:
    return resource_path(API_VERSION, "functionaliases", namespace=namespace, name=name)


@dataclass
class LambdaApi:
    settings: GatewaySettings
    kube: KubeClient
    auth: Authoriser
    registry: Registry | None = None
    """This gateway's cache: an alias write goes into it at once (an UpdateAlias takes effect for the next
    call on this gateway; other replicas follow through their watch)."""
    store: CodeStore | None = None
    """The platform's code store (gateway/codestore.py), when ``code_store_endpoint`` is set."""

    def __post_init__(self) -> None:
        if self.store is None and self.settings.code_store_endpoint is not None:
            self.store = CodeStore(self.settings)

    # ---- plumbing -----------------------------------------------------------------------------------

    def register(self, router: GuardedRoutes) -> None:
        from kubelambda.gateway import lambdaextras as x

        f = "/2015-03-31/functions"
        esm = "/2015-03-31/event-source-mappings"
        config = "/2019-09-25/functions/{name:.+}/event-invoke-config"
        routes: list[tuple[str, str, str, str, str, Handler]] = [
            # method, path, action, verb, resource (functions | functionaliases), handler
            ("POST", f, "CreateFunction", "create", "functions", LambdaApi.create_function),
            ("GET", f, "ListFunctions", "list", "functions", LambdaApi.list_functions),
            ("GET", f + "/", "ListFunctions", "list", "functions", LambdaApi.list_functions),
            ("GET", f + "/{name:.+}/configuration", "GetFunctionConfiguration", "get", "functions",
             LambdaApi.get_function_configuration),
            ("PUT", f + "/{name:.+}/configuration", "UpdateFunctionConfiguration", "update", "functions",
             LambdaApi.update_function_configuration),
            ("PUT", f + "/{name:.+}/code", "UpdateFunctionCode", "update", "functions",
             LambdaApi.update_function_code),
            ("POST", f + "/{name:.+}/versions", "PublishVersion", "create", "functions", LambdaApi.publish_version),
            ("GET", f + "/{name:.+}/versions", "ListVersionsByFunction", "get", "functions",
             LambdaApi.list_versions),
            ("POST", f + "/{name:.+}/aliases", "CreateAlias", "create", "functionaliases", LambdaApi.create_alias),
            ("GET", f + "/{name:.+}/aliases", "ListAliases", "get", "functions", LambdaApi.list_aliases),
            ("GET", f + "/{name:.+}/aliases/{alias}", "GetAlias", "get", "functions", LambdaApi.get_alias),
            ("PUT", f + "/{name:.+}/aliases/{alias}", "UpdateAlias", "update", "functionaliases",
             LambdaApi.update_alias),
            ("DELETE", f + "/{name:.+}/aliases/{alias}", "DeleteAlias", "delete", "functionaliases",
             LambdaApi.delete_alias),
            ("PUT", "/2017-10-31/functions/{name:.+}/concurrency", "PutFunctionConcurrency", "update", "functions",
             LambdaApi.put_concurrency),
            ("DELETE", "/2017-10-31/functions/{name:.+}/concurrency", "DeleteFunctionConcurrency", "update",
             "functions", LambdaApi.delete_concurrency),
            ("GET", "/2019-09-30/functions/{name:.+}/concurrency", "GetFunctionConcurrency", "get", "functions",
             LambdaApi.get_concurrency),
            ("GET", "/2016-08-19/account-settings", "GetAccountSettings", "list", "functions",
             LambdaApi.account_settings),
            ("GET", "/2016-08-19/account-settings/", "GetAccountSettings", "list", "functions",
             LambdaApi.account_settings),
            ("POST", "/2017-03-31/tags/{name:.+}", "TagResource", "update", "functions", x.tag_resource),
            ("DELETE", "/2017-03-31/tags/{name:.+}", "UntagResource", "update", "functions", x.untag_resource),
            ("GET", "/2017-03-31/tags/{name:.+}", "ListTags", "get", "functions", x.list_tags),
            ("GET", config + "/list", "ListFunctionEventInvokeConfigs", "get", "functions", x.list_invoke_configs),
            ("PUT", config, "PutFunctionEventInvokeConfig", "update", "functions", x.put_invoke_config),
            ("POST", config, "UpdateFunctionEventInvokeConfig", "update", "functions", x.update_invoke_config),
            ("GET", config, "GetFunctionEventInvokeConfig", "get", "functions", x.get_invoke_config),
            ("DELETE", config, "DeleteFunctionEventInvokeConfig", "update", "functions", x.delete_invoke_config),
            ("POST", esm, "CreateEventSourceMapping", "create", "triggers", x.create_mapping),
            ("POST", esm + "/", "CreateEventSourceMapping", "create", "triggers", x.create_mapping),
            ("GET", esm, "ListEventSourceMappings", "list", "triggers", x.list_mappings),
            ("GET", esm + "/", "ListEventSourceMappings", "list", "triggers", x.list_mappings),
            ("GET", esm + "/{uuid}", "GetEventSourceMapping", "get", "triggers", x.get_mapping),
            ("PUT", esm + "/{uuid}", "UpdateEventSourceMapping", "update", "triggers", x.update_mapping),
            ("DELETE", esm + "/{uuid}", "DeleteEventSourceMapping", "delete", "triggers", x.delete_mapping),
            # Last: {name:.+} would match the paths above.
            ("GET", f + "/{name:.+}", "GetFunction", "get", "functions", LambdaApi.get_function),
            ("DELETE", f + "/{name:.+}", "DeleteFunction", "delete", "functions", LambdaApi.delete_function),
        ]  # fmt: skip
        for method, path, action, verb, resource, handler in routes:
            router.add_route(method, path, self._endpoint(action, verb, resource, handler))
        if self.store is not None:
            # Authorised by the URL's signature (a Function's spec or GetFunction's Code.Location), not a caller.
            router.add_get(CODE_PATH + "/{sha256:[a-f0-9]{64}}.zip", self.store.serve)

    def _endpoint(
        self, action: str, verb: str, resource: str, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        from kubelambda.gateway import lambdaextras as x

        big = action in ("CreateFunction", "UpdateFunctionCode")

        async def endpoint(request: web.Request) -> web.StreamResponse:
            try:
                raw = await _read(request, BODY_MAX_BYTES if big else SMALL_BODY_MAX_BYTES)
                identity = await self.auth.authenticate(request, raw) if self.auth.enabled else NOBODY
                namespace = self._caller_namespace(identity)
                body = _parse_body(raw)
                ref = None
                if "name" in request.match_info:
                    ref = self._ref(request.match_info["name"], namespace)
                elif action in ("CreateFunction", "CreateEventSourceMapping"):
                    ref = self._ref(_str(body, "FunctionName"), namespace)
                elif action == "ListEventSourceMappings" and request.query.get("FunctionName"):
                    ref = self._ref(request.query["FunctionName"], namespace)
                if ref is not None:
                    namespace = ref.namespace
                name = ref.name if ref is not None and verb != "list" else ""
                if resource == "functionaliases" and ref is not None:
                    alias = request.match_info.get("alias") or str(body.get("Name", ""))
                    name = alias_object_name(ref.name, alias) if alias else ""
                if resource == "triggers":
                    uuid = request.match_info.get("uuid")
                    name = f"esm-{uuid}" if uuid else ""
                    if uuid:
                        namespace = await x.mapping_namespace(self, uuid, namespace)
                arn = ref.arn(self.settings.region) if ref is not None else f"arn:aws:lambda:*:{namespace}:*"
                await self.auth.decide(
                    identity, f"lambda:{action}", verb, namespace, name, arn=arn, resource=resource
                )
                return await handler(self, Call(request, identity, namespace, ref, body))
            except AuthRefused as e:
                return error_response(e.code, e.message)
            except (Failure, StoreError) as e:
                return error_response(e.code, e.message)
            except ApiError as e:
                failure = kube_failure(e, action)
                return error_response(failure.code, failure.message)

        return endpoint

    def _caller_namespace(self, identity: Identity) -> str:
        prefix = "system:serviceaccount:"
        if identity.username.startswith(prefix):
            return identity.username.removeprefix(prefix).split(":", 1)[0]
        return self.settings.default_namespace

    def _ref(self, value: str, namespace: str) -> FunctionRef:
        try:
            return parse_function_name(value, default_namespace=namespace)
        except BadFunctionName as e:
            raise _bad("FunctionName", str(e)) from e

    async def _get_function(self, namespace: str, name: str) -> JSON:
        found = await self.kube.get_or_none(_functions(namespace, name))
        if found is None or (found.get("spec") or {}).get("versionOf") is not None:
            raise _not_found(f"Function {FunctionRef(namespace, name).arn(self.settings.region)}")
        return found

    async def _get_qualified(self, namespace: str, name: str, qualifier: str | None) -> JSON:
        """The Function object of ``name`` at ``qualifier`` ($LATEST, a version number or an alias)."""
        if qualifier in (None, "", "$LATEST"):
            return await self._get_function(namespace, name)
        assert qualifier is not None
        if not qualifier.isdigit():
            alias = await self.kube.get_or_none(_aliases(namespace, alias_object_name(name, qualifier)))
            if alias is None:
                raise _not_found(
                    f"Function {FunctionRef(namespace, name).arn(self.settings.region)}:{qualifier}"
                )
            qualifier = str(alias["spec"]["functionVersion"])
            if qualifier == "$LATEST":
                return await self._get_function(namespace, name)
        found = await self.kube.get_or_none(_functions(namespace, version_object_name(name, int(qualifier))))
        if found is None:
            raise _not_found(f"Function {FunctionRef(namespace, name).arn(self.settings.region)}:{qualifier}")
        return found

    async def _versions(self, namespace: str, name: str) -> list[JSON]:
        listed = await self.kube.list(
            _functions(namespace), params={"labelSelector": f"{VERSION_OF_LABEL}={name}"}
        )
        items = [
            i
            for i in listed.get("items", [])
            if (i.get("spec") or {}).get("versionOf", {}).get("function") == name
        ]
        return sorted(items, key=lambda i: int(i["spec"]["versionOf"]["version"]))

    async def _alias_objects(self, namespace: str, name: str) -> list[JSON]:
        listed = await self.kube.list(
            _aliases(namespace), params={"labelSelector": f"{ALIAS_OF_LABEL}={name}"}
        )
        return sorted(listed.get("items", []), key=lambda i: str(i["spec"]["name"]))

    async def _apply_function(
        self,
        namespace: str,
        name: str,
        spec: JSON,
        *,
        description: str | None,
        current: JSON | None = None,
        code_size: int | None = None,
        tags: dict[str, str] | None = None,
    ) -> JSON:
        """Server-side apply of the whole ``spec`` (what this manager wants; unchanged fields are co-owned).
        ``description`` and ``code_size`` None keep ``current``'s (an apply that leaves out a field this manager
        set removes it); so do the tags (:meth:`tag_resource`) this manager set."""
        spec = {k: v for k, v in spec.items() if v is not None}  # None: unset (e.g. Role .../role/default)
        check_spec(spec)
        meta: JSON = {"name": name, "namespace": namespace}
        annotations, labels = _own_metadata(current)
        if description is not None:
            annotations[DESCRIPTION_ANNOTATION] = description
        if code_size is not None:
            annotations[CODE_SIZE_ANNOTATION] = str(code_size)
        elif "inline" in (spec.get("code") or {}) or "image" in (spec.get("code") or {}):
            annotations.pop(CODE_SIZE_ANNOTATION, None)
        if tags is not None:
            annotations.pop(TAGS_ANNOTATION, None)
            labels = {}
            tag_annotations, labels = tag_metadata(tags)
            annotations.update(tag_annotations)
        if annotations:
            meta["annotations"] = annotations
        if labels:
            meta["labels"] = labels
        doc = {"apiVersion": API_VERSION, "kind": "Function", "metadata": meta, "spec": spec}
        try:
            return await self.kube.apply(
                _functions(namespace, name), doc, field_manager=FIELD_MANAGER, force=False
            )
        except ApiError as e:
            raise kube_failure(e, f"Function {namespace}/{name}") from e

    def _config(self, body: JSON) -> JSON:
        return configuration(body, self.settings.region)

    async def _tag(self, ns: str, name: str, tags: dict[str, str], *, current: JSON) -> JSON:
        """Sets the Function's tags to ``tags`` (its spec as it is)."""
        return await self._apply_function(
            ns, name, dict(current.get("spec") or {}), description=None, current=current, tags=tags
        )

    async def _code(self, call: Call, code: Any) -> tuple[JSON, int | None]:
        """``spec.code`` from Lambda's ``Code`` and the zip's size when stored: with a code store, a ZipFile or
        an S3Bucket/S3Key goes into it and the Function references it as ``archive``; without, :func:`code_of`."""
        if self.store is None or not isinstance(code, dict) or "ImageUri" in code:
            return code_of(code), None
        if "ZipFile" in code:
            data = _zip_bytes(code["ZipFile"])
            check_zip(data, "Code.ZipFile")
        elif "S3Bucket" in code or "S3Key" in code:
            bucket, key = _str(code, "S3Bucket"), _str(code, "S3Key")
            version = code.get("S3ObjectVersion")
            if version is not None and not isinstance(version, str):
                raise _bad("S3ObjectVersion", f"{version!r} is not a string")
            data = await self.store.read_source(bucket, key, version)
            check_zip(data, f"S3Key s3://{bucket}/{key}")
        else:
            raise _bad("Code", "set ZipFile, S3Bucket and S3Key, or ImageUri")
        stored = await self.store.put(data)
        url = self.store.pod_url(call.request, stored.sha256)
        return {"archive": {"url": url, "sha256": stored.sha256}}, stored.size

    # ---- functions ----------------------------------------------------------------------------------

    async def create_function(self, call: Call) -> web.Response:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        if call.ref.qualifier != "$LATEST":
            raise _bad("FunctionName", "CreateFunction takes no qualifier")
        if await self.kube.get_or_none(_functions(ns, name)) is not None:
            raise Failure(
                "ResourceConflictException",
                f"Function already exist: {name}",
            )
        for field in ("Handler", "Runtime") if call.body.get("PackageType") != "Image" else ():
            if field not in call.body:
                raise _bad(field, "is required for a Zip package")
        spec = spec_changes(call.body, ns, name)
        spec["code"], size = await self._code(call, call.body.get("Code"))
        if "runtime" not in spec:
            spec["runtime"] = "provided"
        if "handler" not in spec:
            spec["handler"] = "function.handler"
        created = await self._apply_function(
            ns, name, spec, description=call.body.get("Description"), code_size=size
        )
        if "Tags" in call.body:
            created = await self._tag(ns, name, _tags(call.body.get("Tags")), current=created)
        if call.body.get("Publish"):
            created = await self._publish(created, description=call.body.get("Description"))
        return _json(self._config(created), 201)

    async def get_function(self, call: Call) -> web.Response:
        assert call.ref is not None
        found = await self._get_qualified(call.ref.namespace, call.ref.name, self._qualifier(call))
        spec = found.get("spec") or {}
        code: JSON = {"RepositoryType": "S3"}
        if "image" in spec.get("code", {}):
            code = {"RepositoryType": "ECR", "ImageUri": spec["code"]["image"]}
        archive = (spec.get("code") or {}).get("archive") or {}
        stored = self.store.sha_of_url(archive.get("url", "")) if self.store is not None else None
        if self.store is not None and stored is not None and stored == archive.get("sha256"):
            code["Location"] = self.store.location(_base_url(call.request), stored)
        out: JSON = {"Configuration": self._config(found), "Code": code}
        tags = _tags_of(found)
        if tags:
            out["Tags"] = tags
        reserved = (spec.get("concurrency") or {}).get("reserved")
        if reserved is not None:
            out["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
        return _json(out)

    async def get_function_configuration(self, call: Call) -> web.Response:
        assert call.ref is not None
        found = await self._get_qualified(call.ref.namespace, call.ref.name, self._qualifier(call))
        return _json(self._config(found))

    def _qualifier(self, call: Call) -> str | None:
        assert call.ref is not None
        asked = call.request.query.get("Qualifier")
        own = call.ref.qualifier if call.ref.qualifier != "$LATEST" else None
        if asked and own and asked != own:
            raise _bad("Qualifier", f"{asked!r} does not match the FunctionName's qualifier {own!r}")
        return asked or own

    async def update_function_configuration(self, call: Call) -> web.Response:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        current = await self._get_function(ns, name)
        spec = {**(current.get("spec") or {}), **spec_changes(call.body, ns, name)}
        self._check_revision(call, current)
        updated = await self._apply_function(
            ns, name, spec, description=call.body.get("Description"), current=current
        )
        return _json(self._config(updated))

    async def update_function_code(self, call: Call) -> web.Response:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        current = await self._get_function(ns, name)
        self._check_revision(call, current)
        fields = ("ZipFile", "ImageUri", "S3Bucket", "S3Key", "S3ObjectVersion")
        code, size = await self._code(call, {k: v for k, v in call.body.items() if k in fields})
        spec = {**(current.get("spec") or {}), "code": code}
        updated = await self._apply_function(
            ns, name, spec, description=None, current=current, code_size=size
        )
        if call.body.get("Publish"):
            updated = await self._publish(updated, description=None)
        return _json(self._config(updated))

    @staticmethod
    def _check_revision(call: Call, current: JSON) -> None:
        revision = call.body.get("RevisionId")
        if revision and revision != current["metadata"].get("resourceVersion"):
            raise Failure(
                "PreconditionFailedException",
                f"RevisionId {revision!r} is not the function's current revision; get the function again",
            )

    async def delete_function(self, call: Call) -> web.Response:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        qualifier = self._qualifier(call)
        if qualifier == "$LATEST":
            raise _bad(
                "Qualifier", "$LATEST cannot be deleted on its own; delete the function without a qualifier"
            )
        if qualifier is not None:
            if not qualifier.isdigit():
                raise _bad("Qualifier", f"{qualifier!r}: delete an alias with DeleteAlias")
            users = [
                a["spec"]["name"]
                for a in await self._alias_objects(ns, name)
                if qualifier in _alias_versions(a)
            ]
            if users:
                raise Failure(
                    "ResourceConflictException",
                    f"Version {qualifier} of {name} is used by alias(es) {', '.join(users)}; move them first",
                )
            object_name = version_object_name(name, int(qualifier))
            if await self.kube.delete(_functions(ns, object_name)) is None:
                raise _not_found(f"Function {FunctionRef(ns, name).arn(self.settings.region)}:{qualifier}")
            self._forget(ns, object_name)
            return _json(None, 204)
        await self._get_function(ns, name)
        # The versions and aliases are owned by the Function (the garbage collector would remove them too);
        # deleting them here makes the function disappear at once, as Lambda's does.
        for alias in await self._alias_objects(ns, name):
            await self.kube.delete(_aliases(ns, alias["metadata"]["name"]))
        for version in await self._versions(ns, name):
            await self.kube.delete(_functions(ns, version["metadata"]["name"]))
            self._forget(ns, version["metadata"]["name"])
        await self.kube.delete(_functions(ns, name))
        self._forget(ns, name)
        return _json(None, 204)

    def _forget(self, namespace: str, object_name: str) -> None:
        """A deleted Function object leaves this gateway's cache at once (the next call is ResourceNotFound, as
        in Lambda; other replicas follow through their watch)."""
        if self.registry is not None:
            self.registry.apply_function(
                "DELETED", {"metadata": {"namespace": namespace, "name": object_name}}
            )

    async def list_functions(self, call: Call) -> web.Response:
        everything = call.request.query.get("FunctionVersion") == "ALL"
        listed = await self.kube.list(_functions(call.namespace))
        items = [
            i for i in listed.get("items", []) if everything or not (i.get("spec") or {}).get("versionOf")
        ]
        configs = sorted(
            (self._config(i) for i in items), key=lambda c: (c["FunctionName"], _version_order(c))
        )
        return _json(_page(configs, call.request, "Functions", key=lambda c: c["FunctionArn"]))

    # ---- versions -----------------------------------------------------------------------------------

    async def publish_version(self, call: Call) -> web.Response:
        assert call.ref is not None
        current = await self._get_function(call.ref.namespace, call.ref.name)
        self._check_revision(call, current)
        sha = call.body.get("CodeSha256")
        latest = code_sha256(FunctionSpec.model_validate(current.get("spec") or {}).code)
        if sha and not same_sha256(str(sha), latest):
            raise Failure(
                "PreconditionFailedException",
                f"CodeSha256 {sha!r} is not the code of $LATEST ({lambda_sha256(latest)})",
            )
        return _json(
            self._config(await self._publish(current, description=call.body.get("Description"))), 201
        )

    async def _publish(self, current: JSON, *, description: str | None) -> JSON:
        """A new version: the Function's spec as a new Function object, or the latest version when nothing
        changed since it was published (as Lambda does)."""
        meta = current["metadata"]
        ns, name = meta["namespace"], meta["name"]
        spec = dict(current.get("spec") or {})
        versions = await self._versions(ns, name)
        if versions:
            last = versions[-1]
            if {k: v for k, v in (last.get("spec") or {}).items() if k != "versionOf"} == spec:
                return last
        numbers = [int(v["spec"]["versionOf"]["version"]) for v in versions]
        recorded = int((meta.get("annotations") or {}).get(LAST_VERSION_ANNOTATION, "0") or 0)
        number = max([recorded, *numbers]) + 1
        object_name = version_object_name(name, number)
        if len(object_name) > 63:
            raise _bad(
                "FunctionName", f"{name!r} is too long to publish versions ({object_name!r} > 63 characters)"
            )
        annotations = {DESCRIPTION_ANNOTATION: description} if description else {}
        size = (meta.get("annotations") or {}).get(CODE_SIZE_ANNOTATION)
        if size is not None:
            annotations[CODE_SIZE_ANNOTATION] = size
        doc: JSON = {
            "apiVersion": API_VERSION,
            "kind": "Function",
            "metadata": {
                "name": object_name,
                "namespace": ns,
                "labels": {VERSION_OF_LABEL: name},
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "Function",
                        "name": name,
                        "uid": meta["uid"],
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**spec, "versionOf": {"function": name, "version": number}},
        }
        try:
            created = await self.kube.request(
                "POST", _functions(ns), body=doc, params={"fieldManager": FIELD_MANAGER}
            )
        except ApiError as e:
            if e.status == 409:
                raise Failure(
                    "ResourceConflictException",
                    f"Version {number} of {name} was just published by another call (or a Function named "
                    f"{object_name} exists); try again",
                ) from e
            raise kube_failure(e, f"Function {ns}/{object_name}") from e
        await self.kube.patch(
            _functions(ns, name), {"metadata": {"annotations": {LAST_VERSION_ANNOTATION: str(number)}}}
        )
        return created

    async def list_versions(self, call: Call) -> web.Response:
        assert call.ref is not None
        current = await self._get_function(call.ref.namespace, call.ref.name)
        versions = [self._config(current)] + [
            self._config(v) for v in await self._versions(call.ref.namespace, call.ref.name)
        ]
        return _json(_page(versions, call.request, "Versions", key=lambda c: c["Version"]))

    # ---- aliases ------------------------------------------------------------------------------------

    async def _check_version(self, ns: str, name: str, version: str, field: str) -> None:
        if version == "$LATEST":
            return
        if not version.isdigit():
            raise _bad(field, f"{version!r} is not a version number or $LATEST")
        if await self.kube.get_or_none(_functions(ns, version_object_name(name, int(version)))) is None:
            raise _not_found(
                f"{field}: version {version} of {FunctionRef(ns, name).arn(self.settings.region)}"
            )

    async def _alias_spec(self, call: Call, name: str, alias: str, previous: JSON | None) -> JSON:
        assert call.ref is not None
        ns = call.ref.namespace
        version = call.body.get("FunctionVersion", (previous or {}).get("functionVersion"))
        if not isinstance(version, str):
            raise _bad("FunctionVersion", "is required")
        await self._check_version(ns, name, version, "FunctionVersion")
        spec: JSON = {"function": name, "name": alias, "functionVersion": version}
        description = call.body.get("Description", (previous or {}).get("description"))
        if description:
            spec["description"] = description
        routing = previous.get("routing", []) if previous is not None else []
        if "RoutingConfig" in call.body:
            weights = (call.body.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
            if not isinstance(weights, dict) or len(weights) > 1:
                raise _bad("RoutingConfig.AdditionalVersionWeights", "at most one additional version")
            routing = []
            for extra, weight in weights.items():
                await self._check_version(ns, name, extra, "RoutingConfig.AdditionalVersionWeights")
                if extra == "$LATEST":
                    raise _bad("RoutingConfig.AdditionalVersionWeights", "$LATEST cannot take a weight")
                if not isinstance(weight, int | float) or not 0 <= weight <= 1:
                    raise _bad("RoutingConfig.AdditionalVersionWeights", f"weight {weight!r} is not in 0..1")
                if extra == version:
                    raise _bad("RoutingConfig.AdditionalVersionWeights", "must differ from FunctionVersion")
                routing.append({"version": extra, "weight": float(weight)})
        if routing and version == "$LATEST":
            raise _bad("FunctionVersion", "an alias with weighted routing must point at a published version")
        if routing:
            spec["routing"] = routing
        return spec

    async def _apply_alias(self, call: Call, spec: JSON, function: JSON) -> JSON:
        assert call.ref is not None
        ns = call.ref.namespace
        object_name = alias_object_name(spec["function"], spec["name"])
        doc = {
            "apiVersion": API_VERSION,
            "kind": "FunctionAlias",
            "metadata": {
                "name": object_name,
                "namespace": ns,
                "labels": {ALIAS_OF_LABEL: spec["function"]},
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "Function",
                        "name": spec["function"],
                        "uid": function["metadata"]["uid"],
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
        }
        try:
            applied = await self.kube.apply(
                _aliases(ns, object_name), doc, field_manager=FIELD_MANAGER, force=False
            )
        except ApiError as e:
            raise kube_failure(e, f"FunctionAlias {ns}/{object_name}") from e
        if self.registry is not None:  # routes the very next call, before the watch brings the change
            self.registry.apply_alias("MODIFIED", applied)
        return applied

    def _alias_name(self, value: Any) -> str:
        if not isinstance(value, str) or not re.match(ALIAS_NAME, value):
            raise _bad("Name", f"{value!r} is not an alias name (letters, digits, '-', '_', not only digits)")
        return value

    async def create_alias(self, call: Call) -> web.Response:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        alias = self._alias_name(call.body.get("Name"))
        function = await self._get_function(ns, name)
        if await self.kube.get_or_none(_aliases(ns, alias_object_name(name, alias))) is not None:
            raise Failure("ResourceConflictException", f"Alias already exists: {alias}")
        spec = await self._alias_spec(call, name, alias, None)
        return _json(
            alias_configuration(await self._apply_alias(call, spec, function), self.settings.region), 201
        )

    async def _alias(self, call: Call) -> JSON:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        alias = call.request.match_info["alias"]
        found = await self.kube.get_or_none(_aliases(ns, alias_object_name(name, alias)))
        if found is None or found["spec"].get("name") != alias:
            raise _not_found(f"Alias not found: {FunctionRef(ns, name).arn(self.settings.region)}:{alias}")
        return found

    async def get_alias(self, call: Call) -> web.Response:
        return _json(alias_configuration(await self._alias(call), self.settings.region))

    async def update_alias(self, call: Call) -> web.Response:
        assert call.ref is not None
        found = await self._alias(call)
        revision = call.body.get("RevisionId")
        if revision and revision != found["metadata"].get("resourceVersion"):
            raise Failure(
                "PreconditionFailedException", f"RevisionId {revision!r} is not the alias's current one"
            )
        function = await self._get_function(call.ref.namespace, call.ref.name)
        spec = await self._alias_spec(call, call.ref.name, found["spec"]["name"], found["spec"])
        return _json(alias_configuration(await self._apply_alias(call, spec, function), self.settings.region))

    async def delete_alias(self, call: Call) -> web.Response:
        assert call.ref is not None
        found = await self._alias(call)
        await self.kube.delete(_aliases(call.ref.namespace, found["metadata"]["name"]))
        if self.registry is not None:
            self.registry.apply_alias("DELETED", found)
        return _json(None, 204)

    async def list_aliases(self, call: Call) -> web.Response:
        assert call.ref is not None
        await self._get_function(call.ref.namespace, call.ref.name)
        aliases = [
            alias_configuration(a, self.settings.region)
            for a in await self._alias_objects(call.ref.namespace, call.ref.name)
        ]
        version = call.request.query.get("FunctionVersion")
        if version:
            aliases = [a for a in aliases if a["FunctionVersion"] == version]
        return _json(_page(aliases, call.request, "Aliases", key=lambda a: a["Name"]))

    # ---- concurrency and account ----------------------------------------------------------------------

    async def put_concurrency(self, call: Call) -> web.Response:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        reserved = _int(call.body, "ReservedConcurrentExecutions")
        if reserved is None or reserved < 0:
            raise _bad(
                "ReservedConcurrentExecutions",
                f"{call.body.get('ReservedConcurrentExecutions')!r} must be >= 0",
            )
        current = await self._get_function(ns, name)
        spec = dict(current.get("spec") or {})
        spec["concurrency"] = {**(spec.get("concurrency") or {}), "reserved": reserved}
        await self._apply_function(ns, name, spec, description=None, current=current)
        return _json({"ReservedConcurrentExecutions": reserved})

    async def delete_concurrency(self, call: Call) -> web.Response:
        assert call.ref is not None
        ns, name = call.ref.namespace, call.ref.name
        current = await self._get_function(ns, name)
        if ((current.get("spec") or {}).get("concurrency") or {}).get("reserved") is not None:
            remove = [{"op": "remove", "path": "/spec/concurrency/reserved"}]
            try:
                await self.kube.patch(_functions(ns, name), remove, patch_type="json")
            except ApiError as e:
                raise kube_failure(e, f"Function {ns}/{name}") from e
        return _json(None, 204)

    async def get_concurrency(self, call: Call) -> web.Response:
        assert call.ref is not None
        current = await self._get_function(call.ref.namespace, call.ref.name)
        reserved = ((current.get("spec") or {}).get("concurrency") or {}).get("reserved")
        return _json({} if reserved is None else {"ReservedConcurrentExecutions": reserved})

    async def account_settings(self, call: Call) -> web.Response:
        listed = await self.kube.list(_functions(call.namespace))
        items = listed.get("items", [])
        reserved = sum(
            int(((i.get("spec") or {}).get("concurrency") or {}).get("reserved") or 0)
            for i in items
            if not (i.get("spec") or {}).get("versionOf")
        )
        pool = self.settings.pool_limit
        return _json(
            {
                "AccountLimit": {
                    "TotalCodeSize": 80 * 1024**3,
                    "CodeSizeUnzipped": 250 * 1024**2,
                    "CodeSizeZipped": ZIP_MAX_BYTES,
                    "ConcurrentExecutions": pool,
                    "UnreservedConcurrentExecutions": max(pool - reserved, 0),
                },
                "AccountUsage": {
                    "TotalCodeSize": 0,
                    "FunctionCount": sum(1 for i in items if not (i.get("spec") or {}).get("versionOf")),
                },
            }
        )


def _alias_versions(alias: JSON) -> set[str]:
    spec = alias["spec"]
    return {spec["functionVersion"], *(r["version"] for r in spec.get("routing") or [])}


def _version_order(config: JSON) -> int:
    return -1 if config["Version"] == "$LATEST" else int(config["Version"])


def _page(items: list[JSON], request: web.Request, field: str, *, key: Callable[[JSON], str]) -> JSON:
    """Lambda's Marker/MaxItems paging over ``items`` (in order): the marker is the last key returned."""
    marker = request.query.get("Marker")
    try:
        limit = int(request.query.get("MaxItems", "50"))
    except ValueError as e:
        raise _bad("MaxItems", f"{request.query.get('MaxItems')!r} is not an integer") from e
    if not 1 <= limit <= 10000:
        raise _bad("MaxItems", f"{limit} must be 1..10000")
    start = 0
    if marker:
        keys = [key(i) for i in items]
        if marker not in keys:
            raise _bad("Marker", f"{marker!r} is not a marker of this listing")
        start = keys.index(marker) + 1
    page = items[start : start + limit]
    out: JSON = {field: page}
    if start + limit < len(items):
        out["NextMarker"] = key(page[-1])
    return out


def _str(body: JSON, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise _bad(field, "is required")
    return value


def _parse_body(raw: bytes) -> JSON:
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise Failure("InvalidRequestContentException", f"Could not parse request body into json: {e}") from e
    if not isinstance(body, dict):
        raise Failure("InvalidRequestContentException", "The request body must be a JSON object")
    return body


async def _read(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise Failure("RequestEntityTooLargeException", f"Request must be smaller than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise Failure("RequestEntityTooLargeException", f"Request must be smaller than {limit} bytes")
        chunks.append(chunk)


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


# ---- tags (TagResource, UntagResource, ListTags; CreateFunction's Tags) -----------------------------------

TAGS_ANNOTATION = "kubelambda.io/tags"
"""On a Function: its Lambda tags, a JSON object (any key and value Lambda allows)."""
TAG_LABEL_PREFIX = "tags.kubelambda.io/"
"""A tag whose key and value are valid in a label is also the label ``tags.kubelambda.io/<key>`` (``kubectl get fn
-l tags.kubelambda.io/team=payments``)."""
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _bad("Tags", "must map keys to values")
    for key, val in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or key.lower().startswith("aws:"):
            raise _bad("Tags", f"key {key!r} must be 1..128 characters and not start with aws:")
        if not isinstance(val, str) or len(val) > 256:
            raise _bad("Tags", f"the value of {key!r} must be a string of at most 256 characters")
    if len(value) > 50:
        raise _bad("Tags", f"{len(value)} tags; a function takes at most 50")
    return dict(value)


def _tags_of(body: JSON | None) -> dict[str, str]:
    raw = (((body or {}).get("metadata") or {}).get("annotations") or {}).get(TAGS_ANNOTATION)
    try:
        tags = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def tag_metadata(tags: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(annotations, labels)`` that carry ``tags``."""
    annotations = {TAGS_ANNOTATION: json.dumps(tags, sort_keys=True)} if tags else {}
    labels = {
        TAG_LABEL_PREFIX + k: v for k, v in tags.items() if _LABEL_NAME.match(k) and _LABEL_VALUE.match(v)
    }
    return annotations, labels


def _own_metadata(current: JSON | None) -> tuple[dict[str, str], dict[str, str]]:
    """The annotations and labels this API keeps on a Function (description, code size, tags), as they are."""
    meta = (current or {}).get("metadata") or {}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k in (DESCRIPTION_ANNOTATION, CODE_SIZE_ANNOTATION, TAGS_ANNOTATION)
    }
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(TAG_LABEL_PREFIX)}
    return annotations, labels
