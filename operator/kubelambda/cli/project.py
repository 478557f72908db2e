"""A function's folder: ``init RUNTIME DIR`` scaffolds one, ``deploy DIR`` packages and applies it."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubelambda.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    FIELD_MANAGER,
    CliError,
    add_cluster_options,
    resolve_target,
    stderr_is_tty,
)
from kubelambda.cli._package import (
    INLINE_LIMIT,
    MANIFEST,
    Bucket,
    built_code,
    inline_files,
    make_zip,
    s3_code,
    upload,
)
from kubelambda.cli.functions import API_VERSION, function_path, with_kube
from kubelambda.runtimes.table import RUNTIMES as RUNTIME_TABLE

if TYPE_CHECKING:
    from kubelambda.kube import ApiError, KubeClient

TEMPLATE_OF = {rt.name: rt.scaffold for rt in RUNTIME_TABLE.values()}  # from the runtime table
RUNTIMES = tuple(TEMPLATE_OF)
EXECUTABLE_TEMPLATES = {"bootstrap"}
TEMPLATE_SUFFIX = ".tmpl"  # Python templates are stored as .py.tmpl so that mypy and ruff leave them alone
# Ready=False reasons that only mean "wait": anything else is reported as a failed deploy.
TRANSIENT_REASONS = {"InstancesStarting", "Reconciling"}
WATCH_POLL_SECONDS = 0.2
WATCH_SETTLE_SECONDS = 0.1
WATCH_SKIP = {"__pycache__", "node_modules", "target", "build", "dist"}


def function_name_for(folder: Path) -> str:
    """A DNS-1123 name from a folder name: ``My_Func`` → ``my-func``."""
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")
    return name[:63].rstrip("-") or "function"


def render_scaffold(runtime: str, name: str) -> dict[str, tuple[str, bool]]:
    """The scaffold of ``runtime``: relative path → (text, executable), with ``{{name}}``/``{{runtime}}`` filled."""
    root = resources.files("kubelambda") / "scaffold" / TEMPLATE_OF[runtime]
    out: dict[str, tuple[str, bool]] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            rel = f"{prefix}{child.name.removesuffix(TEMPLATE_SUFFIX)}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                text = child.read_text().replace("{{name}}", name).replace("{{runtime}}", runtime)
                out[rel] = (text, child.name in EXECUTABLE_TEMPLATES)

    walk(root, "")
    return out


def cmd_init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if folder.exists() and any(folder.iterdir()) and not args.force:
        raise CliError(
            f"{folder} exists and is not empty",
            hint="pick a new folder, or pass --force to write into it",
            code=EXIT_USAGE,
        )
    name = args.name or function_name_for(folder)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise CliError(
            f"bad function name {name!r}",
            hint="lower-case letters, digits and '-' (pass --name)",
            code=EXIT_USAGE,
        )
    files = render_scaffold(args.runtime, name)
    for rel, (text, executable) in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if executable:
            path.chmod(0o755)
    print(f"Created a {args.runtime} function {name} in {folder}:")
    for rel in files:
        print(f"  {folder / rel}")
    print(
        f'\nNext:\n  kubelambda deploy {folder}\n  kubelambda invoke {name} --payload \'{{"name": "you"}}\''
    )
    return EXIT_OK


# ---- deploy ----------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST if folder.is_dir() else folder
    if not path.exists():
        raise CliError(
            f"no {MANIFEST} in {folder}",
            hint="create one with `kubelambda init RUNTIME DIR`",
            code=EXIT_USAGE,
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CliError(f"{path} is not YAML: {str(e).splitlines()[0]}", code=EXIT_USAGE) from e
    if not isinstance(doc, dict) or doc.get("kind") != "Function" or not isinstance(doc.get("spec"), dict):
        raise CliError(
            f"{path} is not a Function (kind: Function with a spec)", hint="see docs/api.md", code=EXIT_USAGE
        )
    if not (doc.get("metadata") or {}).get("name"):
        raise CliError(f"{path} has no metadata.name", code=EXIT_USAGE)
    return doc


def bucket_from(args: argparse.Namespace) -> Bucket | None:
    name = args.bucket or os.environ.get("KUBELAMBDA_BUCKET")
    endpoint = args.s3_endpoint or os.environ.get("KUBELAMBDA_S3_ENDPOINT")
    if not name and not endpoint:
        return None
    if not name or not endpoint:
        raise CliError(
            "a bucket needs both --bucket and --s3-endpoint",
            hint="or $KUBELAMBDA_BUCKET and $KUBELAMBDA_S3_ENDPOINT",
            code=EXIT_USAGE,
        )
    return Bucket(
        endpoint=endpoint.rstrip("/"),
        name=name,
        region=args.s3_region or os.environ.get("KUBELAMBDA_S3_REGION") or "us-east-1",
        pod_endpoint=args.s3_pod_endpoint or os.environ.get("KUBELAMBDA_S3_POD_ENDPOINT"),
        credentials_secret=args.s3_credentials_secret or os.environ.get("KUBELAMBDA_S3_CREDENTIALS_SECRET"),
    )


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def package_code(
    folder: Path, doc: dict[str, Any], namespace: str, args: argparse.Namespace
) -> dict[str, Any]:
    """``spec.code`` for the folder: inline when it fits (and --zip is not given), else a zip in the bucket."""
    runtime = str(doc["spec"].get("runtime", ""))
    name = str(doc["metadata"]["name"])
    with built_code(folder, runtime, progress=_say) as package:
        files, why = inline_files(package, limit=args.max_inline_bytes)
        if files is not None and not args.zip:
            _say(f"Packaged {len(files)} file(s), {package.size} bytes, as inline code")
            return {"inline": files}
        bucket = bucket_from(args)
        reason = "--zip was given" if files is not None else why
        if bucket is None:
            raise CliError(
                f"the code cannot be inline ({reason}), and no bucket is configured",
                hint="pass --bucket NAME --s3-endpoint URL (or set $KUBELAMBDA_BUCKET and $KUBELAMBDA_S3_ENDPOINT)",
                code=EXIT_USAGE,
            )
        data = make_zip(package)
        code, key = s3_code(data, bucket=bucket, namespace=namespace, name=name)
        if args.dry_run:
            _say(f"Would upload a {len(data)}-byte zip to s3://{bucket.name}/{key} (not inline: {reason})")
        else:
            _say(f"Uploading a {len(data)}-byte zip to s3://{bucket.name}/{key} (not inline: {reason})")
            upload(data, key, bucket=bucket, env=dict(os.environ))
        return {"s3": code}


def _invalid(e: ApiError, namespace: str, name: str) -> CliError:
    message = e.message
    # The API server's 422 lists each field; keep them, on one line.
    message = " ".join(message.split())
    return CliError(
        f"Function {namespace}/{name} was refused: {message}",
        hint="fix function.yaml (the reference is docs/api.md)",
    )


async def _wait_ready(
    kube: KubeClient, namespace: str, name: str, generation: int, timeout: float
) -> dict[str, Any]:
    started = time.monotonic()
    last = ""
    tty = stderr_is_tty()
    while True:
        obj = await kube.get_or_none(function_path(namespace, name))
        if obj is None:
            raise CliError(f"Function {namespace}/{name} disappeared while deploying")
        status = obj.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        current = (status.get("observedGeneration") or 0) >= generation
        if not current or ready is None:
            state = "waiting for the operator"
        else:
            state = f"Ready={ready.get('status')} {ready.get('reason', '')}: {ready.get('message', '')}"
        elapsed = time.monotonic() - started
        if tty:
            print(f"\r\033[K    {elapsed:5.1f} s  {state}", end="", file=sys.stderr, flush=True)
        elif state != last:
            print(f"    {elapsed:5.1f} s  {state}", file=sys.stderr, flush=True)
        last = state
        if current and ready is not None:
            if ready.get("status") == "True":
                if tty:
                    print(file=sys.stderr)
                return obj
            if ready.get("status") == "False" and ready.get("reason") not in TRANSIENT_REASONS:
                if tty:
                    print(file=sys.stderr)
                raise CliError(
                    f"Function {namespace}/{name} is not Ready: {ready.get('reason')}: {ready.get('message')}",
                    hint=f"`kubelambda describe {namespace}/{name}` shows its conditions and Events",
                )
        if elapsed > timeout:
            if tty:
                print(file=sys.stderr)
            raise CliError(
                f"Function {namespace}/{name} was not Ready within {timeout:.0f} s ({state})",
                hint=f"is the operator running? `kubelambda describe {namespace}/{name}`",
            )
        await asyncio.sleep(0.25)


def _deploy_once(args: argparse.Namespace, folder: Path, target: Any, *, rollout: bool = False) -> None:
    """Package, apply and (unless --no-wait) wait for Ready; with ``rollout``, also until the Function's
    Deployment runs only pods of this code (so that the next invocation meets it)."""
    doc = read_manifest(folder)
    name = args.name or str(doc["metadata"]["name"])
    namespace = args.namespace or doc["metadata"].get("namespace") or target.namespace
    spec = dict(doc["spec"])
    if "code" not in spec:
        spec["code"] = package_code(
            folder if folder.is_dir() else folder.parent,
            {**doc, "metadata": {**doc["metadata"], "name": name}},
            namespace,
            args,
        )
    else:
        _say("Using spec.code from function.yaml as it is")
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    for key in ("labels", "annotations"):
        if doc["metadata"].get(key):
            metadata[key] = doc["metadata"][key]
    body = {"apiVersion": API_VERSION, "kind": "Function", "metadata": metadata, "spec": spec}

    async def work(kube: KubeClient) -> None:
        from kubelambda.kube import ApiError

        params = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
        if args.dry_run:
            params["dryRun"] = "All"
        try:
            status, applied = await kube.request_with_status(
                "PATCH",
                function_path(namespace, name),
                body=body,
                params=params,
                content_type="application/apply-patch+yaml",
            )
        except ApiError as e:
            # 422: schema or CEL rule; 400 or 500 "field not declared in schema": a field the CRD does not know.
            if e.status in (400, 422) or "not declared in schema" in e.message:
                raise _invalid(e, namespace, name) from e
            raise
        if args.dry_run:
            print(f"Function {namespace}/{name} is valid (server-side dry run; nothing was changed)")
            return
        verb = "Created" if status == 201 else "Applied"
        _say(f"{verb} Function {namespace}/{name} (generation {applied['metadata'].get('generation')})")
        if args.no_wait:
            return
        _say(f"Waiting for Function {namespace}/{name} to be Ready (timeout {args.timeout:.0f} s)")
        started = time.monotonic()
        ready = await _wait_ready(
            kube, namespace, name, int(applied["metadata"].get("generation") or 1), args.timeout
        )
        if rollout:
            await _wait_rollout(kube, namespace, name, started + args.timeout)
        cond = next(c for c in ready["status"]["conditions"] if c["type"] == "Ready")
        print(
            f"Function {namespace}/{name} is Ready ({cond.get('reason')}) after {time.monotonic() - started:.1f} s"
        )
        print(f"  invoke: kubelambda invoke {namespace}/{name} --payload '{{}}'")
        if (ready.get("status") or {}).get("invokeUrl"):
            print(f"  url:    {ready['status']['invokeUrl']}")

    with_kube(target, work)


async def _wait_rollout(kube: KubeClient, namespace: str, name: str, deadline: float) -> None:
    """Until the Function's Deployment has rolled out its newest template and no pod of an older one is left."""
    from kubelambda.kube import resource_path
    from kubelambda.resources import names

    path = resource_path("apps/v1", "deployments", namespace=namespace, name=names.deployment_name(name))
    while time.monotonic() < deadline:
        deployment = await kube.get_or_none(path)
        if deployment is None:
            return
        status = deployment.get("status") or {}
        replicas = int(status.get("replicas") or 0)
        if (status.get("observedGeneration") or 0) >= deployment["metadata"].get(
            "generation", 0
        ) and replicas == int(status.get("updatedReplicas") or 0):
            return
        await asyncio.sleep(0.1)


def _signature(folder: Path) -> dict[str, tuple[int, int]]:
    """``{path: (mtime_ns, size)}`` of what a change of would be redeployed (dot-folders, caches, builds left out)."""
    seen: dict[str, tuple[int, int]] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in WATCH_SKIP]
        for name in names:
            if name.startswith(".") or name.endswith(("~", ".swp", ".pyc")):
                continue
            path = Path(root) / name
            try:
                stat = path.stat()
            except OSError:
                continue  # removed while walking
            seen[str(path.relative_to(folder))] = (stat.st_mtime_ns, stat.st_size)
    return seen


def _watch(args: argparse.Namespace, folder: Path, target: Any) -> int:
    """Redeploy on every saved change until interrupted; a failed redeploy is reported and watching goes on."""
    root = folder if folder.is_dir() else folder.parent
    print(f"Watching {root} for changes (Ctrl-C to stop)", file=sys.stderr, flush=True)
    last = _signature(root)
    while True:
        time.sleep(WATCH_POLL_SECONDS)
        now = _signature(root)
        if now == last:
            continue
        time.sleep(WATCH_SETTLE_SECONDS)  # an editor's save may be several writes
        now = _signature(root)
        changed = sorted(k for k in now.keys() | last.keys() if now.get(k) != last.get(k))
        last = now
        started = time.monotonic()
        _say(f"Changed: {', '.join(changed[:5])}{' …' if len(changed) > 5 else ''}; redeploying")
        try:
            _deploy_once(args, folder, target, rollout=True)
        except CliError as e:
            print(f"kubelambda: error: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"hint: {e.hint}", file=sys.stderr)
            continue
        print(
            f"Redeployed in {time.monotonic() - started:.1f} s; the next invocation runs the new code",
            flush=True,
        )


def cmd_deploy(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    read_manifest(folder)  # a bad folder fails before the cluster is looked for
    target = resolve_target(args)
    if args.watch and (args.dry_run or args.no_wait):
        raise CliError("--watch waits for each deploy", hint="drop --dry-run / --no-wait", code=EXIT_USAGE)
    _deploy_once(args, folder, target, rollout=args.watch)
    if args.watch:
        return _watch(args, folder, target)
    return EXIT_OK


def register(commands: Any) -> None:
    init = commands.add_parser(
        "init",
        help="scaffold a function (handler + function.yaml) in a new folder",
        description="Write a hello-world handler and its function.yaml for RUNTIME into DIR.",
    )
    init.add_argument("runtime", choices=RUNTIMES, metavar="RUNTIME", help=f"one of {', '.join(RUNTIMES)}")
    init.add_argument("dir", metavar="DIR", help="the folder to create")
    init.add_argument("--name", default=None, help="the Function's name (default: from DIR)")
    init.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    init.set_defaults(func=cmd_init)

    deploy = commands.add_parser(
        "deploy",
        help="package DIR's code, apply its Function (server-side apply) and wait until Ready",
        description="Read DIR/function.yaml, build (Maven for java21, Go for go, pip for requirements.txt), package the code "
        "(inline when small, else a zip in a bucket), apply the Function and wait for Ready.",
    )
    deploy.add_argument(
        "dir", metavar="DIR", help="the function's folder (with function.yaml), or the yaml file"
    )
    add_cluster_options(deploy)
    deploy.add_argument("--name", default=None, help="deploy under this name instead of metadata.name")
    deploy.add_argument(
        "--no-wait", action="store_true", help="return once applied, without waiting for Ready"
    )
    deploy.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for Ready (default 180)"
    )
    deploy.add_argument(
        "--watch",
        action="store_true",
        help="stay, and redeploy whenever a file in DIR changes (each time until the new code serves)",
    )
    deploy.add_argument(
        "--dry-run", action="store_true", help="validate on the server (dryRun=All); change nothing"
    )
    deploy.add_argument("--zip", action="store_true", help="always upload a zip, even when inline would fit")
    deploy.add_argument(
        "--max-inline-bytes",
        type=int,
        default=INLINE_LIMIT,
        help=f"largest code deployed inline, keys + contents (default {INLINE_LIMIT}, a ConfigMap's limit)",
    )
    bucket = deploy.add_argument_group(
        "bucket for zipped code (S3-compatible; AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    )
    bucket.add_argument("--bucket", default=None, help="bucket name (default $KUBELAMBDA_BUCKET)")
    bucket.add_argument(
        "--s3-endpoint", default=None, help="S3 API URL, path-style (default $KUBELAMBDA_S3_ENDPOINT)"
    )
    bucket.add_argument(
        "--s3-region", default=None, help="signing region (default $KUBELAMBDA_S3_REGION, us-east-1)"
    )
    bucket.add_argument(
        "--s3-pod-endpoint",
        default=None,
        help="the S3 URL as function pods reach it, when it differs (default $KUBELAMBDA_S3_POD_ENDPOINT)",
    )
    bucket.add_argument(
        "--s3-credentials-secret",
        default=None,
        help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the pods (default $KUBELAMBDA_S3_CREDENTIALS_SECRET)",
    )
    deploy.set_defaults(func=cmd_deploy)
