"""The ``Function`` resource: code, runtime and limits of one function (Lambda's function configuration)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from kubelambda.api.v1alpha1._common import (
    CONDITIONS_LIST,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    Condition,
    Destination,
    Model,
    cel,
    default_of,
    exactly_one,
    validations,
)
from kubelambda.runtimes.table import FAMILIES, RUNTIME_NAMES

# The runtimes come from the runtime table (kubelambda/runtimes/table.py); the CRD's enum is generated from it.
if TYPE_CHECKING:
    Runtime = str
else:
    Runtime = Literal[RUNTIME_NAMES]
RUNTIMES: tuple[str, ...] = RUNTIME_NAMES

# Lambda's reserved environment variables: a function may not set them (they describe the execution environment).
RESERVED_ENV = (
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_MAX_BYTES = 4096  # Lambda: 4 KB for all keys and values together

# Handler formats per runtime family (docs/runtimes.md, "Runtimes"), as RE2 patterns for CEL's matches(), from the runtime table.
HANDLER_PATTERNS: dict[str, tuple[str, str]] = {
    f.name: (f.handler, f.handler_shape) for f in FAMILIES.values() if f.handler
}


def _handler_rules() -> list[dict[str, str]]:
    rules = []
    for prefix, (pattern, shape) in HANDLER_PATTERNS.items():
        quoted = pattern.replace("\\", "\\\\")
        rules.append(
            cel(
                f"!self.runtime.startsWith('{prefix}') || self.handler.matches('{quoted}')",
                f"handler must look like {shape} for {prefix} runtimes",
                field_path=".handler",
            )
        )
    return rules


class ArchiveCode(Model):
    """A zip archive fetched over HTTP(S) by an init container and checked against its SHA-256."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """Where the zip is downloaded from."""
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    """Hex SHA-256 of the zip; a mismatch fails the pod's init container."""


class S3Code(Model):
    """A zip archive in an S3-compatible bucket, fetched by an init container."""

    endpoint: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """S3 API endpoint, e.g. ``http://minio.storage:9000``."""
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    """Bucket name."""
    key: str = Field(min_length=1, max_length=1024)
    """Object key of the zip."""
    sha256: str | None = Field(default=None, pattern=r"^[a-f0-9]{64}$")
    """Optional hex SHA-256 of the zip, checked after download."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$", max_length=64)
    """Region used to sign requests."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``; absent = anonymous."""


class ImageConfig(Model):
    """Lambda's ImageConfig, for an image in Lambda's layout: what the agent runs as the runtime."""

    entry_point: list[str] | None = Field(default=None, min_length=1, max_length=64)
    """The image's ENTRYPOINT as Lambda runs it; default ``["/lambda-entrypoint.sh"]`` (AWS's base images)."""
    command: list[str] | None = Field(default=None, min_length=1, max_length=64)
    """The image's CMD; default ``[handler]`` (the base images take the handler as CMD)."""
    working_directory: str | None = Field(default=None, pattern=r"^/[^\s]*$", max_length=1024)
    """The runtime's working directory; default ``/var/task``."""


class Code(Model):
    """Where the function's code comes from: exactly one of inline, archive, s3, image."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            exactly_one(["inline", "archive", "s3", "image"], what="code"),
            cel(
                "has(self.image) || (!has(self.imageLayout) || self.imageLayout == 'kubelambda') "
                "&& !has(self.imageConfig)",
                "imageLayout and imageConfig apply to code.image only",
                field_path=".imageConfig",
            ),
            cel(
                "!has(self.imageConfig) || (has(self.imageLayout) && self.imageLayout == 'lambda')",
                "imageConfig needs imageLayout: lambda (a kubelambda image's entrypoint is the agent)",
                field_path=".imageConfig",
            ),
            cel(
                "has(self.image) == has(oldSelf.image)",
                "the package type cannot change between image and zip code (inline, archive, s3); "
                "create a new Function",
            ),
        )
    )

    inline: dict[str, str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        json_schema_extra=validations(
            cel(
                "self.all(k, k.matches('^[A-Za-z0-9_][-._A-Za-z0-9]*$'))",
                "inline file names must be plain file names (letters, digits, '-', '_', '.')",
            )
        ),
    )
    """Source files by name, stored in a ConfigMap and mounted as the task root (at most about 1 MiB)."""
    archive: ArchiveCode | None = None
    """A zip fetched over HTTP(S)."""
    s3: S3Code | None = None
    """A zip in an S3-compatible bucket."""
    image: str | None = Field(default=None, pattern=r"^[a-z0-9]+([._/:@-][A-Za-z0-9_.+-]+)*$", max_length=512)
    """A container image: built FROM a kubelambda runtime image (``imageLayout: kubelambda``), or in Lambda's
    layout (``imageLayout: lambda``, e.g. FROM AWS's base images), with the code in /var/task."""
    image_layout: Literal["kubelambda", "lambda"] = "kubelambda"
    """``lambda``: an unmodified Lambda image; the agent is injected and runs the image's entrypoint as the runtime
    (docs/extensions.md, "Lambda container images")."""
    image_config: ImageConfig | None = None
    """Lambda's ImageConfig for ``imageLayout: lambda``."""


class ConfigMapLayer(Model):
    """A zip kept in a ConfigMap's ``binaryData`` (at most about 1 MiB)."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """The ConfigMap, in the Function's namespace."""
    key: str = Field(default="layer.zip", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """The key whose value is the zip."""


class Layer(Model):
    """One layer: a zip unpacked into ``/opt`` (exactly one of archive, s3, configMap); docs/extensions.md."""

    model_config = ConfigDict(
        json_schema_extra=validations(exactly_one(["archive", "s3", "configMap"], what="layer"))
    )

    archive: ArchiveCode | None = None
    """A zip fetched over HTTP(S) and checked against its SHA-256."""
    s3: S3Code | None = None
    """A zip in an S3-compatible bucket."""
    config_map: ConfigMapLayer | None = None
    """A zip in a ConfigMap."""


class EnvFromSource(Model):
    """All keys of a ConfigMap or Secret as environment variables (exactly one ref)."""

    model_config = ConfigDict(
        json_schema_extra=validations(exactly_one(["configMapRef", "secretRef"], what="envFrom"))
    )

    config_map_ref: NameRef | None = None
    """The ConfigMap to read."""
    secret_ref: NameRef | None = None
    """The Secret to read."""
    prefix: str | None = Field(default=None, pattern=ENV_NAME, max_length=128)
    """Prepended to every key."""


class NameRef(Model):
    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Object name in the Function's namespace."""
    optional: bool = False
    """Start even when the object is missing."""


class LabelSelector(Model):
    match_labels: dict[str, str] = Field(max_length=32)
    """Labels that must all match."""


class IPBlock(Model):
    cidr: str = Field(pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$", max_length=64)
    """Allowed CIDR, e.g. ``10.0.0.0/8``."""
    except_: list[str] = Field(default_factory=list, alias="except", max_length=32)
    """CIDRs inside ``cidr`` that stay blocked."""


class EgressPeer(Model):
    """One destination: an IP block, or pods chosen by namespace and/or pod labels."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.ipBlock) != (has(self.namespaceSelector) || has(self.podSelector))",
                "set either ipBlock or namespaceSelector/podSelector",
            )
        )
    )

    ip_block: IPBlock | None = None
    """Addresses outside (or inside) the cluster."""
    namespace_selector: LabelSelector | None = None
    """Namespaces whose pods may be called."""
    pod_selector: LabelSelector | None = None
    """Pods that may be called (in the Function's namespace unless namespaceSelector is set)."""


class EgressPort(Model):
    port: int = Field(ge=1, le=65535)
    """Destination port."""
    end_port: int | None = Field(default=None, ge=1, le=65535)
    """Last port of a range starting at ``port``."""
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    """Protocol."""


class EgressRule(Model):
    to: list[EgressPeer] = Field(default_factory=list, max_length=32)
    """Destinations; empty = any destination."""
    ports: list[EgressPort] = Field(default_factory=list, max_length=32)
    """Ports; empty = any port."""


class Network(Model):
    """Lambda's VPC configuration, the Kubernetes way: an egress allow-list (a NetworkPolicy)."""

    egress: list[EgressRule] = Field(max_length=64)
    """Where the function may connect to; anything else is refused. Absent ``network`` = unrestricted."""
    allow_dns: bool = Field(default=True, alias="allowDNS")
    """Also allow DNS (port 53) to any destination, so names keep resolving."""


class Concurrency(Model):
    reserved: int | None = Field(default=None, ge=0, le=100000)
    """Lambda's reserved concurrency: at most this many invocations at once (0 throttles every call)."""
    per_instance: int = Field(default=1, ge=1, le=1000)
    """Invocations one instance (pod) serves at once; Lambda's is 1."""


class Scaling(Model):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minInstances <= self.maxInstances",
                "minInstances must not exceed maxInstances",
                field_path=".minInstances",
            )
        )
    )

    min_instances: int = Field(default=0, ge=0, le=1000)
    """Instances kept warm; 0 scales to zero when idle (also the initial scale of a new Function)."""
    max_instances: int = Field(default=100, ge=1, le=1000)
    """Upper bound of the autoscaler."""
    scale_to_zero_after_seconds: int = Field(default=60, ge=0, le=86400)
    """Idle time before the last instance is removed (when minInstances is 0)."""
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    """Fraction of ``instances * perInstance`` the autoscaler aims to keep busy."""
    warm_pool: bool = True
    """Serve a cold start from a pre-started pod of the runtime's warm pool when the Function qualifies
    (zip/inline code, no custom ServiceAccount, no Secret volumes); ``false`` always takes the normal path."""


def _no_credentials_secret(destination: str) -> dict[str, str]:
    """CEL: the async ``destination``'s queue or topic names no ``credentialsSecret`` (only a Trigger's bridge
    is allowed to read a tenant's Secrets; the async worker is not)."""
    d = f"self.{destination}"
    queue = " || ".join(
        f"(has({d}.queue.{b}) && has({d}.queue.{b}.credentialsSecret))"
        for b in ("sqs", "rabbitmq", "redis", "nats")
    )
    topic = f"has({d}.topic.nats) && has({d}.topic.nats.credentialsSecret)"
    return cel(
        f"!has({d}) || ((!has({d}.queue) || !({queue})) && (!has({d}.topic) || !({topic})))",
        f"async.{destination}: credentialsSecret is for a Trigger's onFailure only (the async worker reads no "
        "Secrets of a namespace): put the credentials in the destination's URL",
    )


class AsyncConfig(Model):
    """Lambda's asynchronous invocation configuration."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            _no_credentials_secret("onSuccess"), _no_credentials_secret("onFailure")
        )
    )

    max_retries: int = Field(default=2, ge=0, le=2)
    """Retries after a function error (Lambda: 0..2, default 2)."""
    max_event_age_seconds: int = Field(default=21600, ge=60, le=21600)
    """Events older than this are discarded (Lambda: 60..21600)."""
    on_success: Destination | None = None
    """Where the record of a successful invocation goes."""
    on_failure: Destination | None = None
    """Where the record of a failed or expired event goes."""


LogFormat = Literal["Text", "JSON"]
ApplicationLogLevel = Literal["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
SystemLogLevel = Literal["DEBUG", "INFO", "WARN"]


class Logging(Model):
    """Lambda's LoggingConfig (docs/logs.md, "Log format and levels"): the format of the function's log and, in
    JSON, the levels under which application lines and the platform's records are dropped."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.logFormat == 'JSON' || (!has(self.applicationLogLevel) && !has(self.systemLogLevel))",
                "applicationLogLevel and systemLogLevel need logFormat JSON (as on Lambda)",
                field_path=".logFormat",
            )
        )
    )

    log_format: LogFormat = "Text"
    """``Text`` (START / END / REPORT lines) or ``JSON`` (Lambda's JSON platform records; the runtime gets
    ``AWS_LAMBDA_LOG_FORMAT=JSON`` and writes JSON application logs)."""
    application_log_level: ApplicationLogLevel | None = None
    """JSON only: application lines under this level are dropped (a line's level is its JSON ``level`` field, INFO
    for other lines); the runtime's ``AWS_LAMBDA_LOG_LEVEL``. Default INFO."""
    system_log_level: SystemLogLevel | None = None
    """JSON only: platform records under this level are dropped (``platform.start`` and ``platform.report`` are
    INFO, ``platform.runtimeDone`` DEBUG, timeouts WARN). Default INFO."""


class VersionOf(Model):
    """What makes a Function a published version (Lambda's PublishVersion): the function it was published from
    and its number. Set by PublishVersion (the control-plane API, ``kubelambda publish``), never changed."""

    function: str = Field(pattern=DNS_LABEL, max_length=63)
    """The Function (in the same namespace) this is a version of; it owns this object."""
    version: int = Field(ge=1, le=1000000)
    """The version number (1, 2, ...): ``Qualifier`` ``N`` and ``function:N`` invoke it."""


class FunctionSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=validations(
            *_handler_rules(),
            cel(
                "has(self.versionOf) == has(oldSelf.versionOf)",
                "a Function cannot become or stop being a published version",
                field_path=".versionOf",
            ),
            cel(
                "!has(oldSelf.versionOf) || self == oldSelf",
                "a published version is immutable: change the Function and publish a new version",
            ),
            cel(
                "!has(self.concurrency.reserved) || "
                "self.concurrency.reserved <= self.scaling.maxInstances * self.concurrency.perInstance",
                "concurrency.reserved must not exceed scaling.maxInstances * concurrency.perInstance",
                field_path=".concurrency.reserved",
            ),
            cel(
                "!has(self.concurrency.reserved) || "
                "self.scaling.minInstances * self.concurrency.perInstance <= self.concurrency.reserved",
                "scaling.minInstances * concurrency.perInstance must not exceed concurrency.reserved",
                field_path=".scaling.minInstances",
            ),
            cel(
                "!has(self.code.image) || !has(self.layers) || size(self.layers) == 0",
                "a container image Function has no layers (as on Lambda): put their files in the image",
                field_path=".layers",
            ),
        )
    )

    runtime: Runtime
    """Language runtime: one of the runtimes in docs/runtimes.md (e.g. python3.11, nodejs20, java17, go, provided)."""
    handler: str = Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")
    """Entry point, in the runtime's Lambda convention (``app.handler``, ``index.handler``, ``pkg.Class::method``)."""
    code: Code
    """The function's code."""
    layers: list[Layer] = Field(default_factory=list, max_length=5)
    """Lambda's layers: up to 5 zips unpacked into ``/opt`` in order (a later one overwrites an earlier one's files),
    within Lambda's 250 MB unzipped with the function; not with ``code.image`` (docs/extensions.md)."""
    memory_mb: int = Field(default=128, ge=128, le=10240, alias="memoryMB")
    """Memory in MB (128..10240); the CPU limit is proportional (1769 MB = 1 vCPU)."""
    timeout_seconds: int = Field(default=3, ge=1, le=900)
    """Maximum duration of one invocation in seconds (1..900)."""
    ephemeral_storage_mb: int = Field(default=512, ge=512, le=10240, alias="ephemeralStorageMB")
    """Size of the writable /tmp in MB (512..10240)."""
    environment: dict[str, str] = Field(
        default_factory=dict,
        max_length=256,
        json_schema_extra=validations(
            cel(
                "self.all(k, k.matches('" + ENV_NAME.replace("\\", "\\\\") + "'))",
                "environment variable names must start with a letter or '_' and contain only letters, digits and '_'",
            ),
            cel(
                "self.all(k, !(k in " + str(list(RESERVED_ENV)).replace('"', "'") + "))",
                "environment sets a reserved variable (" + ", ".join(RESERVED_ENV) + ")",
            ),
            cel(
                "self.all(k, !k.startsWith('KUBELAMBDA_'))",
                "environment sets a KUBELAMBDA_ variable (reserved for the agent's configuration)",
            ),
            cel(
                f"self.map(k, size(k) + size(self[k])).sum() <= {ENV_MAX_BYTES}",
                f"environment must not exceed {ENV_MAX_BYTES} characters in total (keys and values)",
            ),
        ),
    )
    """Environment variables (together at most 4 KB, as in Lambda)."""
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=16)
    """ConfigMaps and Secrets whose keys become environment variables."""
    service_account_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """The execution role: the ServiceAccount whose token the function gets. Absent = no token mounted."""
    network: Network | None = None
    """Egress allow-list; absent = unrestricted egress (Lambda without a VPC)."""
    concurrency: Concurrency = Field(default_factory=Concurrency, json_schema_extra=default_of(Concurrency))
    """Concurrency limits."""
    scaling: Scaling = Field(default_factory=Scaling, json_schema_extra=default_of(Scaling))
    """Autoscaling bounds."""
    async_: AsyncConfig = Field(
        default_factory=AsyncConfig, alias="async", json_schema_extra=default_of(AsyncConfig)
    )
    """Asynchronous invocation: retries, event age, destinations."""
    logging: Logging | None = None
    """Lambda's LoggingConfig: log format (Text or JSON) and, in JSON, the application and system log levels.
    Absent = Text."""
    version_of: VersionOf | None = Field(
        default=None,
        json_schema_extra=validations(
            cel(
                "self == oldSelf", "versionOf is immutable: a published version keeps its function and number"
            )
        ),
    )
    """Set only on a published version (an immutable snapshot of a Function's code and configuration, made by
    PublishVersion): which Function and which number. Absent on the Function as edited (``$LATEST``)."""


class Instances(Model):
    desired: int = Field(default=0, ge=0)
    """Replicas the Deployment asks for."""
    ready: int = Field(default=0, ge=0)
    """Replicas that are ready to serve."""


class FunctionStatus(Model):
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the operator last reconciled."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """``Ready`` and its reason (``CodeTooLarge``, ``RuntimeUnknown``, ``ServiceAccountMissing``, ...)."""
    instances: Instances | None = None
    """Instances of the function's Deployment."""
    code_sha256: str | None = None
    """SHA-256 of the code as deployed (inline files, archive checksum, or the image reference)."""
    invoke_url: str | None = None
    """Where the gateway serves the Lambda Invoke API for this function."""
    kopf: dict[str, Any] | None = None
    """Bookkeeping of the operator framework (kopf): the last handled spec (inline code as a checksum)."""


class Function(Model):
    """A function: code + runtime + limits; the operator runs it as a Deployment of agent pods."""

    api_version: Literal["kubelambda.io/v1alpha1"] = "kubelambda.io/v1alpha1"
    kind: Literal["Function"] = "Function"
    spec: FunctionSpec
    status: FunctionStatus = Field(default_factory=FunctionStatus)


EnvFromSource.model_rebuild()
