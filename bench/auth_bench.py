"""What authentication and authorisation cost (issue 16). Figures, never assertions.

``kubelambda gateway`` processes alike in everything but ``KUBELAMBDA_GATEWAY_AUTH_MODE`` (``none`` and
``kubernetes``) route to the same warm instance of a no-op function (python3.11, 1769 MB = 1 vCPU) on the local
platform; the same client, in interleaved rounds, measures warm invoke p50/p99 and throughput through each:

- ``none``: unsigned;
- ``sigv4``: signed with the developer access key (requests signed before the timed loop, so the client's own
  signing is not counted; the gateway verifies every one and its decision cache is warm);
- ``bearer``: the developer ServiceAccount's token (TokenReview and SubjectAccessReview answers cached);
- controls, both auth ``none``: ``none, 2nd gateway`` (a second process alike: the noise between two gateway
  processes) and ``none, auth headers`` (the bearer and SigV4 headers sent, and ignored: what their bytes cost).

Then, in this process, the gateway's auth step itself (``Authoriser.authorise`` with warm caches, SigV4 and
bearer, beside ``none``): the CPU it adds to a call, free of the HTTP path's noise; the SigV4 verification alone;
and the cost of a cache miss (one SubjectAccessReview, one TokenReview round trip to the API server).
Target: <= 0.1 ms added at p50.

Run: ``make bench-auth`` (``.venv/bin/python bench/auth_bench.py --rounds 10 --requests 300``).
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from _common import (
    compare_gateways,
    create_namespace,
    create_warm_function,
    developer_headers,
    gateway_process,
    gateway_processes,
    interleaved_arguments,
    pct,
    start_cluster,
    stop_cluster,
    wait_answering,
)
from kubelambda.devcluster._binaries import ensure_binaries
from kubelambda.gateway.auth import sigv4
from kubelambda.gateway.auth.reviews import AccessReviewer, Identity, TokenReviewer
from kubelambda.kube import KubeClient

NS = "bench"
BODY = b'{"x": 1}'


def gateway_mode(state_dir: Path, mode: str) -> tuple[subprocess.Popen[bytes], str]:
    return gateway_process(state_dir, mode, {"KUBELAMBDA_GATEWAY_AUTH_MODE": mode})


def presigned(url: str, key: tuple[str, str], count: int) -> list[dict[str, str]]:
    signed = []
    for _ in range(count):
        request = AWSRequest(method="POST", url=url, data=BODY, headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(*key), "lambda", "us-east-1").add_auth(request)
        signed.append({k: str(v) for k, v in request.headers.items()})
    return signed


async def misses(kube: KubeClient, token: str, n: int) -> None:
    access = AccessReviewer(kube, ttl=0)
    tokens = TokenReviewer(kube, audiences=[], ttl=0)
    who = Identity.service_account("default", "kubelambda-developer", via="bench")
    sar: list[float] = []
    tr: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        decision = await access.may(who, "invoke", NS, "warm")
        sar.append((time.perf_counter() - started) * 1000)
        assert decision.allowed
        started = time.perf_counter()
        assert await tokens.review(token) is not None
        tr.append((time.perf_counter() - started) * 1000)
    print(f"\n== cache misses, {n} each, sequential (the API server of the local cluster)")
    print(f"  SubjectAccessReview  p50 {pct(sar, 0.5):6.2f} ms   p99 {pct(sar, 0.99):6.2f} ms")
    print(f"  TokenReview          p50 {pct(tr, 0.5):6.2f} ms   p99 {pct(tr, 0.99):6.2f} ms")


async def step_cost(kube: KubeClient, url: str, key: tuple[str, str], bearer: dict[str, str], n: int) -> None:
    """``Authoriser.authorise`` per call with warm caches (the first call of each fills them), in this process."""
    from aiohttp.test_utils import make_mocked_request

    from kubelambda.gateway.auth import INVOKE, Authoriser
    from kubelambda.gateway.auth.keys import AccessKey
    from kubelambda.gateway.config import GatewaySettings
    from kubelambda.gateway.functionname import FunctionRef

    ref = FunctionRef(NS, "warm")
    path = "/" + url.split("/", 3)[3]
    signed = {"Host": url.split("/")[2], **presigned(url, key, 1)[0]}
    requests = {
        "none": (Authoriser(GatewaySettings(auth_mode="none"), kube), {}),
        "sigv4": (Authoriser(GatewaySettings(auth_mode="kubernetes"), kube), signed),
        "bearer": (Authoriser(GatewaySettings(auth_mode="kubernetes"), kube), bearer),
    }
    print(f"\n== the auth step in process (Authoriser.authorise, warm caches), {n} calls each")
    for name, (auth, headers) in requests.items():
        auth.keys.keys[key[0]] = AccessKey(key[0], key[1], "default", "kubelambda-developer")
        request = make_mocked_request("POST", path, headers=headers)
        await auth.authorise(request, INVOKE, ref, body=BODY)  # fills the caches
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await auth.authorise(request, INVOKE, ref, body=BODY)
            times.append((time.perf_counter() - started) * 1e6)
        print(f"  {name:<7} p50 {pct(times, 0.5):7.1f} us   p99 {pct(times, 0.99):7.1f} us")


def verify_cost(url: str, key: tuple[str, str], n: int) -> None:
    headers = presigned(url, key, 1)[0]
    headers["Host"] = url.split("/")[2]
    path = "/" + url.split("/", 3)[3]
    request = sigv4.Request("POST", path, [], headers.items(), BODY)
    signed = sigv4.parse(headers, {})
    assert signed is not None
    started = time.perf_counter()
    for _ in range(n):
        sigv4.verify(signed, request, key[1])
    each = (time.perf_counter() - started) / n * 1e6
    print(
        f"\n== SigV4 verification alone (canonical request, key derivation, HMAC), in process: {each:.1f} us"
    )


async def main() -> None:
    parser = interleaved_arguments(rounds=10)
    parser.add_argument("--misses", type=int, default=200)
    args = parser.parse_args()
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="kl-bench-auth-") as tmp:
        root = Path(tmp)
        proc, state = start_cluster(root)
        try:
            key = (state.aws_access_key_id, state.aws_secret_access_key)
            bearer = await developer_headers(state)
            async with (
                KubeClient.from_kubeconfig(state.kubeconfig) as kube,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            ):
                with gateway_processes(root, "*gateway*.log") as gateways:
                    await create_namespace(kube, NS)
                    await create_warm_function(kube, NS, per_instance=args.connections)
                    for name, mode in (("none", "none"), ("kubernetes", "kubernetes"), ("none-2", "none")):
                        gateways[name] = gateway_mode(root, mode)
                    path = f"/2015-03-31/functions/{NS}/warm/invocations"
                    none_url, auth_url = gateways["none"][1] + path, gateways["kubernetes"][1] + path
                    sign_pool = presigned(auth_url, key, 64)

                    await wait_answering(http, none_url, "the none gateway to answer", body=BODY, timeout=180)
                    none2_url = gateways["none-2"][1] + path
                    await wait_answering(http, none2_url, "the 2nd none gateway to answer", body=BODY)
                    await wait_answering(
                        http, auth_url, "the auth gateway to answer", body=BODY, headers=bearer
                    )
                    cases: dict[str, tuple[str, list[dict[str, str]]]] = {
                        "none": (none_url, [{}]),
                        "sigv4": (auth_url, sign_pool),
                        "bearer": (auth_url, [bearer]),
                        "none, 2nd gateway": (none2_url, [{}]),
                        "none, auth headers": (none_url, [{**bearer, **h} for h in sign_pool]),
                    }
                    # Every path warmed up first (and the decision caches).
                    await compare_gateways(
                        http, cases, args, body=BODY, differ="auth mode", target="<= 0.1 ms added at p50"
                    )
                    token = bearer["Authorization"].removeprefix("Bearer ")
                    await step_cost(kube, auth_url, key, bearer, 5000)
                    verify_cost(auth_url, key, 5000)
                    await misses(kube, token, args.misses)
        finally:
            stop_cluster(proc, root)


if __name__ == "__main__":
    asyncio.run(main())
