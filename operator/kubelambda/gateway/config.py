"""Gateway settings, declared once (pydantic-settings): environment variables ``KUBELAMBDA_GATEWAY_<FIELD>``.

Bad values fail at start naming the key and the value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from kubelambda.egress import AddressPolicy

SIX_MB = 6 * 1024 * 1024
ONE_MB = 1024 * 1024


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
    max_response_bytes: int = Field(default=SIX_MB, ge=1)
    """Largest response read from an instance, in bytes (Lambda: 6 MB); more is Lambda's
    ``Function.ResponseSizeTooLarge`` error, and the rest is never read."""
    max_buffered_request_bytes: int = Field(default=256 * ONE_MB, ge=1)
    """Request bodies all connections together may hold at once, in bytes (default 256 MB); a request that would
    go over it is answered 429 before more of it is read."""
    idle_timeout_seconds: float = Field(default=75.0, gt=0, le=3600)
    """A connection that sends no complete request headers within this long (after connecting, or after its
    previous response: the keep-alive timeout) is closed (default 75 s, above common load balancers' 60 s)."""
    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Time a request body may take to arrive, whole (default 60 s); slower is answered 408."""
    autoscale_interval_seconds: float = Field(default=2.0, gt=0, le=60)
    """How often the autoscaler decides (default 2 s)."""
    sample_interval_seconds: float = Field(default=0.5, gt=0, le=10)
    """How often in-flight concurrency is sampled for the autoscaler (default 0.5 s)."""
    http_routes: bool = False
    """Serve every Function at ``/http/<namespace>/<name>/<path>`` in API Gateway's HTTP API format (payload 2.0)
    (default off; ``kubelambda dev up`` turns it on)."""
    nats_url: str | None = Field(default=None, pattern=r"^(nats|tls)://[^\s]+$")
    """NATS server with JetStream that holds Event (asynchronous) invocations (``nats://host:4222``, or several
    servers of one cluster comma-separated); unset = Event invocations answer NotImplementedException (501)."""
    logs: bool = True
    """Warm-pool pods ship their functions' logs to ``agent_nats_url`` (docs/logs.md), as the operator's function
    pods do; False = pod logs only."""
    agent_nats_url: str | None = Field(default=None, pattern=r"^(nats|tls)://[^\s]+$")
    """The NATS URL warm-pool pods ship logs to (docs/logs.md); default ``nats_url``. Its credentials are never
    used: a pool pod gets its function namespace's own log credentials with ``/specialize`` (with an agent key)."""
    logauth_nats_url: str | None = Field(default=None, pattern=r"^(nats|tls)://[^\s]+$")
    """NATS as its ``logauth`` user: with ``nats_callout_seed`` and ``agent_key``, the gateway answers the NATS
    server's authorization requests for log shippers (``logs.<namespace>``, docs/logs.md "Credentials")."""
    nats_callout_seed: SecretStr | None = Field(default=None, min_length=16)
    """The secret the NATS auth callout's issuer key derives from (``KL_NATS_CALLOUT_SEED`` of the chart's NATS
    Secret; the server trusts the key's public half)."""
    async_stream: str = Field(default="KUBELAMBDA_ASYNC", pattern=r"^[A-Za-z0-9_-]+$")
    """JetStream stream of queued events (file storage; created at start if missing)."""
    async_replicas: int = Field(default=3, ge=1, le=5)
    """Replicas of the JetStream streams (events, dead letters): ``min(this, NATS cluster size)``, so 3 on a
    3-node NATS and 1 on a lone server; a stream with fewer is raised to it in place at start (default 3)."""
    async_max_event_bytes: int = Field(default=ONE_MB, ge=1)
    """Largest Event payload in bytes (Lambda: 1 MB)."""
    async_worker: bool = True
    """Run the async worker (consumes the stream, invokes, retries, sends records) in the gateway process
    (default on when ``nats_url`` is set)."""
    async_worker_concurrency: int = Field(default=64, ge=1, le=10000)
    """Events the in-process worker handles at once (default 64)."""
    async_retry_delays_seconds: tuple[float, ...] = Field(default=(60.0, 120.0), min_length=2, max_length=2)
    """Delay before the first and second retry after a function error (Lambda: about 1 and 2 minutes)."""
    async_backoff_min_seconds: float = Field(default=1.0, gt=0, le=300)
    """First requeue delay after a throttle or platform error; doubles per attempt (default 1 s)."""
    async_backoff_max_seconds: float = Field(default=300.0, gt=0, le=3600)
    """Longest requeue delay after a throttle or platform error (default 5 min)."""
    async_ack_wait_seconds: float = Field(default=30.0, ge=1, le=3600)
    """How long JetStream waits before redelivering an event whose worker stopped answering (default 30 s;
    a running invocation is kept alive meanwhile)."""
    async_done_ttl_seconds: float = Field(default=21600.0, ge=60, le=7 * 86400)
    """How long a handled event's done marker is kept (stream ``KUBELAMBDA_ASYNC_DONE``): JetStream delivering
    an acknowledged event again within this time acknowledges it instead of running it twice (default 6 h,
    Lambda's longest event age)."""
    # ---- several replicas (docs/architecture.md, "Several gateway replicas"; docs/operations.md) --------------
    peer_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+$")
    """This replica's URL as the other replicas reach it (``http://<pod IP>:8080``; the chart sets it). Set =
    several replicas: one of them, the leader (a Lease), counts every replica's in-flight slots, so reserved
    concurrency and the pool limit hold exactly, and alone decides the scaling. Needs ``agent_key`` (the
    replicas' requests to each other carry a token derived from it). Unset = one replica counts alone."""
    lease_namespace: str = Field(default="kubelambda-system", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Namespace of the replicas' Leases (``kubelambda-gateway-leader`` and one per replica)."""
    lease_seconds: float = Field(default=10.0, ge=1, le=120)
    """How long a replica's Lease lasts unrenewed: a SIGKILLed leader is replaced within about this plus half
    ``lease_renew_seconds`` (default 10 s). The leader acts as one until a second short of it after the start of
    its last successful renewal (gateway/peers.py)."""
    lease_renew_seconds: float = Field(default=2.0, gt=0, le=60)
    """How often each replica renews its member Lease (default 2 s); the leader's is renewed, or read and taken
    when expired, every half of it."""
    drain_delay_seconds: float = Field(default=0.0, ge=0, le=300)
    """On SIGTERM, how long the replica keeps answering after /readyz turned 503, so that Services and load
    balancers stop sending to it first (default 0 s; the chart sets 5 s)."""
    drain_timeout_seconds: float = Field(default=900.0, ge=0, le=3600)
    """On SIGTERM, how long the replica then waits for its in-flight requests before it stops (default 900 s,
    Lambda's longest timeout; the chart's terminationGracePeriodSeconds is above it)."""
    kubeconfig: str | None = None
    """Kubeconfig to use; unset = in-cluster credentials, or ``$KUBECONFIG``."""
    url_allow_cidrs: list[str] = Field(default_factory=list)
    """Addresses ``url`` destinations may reach although they are loopback, link-local (cloud metadata), the
    unspecified address or the API server's, JSON list of CIDRs (default empty: none; docs/security.md)."""

    # ---- the code store of the control-plane API (docs/versions.md, "Code") ---------------------------
    code_store_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """S3 API endpoint of the platform's code store (``http://seaweedfs.kubelambda-system:8333``); unset = no
    store: ``Code.ZipFile`` is unpacked into ``code.inline`` (plain text files up to 1 MiB), S3Bucket refused."""
    code_store_bucket: str = Field(default="kubelambda-code", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    """Bucket of the content-addressed zips (``sha256/<hex>.zip``), created if missing."""
    code_store_region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]+$")
    """Region the store's requests are signed for."""
    code_store_access_key_id: str | None = None
    """The store's access key (the Secret's ``AWS_ACCESS_KEY_ID`` in the chart)."""
    code_store_secret_access_key: SecretStr | None = None
    """The store's secret key; code URLs are signed with a key derived from it (every replica shares it)."""
    code_store_source_buckets: list[str] = Field(default_factory=list)
    """Buckets of the store a CreateFunction / UpdateFunctionCode may name with ``S3Bucket``, JSON list
    (default empty: none). Anyone allowed to create a function may read any object in them."""
    code_store_gc_interval_seconds: float = Field(default=600.0, gt=0, le=86400)
    """How often unreferenced zips are looked for (default 10 min): by the leader replica (one replica alone
    without ``peer_url``), which deletes every zip of the store that no Function, published version or alias (whose
    versions are Functions) references and that is older than ``code_store_gc_grace_seconds``."""
    code_store_gc_grace_seconds: float = Field(default=3600.0, ge=1, le=30 * 86400)
    """Age below which an unreferenced zip is kept (default 1 h): a zip just stored for a CreateFunction /
    UpdateFunctionCode whose Function is not written yet is never deleted under it."""
    code_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """The gateway URL function pods download stored code from (``http://kubelambda-gateway.kubelambda-system:8080``);
    unset = the URL the API caller used."""

    event_source_sqs_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """The SQS-compatible service an event source mapping's queue ARN (``arn:aws:sqs:<region>:<account>:<name>``)
    is on: the Trigger reads ``<endpoint>/<account>/<name>``; unset = SQS ARNs are refused."""
    event_source_kinesis_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """The Kinesis-compatible service an event source mapping's stream ARN is on; unset = refused."""

    # ---- who may invoke what (docs/security.md) --------------------------------------------------------
    auth_mode: Literal["kubernetes", "none"] = "kubernetes"
    """``kubernetes`` (default): every call is authenticated (SigV4 with an access key, or a Kubernetes bearer
    token) and authorised with RBAC (verb ``invoke`` on ``functions.kubelambda.io``). ``none``: anyone who
    reaches the gateway may invoke everything (trusted networks only)."""
    auth_namespace: str = Field(default="kubelambda-system", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """The platform's namespace: access keys are Secrets there, and its ServiceAccounts are the platform
    identities trusted with internal headers."""
    auth_audiences: list[str] = Field(default_factory=list)
    """Audiences a bearer token must carry, JSON list (default empty: the API server's own audiences)."""
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    """How long a TokenReview or SubjectAccessReview answer is reused, allowed or denied (default 5 s)."""

    # ---- warm pools (docs/warm-pools.md) --------------------------------------------------------------
    warm_pool_sizes: dict[str, int] = Field(default_factory=dict)
    """Generic pods kept per runtime, JSON (``{"python3.12": 2, "nodejs22": 1}``); default empty = no pools
    (``kubelambda dev up`` sets python3.11 and nodejs20). A cold invoke of a qualifying
    Function is served by one of them instead of waiting for a new pod."""
    warm_pool_max_sizes: dict[str, int] = Field(default_factory=dict)
    """Largest pool per runtime under demand, JSON (default 4 times its size): each claim in the last minute adds a pod."""
    agent_key: SecretStr | None = Field(default=None, min_length=16)
    """The platform's agent key, the operator's ``KUBELAMBDA_AGENT_KEY``: the gateway shows agents the tokens
    derived from it (docs/security.md). Unset = no token is sent (agents of a platform without a key)."""
    warm_pool_namespace: str = Field(
        default="kubelambda-warm-pool", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    """Namespace of the pool Deployments and their pods (default ``kubelambda-warm-pool``): one of their own,
    holding no platform ServiceAccount, where the gateway's Role lets it write pool objects (docs/security.md)."""
    warm_pool_registry: str = Field(default="ghcr.io/kubelambda", min_length=1)
    """Registry of the runtime images the pools run (as the operator's ``KUBELAMBDA_REGISTRY``)."""
    warm_pool_images: dict[str, str] = Field(default_factory=dict)
    """Runtime → image of its pool, JSON (default ``<registry>/runtime-<family>:<version>``, as the operator)."""
    warm_pool_memory_mb: int = Field(default=1024, ge=128, le=10240)
    """Memory (and proportional CPU) of a pool pod, MB (default 1024); Functions asking for more take the normal
    path."""
    warm_pool_max_lifetime_seconds: float = Field(default=600.0, gt=0, le=86400)
    """A specialised pool pod is deleted once its function's own instance is ready, or after this long (default
    600 s), whichever comes first."""

    def destination_policy(self, api_server: str | None) -> AddressPolicy:
        """Where ``url`` destinations may not go: ``api_server`` is the API server URL this process uses."""
        from kubelambda.egress import AddressPolicy, api_server_addresses, parse_cidrs

        return AddressPolicy(
            allow=parse_cidrs(self.url_allow_cidrs),
            api_server=api_server_addresses(api_server),
            setting="KUBELAMBDA_GATEWAY_URL_ALLOW_CIDRS",
        )

    @model_validator(mode="after")
    def _peers_need_a_key(self) -> GatewaySettings:
        if self.peer_url is not None and self.agent_key is None:
            raise ValueError(
                f"KUBELAMBDA_GATEWAY_PEER_URL={self.peer_url} (several replicas) needs KUBELAMBDA_GATEWAY_AGENT_KEY: "
                "the replicas' requests to each other carry a token derived from it"
            )
        return self

    @model_validator(mode="after")
    def _code_store_needs_a_secret(self) -> GatewaySettings:
        if self.code_store_endpoint is not None and not (
            self.code_store_secret_access_key and self.code_store_secret_access_key.get_secret_value()
        ):
            raise ValueError(
                f"KUBELAMBDA_GATEWAY_CODE_STORE_ENDPOINT={self.code_store_endpoint} needs "
                "KUBELAMBDA_GATEWAY_CODE_STORE_SECRET_ACCESS_KEY: the code URLs are signed with a key derived from it"
            )
        return self

    @field_validator("url_allow_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        from kubelambda.egress import parse_cidrs

        parse_cidrs(value)
        return value

    @field_validator("warm_pool_sizes", "warm_pool_max_sizes")
    @classmethod
    def _pool_sizes(cls, value: dict[str, int]) -> dict[str, int]:
        from kubelambda.api.v1alpha1 import RUNTIMES

        unknown = sorted(set(value) - set(RUNTIMES))
        if unknown:
            raise ValueError(f"unknown runtimes {unknown}; known: {', '.join(RUNTIMES)}")
        bad = sorted(rt for rt, n in value.items() if not 0 <= n <= 100)
        if bad:
            raise ValueError(f"pool sizes must be 0..100, not {', '.join(f'{rt}={value[rt]}' for rt in bad)}")
        return value
