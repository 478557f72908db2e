"""The ``FunctionAlias`` resource: Lambda's alias, a name pointing at a published version of a Function, with an
optional second version taking a share of the invocations (``RoutingConfig.AdditionalVersionWeights``)."""

from __future__ import annotations

import hashlib
import re

from pydantic import ConfigDict, Field

from kubelambda.api.v1alpha1._common import DNS_LABEL, Model, cel, validations

ALIAS_NAME = r"^(?!^[0-9]+$)[a-zA-Z0-9_-]{1,128}$"
"""Lambda's alias names: letters, digits, '-' and '_', not all digits (a number names a version)."""
ALIAS_NAME_RE2 = (
    r"^[a-zA-Z0-9_-]{1,128}$"  # CEL/OpenAPI patterns have no look-ahead: the digits rule is a CEL rule
)


class VersionWeight(Model):
    version: str = Field(pattern=r"^[0-9]+$", max_length=7)
    """The additional version (a number, not ``$LATEST``)."""
    weight: float = Field(ge=0, le=1)
    """Its share of the invocations through the alias (0..1); the rest go to ``functionVersion``."""


class FunctionAliasSpec(Model):
    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!self.name.matches('^[0-9]+$')", "alias name must not be a number", field_path=".name"),
            cel(
                "!has(self.routing) || self.routing.all(r, r.version != self.functionVersion)",
                "the additional version must differ from functionVersion",
                field_path=".routing",
            ),
        )
    )

    function: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        json_schema_extra=validations(cel("self == oldSelf", "function is immutable")),
    )
    """The Function (in the same namespace) whose version the alias names."""
    name: str = Field(
        pattern=ALIAS_NAME_RE2,
        max_length=128,
        json_schema_extra=validations(cel("self == oldSelf", "name is immutable")),
    )
    """The alias name as callers use it (``Qualifier=live``, ``function:live``); Lambda's rules (letters, digits,
    '-', '_', not only digits)."""
    function_version: str = Field(pattern=r"^(\$LATEST|[0-9]+)$", max_length=7)
    """The version the alias points at: a number, or ``$LATEST``."""
    routing: list[VersionWeight] = Field(default_factory=list, max_length=1)
    """At most one additional version and its weight (Lambda's ``RoutingConfig.AdditionalVersionWeights``)."""
    description: str = Field(default="", max_length=256)
    """Free text."""


class FunctionAliasStatus(Model):
    """Nothing yet: the gateway reads an alias's spec as it is."""


class FunctionAlias(Model):
    """An alias of a Function: a name for a version, optionally with weighted routing to a second version."""

    spec: FunctionAliasSpec
    status: FunctionAliasStatus = Field(default_factory=FunctionAliasStatus)


def alias_object_name(function: str, alias: str) -> str:
    """The FunctionAlias object's name for ``alias`` of ``function``: ``<function>.<alias>`` when the alias is a
    valid name part as it is, else its lower-cased form with a hash of the exact name (aliases are
    case-sensitive; object names are not)."""
    if re.fullmatch(DNS_LABEL, alias):
        return f"{function}.{alias}"
    cleaned = re.sub(r"[^a-z0-9-]+", "-", alias.lower()).strip("-") or "alias"
    digest = hashlib.sha256(alias.encode()).hexdigest()[:8]
    return f"{function}.{cleaned[:100]}-{digest}"
