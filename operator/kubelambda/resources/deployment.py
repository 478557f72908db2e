"""The function's Deployment: one container running the runtime image (the agent is its entrypoint).

``spec.replicas`` is set only at creation (``minInstances``): the autoscaler owns it (see the operator's
``_apply_deployment``).
"""

from __future__ import annotations

import hashlib
import json
import math

from kubelambda.agentauth import (
    METRICS_TOKEN_ENV,
    SECRET_LOG_URL_KEY,
    SECRET_METRICS_KEY,
    SECRET_TOKEN_KEY,
    TOKEN_ENV,
    function_token,
    metrics_token_digest,
)
from kubelambda.api.v1alpha1.function import Logging
from kubelambda.jsonobj import JSON
from kubelambda.resources.configmap import code_sha256
from kubelambda.resources.labels import labels, selector
from kubelambda.resources.names import (
    CONTAINER,
    INVOKE_PORT,
    INVOKE_PORT_NAME,
    TASK_ROOT,
    FunctionObject,
    agent_secret_name,
    code_configmap_name,
    deployment_name,
)
from kubelambda.settings import OperatorSettings

CODE_SHA_ANNOTATION = "kubelambda.io/code-sha256"
MB_PER_VCPU = 1769  # Lambda: 1,769 MB of memory = 1 vCPU
AGENT_ENV_PREFIX = "KUBELAMBDA_"
RUN_AS = 65532  # a non-root uid/gid (the distroless "nonroot" user)


POD_NAME_ENV: JSON = {
    "name": "KUBELAMBDA_POD_NAME",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
}
"""The pod's name, in the log records the agent ships."""


def cpu_limit_millicores(memory_mb: int) -> int:
    """CPU proportional to memory: 1769 MB → 1000m; 128 MB → ceil(72.4) = 73m; 10240 MB → 5789m."""
    return math.ceil(memory_mb * 1000 / MB_PER_VCPU)


def function_env(
    fn: FunctionObject, *, settings: OperatorSettings, extra: dict[str, str] | None = None
) -> list[JSON]:
    """The agent's inputs (``KUBELAMBDA_*``, sorted), then the function's own variables (sorted).

    Only the agent's vocabulary: the agent derives the Lambda variables the runtime sees (``_HANDLER``,
    ``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_REGION``, ``LAMBDA_TASK_ROOT``, ``TZ`` unless the function sets it, ...)
    from these, in one place (docs/runtimes.md, "Configuration").
    """
    spec = fn.spec
    agent = {
        "KUBELAMBDA_FUNCTION_NAME": fn.lambda_name,
        "KUBELAMBDA_FUNCTION_VERSION": fn.lambda_version,
        "KUBELAMBDA_HANDLER": spec.handler,
        "KUBELAMBDA_MEMORY_MB": str(spec.memory_mb),
        "KUBELAMBDA_REGION": settings.region,
        "KUBELAMBDA_RUNTIME_NAME": spec.runtime,
        "KUBELAMBDA_TASK_ROOT": TASK_ROOT,
        "KUBELAMBDA_TIMEOUT": str(spec.timeout_seconds),
        "KUBELAMBDA_WORKERS": str(spec.concurrency.per_instance),
        **(extra or {}),
    }
    agent.update(logging_env(spec.logging))
    if settings.log_nats_url:  # log shipping (docs/logs.md)
        agent["KUBELAMBDA_FUNCTION_NAMESPACE"] = fn.namespace
        if settings.agent_key is None:
            agent["KUBELAMBDA_LOG_NATS_URL"] = settings.log_nats_url
    env: list[JSON] = [{"name": k, "value": v} for k, v in agent.items()]
    if settings.log_nats_url:
        env.append(POD_NAME_ENV)
    if settings.agent_key is not None:
        # The tokens the agent asks of callers (docs/security.md), from the Function's own Secret.
        secret = agent_secret_name(fn.name)
        env.append(_secret_env(TOKEN_ENV, secret, SECRET_TOKEN_KEY))
        if settings.log_nats_url:  # with the namespace's own log credentials (docs/logs.md, "Credentials")
            env.append(_secret_env("KUBELAMBDA_LOG_NATS_URL", secret, SECRET_LOG_URL_KEY))
        if settings.agent_metrics_token is not None:
            env.append(_secret_env(METRICS_TOKEN_ENV, secret, SECRET_METRICS_KEY))
    env.sort(key=lambda e: str(e["name"]))
    # The function's own variables come last; none can configure the agent (the CRD refuses KUBELAMBDA_* and
    # Lambda's reserved names).
    env += [
        {"name": k, "value": v}
        for k, v in sorted(spec.environment.items())
        if not k.startswith(AGENT_ENV_PREFIX)
    ]
    return env


def logging_env(logging: Logging | None) -> dict[str, str]:
    """The agent's inputs for a Function's LoggingConfig (docs/logs.md); nothing for Text, the default."""
    if logging is None or logging.log_format == "Text":
        return {}
    env: dict[str, str] = {"KUBELAMBDA_LOG_FORMAT": logging.log_format}
    if logging.application_log_level:
        env["KUBELAMBDA_APPLICATION_LOG_LEVEL"] = logging.application_log_level
    if logging.system_log_level:
        env["KUBELAMBDA_SYSTEM_LOG_LEVEL"] = logging.system_log_level
    return env


def _secret_env(name: str, secret: str, key: str) -> JSON:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def make_agent_secret(fn: FunctionObject, *, settings: OperatorSettings) -> JSON | None:
    """The Secret holding the token of ``fn``'s agents (and the platform's metrics token), or None without an
    agent key."""
    if settings.agent_key is None:
        return None
    data = {SECRET_TOKEN_KEY: function_token(settings.agent_key.get_secret_value(), fn.namespace, fn.name)}
    log_url = settings.log_nats_url_for(fn.namespace, fn.created)
    if log_url:
        data[SECRET_LOG_URL_KEY] = log_url
    if settings.agent_metrics_token is not None:
        data[SECRET_METRICS_KEY] = metrics_token_digest(settings.agent_metrics_token.get_secret_value())
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": agent_secret_name(fn.name),
            "namespace": fn.namespace,
            "labels": labels(fn),
            "ownerReferences": [fn.owner_reference()],
        },
        "type": "Opaque",
        "stringData": data,
    }


def _env_from(fn: FunctionObject) -> list[JSON]:
    out: list[JSON] = []
    for source in fn.spec.env_from:
        item: JSON = {}
        if source.config_map_ref is not None:
            item["configMapRef"] = {
                "name": source.config_map_ref.name,
                "optional": source.config_map_ref.optional,
            }
        if source.secret_ref is not None:
            item["secretRef"] = {"name": source.secret_ref.name, "optional": source.secret_ref.optional}
        if source.prefix:
            item["prefix"] = source.prefix
        out.append(item)
    return out


def _fetch_container(fn: FunctionObject, *, settings: OperatorSettings) -> JSON | None:
    """An init container that downloads the zip, checks its SHA-256 and unpacks it into /var/task."""
    code = fn.spec.code
    if code.archive is not None:
        args = ["fetch-code", "--url", code.archive.url, "--sha256", code.archive.sha256]
        env: list[JSON] = []
    elif code.s3 is not None:
        args = [
            "fetch-code",
            "--s3-endpoint",
            code.s3.endpoint,
            "--bucket",
            code.s3.bucket,
            "--key",
            code.s3.key,
        ]
        args += ["--region", code.s3.region]
        if code.s3.sha256:
            args += ["--sha256", code.s3.sha256]
        env = []
        if code.s3.credentials_secret:
            env = [
                {
                    "name": key,
                    "valueFrom": {"secretKeyRef": {"name": code.s3.credentials_secret, "key": key}},
                }
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            ]
    else:
        return None
    container: JSON = {
        "name": "fetch-code",
        "image": settings.fetcher_image,
        "args": [*args, *(f"--allow-cidr={c}" for c in settings.url_allow_cidrs), "--dest", TASK_ROOT],
        "resources": {
            "limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "50m", "memory": "64Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "code", "mountPath": TASK_ROOT}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if env:
        container["env"] = env
    return container


OPT = "/opt"
OPT_STAGING = "/opt-layers"  # where the init containers see the layers' emptyDir
AGENT_IN_IMAGE = "/opt/kubelambda/bin/kubelambda-agent"


def _layers(fn: FunctionObject, *, image: str, settings: OperatorSettings) -> tuple[list[JSON], list[JSON]]:
    """The volumes and init containers that put the Function's layers into ``/opt`` (docs/extensions.md).

    ``/opt`` becomes an emptyDir: ``fetch-layers`` (the control-plane image) unpacks the layers into it in order,
    then ``copy-opt`` (the runtime image) copies the image's own ``/opt/kubelambda`` (the agent and the runtime
    client) beside them, so that nothing of the image is hidden.
    """
    layers = fn.spec.layers
    if not layers:
        return [], []
    volumes: list[JSON] = [{"name": "opt", "emptyDir": {"sizeLimit": "300Mi"}}]
    mounts: list[JSON] = [{"name": "opt", "mountPath": OPT_STAGING}, {"name": "tmp", "mountPath": "/tmp"}]
    specs: list[dict[str, str]] = []
    env: list[JSON] = []
    for i, layer in enumerate(layers, 1):
        if layer.archive is not None:
            specs.append({"url": layer.archive.url, "sha256": layer.archive.sha256})
        elif layer.s3 is not None:
            s3 = layer.s3
            spec = {"s3Endpoint": s3.endpoint, "bucket": s3.bucket, "key": s3.key, "region": s3.region}
            if s3.sha256:
                spec["sha256"] = s3.sha256
            if s3.credentials_secret:
                spec["credentialsPrefix"] = f"LAYER{i}_"
                env += [
                    {
                        "name": f"LAYER{i}_{key}",
                        "valueFrom": {"secretKeyRef": {"name": s3.credentials_secret, "key": key}},
                    }
                    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                ]
            specs.append(spec)
        elif layer.config_map is not None:
            volume = f"layer-{i}"
            volumes.append(
                {
                    "name": volume,
                    "configMap": {
                        "name": layer.config_map.name,
                        "items": [{"key": layer.config_map.key, "path": "layer.zip"}],
                    },
                }
            )
            mounts.append({"name": volume, "mountPath": f"/layer-sources/{i}", "readOnly": True})
            specs.append({"file": f"/layer-sources/{i}/layer.zip"})
    fetch: JSON = {
        "name": "fetch-layers",
        "image": settings.fetcher_image,
        "args": [
            "fetch-layers",
            "--layers",
            json.dumps(specs, separators=(",", ":")),
            *(f"--allow-cidr={c}" for c in settings.url_allow_cidrs),
            "--dest",
            OPT_STAGING,
        ],
        "resources": {
            "limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "50m", "memory": "64Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    if env:
        fetch["env"] = env
    copy: JSON = {
        "name": "copy-opt",
        "image": image,
        "command": [AGENT_IN_IMAGE, "copy-opt", f"{OPT_STAGING}/kubelambda"],
        "resources": {
            "limits": {"cpu": "200m", "memory": "64Mi"},
            "requests": {"cpu": "10m", "memory": "16Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "opt", "mountPath": OPT_STAGING}],
    }
    return volumes, [fetch, copy]


AGENT_VOLUME_PATH = "/kubelambda"
INJECTED_AGENT = f"{AGENT_VOLUME_PATH}/agent/bin/kubelambda-agent"
LAMBDA_ENTRYPOINT = "/lambda-entrypoint.sh"  # AWS's base images
LAMBDA_RUNTIME_DIR = "/var/runtime"


def _lambda_image(fn: FunctionObject, *, image: str) -> tuple[JSON, JSON, list[str]]:
    """For ``imageLayout: lambda``: the agent's volume, the init container that copies the agent into it from
    the runtime image, and the function container's argv (the agent, then the image's entrypoint + command as
    its runtime command)."""
    code = fn.spec.code
    config = code.image_config
    entry = (config.entry_point if config and config.entry_point else None) or [LAMBDA_ENTRYPOINT]
    command = (config.command if config and config.command else None) or [fn.spec.handler]
    volume: JSON = {"name": "kubelambda-agent", "emptyDir": {"sizeLimit": "64Mi"}}
    inject: JSON = {
        "name": "inject-agent",
        "image": image,
        "command": [AGENT_IN_IMAGE, "copy-opt", f"{AGENT_VOLUME_PATH}/agent"],
        "resources": {
            "limits": {"cpu": "200m", "memory": "64Mi"},
            "requests": {"cpu": "10m", "memory": "16Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "kubelambda-agent", "mountPath": AGENT_VOLUME_PATH}],
    }
    return volume, inject, [INJECTED_AGENT, "--", *entry, *command]


def _container_security() -> JSON:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security() -> JSON:
    """The pod's security context: non-root (the distroless "nonroot" ids), seccomp RuntimeDefault."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def agent_container(
    *,
    image: str,
    env: list[JSON],
    memory_mb: int,
    ephemeral_storage_mb: int,
    cpu_request_fraction: float,
    readiness_period_seconds: int,
    mounts: list[JSON],
) -> JSON:
    """The container that runs the agent (a Function's pod, a warm-pool pod): port, probes, limits, hardening.

    Memory request = limit; CPU limit proportional to memory (as Lambda), request a fraction of it.
    """
    memory = f"{memory_mb}Mi"
    cpu_limit = cpu_limit_millicores(memory_mb)
    cpu_request = max(1, math.ceil(cpu_limit * cpu_request_fraction))
    return {
        "name": CONTAINER,
        "image": image,
        # Runtime images are immutable per tag: never pull one the node holds (runtime-provided is `:latest`, for
        # which the kubelet's default is Always: no start without a registry, e.g. images loaded into kind).
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "ports": [{"name": INVOKE_PORT_NAME, "containerPort": INVOKE_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": INVOKE_PORT_NAME},
            "periodSeconds": readiness_period_seconds,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": INVOKE_PORT_NAME},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": {
            "limits": {
                "cpu": f"{cpu_limit}m",
                "memory": memory,
                "ephemeral-storage": f"{ephemeral_storage_mb + 256}Mi",
            },
            "requests": {
                "cpu": f"{cpu_request}m",
                "memory": memory,
                "ephemeral-storage": f"{ephemeral_storage_mb}Mi",
            },
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }


def make_deployment(
    fn: FunctionObject, *, image: str, settings: OperatorSettings, replicas: int | None = None
) -> JSON:
    """The Deployment for ``fn`` running ``image`` (its runtime image, or ``code.image``).

    ``replicas`` is given only when the Deployment is created (``minInstances``); the autoscaler's first scale
    write takes it, and until then the operator applies it as it is (never changes it).
    """
    spec = fn.spec
    runtime_image = image
    image = spec.code.image or image
    volumes: list[JSON] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": f"{spec.ephemeral_storage_mb}Mi"}},
    ]
    mounts: list[JSON] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.code.inline is not None:
        volumes.append(
            {"name": "code", "configMap": {"name": code_configmap_name(fn.name), "defaultMode": 0o444}}
        )
        mounts.append({"name": "code", "mountPath": TASK_ROOT, "readOnly": True})
    elif spec.code.archive is not None or spec.code.s3 is not None:
        volumes.append({"name": "code", "emptyDir": {"sizeLimit": "512Mi"}})
        mounts.append({"name": "code", "mountPath": TASK_ROOT, "readOnly": True})
    layer_volumes, layer_inits = _layers(fn, image=image, settings=settings)
    if layer_volumes:
        volumes += layer_volumes
        mounts.append({"name": "opt", "mountPath": OPT, "readOnly": True})
    lambda_inits: list[JSON] = []
    argv: list[str] = []
    extra: dict[str, str] = {}
    if spec.code.image is not None and spec.code.image_layout == "lambda":
        volume, inject, argv = _lambda_image(fn, image=runtime_image)
        volumes.append(volume)
        mounts.append({"name": "kubelambda-agent", "mountPath": AGENT_VOLUME_PATH, "readOnly": True})
        lambda_inits.append(inject)
        extra["KUBELAMBDA_RUNTIME_DIR"] = LAMBDA_RUNTIME_DIR
        config = spec.code.image_config
        if config is not None and config.working_directory:
            extra["KUBELAMBDA_WORKDIR"] = config.working_directory
    env = function_env(fn, settings=settings, extra=extra)
    container = agent_container(
        image=image,
        env=env,
        memory_mb=spec.memory_mb,
        ephemeral_storage_mb=spec.ephemeral_storage_mb,
        cpu_request_fraction=settings.cpu_request_fraction,
        readiness_period_seconds=2,
        mounts=mounts,
    )
    if argv:
        container["command"] = argv
    env_from = _env_from(fn)
    if env_from:
        container["envFrom"] = env_from
    pod_spec: JSON = {
        "automountServiceAccountToken": spec.service_account_name is not None,
        "containers": [container],
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        # The agent drains in-flight invocations on SIGTERM for up to the function timeout.
        "terminationGracePeriodSeconds": spec.timeout_seconds + 5,
        "volumes": volumes,
    }
    if spec.service_account_name is not None:
        pod_spec["serviceAccountName"] = spec.service_account_name
    fetch = _fetch_container(fn, settings=settings)
    inits = ([fetch] if fetch is not None else []) + layer_inits + lambda_inits
    if inits:
        pod_spec["initContainers"] = inits
    deployment: JSON = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(fn.name),
            "namespace": fn.namespace,
            "labels": labels(fn),
            "ownerReferences": [fn.owner_reference()],
        },
        "spec": {
            "selector": {"matchLabels": selector(fn)},
            "revisionHistoryLimit": 2,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(fn),
                    "annotations": _pod_annotations(fn, settings),
                },
                "spec": pod_spec,
            },
        },
    }
    if replicas is not None:
        deployment["spec"]["replicas"] = replicas
    return deployment


AGENT_KEY_ANNOTATION = "kubelambda.io/agent-key-sha256"
"""A digest of the agent key on the pod template: a new key restarts the pods, whose token env it changed."""


def _pod_annotations(fn: FunctionObject, settings: OperatorSettings) -> dict[str, str]:
    annotations = {CODE_SHA_ANNOTATION: code_sha256(fn.spec.code)}
    if settings.agent_key is not None:
        digest = hashlib.sha256(b"agent-key:" + settings.agent_key.get_secret_value().encode())
        annotations[AGENT_KEY_ANNOTATION] = digest.hexdigest()[:16]
    return annotations
