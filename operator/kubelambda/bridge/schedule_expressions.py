"""EventBridge schedule expressions and the Scheduled Event. Pure: no clock, no I/O.

``rate(N unit)``: every N minutes/hours/days, anchored at the Trigger's creation time, so a restarted bridge
keeps the same ticks. ``cron(min hour day-of-month month day-of-week year)``: EventBridge's six fields, evaluated
in the schedule's time zone. EventBridge and Unix cron differ in the day-of-week numbering (EventBridge: 1 = SUN
.. 7 = SAT; cron: 0 = SUN .. 6 = SAT) and in ``?`` (EventBridge: "no value" in one of the two day fields); both are
translated here before croniter evaluates the expression.
"""

from __future__ import annotations

import collections
import datetime
import re
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Any

from croniter import croniter

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class BadSchedule(ValueError):
    """The expression or time zone cannot be evaluated; the message names the part that is wrong."""


def _dow(field: str) -> str:
    """EventBridge day-of-week (1-7 = SUN-SAT, ``L`` and ``#`` suffixes) in cron numbering (0-6)."""

    def shift(match: re.Match[str]) -> str:
        n = int(match.group(0))
        if not 1 <= n <= 7:
            raise BadSchedule(f"day-of-week {n} is out of range 1-7 (1 = SUN)")
        return str(n - 1)

    if field in ("?", "*"):
        return "*"
    last = re.fullmatch(r"(\d|[A-Za-z]{3})L", field)
    if last:  # "5L": the last Thursday of the month; croniter spells it "L4"
        return "L" + re.sub(r"\d", shift, last.group(1))
    nth = re.fullmatch(r"(\d|[A-Za-z]{3})#([1-5])", field)
    if nth:  # "2#1": the first Monday; only the day is renumbered, not the week
        return re.sub(r"\d", shift, nth.group(1)) + "#" + nth.group(2)
    return re.sub(r"\d+", shift, field)


@dataclass(frozen=True)
class Schedule:
    expression: str
    timezone: str
    period: datetime.timedelta | None = None  # rate(...)
    anchor: datetime.datetime | None = None  # rate(...): the first tick
    cron: str | None = None  # the croniter expression (7 fields: min hour dom month dow second year)

    def next_after(self, t: datetime.datetime) -> datetime.datetime:
        """The first tick strictly after ``t`` (aware datetimes in, UTC out)."""
        if self.period is not None and self.anchor is not None:
            if t < self.anchor:
                return self.anchor
            elapsed = (t - self.anchor) // self.period
            return self.anchor + (elapsed + 1) * self.period
        assert self.cron is not None
        tz = zoneinfo.ZoneInfo(self.timezone)
        it = croniter(self.cron, t.astimezone(tz), max_years_between_matches=200)
        nxt: datetime.datetime = it.get_next(datetime.datetime)
        return nxt.astimezone(datetime.UTC)

    def ticks_between(
        self, after: datetime.datetime, until: datetime.datetime, *, keep: int = 1000, scan: int = 10_000
    ) -> tuple[list[datetime.datetime], int]:
        """``(the latest ticks in (after, until], at most keep of them; how many ticks that interval has)``.

        Counting stops after ``scan`` cron ticks (rates are counted exactly), so a bridge that was down for a
        year on ``cron(* * * * ? *)`` reports "at least 10,000" instead of iterating half a million times.
        """
        if self.period is not None and self.anchor is not None and until > after:
            first = self.next_after(after)
            count = 0 if first > until else (until - first) // self.period + 1
            return [first + i * self.period for i in range(max(count - keep, 0), count)], count
        window: collections.deque[datetime.datetime] = collections.deque(maxlen=keep)
        count = 0
        t = self.next_after(after)
        while t <= until and count < scan:
            window.append(t)
            count += 1
            t = self.next_after(t)
        return list(window), count


def parse(expression: str, *, timezone: str = "UTC", anchor: datetime.datetime | None = None) -> Schedule:
    """Parses an EventBridge schedule expression; ``anchor`` (the Trigger's creation time) starts a rate."""
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise BadSchedule(f"timezone {timezone!r} is not an IANA time zone") from e
    rate = _RATE.match(expression)
    if rate:
        n, unit = int(rate.group(1)), rate.group(2).rstrip("s")
        if n < 1:
            raise BadSchedule(f"{expression}: the rate must be at least 1")
        if (n == 1) != (not rate.group(2).endswith("s")):
            raise BadSchedule(f"{expression}: write 'rate(1 {unit})' or 'rate({max(n, 2)} {unit}s)'")
        start = (anchor or datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)).astimezone(datetime.UTC)
        start = start.replace(microsecond=0)
        return Schedule(
            expression,
            timezone,
            period=datetime.timedelta(seconds=n * _UNIT_SECONDS[unit]),
            anchor=start,
        )
    cron = _CRON.match(expression)
    if not cron:
        raise BadSchedule(f"{expression!r} is neither rate(N unit) nor cron(six fields)")
    minute, hour, dom, month, dow, year = cron.groups()
    if (dom == "?") == (dow == "?"):
        raise BadSchedule(
            f"{expression}: exactly one of day-of-month ({dom}) and day-of-week ({dow}) must be '?'"
        )
    if "W" in dom.upper() and dom.upper() == "LW":
        raise BadSchedule(f"{expression}: day-of-month 'LW' is not supported; use 'L' or 'nW'")
    fields = [minute, hour, "*" if dom == "?" else dom, month, _dow(dow), "0", year]
    text = " ".join(fields)
    if not croniter.is_valid(text):
        raise BadSchedule(f"{expression}: croniter cannot evaluate {text!r}")
    return Schedule(expression, timezone, cron=text)


def missed_policy(
    schedule: Schedule, *, last_fired: datetime.datetime | None, now: datetime.datetime
) -> tuple[datetime.datetime | None, int]:
    """After a restart: ``(tick to fire now, ticks skipped)``.

    The policy: a missed tick is fired once, late, when the bridge comes back; when several were missed only
    the latest fires (a function that runs "every 5 minutes" wants one run, not a burst of them); the others
    are counted as skipped. A new Trigger (no checkpoint) starts with the next tick, without backfill.
    """
    if last_fired is None:
        return None, 0
    missed, count = schedule.ticks_between(last_fired, now, keep=1)
    if not missed:
        return None, 0
    return missed[-1], count - 1


def event_id(trigger_uid: str, tick: datetime.datetime) -> str:
    """The same id for the same tick of the same Trigger, whoever sends it and how often."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kubelambda-schedule:{trigger_uid}:{iso(tick)}"))


def iso(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_event(
    *, trigger: str, trigger_uid: str, namespace: str, region: str, tick: datetime.datetime
) -> dict[str, Any]:
    """EventBridge's Scheduled Event, as Lambda receives it from a schedule rule (account = namespace)."""
    return {
        "version": "0",
        "id": event_id(trigger_uid, tick),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": namespace,
        "time": iso(tick),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{namespace}:rule/{trigger}"],
        "detail": {},
    }
