"""CORS for HTTP Triggers, answered as a Lambda function URL answers it (a Trigger's ``http.cors`` block).

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) to a route with CORS settings is
answered by the gateway itself, before any auth check and without invoking the function; every other answer of
such a route to a request with an allowed ``Origin`` carries the allow headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CorsPolicy:
    allow_origins: frozenset[str]
    allow_methods: frozenset[str]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age: int
    allow_credentials: bool

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> CorsPolicy:
        """From the CRD's camelCase block (validated by the API server)."""
        return cls(
            allow_origins=frozenset(spec.get("allowOrigins") or ()),
            allow_methods=frozenset(m.upper() for m in spec.get("allowMethods") or ()),
            allow_headers=tuple(spec.get("allowHeaders") or ()),
            expose_headers=tuple(spec.get("exposeHeaders") or ()),
            max_age=int(spec.get("maxAge") or 0),
            allow_credentials=bool(spec.get("allowCredentials")),
        )

    def allowed_origin(self, origin: str) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None when it is not allowed."""
        if "*" in self.allow_origins:
            return origin if self.allow_credentials else "*"  # browsers refuse "*" with credentials
        return origin if origin in self.allow_origins else None

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """What a (non-preflight) answer to a cross-origin request adds."""
        allowed = self.allowed_origin(origin) if origin else None
        if allowed is None:
            return []
        headers = [("Access-Control-Allow-Origin", allowed), ("Vary", "Origin")]
        if self.expose_headers:
            headers.append(("Access-Control-Expose-Headers", ", ".join(self.expose_headers)))
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def preflight(self, origin: str, method: str) -> list[tuple[str, str]]:
        """The answer's headers to a preflight; none when the origin or the method is not allowed."""
        allowed = self.allowed_origin(origin)
        if allowed is None or not ({"ANY", "*", method.upper()} & self.allow_methods):
            return []
        methods = "*" if {"ANY", "*"} & self.allow_methods else ", ".join(sorted(self.allow_methods))
        headers = [
            ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Allow-Methods", methods),
            ("Vary", "Origin"),
        ]
        if self.allow_headers:
            headers.append(("Access-Control-Allow-Headers", ", ".join(self.allow_headers)))
        if self.max_age:
            headers.append(("Access-Control-Max-Age", str(self.max_age)))
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers
