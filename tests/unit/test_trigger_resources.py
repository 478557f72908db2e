"""The Trigger's objects (bridge RBAC, Deployment, webhook Service) and the operator's status: pure, tables."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from kubelambda import natsauth
from kubelambda.api.v1alpha1 import Trigger
from kubelambda.api.v1alpha1.trigger import QueueSource, StreamSource, source_kinds
from kubelambda.bridge import SOURCES, source_kind
from kubelambda.operator._kopf import _trigger_source_refresh
from kubelambda.operator._trigger import bridge_ready, trigger_status
from kubelambda.resources import bridge as b
from kubelambda.resources import status as st
from kubelambda.settings import OperatorSettings

SETTINGS = OperatorSettings(
    gateway_url="http://gw.example:8080", control_plane_image="ghcr.io/kubelambda/kubelambda:t"
)


def trigger(**spec: Any) -> b.TriggerObject:
    body = {
        "metadata": {"name": "t1", "namespace": "demo", "uid": "u-1", "generation": 3},
        "spec": {"function": "fn", **spec},
    }
    return b.TriggerObject.from_body(body)


BUCKET = {"endpoint": "http://s3:8333", "bucket": "photos", "credentialsSecret": "s3-creds"}


@pytest.mark.parametrize(
    ("on_failure", "functions"),
    [
        ({"function": "failures"}, ["failures", "fn"]),
        ({"function": "fn"}, ["fn"]),
        ({"url": "https://hooks.example.com/x"}, ["fn"]),
        (None, ["fn"]),
    ],
    ids=["function", "itself", "url", "none"],
)
def test_a_stream_bridge_may_invoke_its_on_failure_function(
    on_failure: dict[str, str] | None, functions: list[str]
) -> None:
    """The bridge sends discarded records to onFailure.function as itself (the gateway checks RBAC)."""
    stream: dict[str, Any] = {"kafka": {"bootstrapServers": ["k:9092"], "topic": "t"}}
    if on_failure is not None:
        stream["onFailure"] = on_failure
    (invoke,) = [r for r in b.make_role(trigger(stream=stream))["rules"] if "invoke" in r["verbs"]]
    assert invoke["resourceNames"] == functions


@pytest.mark.parametrize(
    ("spec", "secrets"),
    [
        ({"schedule": {"expression": "rate(5 minutes)"}}, []),
        ({"bucket": {**BUCKET, "mode": "poll"}}, ["s3-creds"]),
        ({"bucket": BUCKET}, ["s3-creds", "t1-bucket-token"]),
        ({"bucket": {**BUCKET, "tokenSecret": "mine"}}, ["mine", "s3-creds"]),
        (
            {"queue": {"rabbitmq": {"url": "amqp://mq:5672/", "queue": "q", "credentialsSecret": "mq"}}},
            ["mq"],
        ),
        ({"stream": {"kafka": {"bootstrapServers": ["k:9092"], "topic": "t"}}}, []),
    ],
    ids=["schedule", "bucket-poll", "bucket-notification", "bucket-own-token", "rabbitmq", "kafka"],
)
def test_the_bridge_may_read_exactly_the_secrets_its_trigger_names(
    spec: dict[str, Any], secrets: list[str]
) -> None:
    t = trigger(**spec)
    assert b.secret_names(t) == secrets
    rules = b.make_role(t)["rules"]
    secret_rules = [r for r in rules if r["resources"] == ["secrets"]]
    assert secret_rules == (
        [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets, "verbs": ["get"]}]
        if secrets
        else []
    )
    # It may invoke exactly its Function (gateway/auth), as its own ServiceAccount.
    invoke = [r for r in rules if "invoke" in r["verbs"]]
    assert invoke == [
        {
            "apiGroups": ["kubelambda.io"],
            "resources": ["functions"],
            "resourceNames": [t.spec.function],
            "verbs": ["invoke"],
        }
    ]
    # Every rule is pinned to named objects: no list, no watch, nothing namespace-wide.
    assert all(r.get("resourceNames") for r in rules)
    assert all(not {"list", "watch", "create", "delete"} & set(r["verbs"]) for r in rules)


def test_only_a_postgres_stream_bridge_may_patch_its_trigger_and_a_deleted_disabled_one_is_woken() -> None:
    postgres = trigger(stream={"postgres": {"url": "postgresql://db/app", "tables": ["t"]}})
    kafka = trigger(stream={"kafka": {"bootstrapServers": ["k:9092"], "topic": "t"}})
    for t, verbs in ((postgres, ["get", "patch"]), (kafka, ["get"])):
        (own,) = [r for r in b.make_role(t)["rules"] if r["resources"] == ["triggers"]]
        assert own == {
            "apiGroups": ["kubelambda.io"],
            "resources": ["triggers"],
            "resourceNames": ["t1"],
            "verbs": verbs,
        }

    def body(*, deleting: bool, finalizer: bool, enabled: bool) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "t1", "finalizers": [b.CLEANUP_FINALIZER] if finalizer else ["other"]}
        if deleting:
            meta["deletionTimestamp"] = "2026-12-05T13:00:00Z"
        return {"metadata": meta, "spec": {"enabled": enabled}}

    assert b.bridge_to_wake(body(deleting=True, finalizer=True, enabled=False))
    assert not b.bridge_to_wake(body(deleting=True, finalizer=True, enabled=True))  # its bridge runs already
    assert not b.bridge_to_wake(body(deleting=True, finalizer=False, enabled=False))  # nothing to drop
    assert not b.bridge_to_wake(body(deleting=False, finalizer=True, enabled=False))  # disabled, not deleted


def test_the_bridge_deployment_runs_one_bridge_under_its_own_account() -> None:
    t = trigger(schedule={"expression": "rate(5 minutes)"})
    d = b.make_bridge_deployment(t, settings=SETTINGS)
    pod = d["spec"]["template"]["spec"]
    assert d["metadata"]["name"] == "t1-bridge"
    assert d["metadata"]["namespace"] == "demo"
    assert d["metadata"]["ownerReferences"][0]["kind"] == "Trigger"
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["serviceAccountName"] == "t1-bridge"
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/kubelambda/kubelambda:t"
    assert container["args"] == ["bridge", "--trigger", "demo/t1"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBELAMBDA_BRIDGE_GATEWAY_URL"] == "http://gw.example:8080"
    assert [e["name"] for e in container["env"]] == sorted(env)


def test_a_bridge_that_starts_slowly_is_not_killed_before_it_serves() -> None:
    """Liveness counts only once /healthz first answered (the startup probe): a bridge still importing or reading
    its Trigger on a busy node has five minutes, not the liveness probe's ~60 s, and is then probed as before."""
    container = b.make_bridge_deployment(
        trigger(schedule={"expression": "rate(5 minutes)"}), settings=SETTINGS
    )["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] == b.STARTUP_SECONDS == 300
    liveness = container["livenessProbe"]
    assert liveness["httpGet"] == startup["httpGet"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] == 60
    assert "initialDelaySeconds" not in liveness  # the startup probe covers the start
    assert container["readinessProbe"]["httpGet"] == startup["httpGet"]


def test_disabling_scales_the_bridge_to_zero_and_a_spec_change_rolls_it() -> None:
    on = trigger(schedule={"expression": "rate(5 minutes)"})
    off = trigger(schedule={"expression": "rate(5 minutes)"}, enabled=False)
    other = trigger(schedule={"expression": "rate(10 minutes)"})
    assert b.make_bridge_deployment(off, settings=SETTINGS)["spec"]["replicas"] == 0

    def spec_hash(t: b.TriggerObject) -> str:
        return b.make_bridge_deployment(t, settings=SETTINGS)["spec"]["template"]["metadata"]["annotations"][
            b.SPEC_HASH_ANNOTATION
        ]

    assert spec_hash(on) == spec_hash(trigger(schedule={"expression": "rate(5 minutes)"}))
    assert spec_hash(on) != spec_hash(other)


def test_http_triggers_need_no_bridge_and_only_notification_buckets_get_a_webhook() -> None:
    assert not trigger(http={"path": "/x"}).needs_bridge
    assert trigger(bucket=BUCKET).notification_webhook
    assert not trigger(bucket={**BUCKET, "mode": "poll"}).notification_webhook
    service = b.make_webhook_service(trigger(bucket=BUCKET))
    assert service["spec"]["selector"] == {b.TRIGGER_LABEL: "t1", "app.kubernetes.io/component": "bridge"}


def deployment(*, ready: int, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": ready},
    }


@pytest.mark.parametrize(
    ("spec", "exists", "dep", "ready"),
    [
        ({"schedule": {"expression": "rate(5 minutes)"}}, True, deployment(ready=1), ("True", "BridgeReady")),
        (
            {"schedule": {"expression": "rate(5 minutes)"}},
            True,
            deployment(ready=0),
            ("False", "BridgeStarting"),
        ),
        (
            {"schedule": {"expression": "rate(5 minutes)"}},
            True,
            deployment(ready=1, generation=2),
            ("False", "Reconciling"),
        ),
        (
            {"schedule": {"expression": "rate(5 minutes)"}, "enabled": False},
            True,
            deployment(ready=0),
            ("True", "Disabled"),
        ),
        (
            {"schedule": {"expression": "rate(5 minutes)"}},
            False,
            deployment(ready=1),
            ("False", "FunctionMissing"),
        ),
        ({"http": {"path": "/x"}}, True, None, ("True", "RouteConfigured")),
    ],
    ids=["ready", "starting", "stale", "disabled", "function-missing", "http"],
)
def test_ready_follows_the_function_and_the_bridge(
    spec: dict[str, Any], exists: bool, dep: dict[str, Any] | None, ready: tuple[str, str]
) -> None:
    t = trigger(**spec)
    bridge_condition = {
        "type": "SourceReachable",
        "status": "True",
        "reason": "Reachable",
        "message": "",
        "lastTransitionTime": "2026-11-26T00:00:00Z",
    }
    current = {"conditions": [bridge_condition], "eventsDelivered": 7}
    status = trigger_status(
        current, trigger=t, function_exists=exists, deployment=dep, now="2026-11-26T01:00:00Z"
    )
    by_type = {c["type"]: c for c in status["conditions"]}
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ready
    assert by_type["FunctionMissing"]["status"] == ("False" if exists else "True")
    # What the bridge wrote is carried over untouched.
    assert by_type["SourceReachable"] == bridge_condition
    assert status["eventsDelivered"] == 7
    assert status["observedGeneration"] == 3
    assert status["source"] == t.source


def reachable(status: str, message: str = "") -> dict[str, Any]:
    return {
        "type": "SourceReachable",
        "status": status,
        "reason": "Reachable" if status == "True" else "Unreachable",
        "message": message,
        "lastTransitionTime": "2026-11-26T00:00:00Z",
    }


QUEUE = {"queue": {"redis": {"url": "redis://r:6379", "key": "k"}}}


@pytest.mark.parametrize(
    ("source", "enabled", "dep", "ready"),
    [
        (reachable("False", "connection refused"), True, deployment(ready=1), ("False", "SourceUnreachable")),
        (reachable("True"), True, deployment(ready=1), ("True", "BridgeReady")),
        (None, True, deployment(ready=1), ("True", "BridgeReady")),  # not reported yet
        (reachable("False"), True, deployment(ready=0), ("False", "BridgeStarting")),
        (reachable("False"), False, deployment(ready=0), ("True", "Disabled")),
    ],
    ids=["unreachable", "reachable", "unreported", "starting", "disabled"],
)
def test_a_running_bridge_whose_source_does_not_answer_is_not_ready(
    source: dict[str, Any] | None, enabled: bool, dep: dict[str, Any], ready: tuple[str, str]
) -> None:
    current = {"conditions": [source] if source else []}
    status = trigger_status(
        current,
        trigger=trigger(**QUEUE, enabled=enabled),
        function_exists=True,
        deployment=dep,
        now="2026-11-26T01:00:00Z",
    )
    by_type = {c["type"]: c for c in status["conditions"]}
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ready
    if ready[1] == "SourceUnreachable":
        assert (
            by_type["Ready"]["message"] == "The bridge runs but cannot reach its source: connection refused"
        )


def ready_condition(status: str, reason: str) -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": "", "lastTransitionTime": "t0"}


@pytest.mark.parametrize(
    ("conditions", "after"),
    [
        (
            [ready_condition("True", "BridgeReady"), reachable("False", "refused")],
            ("False", "SourceUnreachable"),
        ),
        ([ready_condition("False", "SourceUnreachable"), reachable("True")], ("True", "BridgeReady")),
        ([ready_condition("True", "BridgeReady"), reachable("True")], None),  # agrees already
        ([ready_condition("False", "SourceUnreachable"), reachable("False", "refused")], None),
        ([ready_condition("False", "BridgeStarting"), reachable("False")], None),  # the Deployment decides
        ([ready_condition("False", "FunctionMissing"), reachable("False")], None),
        ([ready_condition("True", "Disabled"), reachable("False")], None),
    ],
    ids=["goes-down", "comes-back", "agrees", "still-down", "starting", "function-missing", "disabled"],
)
def test_ready_follows_what_the_bridge_writes_about_its_source(
    conditions: list[dict[str, Any]], after: tuple[str, str] | None
) -> None:
    body = {
        "metadata": {"name": "t1", "namespace": "demo", "generation": 3},
        "status": {"observedGeneration": 3, "conditions": conditions},
    }
    new = _trigger_source_refresh(body)
    ready = next(c for c in (new or body["status"])["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == (after or (conditions[0]["status"], conditions[0]["reason"]))
    if new is not None:
        assert next(c for c in new["conditions"] if c["type"] == "SourceReachable") == conditions[1]
        # Its own write comes back as an event: nothing more to write then (no loop of patches).
        again = _trigger_source_refresh({**body, "status": new})
        assert again is None or st.status_changes(new, again) == {}


def test_a_deadline_exceeded_bridge_says_so() -> None:
    dep = deployment(ready=0)
    dep["status"]["conditions"] = [
        {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
    ]
    assert bridge_ready(trigger(schedule={"expression": "rate(5 minutes)"}), dep) == (
        "False",
        "ProgressDeadlineExceeded",
        "too slow",
    )


def test_bridges_get_the_platforms_nats_when_the_operator_has_one() -> None:
    t = trigger(schedule={"expression": "rate(5 minutes)"})
    names = [
        e["name"]
        for e in b.make_bridge_deployment(t, settings=SETTINGS)["spec"]["template"]["spec"]["containers"][0][
            "env"
        ]
    ]
    assert "KUBELAMBDA_BRIDGE_NATS_URL" not in names
    with_nats = OperatorSettings(gateway_url="http://gw:8080", nats_url="nats://nats.kubelambda-system:4222")
    env = b.make_bridge_deployment(t, settings=with_nats)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == sorted(e["name"] for e in env)
    assert {"name": "KUBELAMBDA_BRIDGE_NATS_URL", "value": "nats://nats.kubelambda-system:4222"} in env
    # With log shipping (on by default with NATS), the bridge ships its own lines, named by its pod.
    assert {"name": "KUBELAMBDA_BRIDGE_LOG_NATS_URL", "value": "nats://nats.kubelambda-system:4222"} in env
    pod = {"name": "KUBELAMBDA_BRIDGE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert pod in env
    assert "KUBELAMBDA_BRIDGE_LOG_NATS_URL" not in names


def test_a_bridge_ships_as_its_triggers_namespaces_log_user() -> None:
    """With an agent key, a bridge logs in to the log store as its Trigger's namespace's log user (the same
    credential as that namespace's functions), which may publish only that namespace's log subjects."""
    t = trigger(schedule={"expression": "rate(5 minutes)"})
    key = "bridge-agent-key-0123456789"
    settings = OperatorSettings(gateway_url="http://gw:8080", nats_url="nats://nats:4222", agent_key=key)
    env = b.make_bridge_deployment(t, settings=settings)["spec"]["template"]["spec"]["containers"][0]["env"]
    [url] = [e["value"] for e in env if e["name"] == "KUBELAMBDA_BRIDGE_LOG_NATS_URL"]
    assert url == natsauth.log_url("nats://nats:4222", key, "demo", t.created)
    assert natsauth.user_of(url) == "logs.demo"


STREAM_KINESIS = {"endpoint": "http://k:4566", "streamName": "s", "credentialsSecret": "aws"}


@pytest.mark.parametrize(
    ("spec", "kind", "secrets"),
    [
        ({"schedule": {"expression": "rate(5 minutes)"}}, "schedule", []),
        ({"http": {"path": "/x"}}, "http", []),
        ({"bucket": {**BUCKET, "mode": "poll"}}, "bucket", ["s3-creds"]),
        (
            {"queue": {"redis": {"url": "redis://r:6379", "key": "k", "credentialsSecret": "r"}}},
            "queue.redis",
            ["r"],
        ),
        ({"queue": {"sqs": {"endpoint": "http://q:9324", "queueUrl": "http://q:9324/q"}}}, "queue.sqs", []),
        ({"stream": {"kinesis": STREAM_KINESIS}}, "stream.kinesis", ["aws"]),
        ({"stream": {"nats": {"url": "nats://n:4222", "stream": "s"}}}, "stream.nats", []),
        (
            {
                "stream": {
                    "postgres": {"url": "postgresql://u@db/x", "tables": ["t"], "credentialsSecret": "pg"}
                }
            },
            "stream.postgres",
            ["pg"],
        ),
        (
            {
                "stream": {
                    "kinesis": STREAM_KINESIS,
                    "onFailure": {
                        "queue": {"rabbitmq": {"url": "amqp://mq/", "queue": "q", "credentialsSecret": "mq"}}
                    },
                }
            },
            "stream.kinesis",
            ["aws", "mq"],
        ),
        (
            {
                "stream": {
                    "nats": {"url": "nats://n:4222", "stream": "s"},
                    "onFailure": {
                        "topic": {"nats": {"url": "nats://n:4222", "subject": "x", "credentialsSecret": "n"}}
                    },
                }
            },
            "stream.nats",
            ["n"],
        ),
    ],
)
def test_the_source_kind_and_its_secrets_come_from_the_block_that_is_set(
    spec: dict[str, Any], kind: str, secrets: list[str]
) -> None:
    parsed = trigger(**spec).spec
    assert parsed.source == kind.partition(".")[0]
    assert parsed.source_kind == kind
    assert parsed.credentials_secrets() == secrets


def test_every_source_kind_of_the_models_has_a_bridge_class() -> None:
    """The broker list is read from the Trigger models; each kind's module must name its class ``BRIDGE``."""
    assert QueueSource.brokers() == ("rabbitmq", "nats", "redis", "sqs")
    assert StreamSource.brokers() == ("kafka", "redis", "nats", "kinesis", "postgres")
    assert set(source_kinds()) == {"http", *SOURCES}
    assert SOURCES["queue.rabbitmq"] == "kubelambda.bridge.queues.rabbitmq"
    assert SOURCES["schedule"] == "kubelambda.bridge.schedule"
    for kind, module in SOURCES.items():
        cls = importlib.import_module(module).BRIDGE
        assert callable(getattr(cls, "run", None)), kind
        assert callable(getattr(cls, "routes", None)), kind
    with pytest.raises(ValueError, match="needs no bridge"):
        source_kind(Trigger.model_validate({"spec": {"function": "fn", "http": {"path": "/x"}}}))


def test_a_queue_block_without_a_broker_says_which_fields_it_wants() -> None:
    with pytest.raises(
        ValueError, match=r"exactly one of queue\.rabbitmq, queue\.nats, queue\.redis, queue\.sqs"
    ):
        QueueSource().broker()
