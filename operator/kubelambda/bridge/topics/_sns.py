"""Pure parts of topic subscriptions: SNS's filter policies and its Lambda event.

A filter policy (SNS "subscription filter policy") is a JSON object: each key names a message attribute (scope
``MessageAttributes``) or a property of the JSON message body (scope ``MessageBody``, nested objects for nested
properties); its value is a list of conditions, any of which may match (OR); every key must match (AND). A key
``$or`` holds a list of policies, any of which may match. Conditions, as SNS documents them:

- a string or a number: equal (numbers numerically, against ``Number`` attributes or JSON numbers);
- ``{"prefix": s}``, ``{"suffix": s}``, ``{"equals-ignore-case": s}``;
- ``{"anything-but": v}`` with ``v`` a string, number, list of them, or ``{"prefix": s}`` / ``{"suffix": s}``;
- ``{"numeric": ["=", 5]}``, ``{"numeric": [">", 0, "<=", 150]}`` (``=``, ``<``, ``<=``, ``>``, ``>=``);
- ``{"exists": true}`` / ``{"exists": false}``;
- ``{"cidr": "10.0.0.0/24"}`` (an IP address attribute within the block);
- ``null`` (body scope): the property is JSON ``null``.

A ``String.Array`` attribute (or a JSON array in the body) matches when any of its elements does. An attribute
that is missing matches only ``{"exists": false}``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import math
from collections.abc import Mapping
from typing import Any

from kubelambda.jsonobj import JSON

NUMERIC_OPS = ("=", "<", "<=", ">", ">=")
OPERATORS = ("prefix", "suffix", "equals-ignore-case", "anything-but", "numeric", "exists", "cidr")
MISSING = object()


class PolicyError(ValueError):
    """A filter policy SNS would refuse; the message names the path of the bad part."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_policy(policy: Any, *, path: str = "filterPolicy", body: bool = False) -> None:
    """Raises :class:`PolicyError` naming the first bad part of ``policy``."""
    if not isinstance(policy, dict) or not policy:
        raise PolicyError(f"{path} must be a non-empty object")
    for key, value in policy.items():
        where = f"{path}.{key}"
        if key == "$or":
            if not isinstance(value, list) or len(value) < 2:
                raise PolicyError(f"{where} must be a list of at least two policies")
            for i, sub in enumerate(value):
                check_policy(sub, path=f"{where}[{i}]", body=body)
        elif isinstance(value, dict) and body:
            check_policy(value, path=where, body=body)
        elif isinstance(value, list):
            if not value:
                raise PolicyError(f"{where} must list at least one condition")
            for i, cond in enumerate(value):
                _check_condition(cond, f"{where}[{i}]")
        else:
            raise PolicyError(f"{where} must be a list of conditions" + (" or an object" if body else ""))


def _check_condition(cond: Any, where: str) -> None:
    if cond is None or isinstance(cond, str) or _is_number(cond):
        return
    if not isinstance(cond, dict) or len(cond) != 1:
        raise PolicyError(f"{where} must be a string, a number or an object with one operator")
    ((op, arg),) = cond.items()
    if op not in OPERATORS:
        raise PolicyError(f"{where}: unknown operator {op!r} (one of {', '.join(OPERATORS)})")
    if op in ("prefix", "suffix", "equals-ignore-case") and not isinstance(arg, str):
        raise PolicyError(f"{where}.{op} must be a string")
    if op == "exists" and not isinstance(arg, bool):
        raise PolicyError(f"{where}.exists must be true or false")
    if op == "cidr":
        try:
            ipaddress.ip_network(arg, strict=False)
        except (TypeError, ValueError) as e:
            raise PolicyError(f"{where}.cidr: {arg!r} is not an IP block") from e
    if op == "anything-but":
        if isinstance(arg, dict):
            if (
                len(arg) != 1
                or next(iter(arg)) not in ("prefix", "suffix")
                or not isinstance(next(iter(arg.values())), str)
            ):
                raise PolicyError(
                    f'{where}.anything-but takes {{"prefix": s}} or {{"suffix": s}} as an object'
                )
        else:
            items = arg if isinstance(arg, list) else [arg]
            if not items or not all(isinstance(x, str) or _is_number(x) for x in items):
                raise PolicyError(f"{where}.anything-but must be a string, a number or a list of them")
    if op == "numeric":
        _numeric_bounds(arg, where)


def _numeric_bounds(arg: Any, where: str) -> list[tuple[str, float]]:
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise PolicyError(f'{where}.numeric must be [op, number] or [">"/">=", low, "<"/"<=", high]')
    pairs = [(arg[i], arg[i + 1]) for i in range(0, len(arg), 2)]
    for op, n in pairs:
        if op not in NUMERIC_OPS or not _is_number(n):
            raise PolicyError(
                f"{where}.numeric: {op!r} {n!r} is not an operator ({', '.join(NUMERIC_OPS)}) and a number"
            )
    if len(pairs) == 2 and not (
        pairs[0][0] in (">", ">=") and pairs[1][0] in ("<", "<=") and pairs[0][1] <= pairs[1][1]
    ):
        raise PolicyError(
            f"{where}.numeric: a range is a lower bound (> or >=) then a higher upper bound (< or <=)"
        )
    return [(op, float(n)) for op, n in pairs]


def _num(value: Any) -> float | None:
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            n = float(value)
        except ValueError:
            return None
        return n if math.isfinite(n) else None
    return None


def _condition(cond: Any, value: Any, numeric: bool) -> bool:
    """Whether one present scalar ``value`` matches ``cond``; ``numeric``: the value is a number."""
    if cond is None:
        return value is None
    if isinstance(cond, str):
        return isinstance(value, str) and not numeric and value == cond
    if _is_number(cond):
        n = _num(value) if numeric else None
        return n is not None and n == float(cond)
    ((op, arg),) = cond.items()
    if op in ("prefix", "suffix", "equals-ignore-case"):
        if not isinstance(value, str) or numeric:
            return False
        if op == "prefix":
            return value.startswith(arg)
        if op == "suffix":
            return value.endswith(arg)
        return value.lower() == str(arg).lower()
    if op == "numeric":
        n = _num(value) if numeric else None
        if n is None:
            return False
        return all(_compare(n, o, bound) for o, bound in _numeric_bounds(arg, "numeric"))
    if op == "cidr":
        try:
            return ipaddress.ip_address(str(value)) in ipaddress.ip_network(arg, strict=False)
        except ValueError:
            return False
    if op == "anything-but":
        if isinstance(arg, dict):
            ((how, text),) = arg.items()
            if not isinstance(value, str):
                return True
            return not (value.startswith(text) if how == "prefix" else value.endswith(text))
        items = arg if isinstance(arg, list) else [arg]
        return not any(_condition(item, value, numeric) for item in items)
    return False


def _compare(n: float, op: str, bound: float) -> bool:
    return {
        "=": n == bound,
        "<": n < bound,
        "<=": n <= bound,
        ">": n > bound,
        ">=": n >= bound,
    }[op]


def _key_matches(conditions: list[Any], values: list[Any] | object, numeric: bool) -> bool:
    """``values``: the attribute's values (several for an array), or MISSING."""
    for cond in conditions:
        if isinstance(cond, dict) and "exists" in cond:
            if cond["exists"] == (values is not MISSING):
                return True
            continue
        if values is MISSING:
            continue
        assert isinstance(values, list)
        if any(_condition(cond, v, numeric or _is_number(v)) for v in values):
            return True
    return False


def attribute_values(attr: Mapping[str, Any] | None) -> tuple[list[Any] | object, bool]:
    """An SNS message attribute (``{"Type", "Value"}``) as ``(values, numeric)``."""
    if attr is None:
        return MISSING, False
    kind = str(attr.get("Type", "String"))
    value = attr.get("Value")
    if kind == "String.Array":
        try:
            items = json.loads(str(value))
        except ValueError:
            return [value], False
        return (items if isinstance(items, list) else [items]), False
    if kind == "Number":
        return [value], True
    return [value], False


def matches(policy: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    """Scope ``MessageAttributes``: whether SNS would deliver a message with these attributes."""
    for key, conditions in policy.items():
        if key == "$or":
            if not any(matches(sub, attributes) for sub in conditions):
                return False
            continue
        values, numeric = attribute_values(attributes.get(key))
        if not _key_matches(conditions, values, numeric):
            return False
    return True


def body_matches(policy: Mapping[str, Any], body: Any) -> bool:
    """Scope ``MessageBody``: whether SNS would deliver this message (its JSON; not an object: never)."""
    if not isinstance(body, dict):
        return False
    for key, conditions in policy.items():
        if key == "$or":
            if not any(body_matches(sub, body) for sub in conditions):
                return False
            continue
        if isinstance(conditions, dict):
            if not body_matches(conditions, body.get(key)):
                return False
            continue
        if key in body:
            value = body[key]
            values: list[Any] | object = value if isinstance(value, list) else [value]
        else:
            values = MISSING
        if not _key_matches(conditions, values, False):
            return False
    return True


def iso_millis(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def message_text(data: bytes) -> tuple[str, bool]:
    """The ``Message`` string: the bytes as UTF-8, or base64 when they are not (then True)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def sns_event(
    *,
    message: str,
    message_id: str,
    topic_arn: str,
    subscription_arn: str,
    subject: str | None,
    attributes: Mapping[str, Any],
    timestamp: float,
) -> JSON:
    """Lambda's SNS event: one record (SNS invokes a function once per message)."""
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": subscription_arn,
                "Sns": {
                    "Type": "Notification",
                    "MessageId": message_id,
                    "TopicArn": topic_arn,
                    "Subject": subject,
                    "Message": message,
                    "Timestamp": iso_millis(timestamp),
                    "SignatureVersion": "1",
                    "Signature": "",
                    "SigningCertUrl": "",
                    "UnsubscribeUrl": "",
                    "MessageAttributes": dict(attributes),
                },
            }
        ]
    }


ATTRIBUTE_TYPES = ("String", "Number", "String.Array", "Binary")


def parse_types(header: str | None) -> dict[str, str]:
    """``Sns-Attribute-Types: price=Number,tags=String.Array`` as a name → type map (other types: String)."""
    out: dict[str, str] = {}
    for part in (header or "").split(","):
        name, sep, kind = part.strip().partition("=")
        if sep and name and kind.strip() in ATTRIBUTE_TYPES:
            out[name.strip()] = kind.strip()
    return out
