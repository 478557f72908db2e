"""The log store's pure parts: names and subjects as the agent writes them, records, levels, times, filters, the
explanation of an empty answer, and the agent's inputs the operator gives function pods."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kubelambda import logstore
from kubelambda.cli._common import Target
from kubelambda.cli.functions import _log_store_url
from kubelambda.devcluster import DevState
from kubelambda.resources import FunctionObject
from kubelambda.resources.deployment import function_env
from kubelambda.resources.warmpool import make_pool_deployment
from kubelambda.settings import OperatorSettings

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(message: str, **extra: str) -> logstore.LogRecord:
    raw = {
        "time": "2026-01-02T03:04:05.123456789Z",
        "namespace": "team-a",
        "function": "hello",
        "version": "$LATEST",
    }
    raw.update({"requestId": "r1", "pod": "hello-1", "stream": "stdout", "message": message, **extra})
    return logstore.LogRecord.from_json(json.dumps(raw).encode())


def test_names_and_subjects() -> None:
    assert logstore.stream_name("team-a") == "KUBELAMBDA_LOGS_TEAM_A"
    assert logstore.subject("team-a", "hello", "r1") == "kubelambda.logs.team-a.hello.r1"
    assert logstore.subject("team-a", "hello") == "kubelambda.logs.team-a.hello.*"
    assert logstore.subject("team-a", "a.b") == "kubelambda.logs.team-a.a_b.*"  # as the agent's subjectToken
    config = logstore.stream_config("team-a", logstore.Retention(3600, 10_000, {"team-a": 60}))
    assert config.subjects == ["kubelambda.logs.team-a.>"]
    assert (config.max_age, config.max_bytes) == (60, 10_000)
    assert logstore.Retention().max_age("other") == 7 * 24 * 3600


def test_a_message_holds_a_requests_records_one_a_line() -> None:
    lines = [
        json.dumps({"time": "2026-01-02T03:04:05Z", "requestId": "r1", "message": m}) for m in ("a\nb", "c")
    ]
    data = ("\n".join(lines[:1]) + "\n" + "not json\n" + lines[1]).encode()
    assert [r.message for r in logstore.records_of(data, "s")] == ["a\nb", "c"]  # the bad line is skipped


def test_record_from_agent_json() -> None:
    r = record("hello world")
    assert r.time == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)  # nanoseconds cut to microseconds
    assert (r.request_id, r.pod, r.message, r.level) == ("r1", "hello-1", "hello world", None)


@pytest.mark.parametrize(
    ("message", "level"),
    [
        ('{"timestamp": "t", "level": "ERROR", "message": "boom"}', "ERROR"),
        ('{"level": "warning"}', "WARN"),
        ("[INFO]\t2026-01-02T03:04:05.000Z\tr1\tstarted", "INFO"),
        ("[NOTALEVEL]\tx", None),
        ("{not json", None),
        ("START RequestId: r1 Version: $LATEST", None),
        ("2026-01-02T03:04:05.000Z\tr1\tWARN\tslow", "WARN"),  # the Node.js runtimes' text format
        ('{"time": "t", "type": "platform.report", "record": {"requestId": "r1"}}', "INFO"),
        ('{"time": "t", "type": "platform.runtimeDone", "record": {"requestId": "r1"}}', "DEBUG"),
    ],
)
def test_levels(message: str, level: str | None) -> None:
    assert record(message).level == level


def test_query_filters() -> None:
    q = logstore.LogQuery("team-a", "hello", level="WARN", contains="boom")
    assert q.keep(record('{"level": "ERROR", "message": "boom"}'))
    assert not q.keep(record('{"level": "INFO", "message": "boom"}'))
    assert not q.keep(record('{"level": "ERROR", "message": "fine"}'))
    assert not q.keep(record("boom"))  # no level: not kept when a level is asked for
    # One request: its own subject and the function's batches (several requests' records), filtered by id.
    one = logstore.LogQuery("team-a", "hello", request_id="r9")
    assert one.subjects() == ["kubelambda.logs.team-a.hello.r9", "kubelambda.logs.team-a.hello.batch"]
    assert one.keep(record("mine", requestId="r9"))
    assert not one.keep(record("another request's, in the same batch", requestId="r8"))
    assert logstore.LogQuery("team-a", "hello").subjects() == ["kubelambda.logs.team-a.hello.*"]
    outside = logstore.LogQuery("team-a", "hello", request_id=logstore.NO_REQUEST)  # lines outside a request
    assert outside.keep(record("a bridge's line", requestId=""))
    assert not outside.keep(record("a request's line"))
    assert logstore.check_level("warning") == "WARN"
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        logstore.check_level("loud")


def test_parse_time() -> None:
    assert logstore.parse_time("10m", now=NOW) == NOW - timedelta(minutes=10)
    assert logstore.parse_time("1.5h", now=NOW) == NOW - timedelta(minutes=90)
    assert logstore.parse_time("7d", now=NOW) == NOW - timedelta(days=7)
    assert logstore.parse_time("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    assert logstore.parse_time("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        logstore.parse_time("yesterday")


def test_why_empty() -> None:
    q = logstore.LogQuery("team-a", "hello", request_id="r1", since=NOW - timedelta(days=30))
    none = logstore.why_empty(q, logstore.StreamState(exists=False))
    assert "request r1 of Function team-a/hello" in none
    assert "no log stream yet" in none
    old = logstore.why_empty(q, logstore.StreamState(True, 5, NOW - timedelta(days=7), 7 * 86400.0))
    assert "the oldest record kept is from 2025-12-26T03:04:05Z (retention 7 days)" in old
    recent = logstore.why_empty(
        logstore.LogQuery("team-a", "hello", since=NOW, contains="x"),
        logstore.StreamState(True, 5, NOW - timedelta(days=1), 7 * 86400.0),
    )
    assert recent.endswith("no invocation logged since 2026-01-02T03:04:05Z that matches the filter.")


def _fn() -> FunctionObject:
    return FunctionObject.from_body(
        {
            "metadata": {"name": "hello", "namespace": "team-a", "uid": "u", "generation": 1},
            "spec": {"runtime": "python3.12", "handler": "app.handler", "code": {"inline": {"app.py": ""}}},
        }
    )


def test_function_pods_ship_to_the_platform_nats() -> None:
    env = {e["name"]: e for e in function_env(_fn(), settings=OperatorSettings(nats_url="nats://nats:4222"))}
    assert env["KUBELAMBDA_LOG_NATS_URL"]["value"] == "nats://nats:4222"
    assert env["KUBELAMBDA_FUNCTION_NAMESPACE"]["value"] == "team-a"
    assert env["KUBELAMBDA_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    off = function_env(_fn(), settings=OperatorSettings(nats_url="nats://nats:4222", logs=False))
    assert not {e["name"] for e in off} & {"KUBELAMBDA_LOG_NATS_URL", "KUBELAMBDA_POD_NAME"}
    assert "KUBELAMBDA_LOG_NATS_URL" not in {
        e["name"] for e in function_env(_fn(), settings=OperatorSettings())
    }


def test_warm_pool_pods_ship_when_given_the_url() -> None:
    def env(**kw: str) -> set[str]:
        body = make_pool_deployment(
            "python3.12", image="i", namespace="s", replicas=1, memory_mb=512, region="r", **kw
        )
        return {e["name"] for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert {"KUBELAMBDA_LOG_NATS_URL", "KUBELAMBDA_POD_NAME"} <= env(log_nats_url="nats://n:4222")
    assert "KUBELAMBDA_LOG_NATS_URL" not in env()


def test_retention_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="retention must be > 0 seconds"):
        OperatorSettings(log_retention_by_namespace={"team-a": 0})


def test_the_cli_finds_the_log_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--log-store`` > ``$KUBELAMBDA_LOG_STORE_URL`` > dev.json's NATS, only for the dev cluster itself."""
    dev, other = tmp_path / "dev.yaml", tmp_path / "other.yaml"
    DevState(state="running", pid=1, kubeconfig=str(dev), nats_url="nats://127.0.0.1:4222").write(tmp_path)
    monkeypatch.delenv("KUBELAMBDA_LOG_STORE_URL", raising=False)

    def url(kubeconfig: Path, log_store: str | None = None) -> str | None:
        args = argparse.Namespace(log_store=log_store, state_dir=str(tmp_path))
        return _log_store_url(args, Target(str(kubeconfig), "default", "test"))

    assert url(dev) == "nats://127.0.0.1:4222"
    assert url(other) is None  # another cluster: the dev cluster's NATS is not its store
    assert url(other, "nats://flag:4222") == "nats://flag:4222"
    monkeypatch.setenv("KUBELAMBDA_LOG_STORE_URL", "nats://env:4222")
    assert url(dev) == "nats://env:4222"
    assert url(dev, "nats://flag:4222") == "nats://flag:4222"
