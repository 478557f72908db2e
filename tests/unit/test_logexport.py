"""The OTLP form of log records and the exporter's settings (kubelambda.logexport; the end-to-end test with a real
Collector is tests/integration/test_log_export.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from kubelambda import logexport, logstore


def record(
    message: str, *, pod: str = "p1", request_id: str = "r1", truncated: bool = False
) -> logstore.LogRecord:
    return logstore.LogRecord(
        time=datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        namespace="ns",
        function="fn",
        version="3",
        request_id=request_id,
        pod=pod,
        stream="stderr",
        message=message,
        truncated=truncated,
    )


def test_records_group_by_pod_with_levels_as_severity() -> None:
    stored = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    request = logexport.to_otlp(
        [
            (record('{"level": "WARNING", "message": "m"}'), stored),
            (record("[ERROR]\tboom", pod="p2", request_id=""), None),
            (record("plain", truncated=True), stored),
        ]
    )
    assert [
        {kv.key: kv.value.string_value for kv in rl.resource.attributes}["k8s.pod.name"]
        for rl in request.resource_logs
    ] == ["p1", "p2"]
    first, second = (rl.scope_logs[0].log_records for rl in request.resource_logs)
    assert [(r.severity_number, r.severity_text, r.body.string_value) for r in first] == [
        (13, "WARN", '{"level": "WARNING", "message": "m"}'),
        (0, "", "plain"),
    ]
    assert first[0].time_unix_nano == 1767323045006000000
    assert first[0].observed_time_unix_nano == 1767323046000000000
    assert {kv.key: kv.value.string_value for kv in first[0].attributes} == {
        "faas.invocation_id": "r1",
        "log.iostream": "stderr",
    }
    assert [(kv.key, kv.value.bool_value) for kv in first[1].attributes][-1] == ("kubelambda.truncated", True)
    (boom,) = second
    assert (boom.severity_number, boom.severity_text) == (17, "ERROR")
    assert boom.observed_time_unix_nano == boom.time_unix_nano  # no store time: the record's own
    assert "faas.invocation_id" not in {kv.key for kv in boom.attributes}


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("endpoint", "collector:4318", "endpoint"),
        ("endpoint", "http://collector:4318/v1/logs", "without /v1/logs"),
        ("nats_url", "http://nats:4222", "nats_url"),
        ("batch", 0, "batch"),
    ],
)
def test_bad_settings_name_the_field(field: str, value: object, says: str) -> None:
    good: dict[str, object] = {"nats_url": "nats://nats:4222", "endpoint": "http://collector:4318"}
    with pytest.raises(ValidationError, match=says):
        logexport.LogExportSettings.model_validate({**good, field: value})


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBELAMBDA_LOG_EXPORT_NATS_URL", "nats://exporter:pw@nats:4222")
    monkeypatch.setenv("KUBELAMBDA_LOG_EXPORT_ENDPOINT", "https://otlp.example:4318/")
    monkeypatch.setenv("KUBELAMBDA_LOG_EXPORT_HEADERS", '{"Authorization": "Bearer x"}')
    monkeypatch.setenv("KUBELAMBDA_LOG_EXPORT_NAMESPACES", '["team-a"]')
    s = logexport.LogExportSettings()  # type: ignore[call-arg]
    assert (s.endpoint, s.headers, s.namespaces) == (
        "https://otlp.example:4318",
        {"Authorization": "Bearer x"},
        ["team-a"],
    )
