"""SNS subscription filter policies (the rules SNS documents) and the SNS event of a topic subscription."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import SNSEvent

from kubelambda.api.v1alpha1 import Trigger
from kubelambda.bridge.topics._sns import (
    PolicyError,
    body_matches,
    check_policy,
    matches,
    message_text,
    parse_types,
    sns_event,
)
from kubelambda.bridge.topics.nats import attributes_of

# The message of SNS's filter policy examples.
ATTRS: dict[str, Any] = {
    "customer_interests": {"Type": "String.Array", "Value": '["soccer", "rugby", "hockey"]'},
    "store": {"Type": "String", "Value": "example_corp"},
    "event": {"Type": "String", "Value": "order_placed"},
    "price_usd": {"Type": "Number", "Value": "210.75"},
    "source_ip": {"Type": "String", "Value": "10.0.0.255"},
    "quantity": {"Type": "String", "Value": "5"},
}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # every key must match (AND), any value of a key (OR)
        (
            {
                "store": ["example_corp"],
                "event": [{"anything-but": "order_cancelled"}],
                "customer_interests": ["rugby", "football", "baseball"],
                "price_usd": [{"numeric": [">=", 100]}],
            },
            True,
        ),
        ({"store": ["example_corp"], "event": ["order_cancelled"]}, False),
        ({"event": ["order_cancelled", "order_placed"]}, True),
        # exact string matching is case-sensitive; equals-ignore-case is not
        ({"store": ["Example_Corp"]}, False),
        ({"store": [{"equals-ignore-case": "EXAMPLE_CORP"}]}, True),
        # prefix, suffix
        ({"event": [{"prefix": "order_"}]}, True),
        ({"event": [{"prefix": "order-"}]}, False),
        ({"event": [{"suffix": "_placed"}]}, True),
        ({"event": [{"suffix": "_cancelled"}]}, False),
        # anything-but: a value, a list, a prefix, a suffix, numbers
        ({"event": [{"anything-but": ["order_cancelled", "order_placed"]}]}, False),
        ({"event": [{"anything-but": {"prefix": "order"}}]}, False),
        ({"event": [{"anything-but": {"prefix": "refund"}}]}, True),
        ({"event": [{"anything-but": {"suffix": "placed"}}]}, False),
        ({"price_usd": [{"anything-but": [100, 200]}]}, True),
        ({"price_usd": [{"anything-but": 210.75}]}, False),
        # numeric: equality, bounds, ranges; only Number attributes
        ({"price_usd": [{"numeric": ["=", 210.75]}]}, True),
        ({"price_usd": [210.75]}, True),
        ({"price_usd": [{"numeric": [">", 0, "<=", 150]}]}, False),
        ({"price_usd": [{"numeric": [">", 200, "<", 211]}]}, True),
        ({"price_usd": [{"numeric": ["<", 210.75]}]}, False),
        ({"price_usd": [{"numeric": ["<=", 210.75]}]}, True),
        ({"quantity": [{"numeric": ["=", 5]}]}, False),
        ({"quantity": [5]}, False),
        ({"quantity": ["5"]}, True),
        # String.Array: any element
        ({"customer_interests": ["hockey"]}, True),
        ({"customer_interests": [{"prefix": "rug"}]}, True),
        ({"customer_interests": ["golf"]}, False),
        # exists, and a missing attribute matches nothing else
        ({"store": [{"exists": True}]}, True),
        ({"store": [{"exists": False}]}, False),
        ({"coupon": [{"exists": False}]}, True),
        ({"coupon": [{"exists": True}]}, False),
        ({"coupon": [{"anything-but": "x"}]}, False),
        ({"coupon": ["x", {"exists": False}]}, True),
        # cidr
        ({"source_ip": [{"cidr": "10.0.0.0/24"}]}, True),
        ({"source_ip": [{"cidr": "10.0.1.0/24"}]}, False),
        ({"store": [{"cidr": "10.0.0.0/8"}]}, False),
        # $or
        ({"$or": [{"store": ["other"]}, {"event": ["order_placed"]}]}, True),
        ({"$or": [{"store": ["other"]}, {"event": ["refund"]}]}, False),
        (
            {
                "store": ["example_corp"],
                "$or": [{"price_usd": [{"numeric": [">", 500]}]}, {"event": [{"prefix": "order"}]}],
            },
            True,
        ),
    ],
)
def test_attribute_policies(policy: dict[str, Any], expected: bool) -> None:
    check_policy(policy)
    assert matches(policy, ATTRS) is expected


BODY = {
    "order": {"status": "paid", "total": 42.5, "items": ["book", "pen"]},
    "region": "eu-west-1",
    "coupon": None,
}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"order": {"status": ["paid"]}}, True),
        ({"order": {"status": ["new"]}}, False),
        ({"order": {"total": [{"numeric": [">", 40]}]}, "region": [{"prefix": "eu-"}]}, True),
        ({"order": {"total": [42.5]}}, True),
        ({"order": {"total": ["42.5"]}}, False),
        ({"order": {"items": ["pen"]}}, True),
        ({"coupon": [None]}, True),
        ({"order": {"refund": [{"exists": False}]}}, True),
        ({"order": {"status": [{"exists": True}]}}, True),
        ({"$or": [{"region": ["us-east-1"]}, {"order": {"status": ["paid"]}}]}, True),
    ],
)
def test_body_policies(policy: dict[str, Any], expected: bool) -> None:
    check_policy(policy, body=True)
    assert body_matches(policy, BODY) is expected


def test_a_body_that_is_not_a_json_object_never_matches() -> None:
    assert body_matches({"a": [{"exists": False}]}, ["not", "an", "object"]) is False


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ({}, "filterPolicy must be a non-empty object"),
        ({"store": "example_corp"}, "filterPolicy.store must be a list of conditions"),
        ({"store": []}, "filterPolicy.store must list at least one condition"),
        ({"store": [{"bogus": 1}]}, "filterPolicy.store[0]: unknown operator 'bogus'"),
        ({"price": [{"numeric": ["<", 5, ">", 1]}]}, "filterPolicy.price[0].numeric: a range"),
        ({"price": [{"numeric": ["~", 5]}]}, "is not an operator"),
        ({"store": [{"prefix": 5}]}, "filterPolicy.store[0].prefix must be a string"),
        ({"ip": [{"cidr": "nope"}]}, "not an IP block"),
        ({"$or": [{"a": ["x"]}]}, "filterPolicy.$or must be a list of at least two policies"),
        ({"order": {"status": ["paid"]}}, "filterPolicy.order must be a list of conditions"),
    ],
)
def test_bad_policies_name_the_part_that_is_wrong(policy: dict[str, Any], error: str) -> None:
    with pytest.raises(PolicyError, match=error.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]")):
        check_policy(policy)


def test_the_trigger_model_refuses_a_bad_policy() -> None:
    spec = {"function": "f", "topic": {"nats": {"url": "nats://n:4222", "subject": "orders"}}}
    ok = Trigger.model_validate({"spec": {**spec, "topic": {**spec["topic"], "filterPolicy": {"a": ["x"]}}}})
    assert ok.spec.source_kind == "topic.nats"
    with pytest.raises(ValueError, match=r"filterPolicy\.a must be a list"):
        Trigger.model_validate({"spec": {**spec, "topic": {**spec["topic"], "filterPolicy": {"a": "x"}}}})
    body = {
        **spec["topic"],
        "filterPolicyScope": "MessageBody",
        "filterPolicy": {"order": {"status": ["paid"]}},
    }
    assert Trigger.model_validate({"spec": {**spec, "topic": body}}).spec.topic is not None


def test_headers_become_the_subject_the_message_id_and_typed_attributes() -> None:
    attrs, subject, message_id = attributes_of(
        {
            "Sns-Subject": "hello",
            "Nats-Msg-Id": "n-1",
            "Sns-Attribute-Types": "price=Number, tags=String.Array, bad=Nope",
            "price": "12.5",
            "tags": '["a"]',
            "store": "eu",
            "bad": "x",
        }
    )
    assert (subject, message_id) == ("hello", "n-1")
    assert attrs == {
        "price": {"Type": "Number", "Value": "12.5"},
        "tags": {"Type": "String.Array", "Value": '["a"]'},
        "store": {"Type": "String", "Value": "eu"},
        "bad": {"Type": "String", "Value": "x"},
    }
    assert attributes_of({"Sns-Message-Id": "m", "Nats-Msg-Id": "n"})[2] == "m"
    assert parse_types("") == {}


def test_the_event_parses_as_powertools_sns_event() -> None:
    text, encoded = message_text(b'{"order": 1}')
    assert not encoded
    event = sns_event(
        message=text,
        message_id="m-1",
        topic_arn="arn:kubelambda:nats:us-east-1:shop:orders",
        subscription_arn="arn:kubelambda:nats:us-east-1:shop:orders:sub",
        subject=None,
        attributes={"store": {"Type": "String", "Value": "eu"}},
        timestamp=1800000000.25,
    )
    parsed = SNSEvent(json.loads(json.dumps(event)))
    assert parsed.record.event_source == "aws:sns"
    assert parsed.sns_message == '{"order": 1}'
    assert parsed.record.sns.message_id == "m-1"
    assert parsed.record.sns.topic_arn == "arn:kubelambda:nats:us-east-1:shop:orders"
    assert parsed.record.sns.message_attributes["store"].value == "eu"
    assert parsed.record.sns.message_attributes["store"].get_type == "String"
    assert parsed.record.sns.timestamp == "2027-01-15T08:00:00.250Z"
    assert parsed.record.sns.get_type == "Notification"
    assert parsed.record.sns.subject is None
    assert message_text(b"\xff\x00") == ("/wA=", True)
