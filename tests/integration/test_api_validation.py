"""The API server itself refuses bad Functions and Triggers (OpenAPI schema + CEL), naming the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from kltest import Cluster
from kltest.platform import REPO, install_crds
from kubelambda.kube import KubeClient, resource_path

pytestmark = pytest.mark.integration
JSON = dict[str, Any]


@pytest.fixture(scope="module")
async def crds(cluster: Cluster, kube: KubeClient) -> None:
    await install_crds(cluster, kube)


def good_function() -> JSON:
    doc: JSON = yaml.safe_load((REPO / "examples" / "hello-python3.12" / "function.yaml").read_text())
    doc["metadata"]["name"] = "f"
    return doc


def good_trigger() -> JSON:
    return {
        "apiVersion": "kubelambda.io/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": {"function": "f", "schedule": {"expression": "rate(5 minutes)"}},
    }


def spec_set(**values: Any) -> Callable[[JSON], None]:
    def change(doc: JSON) -> None:
        doc["spec"].update(values)

    return change


def spec_del(key: str) -> Callable[[JSON], None]:
    return lambda doc: doc["spec"].pop(key)


def code(value: JSON) -> Callable[[JSON], None]:
    return spec_set(code=value)


# (id, change to a good Function, text the refusal must contain: the field it names)
BAD_FUNCTIONS: list[tuple[str, Callable[[JSON], None], str]] = [
    ("missing handler", spec_del("handler"), "spec.handler: Required value"),
    ("missing runtime", spec_del("runtime"), "spec.runtime: Required value"),
    ("missing code", spec_del("code"), "spec.code: Required value"),
    ("unknown runtime", spec_set(runtime="python2.7"), "spec.runtime: Unsupported value"),
    ("memory 64", spec_set(memoryMB=64), "spec.memoryMB"),
    ("memory 20000", spec_set(memoryMB=20000), "spec.memoryMB"),
    ("timeout 0", spec_set(timeoutSeconds=0), "spec.timeoutSeconds"),
    ("timeout 901", spec_set(timeoutSeconds=901), "spec.timeoutSeconds"),
    ("ephemeral storage 100", spec_set(ephemeralStorageMB=100), "spec.ephemeralStorageMB"),
    (
        "log level with Text",
        spec_set(logging={"logFormat": "Text", "applicationLogLevel": "WARN"}),
        "spec.logging.logFormat: Invalid value: applicationLogLevel and systemLogLevel need logFormat JSON",
    ),
    (
        "unknown log format",
        spec_set(logging={"logFormat": "XML"}),
        "spec.logging.logFormat: Unsupported value",
    ),
    ("two code sources", code({"inline": {"a.py": "x"}, "image": "r/fn:1"}), "spec.code: Invalid value"),
    ("no code source", code({}), "spec.code: Invalid value"),
    (
        "layers with an image",
        spec_set(code={"image": "r/fn:1"}, layers=[{"configMap": {"name": "libs"}}]),
        "spec.layers",
    ),
    ("six layers", spec_set(layers=[{"configMap": {"name": f"l{i}"}} for i in range(6)]), "spec.layers"),
    (
        "a layer with two sources",
        spec_set(
            layers=[
                {"configMap": {"name": "libs"}, "s3": {"endpoint": "http://s3", "bucket": "b1", "key": "k"}}
            ]
        ),
        "spec.layers[0]",
    ),
    (
        "imageConfig on a kubelambda image",
        code({"image": "r/fn:1", "imageConfig": {"command": ["app.handler"]}}),
        "spec.code.imageConfig",
    ),
    (
        "imageLayout on inline code",
        code({"inline": {"a.py": "x"}, "imageLayout": "lambda"}),
        "spec.code.imageConfig",
    ),
    (
        "bad archive sha256",
        code({"archive": {"url": "https://x/f.zip", "sha256": "abc"}}),
        "spec.code.archive.sha256",
    ),
    (
        "archive not http",
        code({"archive": {"url": "ftp://x/f.zip", "sha256": "a" * 64}}),
        "spec.code.archive.url",
    ),
    ("inline file in a folder", code({"inline": {"src/app.py": "x"}}), "spec.code.inline"),
    ("python handler without a dot", spec_set(handler="handler"), "spec.handler"),
    ("node handler of python shape", spec_set(runtime="nodejs22", handler="index"), "spec.handler"),
    ("java handler with a slash", spec_set(runtime="java21", handler="a/B::m"), "spec.handler"),
    ("bad env name", spec_set(environment={"1BAD": "x"}), "spec.environment"),
    ("env name with a dash", spec_set(environment={"MY-VAR": "x"}), "spec.environment"),
    ("reserved env", spec_set(environment={"AWS_REGION": "eu-west-1"}), "spec.environment"),
    ("agent env", spec_set(environment={"KUBELAMBDA_RUNTIME_CMD": "sh"}), "spec.environment"),
    ("5 KB of env", spec_set(environment={f"V{i}": "x" * 500 for i in range(10)}), "spec.environment"),
    ("negative reserved concurrency", spec_set(concurrency={"reserved": -1}), "spec.concurrency.reserved"),
    ("perInstance 0", spec_set(concurrency={"perInstance": 0}), "spec.concurrency.perInstance"),
    (
        "minInstances > maxInstances",
        spec_set(scaling={"minInstances": 5, "maxInstances": 2}),
        "spec.scaling.minInstances",
    ),
    (
        "reserved above what instances can serve",
        spec_set(concurrency={"reserved": 500, "perInstance": 2}, scaling={"maxInstances": 10}),
        "spec.concurrency.reserved",
    ),
    (
        "warm instances above reserved",
        spec_set(concurrency={"reserved": 2}, scaling={"minInstances": 3}),
        "spec.scaling.minInstances",
    ),
    ("targetUtilization 0", spec_set(scaling={"targetUtilization": 0}), "spec.scaling.targetUtilization"),
    ("maxRetries 3", spec_set(**{"async": {"maxRetries": 3}}), "spec.async.maxRetries"),
    ("maxEventAge 30", spec_set(**{"async": {"maxEventAgeSeconds": 30}}), "spec.async.maxEventAgeSeconds"),
    (
        "destination with two targets",
        spec_set(**{"async": {"onFailure": {"function": "dlq", "url": "http://x"}}}),
        "spec.async.onFailure",
    ),
    ("bad service account name", spec_set(serviceAccountName="Not_Valid"), "spec.serviceAccountName"),
    (
        "egress peer with ipBlock and selector",
        spec_set(
            network={
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {"matchLabels": {}}}]}]
            }
        ),
        "spec.network.egress[0].to[0]",
    ),
    (
        "egress port 70000",
        spec_set(network={"egress": [{"ports": [{"port": 70000}]}]}),
        "spec.network.egress[0].ports[0].port",
    ),
]


def kubectl_apply(cluster: Cluster, namespace: str, doc: JSON) -> tuple[int, str]:
    done = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=False)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("change", "field"), [(c, f) for _, c, f in BAD_FUNCTIONS], ids=[i for i, _, _ in BAD_FUNCTIONS]
)
async def test_bad_function_is_refused_naming_the_field(
    crds: None, cluster: Cluster, namespace: str, change: Callable[[JSON], None], field: str
) -> None:
    doc = good_function()
    change(doc)
    code, stderr = kubectl_apply(cluster, namespace, doc)
    assert code != 0, "the API server accepted it"
    assert field in stderr, stderr


def trigger_set(**values: Any) -> Callable[[JSON], None]:
    def change(doc: JSON) -> None:
        doc["spec"].update(values)

    return change


BAD_TRIGGERS: list[tuple[str, Callable[[JSON], None], str]] = [
    ("no function", lambda d: d["spec"].pop("function"), "spec.function: Required value"),
    ("two sources", trigger_set(http={"path": "/x"}), "spec: Invalid value"),
    ("no source", lambda d: d["spec"].pop("schedule"), "spec: Invalid value"),
    ("bad rate", trigger_set(schedule={"expression": "rate(1 minutes)"}), "spec.schedule.expression"),
    (
        "cron with five fields",
        trigger_set(schedule={"expression": "cron(0 12 * * *)"}),
        "spec.schedule.expression",
    ),
    (
        "http path without slash",
        lambda d: d["spec"].update(schedule=None, http={"path": "x"}),
        "spec.http.path",
    ),
    (
        "queue with two brokers",
        lambda d: d["spec"].update(
            schedule=None,
            queue={"rabbitmq": {"url": "amqp://r", "queue": "q"}, "redis": {"url": "redis://r", "key": "k"}},
        ),
        "spec.queue",
    ),
    (
        "batch size 0",
        lambda d: d["spec"].update(
            schedule=None, queue={"redis": {"url": "redis://r", "key": "k"}, "batchSize": 0}
        ),
        "spec.queue.batchSize",
    ),
    (
        "AT_TIMESTAMP without a timestamp",
        lambda d: d["spec"].update(
            schedule=None,
            stream={
                "kafka": {"bootstrapServers": ["k:9092"], "topic": "t"},
                "startingPosition": "AT_TIMESTAMP",
            },
        ),
        "spec.stream.startingPositionTimestamp",
    ),
    (
        "bad bucket event",
        lambda d: d["spec"].update(
            schedule=None, bucket={"endpoint": "http://s3", "bucket": "photos", "events": ["ObjectCreated:*"]}
        ),
        "spec.bucket.events[0]",
    ),
]


@pytest.mark.parametrize(
    ("change", "field"), [(c, f) for _, c, f in BAD_TRIGGERS], ids=[i for i, _, _ in BAD_TRIGGERS]
)
async def test_bad_trigger_is_refused_naming_the_field(
    crds: None, cluster: Cluster, namespace: str, change: Callable[[JSON], None], field: str
) -> None:
    doc = good_trigger()
    change(doc)
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    code, stderr = kubectl_apply(cluster, namespace, doc)
    assert code != 0, "the API server accepted it"
    assert field in stderr, stderr


async def test_examples_are_accepted_with_lambda_defaults(
    crds: None, cluster: Cluster, kube: KubeClient, namespace: str
) -> None:
    for path in sorted((REPO / "examples").glob("hello-*/function.yaml")):
        cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    fn = await kube.get(
        resource_path("kubelambda.io/v1alpha1", "functions", namespace=namespace, name="hello-go")
    )
    spec = fn["spec"]
    assert (spec["memoryMB"], spec["timeoutSeconds"], spec["ephemeralStorageMB"]) == (128, 3, 512)
    assert spec["concurrency"] == {"perInstance": 1}
    assert spec["scaling"]["minInstances"] == 0
    assert spec["scaling"]["scaleToZeroAfterSeconds"] == 60
    assert spec["async"] == {"maxRetries": 2, "maxEventAgeSeconds": 21600}
    trigger = good_trigger()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(trigger))
    got = await kube.get(resource_path("kubelambda.io/v1alpha1", "triggers", namespace=namespace, name="t"))
    assert got["spec"]["enabled"] is True
    assert got["spec"]["schedule"]["timezone"] == "UTC"


async def test_immutable_fields_cannot_change(crds: None, cluster: Cluster, namespace: str) -> None:
    doc = good_function()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    changed = copy.deepcopy(doc)
    changed["spec"]["code"] = {"image": "registry.example/fn:1"}
    code, stderr = kubectl_apply(cluster, namespace, changed)
    assert code != 0
    assert "package type cannot change" in stderr, stderr

    trigger = good_trigger()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(trigger))
    trigger["spec"] = {"function": "f", "http": {"path": "/x"}}
    code, stderr = kubectl_apply(cluster, namespace, trigger)
    assert code != 0
    assert "source kind of a Trigger cannot change" in stderr, stderr
