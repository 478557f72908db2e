"""Types shared by the Function and Trigger APIs: the base model, conditions, CEL rules, destinations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubelambda.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# RFC 1123 label / subdomain, as Kubernetes validates object names.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` (``.handler``) makes the error name that field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def exactly_one(fields: list[str], *, what: str) -> dict[str, str]:
    """CEL: exactly one of ``fields`` (optional members of the same object) is set."""
    listed = ", ".join(f"has(self.{f})" for f in fields)
    return cel(
        f"[{listed}].filter(x, x).size() == 1",
        f"exactly one of {', '.join(f'{what}.{f}' for f in fields)} must be set",
    )


def validations(*rules: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules), **extra}


def default_of(model: type[Model]) -> dict[str, Any]:
    """``json_schema_extra`` giving an object field its full default (pydantic omits ``default_factory`` ones).

    A bare ``{}`` is not enough: the API server checks a default against the CEL rules before it fills in
    the nested defaults.
    """
    return {"default": model().wire()}


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; docstrings under fields become the CRD's descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server holds it (camelCase, unset optional fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(Model):
    """A Kubernetes API convention condition (metav1.Condition)."""

    type: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$", max_length=316)
    """Condition type, e.g. ``Ready``."""
    status: Literal["True", "False", "Unknown"]
    """``True``, ``False`` or ``Unknown``."""
    reason: str = Field(pattern=CONDITION_REASON, min_length=1, max_length=1024)
    """CamelCase reason for the last transition, e.g. ``CodeTooLarge``."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` this condition was computed from."""


CONDITIONS_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class SqsQueueTarget(Model):
    queue_url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    """Queue URL (``SendMessage``)."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2048)
    """SQS API endpoint; default: the queue URL's scheme and host."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$", max_length=64)
    """Region used to sign (credentials: ``credentialsSecret``, else the sender's ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``)."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A Trigger's ``onFailure`` only: Secret with ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""


class RabbitMQQueueTarget(Model):
    url: str = Field(pattern=r"^amqps?://[^\s]+$", max_length=2048)
    """AMQP URL (credentials in it, or in ``credentialsSecret``)."""
    queue: str = Field(min_length=1, max_length=255)
    """Queue the record is published to (default exchange, persistent, with publisher confirms)."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A Trigger's ``onFailure`` only: Secret with ``username`` and ``password`` (they replace the URL's)."""


class RedisQueueTarget(Model):
    url: str = Field(pattern=r"^rediss?://[^\s]+$", max_length=2048)
    """Redis URL (password in it, or in ``credentialsSecret``)."""
    key: str = Field(min_length=1, max_length=1024)
    """Stream key the record is added to (``XADD``, field ``data``)."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A Trigger's ``onFailure`` only: Secret with ``password`` (and optionally ``username``, Redis 6 ACLs)."""


class NatsQueueTarget(Model):
    url: str | None = Field(default=None, pattern=r"^nats://[^\s]+$", max_length=2048)
    """NATS URL; default: the platform's NATS."""
    subject: str = Field(min_length=1, max_length=255, pattern=r"^[^\s*>]+$")
    """Subject a JetStream stream captures; the record is published with ``Nats-Msg-Id`` and acknowledged."""
    credentials_secret: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """A Trigger's ``onFailure`` only, with ``url``: Secret with ``token``, or ``username`` and ``password``."""


class QueueTarget(Model):
    """A queue that receives the record as one message (exactly one of the brokers)."""

    model_config = ConfigDict(
        json_schema_extra=validations(exactly_one(["sqs", "rabbitmq", "redis", "nats"], what="queue"))
    )

    sqs: SqsQueueTarget | None = None
    """An SQS-compatible queue."""
    rabbitmq: RabbitMQQueueTarget | None = None
    """A RabbitMQ queue."""
    redis: RedisQueueTarget | None = None
    """A Redis stream."""
    nats: NatsQueueTarget | None = None
    """A NATS JetStream stream."""

    def credentials(self) -> str | None:
        """The ``credentialsSecret`` of the broker that is set."""
        block = self.sqs or self.rabbitmq or self.redis or self.nats
        return block.credentials_secret if block is not None else None


class TopicTarget(Model):
    """A topic (docs/triggers-topic.md): the record is published as a message its subscribers receive as
    SNS's ``Message``."""

    model_config = ConfigDict(json_schema_extra=validations(exactly_one(["nats"], what="topic")))

    nats: NatsQueueTarget | None = None
    """A NATS subject (core publish; subscribers present at that moment get it)."""

    def credentials(self) -> str | None:
        return self.nats.credentials_secret if self.nats is not None else None


class Destination(Model):
    """Where an invocation record (or discarded records) is sent: another Function, a NATS subject, an HTTP endpoint,
    a queue or a topic."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            exactly_one(["function", "nats", "url", "queue", "topic"], what="destination")
        )
    )

    function: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:(\$LATEST|[a-zA-Z0-9_-]{1,128}))?$",
        max_length=192,
    )
    """Name of a Function in the same namespace, invoked asynchronously with the record, optionally with a
    qualifier: ``audit:live`` (an alias, followed as it moves) or ``audit:3`` (a published version)."""
    nats: str | None = Field(default=None, pattern=r"^[^\s*>]+$", max_length=255)
    """A NATS subject the record is published to (on the platform's NATS, JetStream-acknowledged when a stream
    captures the subject)."""
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2048)
    """An HTTP(S) endpoint that receives the record as a JSON POST."""
    queue: QueueTarget | None = None
    """A queue (SQS API, RabbitMQ, Redis stream, NATS JetStream) that receives the record as one message."""
    topic: TopicTarget | None = None
    """A topic whose subscribers receive the record (docs/triggers-topic.md)."""
