"""Names of the objects a Function owns, and the Function as the builders see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kubelambda.api.v1alpha1 import API_VERSION, FunctionSpec
from kubelambda.jsonobj import JSON
from kubelambda.natsauth import unix_seconds

INVOKE_PORT = 8080
INVOKE_PORT_NAME = "invoke"
TASK_ROOT = "/var/task"
CONTAINER = "function"


@dataclass(frozen=True)
class OwnerObject:
    """Identity of a kubelambda object that owns others (a Function, a Trigger): what ownerReferences need."""

    KIND: ClassVar[str] = ""
    name: str
    namespace: str
    uid: str
    generation: int
    # When it was made (Unix seconds; 0: unknown): the ``issued`` of its pods' log credentials (natscallout).
    created: int = field(default=0, kw_only=True)

    @staticmethod
    def identity(body: JSON) -> JSON:
        """The identity fields of an API object, as keyword arguments of a subclass."""
        meta = body["metadata"]
        return {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "generation": int(meta.get("generation", 1)),
            "created": unix_seconds(meta["creationTimestamp"]) if meta.get("creationTimestamp") else 0,
        }

    def owner_reference(self) -> JSON:
        return {
            "apiVersion": API_VERSION,
            "kind": self.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class FunctionObject(OwnerObject):
    """What the builders need of a Function: identity and a parsed spec (no client, no clock)."""

    KIND: ClassVar[str] = "Function"
    spec: FunctionSpec

    @classmethod
    def from_body(cls, body: JSON) -> FunctionObject:
        return cls(**cls.identity(body), spec=FunctionSpec.model_validate(body.get("spec", {})))

    @property
    def lambda_name(self) -> str:
        """The function name Lambda's API and the runtime see: a published version's is its Function's."""
        return lambda_name(self.name, self.spec)

    @property
    def lambda_version(self) -> str:
        """``$LATEST``, or a published version's number."""
        return lambda_version(self.spec)


def lambda_name(name: str, spec: FunctionSpec) -> str:
    return spec.version_of.function if spec.version_of is not None else name


def lambda_version(spec: FunctionSpec) -> str:
    return str(spec.version_of.version) if spec.version_of is not None else "$LATEST"


def version_object_name(function: str, version: int) -> str:
    """The Function object holding version ``version`` of ``function`` (docs/versions.md)."""
    return f"{function}-v{version}"


# Names of what a Function owns depend only on the Function's name (all live in its namespace), so the gateway
# can apply the same rules to what it knows of a Function.


def deployment_name(function: str) -> str:
    return function


def service_name(function: str) -> str:
    return function


def code_configmap_name(function: str) -> str:
    return f"{function}-code"


def agent_secret_name(function: str) -> str:
    """The Secret with the token of the function's agents (docs/security.md)."""
    return f"{function}-agent"


def ingress_policy_name(function: str) -> str:
    return function


def egress_policy_name(function: str) -> str:
    return f"{function}-egress"


def scale_role_name(function: str) -> str:
    """The Role and RoleBinding letting the gateway scale the function's Deployment (docs/security.md)."""
    return f"{function}-scale"
