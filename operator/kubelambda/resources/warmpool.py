"""The warm pool of a runtime: a Deployment of generic pods in the pool namespace (docs/warm-pools.md), a
namespace of their own beside the system namespace, holding no platform ServiceAccount (docs/security.md).

Each pod runs the runtime image with the agent in generic mode (``KUBELAMBDA_GENERIC``): the language runtime
is started, without code, and waits for ``POST /specialize``. The gateway claims a pod, specialises it for one
function, then relabels it (:func:`claim_patch`) so that it leaves the Deployment's selector: the ReplicaSet
replaces it, and the claimed pod, now an orphan, is the function's until the gateway deletes it.

Pure builders: settings in, objects out.
"""

from __future__ import annotations

from collections.abc import Mapping

from kubelambda.agentauth import TOKEN_ENV
from kubelambda.jsonobj import JSON
from kubelambda.resources.deployment import POD_NAME_ENV, agent_container, pod_security
from kubelambda.resources.labels import COMPONENT_LABEL, FUNCTION_LABEL, GATEWAY_LABELS
from kubelambda.resources.names import INVOKE_PORT, TASK_ROOT
from kubelambda.resources.networkpolicy import NAMESPACE_NAME_LABEL

POOL_LABEL = "kubelambda.io/pool"
"""``<runtime>`` on free pool pods: the pool Deployment's selector. Removed when a pod is claimed."""
POOL_RUNTIME_LABEL = "kubelambda.io/pool-runtime"
"""``<runtime>`` on every pod a pool ever made, free or claimed (what the gateway watches); never changes."""
FUNCTION_NAMESPACE_LABEL = "kubelambda.io/function-namespace"
"""On a claimed pod: the namespace of the Function it serves (the pod itself stays in the pool namespace)."""
CLAIMED_BY_ANNOTATION = "kubelambda.io/claimed-by"
CLAIMED_AT_ANNOTATION = "kubelambda.io/claimed-at"
CODE_SHA_ANNOTATION = "kubelambda.io/code-sha256"
MANAGED_BY = "kubelambda-gateway"
FIELD_MANAGER = "kubelambda-warm-pool"
"""Server-side apply field manager of the pool objects (the gateway applies them)."""

# Pre-starting the runtime needs a client that knows the convention (runtime-images/python, runtime-images/nodejs);
# any other runtime's pool pods start their worker on specialisation ("deferred").
PRESTART_FAMILIES = ("python", "nodejs")


def pool_name(runtime: str) -> str:
    """``python3.12`` → ``warm-pool-python3-12`` (a DNS-1123 name)."""
    return "warm-pool-" + runtime.replace(".", "-").replace("_", "-").lower()


def pool_selector(runtime: str) -> dict[str, str]:
    return {POOL_LABEL: runtime}


def pool_labels(runtime: str) -> dict[str, str]:
    return dict(
        sorted(
            {
                "app.kubernetes.io/name": "kubelambda-warm-pool",
                "app.kubernetes.io/instance": pool_name(runtime),
                COMPONENT_LABEL: "warm-pool",
                "app.kubernetes.io/managed-by": MANAGED_BY,
                POOL_LABEL: runtime,
                POOL_RUNTIME_LABEL: runtime,
            }.items()
        )
    )


def generic_mode(runtime: str) -> str:
    family = runtime.rstrip("0123456789.")
    return "prestart" if family in PRESTART_FAMILIES else "deferred"


def make_pool_deployment(
    runtime: str,
    *,
    image: str,
    namespace: str,
    replicas: int,
    memory_mb: int,
    region: str,
    cpu_request_fraction: float = 0.1,
    ephemeral_storage_mb: int = 512,
    agent_token: str | None = None,
    log_nats_url: str | None = None,
) -> JSON:
    """The pool Deployment of ``runtime``: ``replicas`` generic pods of ``memory_mb`` each.

    Every pod is sized for the largest function the pool serves (functions asking for more memory take the
    normal path); it has one worker; its ``/var/task`` is a writable emptyDir for the code it will be given.
    """
    name = pool_name(runtime)
    env = {  # the agent's inputs only, as a Function's pod (resources.deployment.function_env)
        "KUBELAMBDA_FUNCTION_NAME": name,
        "KUBELAMBDA_GENERIC": generic_mode(runtime),
        "KUBELAMBDA_MEMORY_MB": str(memory_mb),
        "KUBELAMBDA_REGION": region,
        "KUBELAMBDA_RUNTIME_NAME": runtime,
        "KUBELAMBDA_TASK_ROOT": TASK_ROOT,
        "KUBELAMBDA_WORKERS": "1",
    }
    if agent_token:
        # The pool's token (``kubelambda.agentauth``): opens /specialize; the function's replaces it there.
        env[TOKEN_ENV] = agent_token
    if log_nats_url:  # log shipping (docs/logs.md): the namespace comes with POST /specialize
        env["KUBELAMBDA_LOG_NATS_URL"] = log_nats_url
    container = agent_container(
        image=image,
        env=sorted(
            [{"name": k, "value": v} for k, v in env.items()]
            # The pod's uid: the agent refuses a /specialize meant for another pod (a stale address).
            + [{"name": "KUBELAMBDA_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
            + ([POD_NAME_ENV] if log_nats_url else []),
            key=lambda e: str(e["name"]),
        ),
        memory_mb=memory_mb,
        ephemeral_storage_mb=ephemeral_storage_mb,
        cpu_request_fraction=cpu_request_fraction,
        # Ready = the runtime is up and waiting for a function: only then is the pod worth claiming.
        readiness_period_seconds=1,
        mounts=[{"name": "code", "mountPath": TASK_ROOT}, {"name": "tmp", "mountPath": "/tmp"}],
    )
    labels = pool_labels(runtime)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": pool_selector(runtime)},
            "revisionHistoryLimit": 2,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # A pool pod runs code of any function: it gets no Kubernetes credentials at all.
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [
                        {"name": "code", "emptyDir": {"sizeLimit": "512Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": f"{ephemeral_storage_mb}Mi"}},
                    ],
                },
            },
        },
    }


def make_pool_ingress_policy(namespace: str, *, gateway_namespace: str) -> JSON:
    """Pool pods, free or claimed, admit only the gateway (in ``gateway_namespace``): nobody else may specialise
    or invoke them."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "warm-pool",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, COMPONENT_LABEL: "warm-pool"},
        },
        "spec": {
            "podSelector": {"matchExpressions": [{"key": POOL_RUNTIME_LABEL, "operator": "Exists"}]},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: gateway_namespace}},
                            "podSelector": {"matchLabels": dict(GATEWAY_LABELS)},
                        }
                    ],
                    "ports": [{"port": INVOKE_PORT, "protocol": "TCP"}],
                }
            ],
        },
    }


def claim_patch(
    *, runtime: str, namespace: str, function: str, code_sha256: str, claimed_by: str, claimed_at: str
) -> JSON:
    """The merge patch that makes a pool pod the function's: out of the pool's selector (so the ReplicaSet
    releases and replaces it), labelled with the function, and annotated with who claimed it and for which code.
    """
    return {
        "metadata": {
            "labels": {
                POOL_LABEL: None,
                FUNCTION_LABEL: function,
                FUNCTION_NAMESPACE_LABEL: namespace,
                COMPONENT_LABEL: "function",
            },
            "annotations": {
                CLAIMED_BY_ANNOTATION: claimed_by,
                CLAIMED_AT_ANNOTATION: claimed_at,
                CODE_SHA_ANNOTATION: code_sha256,
            },
        }
    }


def pool_replicas(size: int, *, recent_claims: int, max_size: int) -> int:
    """Pool size under demand: the configured ``size``, plus one pod per claim in the recent window (so a burst
    of cold starts does not drain the pool), never above ``max_size``.

    E.g. size 2, 3 claims in the last minute, max 8 → 5; size 2, 10 claims → 8; size 0 → 0 (pool off).
    """
    if size <= 0:
        return 0
    return min(max(size, size + recent_claims), max(max_size, size))


def pool_images(images: Mapping[str, str], sizes: Mapping[str, int]) -> dict[str, str]:
    """Image per pooled runtime; raises ValueError naming a pooled runtime without one."""
    missing = sorted(rt for rt, n in sizes.items() if n > 0 and rt not in images)
    if missing:
        raise ValueError(f"no runtime image for warm-pool runtimes {missing}")
    return {rt: images[rt] for rt in sorted(sizes) if sizes[rt] > 0}
