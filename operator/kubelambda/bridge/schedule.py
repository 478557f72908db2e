"""The schedule bridge: fires the function asynchronously on each tick of an EventBridge schedule.

Exactly one firing per tick, across restarts: each tick is sent as an Event invocation whose idempotency key is
the Trigger's uid and the tick's time, and checkpointed (``lastFired``) once the gateway accepted it. A bridge
killed between the two re-sends the same tick on restart with the same key: the gateway derives the same request
id and JetStream's duplicate window (2 minutes) stores it once; the function sees one event with one id.
Missed ticks (the bridge was down): see ``schedule_expressions.missed_policy`` and docs/triggers-schedule.md.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Protocol

from aiohttp import web

from kubelambda import metrics
from kubelambda.bridge._context import BridgeContext
from kubelambda.bridge.schedule_expressions import Schedule, iso, missed_policy, parse, scheduled_event

log = logging.getLogger("kubelambda.bridge.schedule")
LAST_FIRED = "lastFired"


class Clock(Protocol):
    """Wall time and waiting for it; tests pass a clock they move themselves."""

    def now(self) -> datetime.datetime: ...

    async def sleep_until(self, t: datetime.datetime) -> None: ...


class WallClock:
    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    async def sleep_until(self, t: datetime.datetime) -> None:
        # Re-check in bounded steps: a suspended machine or a changed system clock must not oversleep a tick.
        while True:
            left = (t - self.now()).total_seconds()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 30.0))


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


class ScheduleBridge:
    def __init__(
        self, ctx: BridgeContext, *, clock: Clock | None = None, retry_cap_seconds: float = 30.0
    ) -> None:
        self.ctx = ctx
        self.clock: Clock = clock or WallClock()
        self.retry_cap = retry_cap_seconds
        source = ctx.trigger.spec.schedule
        assert source is not None
        self.source = source
        meta = ctx.trigger_meta
        created = meta.get("creationTimestamp")
        self.uid = str(meta.get("uid", f"{ctx.namespace}/{ctx.name}"))
        anchor = _parse_time(created) if created else None
        self.schedule: Schedule = parse(source.expression, timezone=source.timezone, anchor=anchor)

    def routes(self) -> list[web.RouteDef]:
        return []

    async def fire(self, tick: datetime.datetime) -> None:
        """Sends the tick until the gateway accepts it, then checkpoints it."""
        if self.source.input is not None:
            payload = self.source.input
        else:
            payload = scheduled_event(
                trigger=self.ctx.name,
                trigger_uid=self.uid,
                namespace=self.ctx.namespace,
                region=self.ctx.region,
                tick=tick,
            )
        delay = 0.5
        log.debug("Firing the %s tick of Trigger %s/%s", iso(tick), self.ctx.namespace, self.ctx.name)
        while True:
            result = await self.ctx.invoker.invoke(
                payload,
                asynchronous=True,
                idempotency_key=f"schedule:{self.uid}:{iso(tick)}",
            )
            if result.ok:
                break
            log.warning(
                "The gateway refused the %s tick of Trigger %s/%s (status %s: %s); retrying in %.1f s",
                iso(tick),
                self.ctx.namespace,
                self.ctx.name,
                result.status,
                result.payload[:200].decode(errors="replace"),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_cap)
        metrics.BRIDGE_RECORDS_RECEIVED.inc()
        self.ctx.status.delivered()
        await self.ctx.checkpoint.save({LAST_FIRED: iso(tick)})
        log.info("Fired the %s tick of Trigger %s/%s", iso(tick), self.ctx.namespace, self.ctx.name)

    async def run(self) -> None:
        self.ctx.status.source_reachable(True, f"{self.source.expression} in {self.source.timezone}")
        saved = (await self.ctx.checkpoint.load()).get(LAST_FIRED)
        last = _parse_time(saved) if saved else None
        now = self.clock.now()
        late, skipped = missed_policy(self.schedule, last_fired=last, now=now)
        if skipped:
            log.warning(
                "Skipped %d missed ticks of Trigger %s/%s while the bridge was down (only the latest fires)",
                skipped,
                self.ctx.namespace,
                self.ctx.name,
            )
            metrics.BRIDGE_DISCARDED.labels("missed_tick").inc(skipped)
        if late is not None:
            await self.fire(late)
            last = late
        after = max(last, now) if last is not None else now
        while True:
            tick = self.schedule.next_after(after)
            self.ctx.status.set_lag(0)
            await self.clock.sleep_until(tick)
            await self.fire(tick)
            after = tick


BRIDGE = ScheduleBridge
"""The source class of this kind (``kubelambda.bridge._main.load_source``)."""
