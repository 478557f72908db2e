"""Gateway settings, declared once (pydantic-settings): environment variables ``KUBELAMBDA_GATEWAY_<FIELD>``.

Bad values fail at start naming the key and the value.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SIX_MB = 6 * 1024 * 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBELAMBDA_GATEWAY_", extra="ignore", frozen=True)

    host: str = "0.0.0.0"
    """Address to listen on (default all)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port of the Invoke API, HTTP routes and /metrics (default 8080)."""
    default_namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Namespace of a bare FunctionName (``hello``); ``ns/hello`` and ARNs name their own."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$")
    """Region in the ARNs the gateway reports."""
    pool_limit: int = Field(default=1000, ge=1)
    """In-flight invocations across all functions (Lambda's account concurrency; default 1,000)."""
    slot_wait_seconds: float = Field(default=2.0, ge=0, le=60)
    """How long a request below its limits may wait for a free worker slot on a ready instance (default 2 s)."""
    cold_start_allowance_seconds: float = Field(default=60.0, ge=0, le=900)
    """How long past the function timeout a request waits for a first instance (default 60 s)."""
    activator_queue: int = Field(default=1000, ge=1)
    """Requests one function may hold while it has no instance (default 1,000); more get 429."""
    max_request_bytes: int = Field(default=SIX_MB, ge=1)
    """Largest synchronous payload in bytes (Lambda: 6 MB)."""
    autoscale_interval_seconds: float = Field(default=2.0, gt=0, le=60)
    """How often the autoscaler decides (default 2 s)."""
    sample_interval_seconds: float = Field(default=0.5, gt=0, le=10)
    """How often in-flight concurrency is sampled for the autoscaler (default 0.5 s)."""
    http_routes: bool = False
    """Serve every Function at ``/http/<namespace>/<name>/<path>`` in API Gateway's HTTP API format (payload 2.0)
    (default off; ``kubelambda dev up`` turns it on)."""
    kubeconfig: str | None = None
    """Kubeconfig to use; unset = in-cluster credentials, or ``$KUBECONFIG``."""
