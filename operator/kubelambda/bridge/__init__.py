"""Trigger bridges: one process per Trigger consuming its event source and invoking the function.

Public surface: :class:`BridgeContext` (what a source gets), :class:`Invoker`, :class:`InvokeResult`,
:class:`Checkpoint`, :class:`StatusReporter`, :func:`run_bridge` and :func:`main`.
"""

from kubelambda.bridge._context import (
    BRIDGE_FIELD_MANAGER,
    SOURCE_REACHABLE,
    BridgeContext,
    Checkpoint,
    Invoker,
    InvokeResult,
    Secrets,
    Source,
    StatusReporter,
)
from kubelambda.bridge._main import SOURCES, BridgeSettings, build_context, main, run_bridge, source_kind

__all__ = [
    "BRIDGE_FIELD_MANAGER",
    "SOURCES",
    "SOURCE_REACHABLE",
    "BridgeContext",
    "BridgeSettings",
    "Checkpoint",
    "InvokeResult",
    "Invoker",
    "Secrets",
    "Source",
    "StatusReporter",
    "build_context",
    "main",
    "run_bridge",
    "source_kind",
]
