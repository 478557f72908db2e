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


class Destination(Model):
    """Where an invocation record (or discarded records) is sent: another Function, a NATS subject or an HTTP endpoint."""

    model_config = ConfigDict(
        json_schema_extra=validations(exactly_one(["function", "nats", "url"], what="destination"))
    )

    function: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Name of a Function in the same namespace, invoked asynchronously with the record."""
    nats: str | None = Field(default=None, pattern=r"^[^\s*>]+$", max_length=255)
    """A NATS subject the record is published to (on the platform's NATS, JetStream-acknowledged when a stream
    captures the subject)."""
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2048)
    """An HTTP(S) endpoint that receives the record as a JSON POST."""
