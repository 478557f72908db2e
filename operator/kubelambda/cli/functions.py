"""Working with deployed Functions: ``invoke``, ``logs``, ``list``, ``describe``, ``delete``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kubelambda.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Target,
    add_cluster_options,
    add_gateway_option,
    add_output_option,
    add_state_dir,
    print_structured,
    resolve_credentials,
    resolve_gateway,
    resolve_target,
    sign,
    split_name,
)
from kubelambda.cli._format import RequestFilter, describe_function, function_rows, render_table

if TYPE_CHECKING:
    from kubelambda.kube import KubeClient
    from kubelambda.logstore import LogRecord

# kubelambda.kube (aiohttp) is imported where it is used: `kubelambda --help` and `init` stay fast.

API_VERSION = "kubelambda.io/v1alpha1"
FUNCTION_LABEL = "kubelambda.io/function"
FUNCTION_NAMESPACE_LABEL = "kubelambda.io/function-namespace"  # on warm-pool pods given to a function
T = TypeVar("T")


def function_path(namespace: str | None, name: str | None = None) -> str:
    from kubelambda.kube import resource_path

    return resource_path(API_VERSION, "functions", namespace=namespace, name=name)


def with_kube(target: Target, work: Callable[[KubeClient], Awaitable[T]]) -> T:
    """Runs ``work`` with a client of ``target``'s cluster; connection failures become one-line errors."""
    import aiohttp

    async def main() -> T:
        from kubelambda.kube import KubeClient

        kube = KubeClient.from_kubeconfig(target.kubeconfig)
        try:
            return await work(kube)
        except aiohttp.ClientConnectionError as e:
            raise CliError(
                f"cannot reach the API server {kube.server} (kubeconfig from {target.source}): {e}",
                hint="is the cluster running? `kubelambda dev status`",
            ) from e
        finally:
            await kube.close()

    return asyncio.run(main())


async def get_function(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    obj = await kube.get_or_none(function_path(namespace, name))
    if obj is None:
        raise CliError(f"Function {namespace}/{name} not found", hint=f"see `kubelambda list -n {namespace}`")
    return obj


# ---- invoke ----------------------------------------------------------------------------------------


def read_payload(value: str) -> bytes:
    """``--payload``: JSON text, or ``@file`` (``@-`` = stdin); it must parse as JSON."""
    if value.startswith("@"):
        source = value[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as e:
            raise CliError(f"cannot read the payload file {source}: {e.strerror}", code=EXIT_USAGE) from e
    else:
        text = value
    try:
        json.loads(text)
    except ValueError as e:
        raise CliError(
            f"--payload is not JSON: {e}", hint='quote it: --payload \'{"key": "value"}\'', code=EXIT_USAGE
        ) from e
    return text.encode()


def cmd_invoke(args: argparse.Namespace) -> int:
    url = resolve_gateway(args)
    payload = read_payload(args.payload)
    headers = {
        "Content-Type": "application/json",
        "X-Amz-Invocation-Type": "Event" if args.async_ else "RequestResponse",
    }
    if args.log and not args.async_:
        headers["X-Amz-Log-Type"] = "Tail"
    qualified = "/" in args.name or args.name.startswith("arn:")
    name = args.name if qualified or not args.namespace else f"{args.namespace}/{args.name}"
    target = f"{url}/2015-03-31/functions/{urllib.parse.quote(name, safe='/:')}/invocations"
    credentials = resolve_credentials(args, url)
    if credentials is not None:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        headers = sign("POST", target, payload, headers, credentials, region=region)
    request = urllib.request.Request(target, data=payload, headers=headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=960) as resp:
            status, answer, body = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        status, answer, body = e.code, dict(e.headers), e.read()
    except urllib.error.URLError as e:
        raise CliError(
            f"cannot reach the gateway {url}: {e.reason}", hint="is it running? `kubelambda dev status`"
        ) from e
    elapsed = (time.monotonic() - started) * 1000
    error = answer.get("X-Amz-Function-Error") or answer.get("x-amzn-ErrorType")
    if args.async_ and status == 202:
        print(answer.get("X-Amzn-RequestId", ""))
        print(f"status 202, queued as an Event invocation, {elapsed:.0f} ms", file=sys.stderr)
        return EXIT_OK
    sys.stdout.write(body.decode(errors="replace") + "\n")
    cold = answer.get("X-Kubelambda-Cold-Start") == "true"
    print(
        f"status {status}{f' ({error})' if error else ''}, {elapsed:.0f} ms{', cold start' if cold else ''}",
        file=sys.stderr,
    )
    if answer.get("X-Amz-Log-Result"):
        print(base64.b64decode(answer["X-Amz-Log-Result"]).decode(errors="replace"), file=sys.stderr)
    if status == 404:
        print("hint: see `kubelambda list` (-n NAMESPACE) for the deployed functions", file=sys.stderr)
    if status == 403:
        print(
            "hint: the gateway checks who calls: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to an access key "
            "(`kubelambda access-key create`) whose ServiceAccount may invoke (docs/security.md)",
            file=sys.stderr,
        )
    return EXIT_OK if status < 300 and not error else EXIT_ERROR


# ---- list ------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    target = resolve_target(args)

    async def work(kube: KubeClient) -> dict[str, Any]:
        return await kube.list(function_path(None if args.all_namespaces else target.namespace))

    found = with_kube(target, work)
    items = found.get("items") or []
    if args.output != "table":
        for item in items:
            item["metadata"].pop("managedFields", None)  # as kubectl: noise to a reader
            item.setdefault("apiVersion", API_VERSION)
            item.setdefault("kind", "Function")
        print_structured({"apiVersion": "v1", "kind": "List", "items": items}, args.output)
        return EXIT_OK
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {target.namespace}"
        print(f"No Functions in {where}.", file=sys.stderr)
        return EXIT_OK
    headers, rows = function_rows(items, dt.datetime.now(dt.UTC), all_namespaces=args.all_namespaces)
    print(render_table(headers, rows))
    return EXIT_OK


# ---- describe --------------------------------------------------------------------------------------


def cmd_describe(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    namespace, name = split_name(args.name, target.namespace)

    async def work(kube: KubeClient) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        from kubelambda.kube import ApiError, resource_path

        obj = await get_function(kube, namespace, name)
        events = await kube.list(
            resource_path("v1", "events", namespace=namespace),
            params={"fieldSelector": f"involvedObject.kind=Function,involvedObject.name={name}"},
        )
        try:
            triggers = await kube.list(resource_path(API_VERSION, "triggers", namespace=namespace))
        except ApiError as e:
            if e.status != 404:  # no Trigger CRD installed: no Triggers
                raise
            triggers = {}
        pointing = [t for t in triggers.get("items") or [] if (t.get("spec") or {}).get("function") == name]
        return obj, events.get("items") or [], pointing

    obj, events, triggers = with_kube(target, work)
    if args.output != "table":
        obj["metadata"].pop("managedFields", None)
        print_structured({"function": obj, "triggers": triggers, "events": events}, args.output)
        return EXIT_OK
    print(describe_function(obj, events=events, triggers=triggers, now=dt.datetime.now(dt.UTC)))
    return EXIT_OK


# ---- delete ----------------------------------------------------------------------------------------


def cmd_delete(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    namespace, name = split_name(args.name, target.namespace)

    async def work(kube: KubeClient) -> bool:
        gone = await kube.delete(
            function_path(namespace, name), propagation="Foreground" if args.wait else None
        )
        if gone is None:
            return False
        if args.wait:
            deadline = time.monotonic() + args.timeout
            while await kube.get_or_none(function_path(namespace, name)) is not None:
                if time.monotonic() > deadline:
                    raise CliError(
                        f"Function {namespace}/{name} still exists after {args.timeout:.0f} s",
                        hint="is the operator running? `kubectl get fn -o yaml` shows its finalizers",
                    )
                await asyncio.sleep(0.5)
        return True

    if not with_kube(target, work):
        if args.ignore_not_found:
            return EXIT_OK
        raise CliError(f"Function {namespace}/{name} not found", hint=f"see `kubelambda list -n {namespace}`")
    print(f"Deleted Function {namespace}/{name}")
    return EXIT_OK


# ---- logs ------------------------------------------------------------------------------------------


async def _pods(kube: KubeClient, namespace: str, name: str, system_namespace: str) -> list[tuple[str, str]]:
    """``(namespace, pod)`` of every instance: the Function's own pods, and warm-pool pods the gateway
    specialised for it (they stay in the warm-pool namespace, relabelled as the function's; docs/gateway.md)."""
    from kubelambda.kube import ApiError, resource_path

    found = await kube.list(
        resource_path("v1", "pods", namespace=namespace), params={"labelSelector": f"{FUNCTION_LABEL}={name}"}
    )
    pods = [(namespace, p) for p in found.get("items") or []]
    if system_namespace != namespace:
        try:
            pool = await kube.list(
                resource_path("v1", "pods", namespace=system_namespace),
                params={"labelSelector": f"{FUNCTION_LABEL}={name},{FUNCTION_NAMESPACE_LABEL}={namespace}"},
            )
        except ApiError as e:
            if e.status != 403:  # a user who may not read the pool namespace sees the function's own pods
                raise
        else:
            pods += [(system_namespace, p) for p in pool.get("items") or []]
    return sorted(
        (ns, p["metadata"]["name"])
        for ns, p in pods
        if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")
    )


async def _print_pod(
    kube: KubeClient, namespace: str, pod: str, args: argparse.Namespace, *, prefix: bool, follow: bool
) -> None:
    from kubelambda.kube import ApiError, resource_path

    params = {"container": "function"}
    if follow:
        params["follow"] = "true"
    if args.tail is not None:
        params["tailLines"] = str(args.tail)
    keep = RequestFilter(args.request_id) if args.request_id else None
    try:
        async for line in kube.lines(
            resource_path("v1", "pods", namespace=namespace, name=pod, subresource="log"), params=params
        ):
            if keep is not None and not keep.keep(line):
                continue
            print(f"[{pod}] {line}" if prefix else line, flush=True)
    except ApiError as e:
        if e.status not in (400, 404):  # the pod went away, or its container has not started
            raise


def _log_store_url(args: argparse.Namespace, target: Target) -> str | None:
    """``--log-store`` > ``$KUBELAMBDA_LOG_STORE_URL`` > the NATS of the running `kubelambda dev up` cluster, when
    that is the cluster the command talks to."""
    if args.log_store:
        return str(args.log_store)
    if os.environ.get("KUBELAMBDA_LOG_STORE_URL"):
        return os.environ["KUBELAMBDA_LOG_STORE_URL"]
    from kubelambda.cli._common import _dev_state

    state = _dev_state(args)
    same_cluster = state is not None and Path(state.kubeconfig).resolve() == Path(target.kubeconfig).resolve()
    if same_cluster and state.state == "running" and state.nats_url:
        return str(state.nats_url)
    return None


async def _store_logs(args: argparse.Namespace, url: str, namespace: str, name: str) -> None:
    """Every invocation's log from the log store (docs/logs.md), pods gone or not."""
    import nats
    import nats.errors

    from kubelambda import logstore, natsauth

    try:
        since = logstore.parse_time(args.since) if args.since else None
        until = logstore.parse_time(args.until) if args.until else None
        level = logstore.check_level(args.level) if args.level else None
    except ValueError as e:
        raise CliError(str(e), hint="e.g. --since 10m, --until 2026-01-02T15:04:05Z, --level WARN") from None
    query = logstore.LogQuery(
        namespace,
        name,
        request_id=args.request_id,
        since=since,
        until=until,
        contains=args.filter,
        level=level,
    )
    try:
        nc = await nats.connect(
            natsauth.servers(url),
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            **natsauth.connect_options(url),
        )
    except (OSError, TimeoutError, nats.errors.Error) as e:
        raise CliError(
            f"cannot reach the log store at {natsauth.redacted(url)}: {e}",
            hint="give its URL with --log-store or $KUBELAMBDA_LOG_STORE_URL, or --from pods for the pods' logs",
        ) from None

    count = 0
    try:
        with contextlib.suppress(logstore.LogStoreError):  # no stream: why_empty says so
            count = await _show_records(args, logstore.read(nc, query, follow=args.follow), namespace, name)
        if count == 0:
            print(logstore.why_empty(query, await logstore.stream_state(nc, namespace)), file=sys.stderr)
    finally:
        await nc.close()


async def _show_records(
    args: argparse.Namespace, records: AsyncIterator[LogRecord], namespace: str, name: str
) -> int:
    """Prints records as they come (the last ``--tail`` of them, unless following); how many there were."""
    import collections

    from kubelambda import logstore

    def show(record: LogRecord) -> None:
        if args.output == "json":
            print(json.dumps(logstore.to_jsonable(record)), flush=True)
        else:
            print(logstore.format_record(record, prefix=args.prefix), flush=True)

    last: collections.deque[LogRecord] | None = (
        collections.deque(maxlen=args.tail) if args.tail is not None and not args.follow else None
    )
    if args.follow:
        print(f"Following the logs of Function {namespace}/{name} (Ctrl-C to stop)", file=sys.stderr)
    count = 0
    async for record in records:
        count += 1
        if last is not None:
            last.append(record)
        else:
            show(record)
    for record in last or ():
        show(record)
    return count


async def _gateway_logs(args: argparse.Namespace, url: str, namespace: str, name: str) -> tuple[int, str]:
    """Every invocation's log through the gateway's logs route (docs/logs.md): no access to the store needed,
    signed with the access key as ``invoke`` is; the gateway checks that the caller may get the Function."""
    import aiohttp

    from kubelambda import logstore

    params = {
        "requestId": args.request_id,
        "since": args.since,
        "until": args.until,
        "level": args.level,
        "filter": args.filter,
        "follow": "true" if args.follow else None,
    }
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    path = f"/kubelambda/logs/{urllib.parse.quote(namespace)}/{urllib.parse.quote(name)}"
    target = f"{url}{path}" + (f"?{query}" if query else "")
    headers: dict[str, str] = {}
    credentials = resolve_credentials(args, url)
    if credentials is not None:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        headers = sign("GET", target, b"", headers, credentials, region=region)
    why = ""

    async def records(resp: aiohttp.ClientResponse) -> AsyncIterator[LogRecord]:
        nonlocal why
        async for line in resp.content:
            if not line.strip():
                continue
            doc = json.loads(line)
            if doc.get("done"):
                why = str(doc.get("why") or "")
                return
            yield logstore.LogRecord.from_json(line)

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(target, headers=headers) as resp,
        ):
            if resp.status != 200:
                body = await resp.text()
                try:
                    message = json.loads(body).get("message", body)
                except ValueError:
                    message = body
                raise CliError(
                    f"the gateway answered {resp.status} {resp.headers.get('x-amzn-ErrorType', '')}: {message}",
                    hint="reading a Function's logs needs get on it in its namespace (docs/logs.md)",
                )
            count = await _show_records(args, records(resp), namespace, name)
    except aiohttp.ClientError as e:
        raise CliError(
            f"cannot reach the gateway {url}: {e}", hint="is it running? `kubelambda dev status`"
        ) from e
    return count, why


def _logs_gateway(args: argparse.Namespace) -> str | None:
    """The gateway to read logs through: always with ``--from gateway``; with ``auto``, when one is known
    (``--endpoint-url``, ``$KUBELAMBDA_GATEWAY_URL``, the dev cluster's) and no store is named explicitly."""
    if args.source == "gateway":
        return resolve_gateway(args)
    if args.source != "auto" or args.log_store or os.environ.get("KUBELAMBDA_LOG_STORE_URL"):
        return None
    try:
        return resolve_gateway(args)
    except CliError:
        return None


def cmd_logs(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    namespace, name = split_name(args.name, target.namespace)
    gateway = _logs_gateway(args)
    if gateway is not None:
        count, why = asyncio.run(_gateway_logs(args, gateway, namespace, name))
        if count or args.source == "gateway":
            if count == 0 and why:
                print(why, file=sys.stderr)
            return EXIT_OK
        # auto: the store has nothing for this query (e.g. the platform keeps no logs past pods, so the
        # namespace has no log stream): the running pods' logs are the next place to look.
        if why:
            print(f"{why}; reading the running instances' logs instead", file=sys.stderr)
        args.source = "pods"
    url = _log_store_url(args, target) if args.source != "pods" else None
    if args.source == "store" and url is None:
        raise CliError(
            "no log store to read from",
            hint="give its URL with --log-store or $KUBELAMBDA_LOG_STORE_URL (the platform's NATS), "
            "or read the running pods' logs with --from pods",
        )
    if url is None and (args.since or args.until or args.level or args.filter):
        raise CliError(
            "--since, --until, --level and --filter need the log store",
            hint="give its URL with --log-store or $KUBELAMBDA_LOG_STORE_URL (docs/logs.md)",
        )

    async def work(kube: KubeClient) -> None:
        # Who may not read the Function may not read its logs either (the API server answers 403 here).
        await get_function(kube, namespace, name)
        if url is not None:
            await _store_logs(args, url, namespace, name)
            return
        pods = await _pods(kube, namespace, name, args.system_namespace)
        if not args.follow:
            if not pods:
                print(
                    f"Function {namespace}/{name} has no instances (scaled to zero); without the log store "
                    "(--log-store) the logs of instances that are gone cannot be read.",
                    file=sys.stderr,
                )
            prefix = args.prefix or len(pods) > 1
            for pod_ns, pod in pods:
                await _print_pod(kube, pod_ns, pod, args, prefix=prefix, follow=False)
            return
        # Follow every instance, and new instances as they start, until interrupted.
        print(f"Following the logs of Function {namespace}/{name} (Ctrl-C to stop)", file=sys.stderr)
        tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        while True:
            for pod_ns, pod in await _pods(kube, namespace, name, args.system_namespace):
                if (pod_ns, pod) not in tasks:
                    tasks[pod_ns, pod] = asyncio.create_task(
                        _print_pod(kube, pod_ns, pod, args, prefix=True, follow=True)
                    )
            for task in tasks.values():
                error = task.exception() if task.done() else None
                if error is not None:
                    raise error
            await asyncio.sleep(1.0)

    with_kube(target, work)
    return EXIT_OK


# ---- the parser ------------------------------------------------------------------------------------


def register(commands: Any) -> None:
    invoke = commands.add_parser(
        "invoke",
        help="invoke a function through the gateway, like `aws lambda invoke`",
        description="Invoke a function. The response body goes to stdout; the status, duration and "
        "(with --log) the log tail go to stderr. Exit status 1 when the function or the gateway answered an error.",
    )
    invoke.add_argument("name", help="function name, namespace/name, or ARN")
    invoke.add_argument(
        "--payload", default="{}", help="the event: JSON, or @file, or @- for stdin (default {})"
    )
    invoke.add_argument("--log", action="store_true", help="print the invocation's log tail (stderr)")
    invoke.add_argument(
        "--async",
        dest="async_",
        action="store_true",
        help="an Event (asynchronous) invocation: prints the request id of the queued event",
    )
    invoke.add_argument(
        "-n", "--namespace", default=None, help="namespace of NAME (default: the gateway's default)"
    )
    add_gateway_option(invoke)
    add_state_dir(invoke)
    invoke.set_defaults(func=cmd_invoke)

    ls = commands.add_parser("list", aliases=["ls"], help="list Functions: Ready, instances, runtime, age")
    add_cluster_options(ls)
    ls.add_argument("-A", "--all-namespaces", action="store_true", help="Functions of every namespace")
    add_output_option(ls)
    ls.set_defaults(func=cmd_list)

    describe = commands.add_parser(
        "describe", help="a Function's spec, status conditions, Triggers pointing at it and recent Events"
    )
    describe.add_argument("name", help="NAME or NAMESPACE/NAME")
    add_cluster_options(describe)
    add_output_option(describe)
    describe.set_defaults(func=cmd_describe)

    delete = commands.add_parser(
        "delete", help="delete a Function (its Deployment, Service and code go with it)"
    )
    delete.add_argument("name", help="NAME or NAMESPACE/NAME")
    add_cluster_options(delete)
    delete.add_argument(
        "--wait", action="store_true", help="wait until the Function and what it owns are gone"
    )
    delete.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")
    delete.add_argument(
        "--ignore-not-found", action="store_true", help="exit 0 when there is no such Function"
    )
    delete.set_defaults(func=cmd_delete)

    logs = commands.add_parser(
        "logs",
        help="every invocation's log (START..REPORT blocks), from the log store: pods gone or not",
        description="A Function's log from the log store (docs/logs.md), which keeps every invocation's records "
        "past its pod; with no log store (--from pods), the logs of the running instances.",
    )
    logs.add_argument("name", help="NAME or NAMESPACE/NAME")
    add_cluster_options(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming new records")
    logs.add_argument("--request-id", default=None, help="only the records of this request")
    logs.add_argument(
        "--since", default=None, help="from this time: 10m, 2h, 7d ago, or ISO 8601 (log store)"
    )
    logs.add_argument("--until", default=None, help="up to this time: as --since (log store)")
    logs.add_argument(
        "--level", default=None, help="JSON or [LEVEL] lines of at least this level: DEBUG, INFO, WARN, ERROR"
    )
    logs.add_argument("--filter", default=None, help="only records whose message contains this text")
    logs.add_argument(
        "--tail", type=int, default=None, help="the last N records (of each instance with pods)"
    )
    logs.add_argument("--prefix", action="store_true", help="prefix each line with its pod")
    logs.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: one record per line (log store)",
    )
    logs.add_argument(
        "--from",
        dest="source",
        choices=("auto", "gateway", "store", "pods"),
        default="auto",
        help="gateway: the gateway's logs route (no access to the store needed); store: the log store itself; "
        "pods: running instances only; auto (default): the store when named (--log-store, "
        "$KUBELAMBDA_LOG_STORE_URL), else the gateway when one is known, else the dev cluster's store, else pods",
    )
    add_gateway_option(logs)
    logs.add_argument(
        "--log-store",
        default=None,
        help="the log store, nats://host:port (default: $KUBELAMBDA_LOG_STORE_URL, else the dev cluster's)",
    )
    logs.add_argument(
        "--warm-pool-namespace",
        dest="system_namespace",
        default=os.environ.get("KUBELAMBDA_WARM_POOL_NAMESPACE", "kubelambda-warm-pool"),
        help="where warm-pool instances run (default: $KUBELAMBDA_WARM_POOL_NAMESPACE, kubelambda-warm-pool)",
    )
    logs.set_defaults(func=cmd_logs)
