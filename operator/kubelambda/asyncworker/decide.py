"""What happens to an event after a delivery: pure, the clock is a parameter.

Lambda's rules (docs/async.md, "The worker"):

- a function error or timeout is retried ``maxRetries`` times (0 to 2), the first retry after ``retry_delays[0]``
  (Lambda: ~1 min), the second after ``retry_delays[1]`` (~2 min);
- a throttle (429) or platform error is requeued with exponential backoff, ``backoff_min`` doubling per
  requeue up to ``backoff_max``, and does not use up a retry;
- either ends once the event is older than ``maxEventAgeSeconds``.

Worked example, defaults (retries 2, delays 60 s/120 s, age 21600 s): an event accepted at t=0 fails at t=1
(invoke count 1) → retry at t=61; fails again (count 2) → retry at t=181; fails (count 3) → RetriesExhausted.
A throttled event requeued for the fourth time waits min(1 s * 2**3, 300 s) = 8 s.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kubelambda.outcomes import outcome_of


class Outcome(enum.Enum):
    SUCCESS = "success"
    FUNCTION_ERROR = "function_error"  # including a timeout
    THROTTLED = "throttled"
    SYSTEM_ERROR = "system_error"  # the platform failed; the function may not have run


def outcome_of_answer(status: int, headers: Mapping[str, str]) -> Outcome:
    """The worker's outcome of an answered attempt (``headers`` case-insensitive): the agent's
    ``X-Kubelambda-Outcome``, passed through by the gateway (kubelambda.outcomes), says whether the function ran
    and failed (a timeout, a crash, an init error included: retried, counted) or succeeded, whatever the body
    says; a 429 is a throttle; any other status a platform error (the function may not have run: requeued)."""
    if status == 429:
        return Outcome.THROTTLED
    if status != 200:
        return Outcome.SYSTEM_ERROR
    return Outcome.SUCCESS if outcome_of(headers) == "success" else Outcome.FUNCTION_ERROR


class Condition(enum.Enum):
    """``requestContext.condition`` of an invocation record."""

    SUCCESS = "Success"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    EVENT_AGE_EXCEEDED = "EventAgeExceeded"


@dataclass(frozen=True)
class Policy:
    max_retries: int
    max_event_age_seconds: float
    retry_delays: tuple[float, ...]  # one per retry; the last repeats if there are fewer
    backoff_min: float
    backoff_max: float


@dataclass(frozen=True)
class Finish:
    """The event is done: its record goes to the success or failure destination."""

    condition: Condition

    @property
    def failed(self) -> bool:
        return self.condition is not Condition.SUCCESS


@dataclass(frozen=True)
class Retry:
    """Invoke again after ``delay`` seconds; ``invoke_count`` invocations have happened so far."""

    delay: float
    invoke_count: int


@dataclass(frozen=True)
class Requeue:
    """Try again after ``delay`` seconds without counting an invocation (throttle, platform error)."""

    delay: float


Decision = Finish | Retry | Requeue


def before_invoke(*, enqueued_at: float, now: float, policy: Policy, reserved: int | None) -> Finish | None:
    """Whether the event ends without an invocation: too old, or the function's reserved concurrency is 0."""
    if now - enqueued_at > policy.max_event_age_seconds:
        return Finish(Condition.EVENT_AGE_EXCEEDED)
    if reserved == 0:
        # Lambda sends events of a function with no concurrency straight to the failure destination.
        return Finish(Condition.RETRIES_EXHAUSTED)
    return None


def after_invoke(
    *, outcome: Outcome, invoke_count: int, requeues: int, enqueued_at: float, now: float, policy: Policy
) -> Decision:
    """``invoke_count`` counts invocations including this one if it ran (a throttle does not run);
    ``requeues`` is how many times this event was requeued before."""
    expires = enqueued_at + policy.max_event_age_seconds
    if outcome is Outcome.SUCCESS:
        return Finish(Condition.SUCCESS)
    if outcome is Outcome.FUNCTION_ERROR:
        retries_done = invoke_count - 1
        if retries_done >= policy.max_retries:
            return Finish(Condition.RETRIES_EXHAUSTED)
        delay = policy.retry_delays[min(retries_done, len(policy.retry_delays) - 1)]
        if now + delay > expires:
            return Finish(Condition.EVENT_AGE_EXCEEDED)
        return Retry(delay, invoke_count)
    backoff = min(policy.backoff_min * 2 ** min(requeues, 32), policy.backoff_max)
    if now >= expires:
        return Finish(Condition.EVENT_AGE_EXCEEDED)
    # Never wait past the expiry: the event is then noticed (and reported) when it expires.
    return Requeue(min(backoff, max(expires - now, 0.0)))
