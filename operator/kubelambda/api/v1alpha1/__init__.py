"""``kubelambda.io/v1alpha1``: the Function and Trigger APIs (the single source of truth for the CRDs)."""

from kubelambda.api.v1alpha1._common import API_VERSION, GROUP, VERSION, Condition, Destination
from kubelambda.api.v1alpha1.alias import (
    FunctionAlias,
    FunctionAliasSpec,
    FunctionAliasStatus,
    VersionWeight,
    alias_object_name,
)
from kubelambda.api.v1alpha1.function import (
    RESERVED_ENV,
    RUNTIMES,
    Code,
    Concurrency,
    Function,
    FunctionSpec,
    FunctionStatus,
    Instances,
    Network,
    Scaling,
    VersionOf,
)
from kubelambda.api.v1alpha1.trigger import SOURCES, Trigger, TriggerSpec, TriggerStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESERVED_ENV",
    "RUNTIMES",
    "SOURCES",
    "VERSION",
    "Code",
    "Concurrency",
    "Condition",
    "Destination",
    "Function",
    "FunctionAlias",
    "FunctionAliasSpec",
    "FunctionAliasStatus",
    "FunctionSpec",
    "FunctionStatus",
    "Instances",
    "Network",
    "Scaling",
    "Trigger",
    "TriggerSpec",
    "TriggerStatus",
    "VersionOf",
    "VersionWeight",
    "alias_object_name",
]
