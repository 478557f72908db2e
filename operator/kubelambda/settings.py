"""Operator settings, declared once (pydantic-settings): environment variables ``KUBELAMBDA_<FIELD>``.

Every field says its unit and default. Bad values fail at start with the key and the value, e.g.
``KUBELAMBDA_GATEWAY_URL: Input should be a valid URL``.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubelambda import __version__
from kubelambda.api.v1alpha1 import RUNTIMES
from kubelambda.natsauth import log_url
from kubelambda.runtimes.table import image as runtime_image

FIELD_MANAGER = "kubelambda-operator"
"""Server-side apply field manager of everything the operator owns."""
SCALE_FIELD_MANAGER = "kubelambda-autoscaler"
"""The field manager that owns a function Deployment's ``spec.replicas`` (the autoscaler; the operator hands
the initial scale over to it when it creates the Deployment)."""


def default_runtime_images(registry: str) -> dict[str, str]:
    """Runtime → ``<registry>/runtime-<family>:<tag>``, from the runtime table."""
    return {name: runtime_image(name, registry) for name in RUNTIMES}


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBELAMBDA_", extra="ignore", frozen=True)

    registry: str = Field(default="ghcr.io/kubelambda", min_length=1)
    """Registry and namespace of kubelambda's images (default ``ghcr.io/kubelambda``)."""
    runtime_images: dict[str, str] = Field(default_factory=dict)
    """Runtime → image, JSON (default: ``<registry>/runtime-<family>:<runtime version>``, e.g. ``runtime-python:3.12``). A runtime
    missing here makes its Functions ``Ready=False`` with reason ``RuntimeUnknown``."""
    control_plane_image: str = ""
    """The kubelambda image, used for the code-fetching init container (default ``<registry>/kubelambda:<version>``)."""
    url_allow_cidrs: list[str] = Field(default_factory=list)
    """Addresses the ``fetch-code`` init container may download code from although they are loopback,
    link-local (cloud metadata), unspecified or the API server's, JSON list of CIDRs (default empty: none)."""
    function_egress_deny_cidrs: list[str] = Field(default_factory=list)
    """Ranges no function pod may reach, JSON list of CIDRs, in every Function's egress NetworkPolicy (default
    empty: none; the chart denies the cloud metadata addresses, ``networkPolicy.functionEgressDeny``)."""
    gateway_url: str = Field(
        default="http://kubelambda-gateway.kubelambda-system.svc:8080", pattern=r"^https?://[^\s]+$"
    )
    """Base URL of the gateway, shown as each Function's ``status.invokeUrl``."""
    nats_url: str | None = Field(default=None, pattern=r"^nats://[^\s]+$")
    """The platform's NATS (``nats://host:4222``, with the operator's own NATS user where NATS has users): the
    operator makes each namespace's log stream there, and bridges (``onFailure.nats``) and agents (logs) get it
    unless ``bridge_nats_url`` / ``agent_nats_url`` say otherwise; unset = neither has one."""
    bridge_nats_url: str | None = Field(default=None, pattern=r"^nats://[^\s]+$")
    """The NATS URL handed to Trigger bridges, with the bridges' own NATS user (docs/security.md, "NATS"): it is in
    their pods' environment in tenants' namespaces; default ``nats_url``."""
    agent_nats_url: str | None = Field(default=None, pattern=r"^nats://[^\s]+$")
    """The NATS URL function pods' agents ship logs to; default ``nats_url``. With an agent key, its user is
    replaced by each namespace's own log credentials (``logs.<namespace>``, :func:`log_nats_url_for`)."""
    tracing_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """OTLP/HTTP endpoint of the platform's traces (``KUBELAMBDA_TRACING_ENDPOINT``, docs/tracing.md), handed to
    Trigger bridges with ``tracing_sample_ratio``; unset = bridges trace nothing."""
    tracing_sample_ratio: float = Field(default=0.05, ge=0, le=1)
    """``KUBELAMBDA_TRACING_SAMPLE_RATIO``, handed to Trigger bridges (default 0.05)."""
    logs: bool = True
    """Function logs kept past their pods (docs/logs.md): with ``nats_url`` set, every function pod's agent ships
    its log to the platform's NATS, and the operator makes each namespace's log stream. False = pod logs only."""
    log_retention_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    """How long a namespace's log stream keeps records, in seconds (default 7 days)."""
    log_retention_by_namespace: dict[str, float] = Field(default_factory=dict)
    """Namespace → retention in seconds, JSON, over ``log_retention_seconds``."""
    log_max_bytes: int = Field(default=-1, ge=-1)
    """Size limit of each namespace's log stream in bytes; the oldest records go first (default -1: none)."""
    system_namespace: str = Field(default="kubelambda-system", min_length=1)
    """Namespace of the gateway (and its warm pools): function pods admit traffic only from there."""
    metrics_namespaces: list[str] = Field(default_factory=list)
    """Namespaces whose pods may scrape function pods' ``/metrics`` through their ingress NetworkPolicy (Prometheus's,
    e.g. ``["monitoring"]``), JSON list (default empty: only the system namespace's gateway and bridges reach
    function pods)."""
    gateway_service_account: str = Field(
        default="kubelambda-gateway", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253
    )
    """The gateway's ServiceAccount (in ``system_namespace``): each Function gives it a Role to scale exactly the
    Function's Deployment (``<name>-scale``; docs/security.md)."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$")
    """AWS_REGION the functions see."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch, JSON list (default: empty = all namespaces)."""
    peering: str | None = None
    """kopf peering name for HA (several replicas, one active). Unset = standalone (one replica)."""
    cpu_request_fraction: float = Field(default=0.1, gt=0, le=1)
    """CPU request of a function pod as a fraction of its CPU limit (memoryMB / 1769 cores); default 0.1."""
    kubeconfig: str | None = None
    """Kubeconfig to use; unset = in-cluster credentials, or ``$KUBECONFIG``."""
    agent_key: SecretStr | None = Field(default=None, min_length=16)
    """The platform's agent key (at least 16 characters; the chart generates one): each Function's pods then
    answer ``/invoke`` and ``/metrics`` only with the token derived from it (docs/security.md). Unset = agents
    answer anyone who reaches port 8080."""
    agent_metrics_token: SecretStr | None = Field(default=None, min_length=16)
    """A token every agent also accepts on ``/metrics`` (for Prometheus); unset = only the Function's token."""
    problem_retry_seconds: float = Field(default=30.0, gt=0, le=3600)
    """How soon a Function with a problem that may go away by itself (a missing ServiceAccount) is looked at
    again, in seconds (default 30)."""
    reconcile_workers: int = Field(default=100, ge=1, le=1000)
    """Reconciles running at once (a semaphore around the reconcile; kopf's own worker limit stays unset)."""
    api_requests_in_flight: int = Field(default=32, ge=1, le=1000)
    """Reads and writes of owned objects the reconciles have in flight to the API server at once (a semaphore
    around them), so many Functions at once queue in the operator rather than in the API server."""
    liveness_endpoint: str | None = Field(default=None, pattern=r"^http://[^\s]+$")
    """kopf's liveness endpoint (``http://host:port/healthz``), for the Deployment's probes; unset = none."""
    metrics_address: str | None = Field(default=None, pattern=r"^[^\s:]+:[0-9]{1,5}$")
    """Where the operator serves ``GET /metrics`` (its ``kubelambda_operator_*`` metrics), ``host:port``;
    unset = not served."""

    @field_validator("url_allow_cidrs", "function_egress_deny_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        from kubelambda.egress import parse_cidrs

        return [str(net) for net in parse_cidrs(value)]

    @field_validator("runtime_images")
    @classmethod
    def _known_runtimes(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(RUNTIMES))
        if unknown:
            raise ValueError(f"unknown runtimes {unknown}; known: {', '.join(RUNTIMES)}")
        return value

    @field_validator("log_retention_by_namespace")
    @classmethod
    def _positive_retention(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {ns: v for ns, v in value.items() if not v > 0}
        if bad:
            raise ValueError(f"retention must be > 0 seconds, got {bad}")
        return value

    @property
    def log_nats_url(self) -> str | None:
        """Where function pods ship their logs (with the agents' NATS user); None = not shipped."""
        return (self.agent_nats_url or self.nats_url) if self.logs and self.nats_url else None

    def log_nats_url_for(self, namespace: str, issued: int) -> str | None:
        """What the pods of ``namespace`` made at ``issued`` (Unix seconds) ship their logs to: with an agent
        key, as that namespace's log user (docs/logs.md, "Credentials"); None = not shipped."""
        url = self.log_nats_url
        if url is None or self.agent_key is None:
            return url
        return log_url(url, self.agent_key.get_secret_value(), namespace, issued)

    @property
    def log_store_url(self) -> str | None:
        """Where the operator makes each namespace's log stream (its own NATS user); None = no log store."""
        return self.nats_url if self.logs else None

    def image_for(self, runtime: str) -> str | None:
        images = self.runtime_images or default_runtime_images(self.registry)
        return images.get(runtime)

    @property
    def fetcher_image(self) -> str:
        return self.control_plane_image or f"{self.registry}/kubelambda:{__version__}"
