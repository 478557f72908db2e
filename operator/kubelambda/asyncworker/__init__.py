"""Asynchronous (Event) invocations: the queue on NATS JetStream, the retry decisions, the worker."""

from kubelambda.asyncworker.decide import Condition, Outcome, Policy
from kubelambda.asyncworker.queue import EventQueue, QueuedEvent
from kubelambda.asyncworker.record import Response, invocation_record
from kubelambda.asyncworker.worker import Invoker, Worker, WorkerSettings

__all__ = [
    "Condition",
    "EventQueue",
    "Invoker",
    "Outcome",
    "Policy",
    "QueuedEvent",
    "Response",
    "Worker",
    "WorkerSettings",
    "invocation_record",
]
