"""The control-plane API's calls beyond functions, versions and aliases (gateway/lambdaapi.py registers them):
tags, the asynchronous invocation configuration (``spec.async``) and event source mappings (Triggers);
docs/versions.md, "The control-plane API".

Event source mappings are Triggers named ``esm-<UUID>`` (label ``kubelambda.io/event-source-mapping``), written
as every API object is (server-side apply, field manager ``kubelambda-lambda-api``, no force): an SQS queue ARN
becomes ``queue.sqs``, a Kinesis stream ARN ``stream.kinesis`` (on the endpoints the gateway's settings name), a
self-managed Kafka source ``stream.kafka``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kubelambda.api.v1alpha1 import API_VERSION, TriggerSpec
from kubelambda.gateway.functionname import FunctionRef
from kubelambda.gateway.lambdaapi import (
    FIELD_MANAGER,
    Call,
    _bad,
    _functions,
    _int,
    _json,
    _not_found,
    _page,
    _tags,
    _tags_of,
    kube_failure,
)
from kubelambda.jsonobj import JSON
from kubelambda.kube import ApiError, resource_path
from kubelambda.resources.status import find_condition

if TYPE_CHECKING:
    from kubelambda.gateway.lambdaapi import LambdaApi

ESM_LABEL = "kubelambda.io/event-source-mapping"
"""On a Trigger the API made for an event source mapping: ``"true"`` (its UUID is the name after ``esm-``)."""
ESM_PREFIX = "esm-"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SQS_ARN = re.compile(
    r"^arn:aws[a-zA-Z-]*:sqs:(?P<region>[a-z0-9-]+):(?P<account>[^:]+):(?P<name>[A-Za-z0-9_.-]+)$"
)
_KINESIS_ARN = re.compile(
    r"^arn:aws[a-zA-Z-]*:kinesis:(?P<region>[a-z0-9-]+):(?P<account>[^:]+):stream/(?P<name>[A-Za-z0-9_.-]+)$"
)
_LAMBDA_ARN = re.compile(
    r"^arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]*:(?P<account>[^:]+):function:(?P<name>[^:]+)(:(?P<qualifier>[^:]+))?$"
)


def _qualifier_is_latest(call: Call, what: str) -> None:
    qualifier = call.request.query.get("Qualifier")
    assert call.ref is not None
    own = call.ref.qualifier
    for q in (qualifier, own):
        if q not in (None, "", "$LATEST"):
            raise _bad(
                "Qualifier",
                f"{q!r}: {what} is set on $LATEST here (published versions are immutable objects, and aliases "
                "follow the version they name)",
            )


# ---- tags --------------------------------------------------------------------------------------------------


async def tag_resource(api: LambdaApi, call: Call) -> web.Response:
    assert call.ref is not None
    _qualifier_is_latest(call, "a tag")
    current = await api._get_function(call.ref.namespace, call.ref.name)
    added = _tags(call.body.get("Tags"))
    await api._tag(call.ref.namespace, call.ref.name, {**_tags_of(current), **added}, current=current)
    return _json(None, 204)


async def untag_resource(api: LambdaApi, call: Call) -> web.Response:
    assert call.ref is not None
    _qualifier_is_latest(call, "a tag")
    current = await api._get_function(call.ref.namespace, call.ref.name)
    keys = set(call.request.query.getall("tagKeys", []))
    if not keys:
        raise _bad("TagKeys", "is required")
    tags = {k: v for k, v in _tags_of(current).items() if k not in keys}
    await api._tag(call.ref.namespace, call.ref.name, tags, current=current)
    return _json(None, 204)


async def list_tags(api: LambdaApi, call: Call) -> web.Response:
    assert call.ref is not None
    current = await api._get_function(call.ref.namespace, call.ref.name)
    return _json({"Tags": _tags_of(current)})


# ---- asynchronous invocation configuration (spec.async) ----------------------------------------------------


def destination_of(value: Any, field: str, ref: FunctionRef) -> JSON:
    """A Destination from Lambda's ``Destination`` string: a function ARN (``...:function:name[:alias|N]``,
    same namespace) or a bare ``name[:qualifier]``, else an ``http(s)://`` URL."""
    if not isinstance(value, str) or not value:
        raise _bad(field, "is required")
    if value.startswith(("http://", "https://")):
        return {"url": value}
    match = _LAMBDA_ARN.match(value)
    if match is not None:
        if not match.group("account").isdigit() and match.group("account") != ref.namespace:
            raise _bad(
                field,
                f"{value!r} is in namespace {match.group('account')!r}; it must be in {ref.namespace!r}",
            )
        name, qualifier = match.group("name"), match.group("qualifier")
        return {"function": f"{name}:{qualifier}" if qualifier else name}
    if value.startswith("arn:"):
        raise _bad(
            field,
            f"{value!r}: a destination here is a Lambda function ARN (or name[:alias]) or an http(s) URL; SQS, SNS "
            "and EventBridge ARNs are not (use spec.async with kubectl for queue and topic destinations)",
        )
    return {"function": value}


def destination_arn(destination: JSON, ref: FunctionRef, region: str) -> str:
    if destination.get("function"):
        name, _, qualifier = str(destination["function"]).partition(":")
        arn = FunctionRef(ref.namespace, name).arn(region)
        return f"{arn}:{qualifier}" if qualifier else arn
    if destination.get("url"):
        return str(destination["url"])
    if destination.get("nats"):
        return f"nats:{destination['nats']}"
    return "kubelambda:" + ",".join(sorted(destination))  # a queue or topic (set with kubectl)


def _async_of(call: Call, previous: JSON) -> JSON:
    assert call.ref is not None
    out = dict(previous)
    retries = _int(call.body, "MaximumRetryAttempts")
    if retries is not None:
        out["maxRetries"] = retries
    age = _int(call.body, "MaximumEventAgeInSeconds")
    if age is not None:
        out["maxEventAgeSeconds"] = age
    if "DestinationConfig" in call.body:
        config = call.body["DestinationConfig"]
        if not isinstance(config, dict):
            raise _bad("DestinationConfig", "must be an object with OnSuccess and/or OnFailure")
        for lambda_key, key in (("OnSuccess", "onSuccess"), ("OnFailure", "onFailure")):
            if lambda_key not in config:
                continue
            target = (config.get(lambda_key) or {}).get("Destination")
            if target:
                out[key] = destination_of(target, f"DestinationConfig.{lambda_key}.Destination", call.ref)
            else:
                out.pop(key, None)
    return out


def invoke_config(api: LambdaApi, body: JSON) -> JSON:
    spec = body.get("spec") or {}
    config = spec.get("async") or {}
    ref = FunctionRef(body["metadata"]["namespace"], body["metadata"]["name"])
    region = api.settings.region
    out: JSON = {
        "FunctionArn": f"{ref.arn(region)}:$LATEST",
        "LastModified": _epoch(body["metadata"]),
        "MaximumRetryAttempts": config.get("maxRetries", 2),
        "MaximumEventAgeInSeconds": config.get("maxEventAgeSeconds", 21600),
        "DestinationConfig": {},
    }
    for lambda_key, key in (("OnSuccess", "onSuccess"), ("OnFailure", "onFailure")):
        if config.get(key):
            out["DestinationConfig"][lambda_key] = {"Destination": destination_arn(config[key], ref, region)}
    return out


def _configured(function: JSON) -> bool:
    """Whether the Function has an asynchronous invocation configuration of its own: ``spec.async`` other than
    the defaults (the CRD fills them in when it is absent)."""
    config = (function.get("spec") or {}).get("async") or {}
    return {k: v for k, v in config.items() if v is not None} not in ({}, _DEFAULT_ASYNC)


_DEFAULT_ASYNC = {"maxRetries": 2, "maxEventAgeSeconds": 21600}


async def _write_async(api: LambdaApi, call: Call, *, merge: bool) -> web.Response:
    assert call.ref is not None
    _qualifier_is_latest(call, "the asynchronous invocation configuration")
    ns, name = call.ref.namespace, call.ref.name
    current = await api._get_function(ns, name)
    spec = dict(current.get("spec") or {})
    if merge and not _configured(current):
        raise _not_found(f"EventInvokeConfig of {call.ref.arn(api.settings.region)}")
    spec["async"] = _async_of(call, (spec.get("async") or {}) if merge else {})
    updated = await api._apply_function(ns, name, spec, description=None, current=current)
    return _json(invoke_config(api, updated))


async def put_invoke_config(api: LambdaApi, call: Call) -> web.Response:
    return await _write_async(api, call, merge=False)


async def update_invoke_config(api: LambdaApi, call: Call) -> web.Response:
    return await _write_async(api, call, merge=True)


async def get_invoke_config(api: LambdaApi, call: Call) -> web.Response:
    assert call.ref is not None
    _qualifier_is_latest(call, "the asynchronous invocation configuration")
    current = await api._get_function(call.ref.namespace, call.ref.name)
    if not _configured(current):
        raise _not_found(
            f"The function {call.ref.arn(api.settings.region)} doesn't have an EventInvokeConfig"
        )
    return _json(invoke_config(api, current))


async def list_invoke_configs(api: LambdaApi, call: Call) -> web.Response:
    assert call.ref is not None
    current = await api._get_function(call.ref.namespace, call.ref.name)
    configs = [invoke_config(api, current)] if _configured(current) else []
    return _json(_page(configs, call.request, "FunctionEventInvokeConfigs", key=lambda c: c["FunctionArn"]))


async def delete_invoke_config(api: LambdaApi, call: Call) -> web.Response:
    assert call.ref is not None
    _qualifier_is_latest(call, "the asynchronous invocation configuration")
    ns, name = call.ref.namespace, call.ref.name
    current = await api._get_function(ns, name)
    if not _configured(current):
        raise _not_found(
            f"The function {call.ref.arn(api.settings.region)} doesn't have an EventInvokeConfig"
        )
    try:
        await api.kube.patch(
            _functions(ns, name), [{"op": "remove", "path": "/spec/async"}], patch_type="json"
        )
    except ApiError as e:
        raise kube_failure(e, f"Function {ns}/{name}") from e
    return _json(None, 204)


# ---- event source mappings (Triggers) -----------------------------------------------------------------------


def _triggers(namespace: str, name: str | None = None) -> str:
    return resource_path(API_VERSION, "triggers", namespace=namespace, name=name)


async def mapping_namespace(api: LambdaApi, mapping: str, default: str) -> str:
    """The namespace of the mapping ``mapping`` (Lambda's UUIDs are account-wide: one cluster-wide lookup with the
    gateway's own list right), ``default`` when there is none; the caller's RBAC is then checked there."""
    if not _UUID.match(mapping):
        return default
    listed = await api.kube.list(
        resource_path(API_VERSION, "triggers"),
        params={
            "fieldSelector": f"metadata.name={ESM_PREFIX}{mapping}",
            "labelSelector": f"{ESM_LABEL}=true",
        },
    )
    items = listed.get("items", [])
    return str(items[0]["metadata"]["namespace"]) if len(items) == 1 else default


def esm_object_name(mapping: str) -> str:
    if not _UUID.match(mapping):
        raise _not_found(f"The resource you requested does not exist: event source mapping {mapping!r}")
    return ESM_PREFIX + mapping


_COMMON_FIELDS = {
    "BatchSize": "batchSize",
    "MaximumBatchingWindowInSeconds": "maxBatchingWindowSeconds",
}
_STREAM_FIELDS = {
    "MaximumRetryAttempts": "maximumRetryAttempts",
    "MaximumRecordAgeInSeconds": "maximumRecordAgeSeconds",
    "ParallelizationFactor": "parallelizationFactor",
}
_REFUSED = (
    "FilterCriteria", "KMSKeyArn", "MetricsConfig", "LoggingConfig", "TumblingWindowInSeconds", "Queues",
    "SourceAccessConfigurations", "AmazonManagedKafkaEventSourceConfig", "DocumentDBEventSourceConfig",
    "ProvisionedPollerConfig", "Tags", "DestinationConfig",
)  # fmt: skip


def _source(api: LambdaApi, body: JSON) -> tuple[str, JSON]:
    """``("queue" | "stream", the broker block)`` from EventSourceArn or SelfManagedEventSource."""
    s = api.settings
    arn = body.get("EventSourceArn")
    if isinstance(arn, str) and (match := _SQS_ARN.match(arn)):
        if s.event_source_sqs_endpoint is None:
            raise _bad(
                "EventSourceArn",
                f"{arn!r}: this gateway has no SQS endpoint (KUBELAMBDA_GATEWAY_EVENT_SOURCE_SQS_ENDPOINT)",
            )
        endpoint = s.event_source_sqs_endpoint.rstrip("/")
        queue_url = f"{endpoint}/{match.group('account')}/{match.group('name')}"
        return "queue", {
            "sqs": {"endpoint": endpoint, "queueUrl": queue_url, "region": match.group("region")}
        }
    if isinstance(arn, str) and (match := _KINESIS_ARN.match(arn)):
        if s.event_source_kinesis_endpoint is None:
            raise _bad(
                "EventSourceArn",
                f"{arn!r}: this gateway has no Kinesis endpoint (KUBELAMBDA_GATEWAY_EVENT_SOURCE_KINESIS_ENDPOINT)",
            )
        return "stream", {
            "kinesis": {
                "endpoint": s.event_source_kinesis_endpoint,
                "streamName": match.group("name"),
                "region": match.group("region"),
            }
        }
    if arn is not None:
        raise _bad(
            "EventSourceArn",
            f"{arn!r}: an event source here is an SQS queue ARN, a Kinesis stream ARN or a self-managed Kafka "
            "cluster (SelfManagedEventSource); other sources are Triggers (kubectl, docs/triggers.md)",
        )
    managed = body.get("SelfManagedEventSource")
    if not isinstance(managed, dict):
        raise _bad("EventSourceArn", "is required (or SelfManagedEventSource for a Kafka cluster)")
    servers = (managed.get("Endpoints") or {}).get("KAFKA_BOOTSTRAP_SERVERS")
    if not isinstance(servers, list) or not servers:
        raise _bad("SelfManagedEventSource.Endpoints.KAFKA_BOOTSTRAP_SERVERS", "is required")
    topics = body.get("Topics")
    if not isinstance(topics, list) or len(topics) != 1:
        raise _bad("Topics", "exactly one Kafka topic")
    kafka: JSON = {"bootstrapServers": servers, "topic": topics[0]}
    group = (body.get("SelfManagedKafkaEventSourceConfig") or {}).get("ConsumerGroupId")
    if group:
        kafka["consumerGroup"] = group
    return "stream", {"kafka": kafka}


def _settings_of(body: JSON, kind: str, block: JSON) -> JSON:
    """The Trigger's source block fields Lambda's mapping sets (``block`` as it is otherwise)."""
    out = dict(block)
    fields = {**_COMMON_FIELDS, **(_STREAM_FIELDS if kind == "stream" else {})}
    for lambda_key, key in fields.items():
        value = _int(body, lambda_key)
        if value is not None:
            out[key] = value
    if "FunctionResponseTypes" in body:
        types = body["FunctionResponseTypes"] or []
        out["reportBatchItemFailures"] = "ReportBatchItemFailures" in types
    if kind == "queue" and "ScalingConfig" in body:
        concurrency = (body.get("ScalingConfig") or {}).get("MaximumConcurrency")
        if concurrency is not None:
            out["maxConcurrency"] = concurrency
    if kind == "stream":
        for lambda_key, key in (
            ("StartingPosition", "startingPosition"),
            ("BisectBatchOnFunctionError", "bisectBatchOnFunctionError"),
        ):
            if lambda_key in body:
                out[key] = body[lambda_key]
        if "StartingPositionTimestamp" in body:
            out["startingPositionTimestamp"] = _timestamp(body["StartingPositionTimestamp"])
    return out


def _timestamp(value: Any) -> str:
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        return value
    raise _bad("StartingPositionTimestamp", f"{value!r} is not a time")


async def _function_of(api: LambdaApi, ref: FunctionRef, namespace: str) -> str:
    """``spec.function`` (``name`` or ``name:qualifier``) of the function a mapping invokes, which must exist."""
    if ref.namespace != namespace:
        raise _bad(
            "FunctionName", f"{ref.name!r} is in namespace {ref.namespace!r}; the mapping is in {namespace!r}"
        )
    await api._get_qualified(ref.namespace, ref.name, None if ref.qualifier == "$LATEST" else ref.qualifier)
    return ref.name if ref.qualifier == "$LATEST" else f"{ref.name}:{ref.qualifier}"


async def _apply_trigger(api: LambdaApi, namespace: str, name: str, spec: JSON) -> JSON:
    try:
        TriggerSpec.model_validate(spec)
    except ValueError as e:
        raise _bad("EventSourceMapping", str(e).splitlines()[-1] if str(e) else "invalid") from e
    doc = {
        "apiVersion": API_VERSION,
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": namespace, "labels": {ESM_LABEL: "true"}},
        "spec": spec,
    }
    try:
        return await api.kube.apply(_triggers(namespace, name), doc, field_manager=FIELD_MANAGER, force=False)
    except ApiError as e:
        raise kube_failure(e, f"Trigger {namespace}/{name}") from e


def mapping(api: LambdaApi, trigger: JSON, *, state: str | None = None) -> JSON:
    """Lambda's EventSourceMappingConfiguration of a Trigger."""
    meta, spec = trigger["metadata"], trigger.get("spec") or {}
    ns = meta["namespace"]
    region = api.settings.region
    kind = "queue" if "queue" in spec else "stream"
    block = spec.get(kind) or {}
    name, _, qualifier = str(spec.get("function", "")).partition(":")
    arn = FunctionRef(ns, name).arn(region)
    out: JSON = {
        "UUID": meta["name"].removeprefix(ESM_PREFIX),
        "FunctionArn": f"{arn}:{qualifier}" if qualifier else arn,
        "BatchSize": block.get("batchSize", 10 if kind == "queue" else 100),
        "MaximumBatchingWindowInSeconds": block.get("maxBatchingWindowSeconds", 0),
        "LastModified": _epoch(meta),
        "LastProcessingResult": "No records processed",
        "State": state or _state(trigger),
        "StateTransitionReason": "USER_INITIATED",
        "FunctionResponseTypes": ["ReportBatchItemFailures"]
        if block.get("reportBatchItemFailures", kind == "queue")
        else [],
        "EventSourceMappingArn": f"arn:aws:lambda:{region}:{ns}:event-source-mapping:{meta['name'].removeprefix(ESM_PREFIX)}",
    }
    if "sqs" in block:
        queue_url = str(block["sqs"]["queueUrl"]).rstrip("/")
        parts = queue_url.rsplit("/", 2)
        account, queue = parts[-2], parts[-1]
        out["EventSourceArn"] = f"arn:aws:sqs:{block['sqs'].get('region', region)}:{account}:{queue}"
        out["ScalingConfig"] = {"MaximumConcurrency": block.get("maxConcurrency", 2)}
    elif "kinesis" in block:
        kinesis = block["kinesis"]
        out["EventSourceArn"] = (
            f"arn:aws:kinesis:{kinesis.get('region', region)}:{ns}:stream/{kinesis['streamName']}"
        )
    elif "kafka" in block:
        kafka = block["kafka"]
        out["SelfManagedEventSource"] = {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": kafka["bootstrapServers"]}}
        out["Topics"] = [kafka["topic"]]
        if kafka.get("consumerGroup"):
            out["SelfManagedKafkaEventSourceConfig"] = {"ConsumerGroupId": kafka["consumerGroup"]}
    if kind == "stream":
        out["StartingPosition"] = block.get("startingPosition", "LATEST")
        out["MaximumRetryAttempts"] = block.get("maximumRetryAttempts", -1)
        out["MaximumRecordAgeInSeconds"] = block.get("maximumRecordAgeSeconds", -1)
        out["ParallelizationFactor"] = block.get("parallelizationFactor", 1)
        out["BisectBatchOnFunctionError"] = block.get("bisectBatchOnFunctionError", False)
    return out


def _state(trigger: JSON) -> str:
    spec, status = trigger.get("spec") or {}, trigger.get("status") or {}
    if spec.get("enabled", True) is False:
        return "Disabled"
    ready = find_condition(status, "Ready")
    if ready is not None and ready.get("status") == "True":
        return "Enabled"
    return "Creating" if status.get("observedGeneration") is None else "Enabling"


def _epoch(meta: JSON) -> float:
    times = [e.get("time", "") for e in meta.get("managedFields") or [] if e.get("time")]
    when = max(times) if times else meta.get("creationTimestamp", "")
    if not when:
        return 0.0
    return dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()


def _refuse_unsupported(body: JSON) -> None:
    for field in _REFUSED:
        if body.get(field):
            raise _bad(field, "is not supported by kubelambda's event source mappings (docs/versions.md)")


async def create_mapping(api: LambdaApi, call: Call) -> web.Response:
    _refuse_unsupported(call.body)
    assert call.ref is not None
    function = await _function_of(api, call.ref, call.namespace)
    kind, block = _source(api, call.body)
    if kind == "stream" and "StartingPosition" not in call.body:
        raise _bad("StartingPosition", "is required for a stream (TRIM_HORIZON, LATEST or AT_TIMESTAMP)")
    spec: JSON = {"function": function, kind: _settings_of(call.body, kind, block)}
    if "Enabled" in call.body:
        spec["enabled"] = bool(call.body["Enabled"])
    created = await _apply_trigger(api, call.namespace, esm_object_name(str(uuid.uuid4())), spec)
    return _json(mapping(api, created, state="Creating"), 202)


async def _get_trigger(api: LambdaApi, call: Call) -> JSON:
    name = esm_object_name(call.request.match_info["uuid"])
    found = await api.kube.get_or_none(_triggers(call.namespace, name))
    if found is None or (found["metadata"].get("labels") or {}).get(ESM_LABEL) != "true":
        raise _not_found(
            f"The resource you requested does not exist: event source mapping {name.removeprefix(ESM_PREFIX)}"
        )
    return found


async def get_mapping(api: LambdaApi, call: Call) -> web.Response:
    return _json(mapping(api, await _get_trigger(api, call)))


async def update_mapping(api: LambdaApi, call: Call) -> web.Response:
    _refuse_unsupported(call.body)
    for field in ("EventSourceArn", "SelfManagedEventSource", "Topics", "StartingPosition"):
        if field in call.body:
            raise _bad(field, "cannot change; create a new event source mapping")
    found = await _get_trigger(api, call)
    spec = dict(found.get("spec") or {})
    if "FunctionName" in call.body:
        ref = api._ref(str(call.body["FunctionName"]), call.namespace)
        spec["function"] = await _function_of(api, ref, call.namespace)
    kind = "queue" if "queue" in spec else "stream"
    spec[kind] = _settings_of(call.body, kind, spec[kind])
    if "Enabled" in call.body:
        spec["enabled"] = bool(call.body["Enabled"])
    updated = await _apply_trigger(api, call.namespace, found["metadata"]["name"], spec)
    return _json(mapping(api, updated, state="Updating"), 202)


async def delete_mapping(api: LambdaApi, call: Call) -> web.Response:
    found = await _get_trigger(api, call)
    await api.kube.delete(_triggers(call.namespace, found["metadata"]["name"]))
    return _json(mapping(api, found, state="Deleting"), 202)


async def list_mappings(api: LambdaApi, call: Call) -> web.Response:
    listed = await api.kube.list(_triggers(call.namespace), params={"labelSelector": f"{ESM_LABEL}=true"})
    configs = [mapping(api, t) for t in sorted(listed.get("items", []), key=lambda t: t["metadata"]["name"])]
    if call.ref is not None:
        arn = call.ref.arn(api.settings.region)
        configs = [
            c
            for c in configs
            if c["FunctionArn"].startswith(arn) and c["FunctionArn"][len(arn) :][:1] in ("", ":")
        ]
    source = call.request.query.get("EventSourceArn")
    if source:
        configs = [c for c in configs if c.get("EventSourceArn") == source]
    return _json(_page(configs, call.request, "EventSourceMappings", key=lambda c: c["UUID"]))
