"""How an Invoke API ``FunctionName`` names a Function object.

Lambda accepts a name, a partial ARN or a full ARN, each with an optional qualifier:

    hello                                          → namespace from the gateway's setting, Function hello
    demo/hello                                     → namespace demo (kubelambda's own short form)
    123456789012:function:hello                    → partial ARN
    arn:aws:lambda:us-east-1:demo:function:hello   → the ARN's account field carries the namespace
    hello:$LATEST, arn:...:function:hello:$LATEST  → qualifier ``$LATEST`` (the Function as edited)
    hello:3, hello:live                            → a published version, an alias (docs/versions.md)

A twelve-digit account (as AWS tooling fills in) is not a namespace name (those must start with a letter),
so it selects the default namespace. The ARNs kubelambda hands out use the namespace as the account:
``arn:aws:lambda:<region>:<namespace>:function:<name>``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"  # a Kubernetes object name (DNS label)
_QUALIFIER = r"(\$LATEST|[a-zA-Z0-9-_]+)"
_ARN = re.compile(
    rf"^arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>[^:]+):function:(?P<name>[^:]+)(:(?P<qualifier>{_QUALIFIER}))?$"
)
_PARTIAL = re.compile(rf"^(?P<account>[^:/]+):function:(?P<name>[^:]+)(:(?P<qualifier>{_QUALIFIER}))?$")
_SHORT = re.compile(rf"^((?P<namespace>[^:/]+)/)?(?P<name>[^:/]+)(:(?P<qualifier>{_QUALIFIER}))?$")


class BadFunctionName(ValueError):
    """Not a name, ARN or partial ARN; the message names the value."""


@dataclass(frozen=True)
class FunctionRef:
    namespace: str
    name: str
    qualifier: str = "$LATEST"

    def arn(self, region: str) -> str:
        return f"arn:aws:lambda:{region}:{self.namespace}:function:{self.name}"


@functools.lru_cache(maxsize=4096)  # every invocation parses its name: the same few names, over and over
def parse_function_name(value: str, *, default_namespace: str) -> FunctionRef:
    match = _ARN.match(value) or _PARTIAL.match(value)
    if match:
        account = match.group("account")
        namespace = account if re.fullmatch(_NAME, account) and not account.isdigit() else default_namespace
    else:
        match = _SHORT.match(value)
        if match is None:
            raise BadFunctionName(f"FunctionName {value!r} is not a function name, ARN or partial ARN")
        namespace = match.group("namespace") or default_namespace
    name = match.group("name")
    if not re.fullmatch(_NAME, name) or len(name) > 63:
        raise BadFunctionName(
            f"FunctionName {value!r}: {name!r} is not a valid Function name "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    if not re.fullmatch(_NAME, namespace):
        raise BadFunctionName(f"FunctionName {value!r}: {namespace!r} is not a valid namespace")
    return FunctionRef(namespace=namespace, name=name, qualifier=match.group("qualifier") or "$LATEST")


def qualified(ref: FunctionRef, qualifier: str | None) -> FunctionRef:
    """``ref`` with the ``Qualifier`` parameter applied; the name's own qualifier must agree with it."""
    if qualifier is None or qualifier == "":
        return ref
    if not re.fullmatch(_QUALIFIER, qualifier) or len(qualifier) > 128:
        raise BadFunctionName(f"Qualifier {qualifier!r} is not $LATEST, a version number or an alias name")
    if ref.qualifier != "$LATEST" and ref.qualifier != qualifier:
        raise BadFunctionName(
            f"The derived qualifier from the function name ({ref.qualifier!r}) does not match the "
            f"specified Qualifier {qualifier!r}"
        )
    return FunctionRef(ref.namespace, ref.name, qualifier)


def qualified_arn(ref: FunctionRef, region: str) -> str:
    """The ARN as invoked: with ``:<qualifier>`` unless the call named no qualifier."""
    arn = ref.arn(region)
    return arn if ref.qualifier == "$LATEST" else f"{arn}:{ref.qualifier}"
