"""HTTP Trigger routes: ``Trigger.spec.http {path, methods}`` → a route on the gateway, matched as API Gateway's
HTTP API matches routes. The table is pure; :meth:`RouteTable.run` keeps it current from a watch of Triggers.

Each namespace is one "API": a Trigger in namespace ``demo`` with ``path: /orders/{id}`` answers at
``/api/demo/orders/{id}``. Matching follows API Gateway: the most specific route wins — a path without
variables before one with ``{name}`` segments, those before a greedy ``{proxy+}``; a route naming the method
before ``ANY``. A path that matches no route answers 404; one that matches only other methods answers 405.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kubelambda.api.v1alpha1 import GROUP, VERSION
from kubelambda.gateway.cors import CorsPolicy
from kubelambda.jsonobj import JSON
from kubelambda.kube import KubeClient, list_and_watch, resource_path

logger = logging.getLogger(__name__)
_VARIABLE = re.compile(r"\{([A-Za-z0-9_.-]+)(\+?)\}")


@dataclass(frozen=True)
class Route:
    namespace: str
    trigger: str
    function: str
    path: str  # the template, e.g. /orders/{id}
    methods: frozenset[str]  # upper case; "ANY" matches every method
    pattern: re.Pattern[str]
    # Sort key: fewer variables and no greedy segment first, then longer literal text.
    specificity: tuple[int, int, int]
    auth_type: str = "AWS_IAM"  # NONE: public, no caller check (a function URL's AuthType)
    cors: CorsPolicy | None = None  # the Trigger's http.cors block (gateway/cors.py)

    def route_key(self, method: str) -> str:
        """API Gateway's routeKey: the method the route names (or ANY) and its path template."""
        return f"{method if method in self.methods else 'ANY'} {self.path}"


def compile_route(
    namespace: str,
    trigger: str,
    function: str,
    path: str,
    methods: Iterable[str],
    *,
    auth_type: str = "AWS_IAM",
    cors: CorsPolicy | None = None,
) -> Route:
    """A route from a Trigger's ``http`` block; raises ``ValueError`` naming a bad template."""
    regex = ""
    position = 0
    variables = 0
    greedy = False
    literal = 0
    for match in _VARIABLE.finditer(path):
        text = path[position : match.start()]
        regex += re.escape(text)
        literal += len(text)
        name, plus = match.group(1), match.group(2)
        if greedy:
            raise ValueError(f"path {path!r}: a greedy variable {{{name}+}} must be the last segment")
        if plus:
            if match.end() != len(path):
                raise ValueError(f"path {path!r}: a greedy variable {{{name}+}} must be the last segment")
            regex += f"(?P<{_group(name)}>.+)"
            greedy = True
        else:
            regex += f"(?P<{_group(name)}>[^/]+)"
        variables += 1
        position = match.end()
    regex += re.escape(path[position:])
    literal += len(path) - position
    return Route(
        namespace=namespace,
        trigger=trigger,
        function=function,
        path=path,
        methods=frozenset(m.upper() for m in methods),
        pattern=re.compile(f"^{regex}$"),
        specificity=(int(greedy), variables, -literal),
        auth_type=auth_type,
        cors=cors,
    )


def _group(name: str) -> str:
    """Regex group names cannot hold '.' or '-'; encode them reversibly."""
    return "v_" + name.replace("_", "__").replace(".", "_d").replace("-", "_h")


def _ungroup(group: str) -> str:
    out, i, body = [], 0, group[2:]
    while i < len(body):
        if body[i] == "_" and i + 1 < len(body):
            out.append({"_": "_", "d": ".", "h": "-"}[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Match:
    route: Route
    path_parameters: dict[str, str]


@dataclass
class RouteTable:
    """Routes by namespace, kept sorted most specific first."""

    routes: dict[str, list[Route]] = field(default_factory=dict)
    by_trigger: dict[tuple[str, str], Route] = field(default_factory=dict)

    def set(self, route: Route) -> None:
        self.remove(route.namespace, route.trigger)
        self.by_trigger[(route.namespace, route.trigger)] = route
        routes = [*self.routes.get(route.namespace, []), route]
        # Most specific path first; for one path, routes naming methods before ANY.
        self.routes[route.namespace] = sorted(
            routes, key=lambda r: (r.specificity, r.path, "ANY" in r.methods, r.trigger)
        )

    def remove(self, namespace: str, trigger: str) -> None:
        old = self.by_trigger.pop((namespace, trigger), None)
        if old is not None:
            self.routes[namespace] = [r for r in self.routes.get(namespace, []) if r is not old]

    def match(self, namespace: str, method: str, path: str) -> Match | int:
        """The route for ``method path`` in ``namespace``'s API, or the status to answer (404 or 405)."""
        method = method.upper()
        path_matched = False
        for route in self.routes.get(namespace, []):
            found = route.pattern.match(path)
            if found is None:
                continue
            path_matched = True
            if method in route.methods or "ANY" in route.methods:
                return Match(route, {_ungroup(k): v for k, v in found.groupdict().items()})
        return 405 if path_matched else 404

    # ---- kept current from a watch of Triggers ----------------------------------------------------

    def apply_trigger(self, kind: str, body: JSON) -> None:
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        spec = body.get("spec") or {}
        http = spec.get("http")
        if kind == "DELETED" or not http or spec.get("enabled") is False:
            self.remove(namespace, name)
            return
        try:
            route = compile_route(
                namespace,
                name,
                spec["function"],
                http["path"],
                http.get("methods") or ["ANY"],
                auth_type=http.get("authType", "AWS_IAM"),
                cors=CorsPolicy.from_spec(http["cors"]) if http.get("cors") else None,
            )
        except (KeyError, ValueError) as e:
            logger.warning("Ignored the route of Trigger %s/%s: %s", namespace, name, e)
            self.remove(namespace, name)
            return
        self.set(route)

    async def run(self, kube: KubeClient) -> None:
        async def on_list(items: list[JSON]) -> None:
            self.routes.clear()
            self.by_trigger.clear()
            for item in items:
                self.apply_trigger("ADDED", item)

        async def on_event(kind: str, body: JSON) -> None:
            self.apply_trigger(kind, body)

        await list_and_watch(
            kube,
            resource_path(f"{GROUP}/{VERSION}", "triggers"),
            on_list=on_list,
            on_event=on_event,
        )
