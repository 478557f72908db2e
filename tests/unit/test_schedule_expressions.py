"""EventBridge schedule expressions, the missed-tick policy and the Scheduled Event: tables, fixed clocks."""

from __future__ import annotations

import datetime as dt

import pytest

from kubelambda.bridge.schedule_expressions import (
    BadSchedule,
    event_id,
    missed_policy,
    parse,
    scheduled_event,
)

UTC = dt.UTC


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "timezone", "after", "expected"),
    [
        ("cron(0 12 * * ? *)", "UTC", "2026-11-26T12:00:00", "2026-11-27T12:00:00"),
        ("cron(0 12 * * ? *)", "UTC", "2026-11-26T11:59:59", "2026-11-26T12:00:00"),
        # Berlin is UTC+1 in November and UTC+2 in July.
        ("cron(0 12 * * ? *)", "Europe/Berlin", "2026-11-26T00:00:00", "2026-11-26T11:00:00"),
        ("cron(0 12 * * ? *)", "Europe/Berlin", "2026-07-01T00:00:00", "2026-07-01T10:00:00"),
        # EventBridge day-of-week: 1 = SUN, so 2-6 = MON-FRI; 2026-11-28 is a Saturday.
        ("cron(0 9 ? * 2-6 *)", "UTC", "2026-11-27T10:00:00", "2026-11-30T09:00:00"),
        ("cron(0 9 ? * MON-FRI *)", "UTC", "2026-11-27T10:00:00", "2026-11-30T09:00:00"),
        ("cron(15 10 ? * 6L 2026)", "UTC", "2026-11-01T00:00:00", "2026-11-27T10:15:00"),  # last Friday
        ("cron(0 8 ? * 2#1 *)", "UTC", "2026-11-26T00:00:00", "2026-12-07T08:00:00"),  # first Monday
        ("cron(0 0 L * ? *)", "UTC", "2026-11-26T00:00:00", "2026-11-30T00:00:00"),
        ("cron(*/15 * * * ? *)", "UTC", "2026-11-26T10:07:00", "2026-11-26T10:15:00"),
        ("cron(0 0 1 1 ? 2030)", "UTC", "2026-11-26T00:00:00", "2030-01-01T00:00:00"),
    ],
    ids=[
        "daily-noon",
        "daily-noon-just-before",
        "berlin-winter",
        "berlin-summer",
        "weekdays-numeric",
        "weekdays-names",
        "last-friday",
        "first-monday",
        "last-day-of-month",
        "every-15-minutes",
        "year-field",
    ],
)
def test_cron_next_tick(expression: str, timezone: str, after: str, expected: str) -> None:
    assert parse(expression, timezone=timezone).next_after(t(after)) == t(expected)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("rate(1 minute)", "2026-11-26T10:00:30", "2026-11-26T10:01:00"),
        ("rate(5 minutes)", "2026-11-26T10:00:00", "2026-11-26T10:05:00"),
        ("rate(5 minutes)", "2026-11-26T10:04:59", "2026-11-26T10:05:00"),
        ("rate(2 hours)", "2026-11-26T10:00:00", "2026-11-26T12:00:00"),
        ("rate(1 day)", "2026-11-26T09:00:00", "2026-11-26T10:00:00"),
        ("rate(1 minute)", "2026-11-26T09:00:00", "2026-11-26T10:00:00"),  # before the anchor: the anchor
    ],
    ids=["1-minute", "5-minutes-on-tick", "5-minutes-before", "2-hours", "1-day", "before-anchor"],
)
def test_rate_ticks_are_anchored_at_creation(expression: str, after: str, expected: str) -> None:
    schedule = parse(expression, anchor=t("2026-11-26T10:00:00"))
    assert schedule.next_after(t(after)) == t(expected)


@pytest.mark.parametrize(
    ("expression", "timezone", "fragment"),
    [
        ("cron(0 12 * * * *)", "UTC", "exactly one of day-of-month"),
        ("cron(0 12 ? * ? *)", "UTC", "exactly one of day-of-month"),
        ("cron(0 12 * * ? *)", "Mars/Olympus", "not an IANA time zone"),
        ("cron(0 12 LW * ? *)", "UTC", "'LW' is not supported"),
        ("cron(0 12 * * ? * *)", "UTC", "neither rate"),
        ("cron(0 25 * * ? *)", "UTC", "croniter cannot evaluate"),
        ("cron(0 12 ? * 8 *)", "UTC", "day-of-week 8 is out of range"),
        ("rate(1 minutes)", "UTC", "write 'rate(1 minute)'"),
        ("rate(5 minute)", "UTC", "rate(5 minutes)"),
        ("every 5 minutes", "UTC", "neither rate"),
    ],
    ids=[
        "both-day-fields",
        "no-day-field",
        "bad-zone",
        "LW",
        "seven-fields",
        "hour-25",
        "dow-8",
        "rate-1-plural",
        "rate-5-singular",
        "prose",
    ],
)
def test_bad_expressions_name_the_problem(expression: str, timezone: str, fragment: str) -> None:
    with pytest.raises(BadSchedule, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse(expression, timezone=timezone)


@pytest.mark.parametrize(
    ("last_fired", "now", "fire", "skipped"),
    [
        (None, "2026-11-26T10:07:00", None, 0),  # new Trigger: no backfill
        ("2026-11-26T10:05:00", "2026-11-26T10:07:00", None, 0),  # nothing missed
        ("2026-11-26T10:05:00", "2026-11-26T10:10:00", "2026-11-26T10:10:00", 0),  # the tick just due
        ("2026-11-26T10:05:00", "2026-11-26T10:31:00", "2026-11-26T10:30:00", 4),  # down 26 minutes
    ],
    ids=["new", "none-missed", "one-missed", "several-missed"],
)
def test_only_the_latest_missed_tick_fires(
    last_fired: str | None, now: str, fire: str | None, skipped: int
) -> None:
    schedule = parse("rate(5 minutes)", anchor=t("2026-11-26T10:00:00"))
    got = missed_policy(schedule, last_fired=t(last_fired) if last_fired else None, now=t(now))
    assert got == ((t(fire) if fire else None), skipped)


def test_a_long_outage_on_a_busy_cron_is_counted_without_iterating_forever() -> None:
    schedule = parse("cron(* * * * ? *)")
    fire, skipped = missed_policy(schedule, last_fired=t("2025-01-01T00:00:00"), now=t("2026-11-26T10:00:30"))
    assert fire is not None
    assert skipped >= 9_999


def test_scheduled_event_has_eventbridges_shape_and_a_stable_id() -> None:
    tick = t("2026-11-26T12:00:00")
    event = scheduled_event(
        trigger="nightly", trigger_uid="u-1", namespace="demo", region="eu-west-1", tick=tick
    )
    assert event == {
        "version": "0",
        "id": event_id("u-1", tick),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "demo",
        "time": "2026-11-26T12:00:00Z",
        "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:demo:rule/nightly"],
        "detail": {},
    }
    assert event_id("u-1", tick) == event_id("u-1", tick) != event_id("u-2", tick)
