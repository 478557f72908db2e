"""Pure builders for what a Trigger owns: its bridge's ServiceAccount, Role, RoleBinding, checkpoint ConfigMap,
Deployment, and (bucket notifications) the webhook Service. A typed Trigger in, dicts out; no client, no clock.

Least privilege: a bridge may read its own Trigger, write its own Trigger's status, read and write its own
checkpoint ConfigMap and read exactly the Secrets its Trigger names. Nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from kubelambda.api.v1alpha1 import GROUP, TriggerSpec
from kubelambda.api.v1alpha1.trigger import BucketSource
from kubelambda.jsonobj import JSON
from kubelambda.resources.labels import COMPONENT_LABEL, owned_labels
from kubelambda.resources.names import OwnerObject
from kubelambda.settings import OperatorSettings

TRIGGER_LABEL = "kubelambda.io/trigger"
"""Name of the Trigger; on everything a Trigger owns (the operator refreshes Ready from the bridge Deployment)."""
BRIDGE_PORT = 8080
SPEC_HASH_ANNOTATION = "kubelambda.io/trigger-spec-sha256"
STARTUP_SECONDS = 300
"""How long a bridge may take to first answer ``/healthz`` (its startup probe) before the kubelet restarts it."""


@dataclass(frozen=True)
class TriggerObject(OwnerObject):
    """What the builders need of a Trigger: identity and a parsed spec."""

    KIND: ClassVar[str] = "Trigger"
    spec: TriggerSpec

    @classmethod
    def from_body(cls, body: JSON) -> TriggerObject:
        return cls(**cls.identity(body), spec=TriggerSpec.model_validate(body.get("spec", {})))

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def needs_bridge(self) -> bool:
        """HTTP routes are served by the gateway itself; every other source has a bridge."""
        return self.source != "http"

    @property
    def notification_webhook(self) -> bool:
        return self.spec.bucket is not None and self.spec.bucket.mode == "notification"


CLEANUP_FINALIZER = f"{GROUP}/postgres-cleanup"
"""Put on a Trigger by its PostgreSQL stream bridge before it may create a replication slot or publication, taken
off once the bridge dropped them (kubelambda.bridge.streams.postgres): a Trigger deleted while its bridge is down
stays until the bridge ran again."""


def bridge_to_wake(trigger: JSON) -> bool:
    """A Trigger being deleted whose disabled bridge (0 replicas) still has to drop what it created: the operator
    gives its Deployment one replica, so the bridge runs, drops and takes :data:`CLEANUP_FINALIZER` off."""
    meta = trigger.get("metadata") or {}
    spec = trigger.get("spec") or {}
    return (
        bool(meta.get("deletionTimestamp"))
        and CLEANUP_FINALIZER in (meta.get("finalizers") or [])
        and spec.get("enabled", True) is False
    )


def bridge_name(trigger: str) -> str:
    """Deployment, ServiceAccount, Role, RoleBinding and Service of a Trigger's bridge."""
    return f"{trigger}-bridge"


def checkpoint_name(trigger: str) -> str:
    """The ConfigMap the operator creates (empty, owned by the Trigger) for the bridge's checkpoint."""
    return f"{trigger}-checkpoint"


def token_secret_name(trigger: str) -> str:
    """The generated notification token of a bucket Trigger without ``tokenSecret``."""
    return f"{trigger}-bucket-token"


def webhook_token_secret(trigger: str, bucket: BucketSource) -> str:
    """The Secret holding a bucket Trigger's webhook token: ``tokenSecret``, or the one the operator generates."""
    return bucket.token_secret or token_secret_name(trigger)


def bridge_labels(trigger: TriggerObject) -> dict[str, str]:
    return owned_labels(app="kubelambda", component="bridge", owner_label=TRIGGER_LABEL, owner=trigger.name)


def _meta(trigger: TriggerObject, name: str) -> JSON:
    return {
        "name": name,
        "namespace": trigger.namespace,
        "labels": bridge_labels(trigger),
        "ownerReferences": [trigger.owner_reference()],
    }


def secret_names(trigger: TriggerObject) -> list[str]:
    """Every Secret the bridge may read: credentials of whichever source block is set, the bucket token."""
    spec = trigger.spec
    names = set(spec.credentials_secrets())
    if spec.bucket is not None and spec.bucket.mode == "notification":
        names.add(webhook_token_secret(trigger.name, spec.bucket))
    return sorted(names)


def spec_hash(trigger: TriggerObject) -> str:
    """Changes whenever the spec does, so a spec change rolls the bridge (which reads the spec at start)."""
    wire = trigger.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


def make_service_account(trigger: TriggerObject) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(trigger, bridge_name(trigger.name)),
        "automountServiceAccountToken": True,
    }


def invoked_functions(trigger: TriggerObject) -> list[str]:
    """The Functions the bridge invokes: the Trigger's, and a stream's ``onFailure.function``."""
    names = [trigger.spec.function_name]
    stream = trigger.spec.stream
    if stream is not None and stream.on_failure is not None and stream.on_failure.function:
        names.append(stream.on_failure.function)
    return sorted(set(names))


def make_role(trigger: TriggerObject) -> JSON:
    rules: list[JSON] = [
        {
            "apiGroups": [GROUP],
            "resources": ["triggers"],
            "resourceNames": [trigger.name],
            # A PostgreSQL stream's bridge holds a finalizer on its Trigger until it dropped its slot.
            "verbs": ["get", "patch"] if trigger.spec.stream and trigger.spec.stream.postgres else ["get"],
        },
        {
            "apiGroups": [GROUP],
            "resources": ["triggers/status"],
            "resourceNames": [trigger.name],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [checkpoint_name(trigger.name)],
            "verbs": ["get", "patch", "update"],
        },
        # The bridge invokes exactly its Function (and a stream's onFailure Function), as its own ServiceAccount
        # (gateway/auth, docs/security.md).
        {
            "apiGroups": [GROUP],
            "resources": ["functions"],
            "resourceNames": invoked_functions(trigger),  # invoke on a Function covers its qualifiers
            "verbs": ["invoke"],
        },
    ]
    secrets = secret_names(trigger)
    if secrets:
        rules.append(
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets, "verbs": ["get"]}
        )
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(trigger, bridge_name(trigger.name)),
        "rules": rules,
    }


def make_role_binding(trigger: TriggerObject) -> JSON:
    name = bridge_name(trigger.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(trigger, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": trigger.namespace}],
    }


def make_checkpoint(trigger: TriggerObject) -> JSON:
    """The checkpoint ConfigMap, without ``data``: the operator owns its metadata, the bridge its data."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(trigger, checkpoint_name(trigger.name)),
    }


def make_token_secret(trigger: TriggerObject, *, token: str) -> JSON:
    """The generated notification token; created once, never re-applied (the token must not change)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(trigger, token_secret_name(trigger.name)),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def make_bridge_deployment(trigger: TriggerObject, *, settings: OperatorSettings) -> JSON:
    """One replica (zero when disabled), ``Recreate``: two bridges of one Trigger must never run at once,
    or checkpoints and per-shard order would race."""
    name = bridge_name(trigger.name)
    labels = bridge_labels(trigger)
    env: list[JSON] = sorted(
        [
            {"name": "KUBELAMBDA_BRIDGE_GATEWAY_URL", "value": settings.gateway_url},
            {"name": "KUBELAMBDA_BRIDGE_REGION", "value": settings.region},
            {"name": "KUBELAMBDA_BRIDGE_PORT", "value": str(BRIDGE_PORT)},
            # The pod's own address, not 0.0.0.0: correct everywhere, and on the local node (pods as processes
            # sharing the host's network) the only address that does not collide with other pods' 8080.
            {"name": "KUBELAMBDA_BRIDGE_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        key=lambda e: str(e["name"]),
    )
    nats_url = settings.bridge_nats_url or settings.nats_url
    if nats_url:
        env.insert(
            [e["name"] for e in env].index("KUBELAMBDA_BRIDGE_PORT"),
            {"name": "KUBELAMBDA_BRIDGE_NATS_URL", "value": nats_url},
        )
    log_url = settings.log_nats_url_for(trigger.namespace, trigger.created)
    if log_url:  # the bridge's own log lines go to the log store (docs/logs.md), as its namespace's log user
        env += [
            {"name": "KUBELAMBDA_BRIDGE_LOG_NATS_URL", "value": log_url},
            {"name": "KUBELAMBDA_BRIDGE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
    if settings.tracing_endpoint:  # the same tracing settings as the platform's (docs/tracing.md)
        env += [
            {"name": "KUBELAMBDA_TRACING_ENDPOINT", "value": settings.tracing_endpoint},
            {"name": "KUBELAMBDA_TRACING_SAMPLE_RATIO", "value": repr(settings.tracing_sample_ratio)},
        ]
    env.sort(key=lambda e: str(e["name"]))
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    # Liveness and readiness count once /healthz first answered (the startup probe): a bridge starting slowly
    # (Python's imports and its Trigger read, on a busy node where its 25m request buys little CPU) is not killed
    # before it could log. With liveness alone (10 s delay, 6 failures 10 s apart) the kubelet ended it with
    # SIGTERM after ~60 s, before its first line, and again after each restart: twenty bridges started at once at
    # load 25-60 took 28-56 s to their first log line and 37-59 s to serve (test_queue_bridges).
    startup = {**probe, "periodSeconds": 2, "failureThreshold": STARTUP_SECONDS // 2}
    container: JSON = {
        "name": "bridge",
        "image": settings.fetcher_image,
        "args": ["bridge", "--trigger", f"{trigger.namespace}/{trigger.name}"],
        "env": env,
        "ports": [{"name": "http", "containerPort": BRIDGE_PORT, "protocol": "TCP"}],
        "startupProbe": startup,
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "resources": {
            "limits": {"cpu": "1", "memory": "256Mi"},
            "requests": {"cpu": "25m", "memory": "64Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(trigger, name),
        "spec": {
            "replicas": 1 if trigger.spec.enabled else 0,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {TRIGGER_LABEL: trigger.name, COMPONENT_LABEL: "bridge"}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {SPEC_HASH_ANNOTATION: spec_hash(trigger)},
                },
                "spec": {
                    "serviceAccountName": name,
                    # No service-link variables: a Service named kubelambda-* in the namespace would otherwise set
                    # KUBELAMBDA_* variables the bridge reads as settings (one crashed the async worker).
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def make_webhook_service(trigger: TriggerObject) -> JSON:
    """Where an S3-compatible store sends notifications: ``http://<trigger>-bridge.<ns>.svc/events``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(trigger, bridge_name(trigger.name)),
        "spec": {
            "selector": {TRIGGER_LABEL: trigger.name, COMPONENT_LABEL: "bridge"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
