"""HTTP Trigger routes matched as API Gateway's HTTP API matches them: a table."""

from __future__ import annotations

import pytest

from kubelambda.gateway.routes import Match, RouteTable, compile_route

ROUTES = [
    ("list", "/orders", ["GET"]),
    ("create", "/orders", ["POST"]),
    ("one", "/orders/{id}", ["GET", "DELETE"]),
    ("any-one", "/orders/{id}", ["ANY"]),
    ("mine", "/orders/mine", ["GET"]),
    ("item", "/orders/{id}/items/{item-no}", ["ANY"]),
    ("files", "/files/{proxy+}", ["GET"]),
    ("root", "/", ["ANY"]),
]


@pytest.fixture
def table() -> RouteTable:
    t = RouteTable()
    for name, path, methods in ROUTES:
        t.set(compile_route("demo", name, f"fn-{name}", path, methods))
    return t


@pytest.mark.parametrize(
    ("method", "path", "trigger", "params", "route_key"),
    [
        ("GET", "/orders", "list", {}, "GET /orders"),
        ("POST", "/orders", "create", {}, "POST /orders"),
        ("GET", "/orders/42", "one", {"id": "42"}, "GET /orders/{id}"),
        ("PUT", "/orders/42", "any-one", {"id": "42"}, "ANY /orders/{id}"),  # method route first, then ANY
        ("GET", "/orders/mine", "mine", {}, "GET /orders/mine"),  # literal beats a variable
        ("POST", "/orders/mine", "any-one", {"id": "mine"}, "ANY /orders/{id}"),
        (
            "GET",
            "/orders/7/items/x-1",
            "item",
            {"id": "7", "item-no": "x-1"},
            "ANY /orders/{id}/items/{item-no}",
        ),
        ("GET", "/files/a/b/c.txt", "files", {"proxy": "a/b/c.txt"}, "GET /files/{proxy+}"),
        ("GET", "/", "root", {}, "ANY /"),
    ],
    ids=[
        "list",
        "create",
        "one",
        "any",
        "literal-first",
        "literal-other-method",
        "two-vars",
        "greedy",
        "root",
    ],
)
def test_the_most_specific_route_wins(
    table: RouteTable, method: str, path: str, trigger: str, params: dict[str, str], route_key: str
) -> None:
    found = table.match("demo", method, path)
    assert isinstance(found, Match)
    assert found.route.trigger == trigger
    assert found.path_parameters == params
    assert found.route.route_key(method) == route_key


@pytest.mark.parametrize(
    ("namespace", "method", "path", "status"),
    [
        ("demo", "GET", "/nothing", 404),
        ("demo", "DELETE", "/orders", 405),
        ("demo", "POST", "/files/a", 405),
        ("demo", "GET", "/files/", 404),  # a greedy variable needs at least one character
        ("other", "GET", "/orders", 404),  # each namespace is its own API
    ],
    ids=["no-route", "wrong-method", "greedy-wrong-method", "greedy-empty", "other-namespace"],
)
def test_unmatched_requests_get_404_or_405(
    table: RouteTable, namespace: str, method: str, path: str, status: int
) -> None:
    assert table.match(namespace, method, path) == status


def test_routes_follow_the_triggers(table: RouteTable) -> None:
    table.apply_trigger("DELETED", {"metadata": {"namespace": "demo", "name": "mine"}})
    found = table.match("demo", "GET", "/orders/mine")
    assert isinstance(found, Match)
    assert found.route.trigger == "one"
    table.apply_trigger(
        "MODIFIED",
        {
            "metadata": {"namespace": "demo", "name": "one"},
            "spec": {"function": "fn-one", "enabled": False, "http": {"path": "/orders/{id}"}},
        },
    )
    found = table.match("demo", "GET", "/orders/1")
    assert isinstance(found, Match)
    assert found.route.trigger == "any-one"  # disabled triggers route nothing


@pytest.mark.parametrize(
    "path", ["/a/{rest+}/b", "/{x+}/{y}"], ids=["greedy-in-the-middle", "variable-after-greedy"]
)
def test_a_greedy_variable_must_be_last(path: str) -> None:
    with pytest.raises(ValueError, match="must be the last segment"):
        compile_route("demo", "t", "f", path, ["ANY"])


def test_a_route_is_aws_iam_unless_its_trigger_says_none() -> None:
    table = RouteTable()
    for name, auth in (("private", None), ("public", "NONE")):
        http = {"path": f"/{name}", **({"authType": auth} if auth else {})}
        table.apply_trigger(
            "ADDED",
            {"metadata": {"namespace": "demo", "name": name}, "spec": {"function": "f", "http": http}},
        )
    private, public = table.match("demo", "GET", "/private"), table.match("demo", "GET", "/public")
    assert isinstance(private, Match)
    assert isinstance(public, Match)
    assert private.route.auth_type == "AWS_IAM"
    assert public.route.auth_type == "NONE"
