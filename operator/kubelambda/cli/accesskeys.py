"""``kubelambda access-key create|list|delete``: access keys for SigV4 callers (boto3, the AWS CLI).

A key stands for one ServiceAccount and is a Secret of the platform namespace (gateway/auth/keys.py). Creating
or deleting one for a ServiceAccount needs the right to act as it (``create`` on ``serviceaccounts/token`` for
it, checked with a SelfSubjectAccessReview) on top of writing Secrets in the platform namespace.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from kubelambda.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_cluster_options,
    print_structured,
    resolve_target,
)

if TYPE_CHECKING:
    from kubelambda.gateway.auth.keys import AccessKey
    from kubelambda.kube import KubeClient

DEFAULT_SYSTEM_NAMESPACE = "kubelambda-system"


async def may_act_as(kube: KubeClient, namespace: str, account: str) -> tuple[bool, str]:
    """May the caller create tokens for ``namespace/account`` (that is, act as it)?"""
    answer = await kube.create(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "create",
                    "group": "",
                    "resource": "serviceaccounts",
                    "subresource": "token",
                    "name": account,
                }
            },
        },
    )
    status = answer.get("status") or {}
    return bool(status.get("allowed")), str(status.get("reason", ""))


async def whoami(kube: KubeClient) -> str:
    from kubelambda.kube import ApiError

    try:
        answer = await kube.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    except ApiError:
        return ""
    return str(((answer.get("status") or {}).get("userInfo") or {}).get("username", ""))


async def create_key(
    kube: KubeClient, namespace: str, account: str, *, system_namespace: str, description: str = ""
) -> AccessKey:
    """Checks the caller may act as the ServiceAccount, then stores a new key for it."""
    from kubelambda.gateway.auth.keys import new_key, secrets_path, to_secret
    from kubelambda.kube import resource_path

    allowed, reason = await may_act_as(kube, namespace, account)
    if not allowed:
        raise CliError(
            f"you may not act as ServiceAccount {namespace}/{account} (create serviceaccounts/token)"
            + (f": {reason}" if reason else ""),
            hint="ask for a Role granting create on serviceaccounts/token for it",
        )
    if (
        await kube.get_or_none(resource_path("v1", "serviceaccounts", namespace=namespace, name=account))
        is None
    ):
        raise CliError(
            f"ServiceAccount {namespace}/{account} does not exist",
            hint=f"kubectl -n {namespace} create serviceaccount {account}",
        )
    key = new_key(namespace, account, created_by=await whoami(kube), description=description)
    await kube.create(secrets_path(system_namespace), to_secret(key, namespace=system_namespace))
    return key


async def list_keys(kube: KubeClient, *, system_namespace: str) -> list[AccessKey]:
    from kubelambda.gateway.auth.keys import SELECTOR, from_secret, secrets_path

    listing = await kube.list(secrets_path(system_namespace), params=SELECTOR)
    keys = [from_secret(item) for item in listing["items"]]
    return sorted(
        (k for k in keys if k is not None), key=lambda k: (k.namespace, k.service_account, k.created)
    )


async def delete_key(kube: KubeClient, access_key_id: str, *, system_namespace: str) -> AccessKey:
    from kubelambda.gateway.auth.keys import KEY_ID, from_secret, secret_name
    from kubelambda.kube import resource_path

    if not KEY_ID.match(access_key_id):
        raise CliError(f"{access_key_id!r} is not an access key id (KLAK and 16 characters)", code=EXIT_USAGE)
    path = resource_path("v1", "secrets", namespace=system_namespace, name=secret_name(access_key_id))
    found = await kube.get_or_none(path)
    key = from_secret(found) if found is not None else None
    if key is None:
        raise CliError(f"no access key {access_key_id}", hint="see `kubelambda access-key list -A`")
    allowed, _ = await may_act_as(kube, key.namespace, key.service_account)
    if not allowed:
        raise CliError(f"you may not act as ServiceAccount {key.namespace}/{key.service_account}")
    await kube.delete(path)
    return key


def _system_namespace(args: argparse.Namespace) -> str:
    return str(args.system_namespace)


def cmd_create(args: argparse.Namespace) -> int:
    from kubelambda.cli._common import split_name
    from kubelambda.cli.functions import with_kube

    target = resolve_target(args)
    namespace, account = split_name(args.service_account, target.namespace)
    key = with_kube(
        target,
        lambda kube: create_key(
            kube, namespace, account, system_namespace=_system_namespace(args), description=args.description
        ),
    )
    if args.output == "env":
        print(f"export AWS_ACCESS_KEY_ID={key.access_key_id}")
        print(f"export AWS_SECRET_ACCESS_KEY={key.secret_access_key}")
    elif args.output in ("json", "yaml"):
        print_structured(
            {
                "accessKeyId": key.access_key_id,
                "secretAccessKey": key.secret_access_key,
                "serviceAccount": f"{namespace}/{account}",
            },
            args.output,
        )
    else:
        print(f"AccessKeyId:     {key.access_key_id}")
        print(f"SecretAccessKey: {key.secret_access_key}")
        print(f"ServiceAccount:  {namespace}/{account}")
        print(
            "The secret is shown once; delete the key with `kubelambda access-key delete ID`.",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from kubelambda.cli._format import render_table
    from kubelambda.cli.functions import with_kube

    target = resolve_target(args)
    keys = with_kube(target, lambda kube: list_keys(kube, system_namespace=_system_namespace(args)))
    if not args.all_namespaces:
        keys = [k for k in keys if k.namespace == target.namespace]
    rows: list[dict[str, Any]] = [
        {
            "accessKeyId": k.access_key_id,
            "serviceAccount": f"{k.namespace}/{k.service_account}",
            "created": k.created,
            "createdBy": k.created_by,
            "description": k.description,
        }
        for k in keys
    ]
    if args.output != "table":
        print_structured(rows, args.output)
        return EXIT_OK
    print(
        render_table(
            ["ACCESS KEY ID", "SERVICE ACCOUNT", "CREATED", "CREATED BY", "DESCRIPTION"],
            [
                [r["accessKeyId"], r["serviceAccount"], r["created"], r["createdBy"], r["description"]]
                for r in rows
            ],
        )
    )
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    from kubelambda.cli.functions import with_kube

    target = resolve_target(args)
    key = with_kube(
        target, lambda kube: delete_key(kube, args.access_key_id, system_namespace=_system_namespace(args))
    )
    print(f"access key {key.access_key_id} of {key.namespace}/{key.service_account} deleted")
    return EXIT_OK


def register(commands: Any) -> None:
    group = commands.add_parser(
        "access-key",
        help="access keys for SigV4 callers (boto3, AWS CLI), each standing for a ServiceAccount",
        description="Access keys let AWS SDKs sign calls to the gateway; each stands for a ServiceAccount, whose "
        "RBAC (verb invoke on functions.kubelambda.io) decides what it may invoke. See docs/security.md.",
    )
    sub = group.add_subparsers(dest="access_key_command", required=True, metavar="COMMAND")

    def common(parser: argparse.ArgumentParser) -> None:
        add_cluster_options(parser)
        parser.add_argument(
            "--system-namespace",
            default=os.environ.get("KUBELAMBDA_SYSTEM_NAMESPACE", DEFAULT_SYSTEM_NAMESPACE),
            help="the platform namespace that holds the keys (default: $KUBELAMBDA_SYSTEM_NAMESPACE, "
            f"{DEFAULT_SYSTEM_NAMESPACE})",
        )

    create = sub.add_parser("create", help="a new key for a ServiceAccount (the secret is printed once)")
    create.add_argument("service_account", metavar="SERVICEACCOUNT", help="NAME or NAMESPACE/NAME")
    create.add_argument("--description", default="", help="a note kept with the key")
    create.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml", "env"),
        default="table",
        help="table (default), json, yaml, or env (export AWS_ACCESS_KEY_ID=... lines)",
    )
    common(create)
    create.set_defaults(func=cmd_create)

    ls = sub.add_parser(
        "list", aliases=["ls"], help="the keys of a namespace's ServiceAccounts (never secrets)"
    )
    ls.add_argument("-A", "--all-namespaces", action="store_true", help="keys of every namespace")
    ls.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    common(ls)
    ls.set_defaults(func=cmd_list)

    delete = sub.add_parser("delete", help="revoke a key (the gateway stops accepting it within seconds)")
    delete.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    common(delete)
    delete.set_defaults(func=cmd_delete)
