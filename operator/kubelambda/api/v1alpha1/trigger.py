"""The ``Trigger`` resource: an event source (bucket, queue, stream, schedule, HTTP route) wired to a Function."""

from __future__ import annotations

import types
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import ConfigDict, Field, model_validator

from kubelambda.api.v1alpha1._common import (
    CONDITIONS_LIST,
    DNS_SUBDOMAIN,
    Condition,
    Destination,
    Model,
    cel,
    default_of,
    exactly_one,
    validations,
)

SourceName = Literal["bucket", "queue", "stream", "topic", "schedule", "http"]
SOURCES: tuple[str, ...] = get_args(SourceName)
"""The source blocks of a Trigger's spec, exactly one of which is set."""
URL = r"^[a-z][a-z0-9+.-]*://[^\s]+$"
SCHEDULE_EXPRESSION = (
    r"^(rate\((1 (minute|hour|day)|([2-9]|[1-9][0-9]+) (minutes|hours|days))\)"
    r"|cron\(\S+ \S+ \S+ \S+ \S+ \S+\))$"
)


S3EventType = Annotated[
    str,
    Field(
        pattern=r"^s3:(ObjectCreated|ObjectRemoved):(\*|Put|Post|Copy|CompleteMultipartUpload|Delete|DeleteMarkerCreated)$",
        max_length=64,
    ),
]


class BucketFilter(Model):
    prefix: str = Field(default="", max_length=1024)
    """Only keys starting with this."""
    suffix: str = Field(default="", max_length=1024)
    """Only keys ending with this."""


class BucketSource(Model):
    """Object events of an S3-compatible bucket, delivered as Lambda's S3 event (``eventSource: aws:s3``)."""

    endpoint: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """S3 API endpoint."""
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    """Bucket name."""
    events: list[S3EventType] = Field(
        default_factory=lambda: ["s3:ObjectCreated:*"],
        min_length=1,
        max_length=16,
        json_schema_extra={"default": ["s3:ObjectCreated:*"]},
    )
    """S3 event types, e.g. ``s3:ObjectCreated:*``."""
    filter: BucketFilter = Field(default_factory=BucketFilter, json_schema_extra=default_of(BucketFilter))
    """Key filter."""
    mode: Literal["notification", "poll"] = "notification"
    """``notification``: the store pushes events; ``poll``: the bridge lists the bucket."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$", max_length=64)
    """Region used to sign requests and reported in events."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""
    path_style: bool = True
    """Path-style addressing (``endpoint/bucket/key``), as most self-hosted stores need; ``false`` uses
    virtual-hosted style (``bucket.endpoint/key``)."""
    token_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """``notification`` mode: Secret whose ``token`` key the store must send as ``Authorization: Bearer``;
    without it the operator generates one (Secret ``<trigger>-bucket-token``)."""
    poll_interval_seconds: int = Field(default=10, ge=1, le=3600)
    """``poll`` mode: seconds between bucket listings."""


class Broker(Model):
    """The connection block of one broker (a field of :class:`QueueSource` or :class:`StreamSource`)."""


class BrokerChoice(Model):
    """A queue or stream block: one optional field per broker (the fields whose type is a :class:`Broker`),
    exactly one of them set, and the delivery settings. The broker list is read from the fields, so adding a
    broker is adding its field (and its bridge module, see ``kubelambda.bridge``)."""

    WHAT: ClassVar[str] = ""

    @classmethod
    def brokers(cls) -> tuple[str, ...]:
        """The broker fields, in declaration order."""
        return tuple(
            name
            for name, field in cls.model_fields.items()
            if any(isinstance(t, type) and issubclass(t, Broker) for t in _members(field.annotation))
        )

    def broker(self) -> tuple[str, Broker]:
        """The broker that is set: ``(field name, its block)``."""
        for name in self.brokers():
            block = getattr(self, name)
            if block is not None:
                return name, block
        raise ValueError(
            f"exactly one of {', '.join(f'{self.WHAT}.{b}' for b in self.brokers())} must be set"
        )


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types of an ``X | None`` annotation."""
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def _one_broker(*rules: dict[str, str]) -> Callable[[dict[str, Any], type[Any]], None]:
    """``json_schema_extra`` of a :class:`BrokerChoice`: CEL "exactly one broker" (from its fields), then ``rules``."""

    def extra(schema: dict[str, Any], cls: type[Any]) -> None:
        schema.update(validations(exactly_one(list(cls.brokers()), what=cls.WHAT), *rules))

    return extra


class RabbitMQ(Broker):
    url: str = Field(pattern=r"^amqps?://[^\s]+$", max_length=2048)
    """AMQP URL, e.g. ``amqp://rabbitmq.queues:5672/``."""
    queue: str = Field(min_length=1, max_length=255)
    """Queue to consume."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``username`` and ``password``."""


class Nats(Broker):
    url: str = Field(pattern=r"^nats://[^\s]+$", max_length=2048)
    """NATS URL."""
    stream: str = Field(min_length=1, max_length=255, pattern=r"^[^\s.*>]+$")
    """JetStream stream."""
    subject: str | None = Field(default=None, min_length=1, max_length=255)
    """Subject filter within the stream."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with a ``creds`` file or ``token``."""


class RedisSource(Broker):
    url: str = Field(pattern=r"^rediss?://[^\s]+$", max_length=2048)
    """Redis URL."""
    key: str = Field(min_length=1, max_length=1024)
    """The Redis stream key (queues read it through a consumer group, streams in order)."""
    consumer_group: str | None = Field(default=None, min_length=1, max_length=255)
    """Queues: the consumer group; default derived from the Trigger's namespace and name."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``password``."""


class Sqs(Broker):
    endpoint: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """SQS API endpoint."""
    queue_url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """Queue URL."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$", max_length=64)
    """Region."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""


class QueueSource(BrokerChoice):
    """A queue consumed in batches, delivered as SQS-style ``Records``."""

    WHAT: ClassVar[str] = "queue"
    model_config = ConfigDict(json_schema_extra=_one_broker())

    rabbitmq: RabbitMQ | None = None
    """A RabbitMQ queue."""
    nats: Nats | None = None
    """A NATS JetStream stream used as a work queue."""
    redis: RedisSource | None = None
    """A Redis stream read through a consumer group (XAUTOCLAIM reclaims stuck messages)."""
    sqs: Sqs | None = None
    """An SQS-compatible queue."""
    batch_size: int = Field(default=10, ge=1, le=10000)
    """Records per invocation (Lambda: default 10)."""
    max_batching_window_seconds: int = Field(default=0, ge=0, le=300)
    """How long to gather a batch."""
    report_batch_item_failures: bool = True
    """Honour ``{"batchItemFailures": [...]}`` responses."""
    max_concurrency: int = Field(default=2, ge=2, le=1000)
    """Concurrent invocations by this trigger (Lambda: 2..1000)."""


class Kafka(Broker):
    bootstrap_servers: list[str] = Field(min_length=1, max_length=32)
    """``host:port`` of brokers."""
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[a-zA-Z0-9._-]+$")
    """Topic."""
    consumer_group: str | None = Field(default=None, min_length=1, max_length=255)
    """Consumer group; default derived from the Trigger's namespace and name."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with SASL ``username`` / ``password``."""


class Kinesis(Broker):
    endpoint: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """Kinesis API endpoint."""
    stream_name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.-]+$")
    """Stream name."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$", max_length=64)
    """Region."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""


StreamViewType = Literal["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]
PG_TABLE = r"^([A-Za-z_][A-Za-z0-9_$]{0,62}\.)?[A-Za-z_][A-Za-z0-9_$]{0,62}$"
PG_NAME = r"^[a-z_][a-z0-9_]{0,62}$"


class Postgres(Broker):
    """A PostgreSQL database's row changes, read by logical replication (``pgoutput``) and delivered as
    DynamoDB Streams records (docs/triggers-database.md)."""

    url: str = Field(pattern=r"^postgres(ql)?://[^\s]+$", max_length=2048)
    """libpq connection URI without the password, e.g. ``postgresql://app@db.data:5432/shop``."""
    tables: list[Annotated[str, Field(pattern=PG_TABLE, max_length=127)]] = Field(
        min_length=1, max_length=100, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Tables whose changes are streamed, ``table`` (schema ``public``) or ``schema.table``; each needs a
    primary key (it becomes ``dynamodb.Keys``)."""
    stream_view_type: StreamViewType = "NEW_AND_OLD_IMAGES"
    """What each record carries besides ``Keys``, as DynamoDB's ``StreamViewType``; ``OLD_IMAGE`` and
    ``NEW_AND_OLD_IMAGES`` need ``REPLICA IDENTITY FULL`` on the tables."""
    slot: str | None = Field(default=None, pattern=PG_NAME, max_length=63)
    """Replication slot (the checkpoint); default ``kubelambda_<namespace>_<trigger>``, created when missing."""
    publication: str | None = Field(default=None, pattern=PG_NAME, max_length=63)
    """Publication of the tables; default: the slot's name, created when missing (``FOR TABLE`` the tables)."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``password`` (and optionally ``username``, which replaces the URL's user)."""


class StreamSource(BrokerChoice):
    """An ordered stream read per shard/partition, delivered as Kinesis-style ``Records``."""

    WHAT: ClassVar[str] = "stream"
    model_config = ConfigDict(
        json_schema_extra=_one_broker(
            cel(
                "(self.startingPosition == 'AT_TIMESTAMP') == has(self.startingPositionTimestamp)",
                "startingPositionTimestamp is required with, and only with, startingPosition AT_TIMESTAMP",
                field_path=".startingPositionTimestamp",
            ),
            cel(
                "self.maximumRecordAgeSeconds == -1 || "
                "(self.maximumRecordAgeSeconds >= 60 && self.maximumRecordAgeSeconds <= 604800)",
                "maximumRecordAgeSeconds must be -1 (forever) or 60..604800",
                field_path=".maximumRecordAgeSeconds",
            ),
            cel(
                "!has(self.postgres) || self.startingPosition != 'AT_TIMESTAMP'",
                "stream.postgres does not support startingPosition AT_TIMESTAMP (a slot starts where it is created)",
                field_path=".startingPosition",
            ),
        )
    )

    kafka: Kafka | None = None
    """A Kafka topic."""
    redis: RedisSource | None = None
    """A Redis stream."""
    nats: Nats | None = None
    """A NATS JetStream stream."""
    kinesis: Kinesis | None = None
    """A Kinesis-compatible stream."""
    postgres: Postgres | None = None
    """A PostgreSQL database's row changes (logical replication), as DynamoDB Streams records."""
    batch_size: int = Field(default=100, ge=1, le=10000)
    """Records per invocation (Lambda: default 100)."""
    max_batching_window_seconds: int = Field(default=0, ge=0, le=300)
    """How long to gather a batch."""
    starting_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = Field(
        default="TRIM_HORIZON",
        json_schema_extra=validations(
            cel("self == oldSelf", "startingPosition cannot change (as in Lambda); recreate the Trigger")
        ),
    )
    """Where a new consumer starts."""
    starting_position_timestamp: datetime | None = None
    """Start time for ``AT_TIMESTAMP``."""
    bisect_batch_on_function_error: bool = False
    """Split a failing batch in two and retry each half."""
    maximum_retry_attempts: int = Field(default=-1, ge=-1, le=10000)
    """Retries of a failing batch; -1 = until the record expires."""
    maximum_record_age_seconds: int = Field(default=-1, ge=-1, le=604800)
    """Discard records older than this; -1 = never."""
    parallelization_factor: int = Field(default=1, ge=1, le=10)
    """Concurrent batches per shard/partition, keeping order per key."""
    report_batch_item_failures: bool = False
    """Honour ``{"batchItemFailures": [...]}`` responses (checkpoint at the lowest failed sequence number)."""
    on_failure: Destination | None = None
    """Where records discarded after retries go."""


class NatsTopic(Broker):
    url: str = Field(pattern=r"^nats://[^\s]+$", max_length=2048)
    """NATS URL."""
    subject: str = Field(min_length=1, max_length=255, pattern=r"^[^\s]+$")
    """The subject (the topic); wildcards ``*`` and ``>`` subscribe to several."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``token`` or ``username`` / ``password``."""


class RedisTopic(Broker):
    url: str = Field(pattern=r"^rediss?://[^\s]+$", max_length=2048)
    """Redis URL."""
    channel: str = Field(min_length=1, max_length=1024, pattern=r"^[^\s]+$")
    """The Pub/Sub channel (the topic); with ``pattern``, a glob pattern (``orders.*``) subscribing to several."""
    pattern: bool = False
    """Subscribe with ``PSUBSCRIBE`` (``channel`` is a glob pattern) instead of ``SUBSCRIBE``."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with ``password`` (and ``username``, for Redis 6 ACL users)."""


class TopicSource(BrokerChoice):
    """A publish/subscribe topic (the self-hosted SNS): each message that passes the filter policy is one
    asynchronous invocation with Lambda's SNS event, under the Function's async settings."""

    WHAT: ClassVar[str] = "topic"
    model_config = ConfigDict(json_schema_extra=_one_broker())

    nats: NatsTopic | None = None
    """A NATS subject (core NATS publish/subscribe)."""
    redis: RedisTopic | None = None
    """A Redis Pub/Sub channel (``PUBLISH``; no message attributes: Redis messages have none)."""
    filter_policy: dict[str, Any] | None = None
    """SNS subscription filter policy (docs/triggers-topic.md); messages that do not match are not delivered."""
    filter_policy_scope: Literal["MessageAttributes", "MessageBody"] = "MessageAttributes"
    """What the policy looks at, as in SNS."""
    max_concurrency: int = Field(default=64, ge=1, le=1000)
    """Messages handed to the gateway at once by this subscription."""

    @model_validator(mode="after")
    def _valid_policy(self) -> TopicSource:
        if self.filter_policy is not None:
            # Deep rules the API server's schema does not check (the bridge refuses such a Trigger at start).
            from kubelambda.bridge.topics._sns import check_policy

            check_policy(self.filter_policy, body=self.filter_policy_scope == "MessageBody")
        return self


class ScheduleSource(Model):
    """An EventBridge-style schedule; the function receives a ``Scheduled Event``."""

    expression: str = Field(pattern=SCHEDULE_EXPRESSION, max_length=256)
    """``rate(5 minutes)`` or ``cron(0 12 * * ? *)`` (EventBridge syntax, six fields)."""
    timezone: str = Field(default="UTC", pattern=r"^[A-Za-z0-9_+/-]+$", max_length=64)
    """IANA time zone for cron expressions."""
    input: dict[str, Any] | None = None
    """Constant JSON sent instead of the Scheduled Event."""


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"]


def _any_method() -> list[HttpMethod]:
    return ["ANY"]


class Cors(Model):
    """A function URL's CORS settings: preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are answered by
    the gateway without invoking the function or checking the caller; other responses get the allow headers."""

    allow_origins: list[str] = Field(default_factory=list, max_length=100)
    """Origins allowed (``https://app.example.com``), or ``*``."""
    allow_methods: list[HttpMethod] = Field(default_factory=list, max_length=8)
    """Methods allowed (``ANY``: every method)."""
    allow_headers: list[str] = Field(default_factory=list, max_length=100)
    """Request headers allowed, or ``*``."""
    expose_headers: list[str] = Field(default_factory=list, max_length=100)
    """Response headers a browser may read."""
    max_age: int = Field(default=0, ge=0, le=86400)
    """Seconds a browser may cache a preflight's answer (0: not sent)."""
    allow_credentials: bool = False
    """Cookies and authorization headers allowed on cross-origin requests."""


class HttpSource(Model):
    """A gateway route; the function receives API Gateway HTTP API (payload 2.0) events."""

    path: str = Field(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@{}/-]*$", max_length=1024)
    """Route path; ``{name}`` segments become pathParameters, ``{proxy+}`` matches the rest."""
    methods: list[HttpMethod] = Field(
        default_factory=_any_method,
        min_length=1,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "set", "default": ["ANY"]},
    )
    """Methods routed to the function."""
    auth_type: Literal["AWS_IAM", "NONE"] = "AWS_IAM"
    """As a Lambda function URL's: ``AWS_IAM`` (default) when the gateway checks callers (SigV4 or a Kubernetes
    token, RBAC verb ``invoke`` on the Function; docs/security.md), ``NONE`` for a public route anyone may call."""
    cors: Cors | None = None
    """Cross-origin requests from browsers, answered as a function URL answers them (preflights included)."""


class TriggerSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=validations(
            exactly_one(list(SOURCES), what="spec"),
            cel(
                " && ".join(f"has(self.{s}) == has(oldSelf.{s})" for s in SOURCES),
                "the source kind of a Trigger cannot change; create a new Trigger",
            ),
        )
    )

    function: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:(\$LATEST|[a-zA-Z0-9_-]{1,128}))?$", max_length=192
    )
    """Name of the Function (same namespace) that receives the events, optionally with a qualifier: ``hello:live``
    (an alias, followed as it moves) or ``hello:3`` (a published version); docs/versions.md."""

    @property
    def function_name(self) -> str:
        """The Function object named, without the qualifier."""
        return self.function.split(":", 1)[0]

    enabled: bool = True
    """``false`` pauses the trigger without deleting it."""
    bucket: BucketSource | None = None
    """Bucket object events."""
    queue: QueueSource | None = None
    """Queue messages."""
    stream: StreamSource | None = None
    """Stream records."""
    topic: TopicSource | None = None
    """Messages published on a topic (SNS-style subscription)."""
    schedule: ScheduleSource | None = None
    """A schedule."""
    http: HttpSource | None = None
    """An HTTP route on the gateway."""

    @property
    def source(self) -> str:
        """The source block that is set: one of :data:`SOURCES`."""
        for name in SOURCES:
            if getattr(self, name) is not None:
                return name
        raise ValueError(f"exactly one of {', '.join(f'spec.{s}' for s in SOURCES)} must be set")

    @property
    def source_kind(self) -> str:
        """``bucket``, ``schedule``, ``http`` or ``<queue|stream>.<broker>`` (what a bridge runs)."""
        source = self.source
        block = getattr(self, source)
        if isinstance(block, BrokerChoice):
            return f"{source}.{block.broker()[0]}"
        return source

    def credentials_secrets(self) -> list[str]:
        """The Secrets named by whichever source block is set (bucket or broker ``credentialsSecret``) and by a
        stream's ``onFailure`` queue or topic."""
        block = getattr(self, self.source)
        if isinstance(block, BrokerChoice):
            block = block.broker()[1]
        secrets = [getattr(block, "credentials_secret", None)]
        failure = self.stream.on_failure if self.stream is not None else None
        target = (failure.queue or failure.topic) if failure is not None else None
        if target is not None:
            secrets.append(target.credentials())
        return list(dict.fromkeys(s for s in secrets if s))


def source_kinds() -> tuple[str, ...]:
    """Every value :attr:`TriggerSpec.source_kind` can take, read from the models."""
    kinds: list[str] = []
    for name in SOURCES:
        block = TriggerSpec.model_fields[name].annotation
        choice = next(
            (t for t in _members(block) if isinstance(t, type) and issubclass(t, BrokerChoice)), None
        )
        kinds += [f"{name}.{b}" for b in choice.brokers()] if choice is not None else [name]
    return tuple(kinds)


class TriggerStatus(Model):
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` last reconciled."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    """``Ready`` and its reason."""
    source: SourceName | None = None
    """Which source block the spec uses (for ``kubectl get trig``)."""
    last_event_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the bridge last delivered an event to the function (RFC 3339)."""
    lag: int | None = Field(default=None, ge=0)
    """Records or objects the bridge has yet to deliver, where the source can tell."""
    iterator_age_seconds: float | None = Field(default=None, ge=0)
    """Streams: age of the last record read (Lambda's IteratorAge)."""
    events_delivered: int | None = Field(default=None, ge=0)
    """Events delivered since the bridge started."""
    kopf: dict[str, Any] | None = None
    """Bookkeeping of the operator framework (kopf): the last handled spec (inline code as a checksum)."""


class Trigger(Model):
    """Wires an event source to a Function (Lambda's triggers and event source mappings)."""

    api_version: Literal["kubelambda.io/v1alpha1"] = "kubelambda.io/v1alpha1"
    kind: Literal["Trigger"] = "Trigger"
    spec: TriggerSpec
    status: TriggerStatus = Field(default_factory=TriggerStatus)
